//! The NAT64 prefix routed through the fabric to the gateway node (docs/nat64.md): two
//! nodes on an in-memory hub, node1 the gateway, a microVM /128 on node2.

use catenary_net::nat64route::{Nat64Error, Nat64Role};
use catenary_net::{cluster::link_local_from_mac, Cluster, Link, Member, Node, NodeConfig};
use netfabric::identity::{AddressKind, Prefix64};
use netfabric::Identity;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::Ipv6Addr;
use std::rc::Rc;

type Wire = Rc<RefCell<Vec<Rc<RefCell<VecDeque<Vec<u8>>>>>>>;

struct Port {
    mac: [u8; 6],
    idx: usize,
    wire: Wire,
}

impl Link for Port {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn recv(&mut self) -> Option<Vec<u8>> {
        self.wire.borrow()[self.idx].borrow_mut().pop_front()
    }
    fn can_send(&self) -> bool {
        true
    }
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        let mut b = vec![0u8; len];
        f(&mut b);
        for (i, p) in self.wire.borrow().iter().enumerate() {
            if i != self.idx {
                p.borrow_mut().push_back(b.clone());
            }
        }
    }
}

fn member(name: &str, id: &Identity, n: u8) -> Member {
    Member { name: name.into(), public_key: id.public_key(), underlay: link_local_from_mac([0x52, 0x54, 0, 0, 0, n]), port: 51820 }
}

/// An IPv6/UDP packet (checksum not needed by the router).
fn udp(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> Vec<u8> {
    let mut p = catenary_net::vmlink::ipv6_header(src, dst, 17, 64, 8 + len);
    p.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, (8 + len) as u8, 0, 0]);
    p.resize(40 + 8 + len, 0x5a);
    p
}

struct Two {
    n1: Node,
    l1: Port,
    n2: Node,
    l2: Port,
    t: u64,
}

impl Two {
    fn new() -> Two {
        let (a, b) = (Identity::from_secret_bytes([1; 32]), Identity::from_secret_bytes([2; 32]));
        let cluster = Cluster { members: vec![member("node1", &a, 1), member("node2", &b, 2)], operators: vec![] };
        let wire: Wire = Rc::new(RefCell::new(vec![Default::default(), Default::default()]));
        let mut l1 = Port { mac: [0x52, 0x54, 0, 0, 0, 1], idx: 0, wire: wire.clone() };
        let mut l2 = Port { mac: [0x52, 0x54, 0, 0, 0, 2], idx: 1, wire };
        let cfg = |id: &Identity, s: u8| NodeConfig { identity: id.clone(), cluster: cluster.clone(), unix_time_at_origin: 1_700_000_000, rng_seed: [s; 32] };
        let n1 = Node::new(&mut l1, cfg(&a, 1), 0);
        let n2 = Node::new(&mut l2, cfg(&b, 2), 0);
        let mut w = Two { n1, l1, n2, l2, t: 0 };
        w.n1.connect("node2", 0);
        w.run(2000);
        assert!(w.n1.peer_by_name("node2").unwrap().established);
        w
    }
    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.t += 1_000_000;
            self.n1.poll(&mut self.l1, self.t);
            self.n2.poll(&mut self.l2, self.t);
        }
    }
}

#[test]
fn the_prefix_reaches_the_gateways_natd_and_answers_come_back() {
    let mut w = Two::new();
    assert_eq!(w.n1.set_nat64_gateway("node1"), Ok(Nat64Role::Gateway));
    assert_eq!(w.n2.set_nat64_gateway("node1"), Ok(Nat64Role::Peer));
    assert_eq!(w.n2.set_nat64_gateway("node1"), Err(Nat64Error::AlreadySet));
    let vm = Prefix64::of(&w.n2.fabric_addr).workload_address(AddressKind::MicroVm, 1).unwrap();
    w.n2.add_vm_route(vm);
    let remote: Ipv6Addr = "64:ff9b::c000:221".parse().unwrap(); // 192.0.2.33
    // a microVM on node2 -> node2 routes it over the fabric to the gateway -> natd's queue
    let out = udp(vm, remote, 100);
    assert!(w.n2.route_from_vm(out.clone(), w.t, false));
    w.run(50);
    assert_eq!(w.n1.take_nat64().as_deref(), Some(&out[..]), "the packet as the VM sent it (hop limit untouched)");
    assert!(w.n1.take_nat64().is_none());
    // natd's answer (from the prefix) -> the fabric -> node2 -> the microVM
    let back = udp(remote, vm, 200);
    assert!(w.n1.from_nat64(back.clone(), w.t));
    w.run(50);
    assert_eq!(w.n2.take_vm_packet().as_deref(), Some(&back[..]));
    assert_eq!(w.n1.nat64_counters.from_natd, 1);
    // a local microVM of the gateway reaches natd without the fabric
    let vm1 = Prefix64::of(&w.n1.fabric_addr).workload_address(AddressKind::MicroVm, 1).unwrap();
    w.n1.add_vm_route(vm1);
    assert!(w.n1.route_from_vm(udp(vm1, remote, 10), w.t, false));
    assert!(w.n1.take_nat64().is_some());
    assert!(w.n1.from_nat64(udp(remote, vm1, 10), w.t));
    assert!(w.n1.take_vm_packet().is_some());
}

#[test]
fn natd_cannot_forge_and_nodes_without_a_gateway_do_not_route_the_prefix() {
    let mut w = Two::new();
    let remote: Ipv6Addr = "64:ff9b::c000:221".parse().unwrap();
    let vm = Prefix64::of(&w.n2.fabric_addr).workload_address(AddressKind::MicroVm, 1).unwrap();
    w.n2.add_vm_route(vm);
    // no gateway named: no route, nothing queued anywhere
    assert!(!w.n2.route_from_vm(udp(vm, remote, 10), w.t, false));
    assert!(!w.n1.from_nat64(udp(remote, vm, 10), w.t), "not the gateway");
    assert_eq!(w.n1.set_nat64_gateway("nobody"), Err(Nat64Error::UnknownNode));
    assert_eq!(w.n1.set_nat64_gateway("node1"), Ok(Nat64Role::Gateway));
    // node2 does not know node1 is the gateway: node1's packets from the prefix are not
    // accepted from it (netfabric's source check), so the VM gets nothing
    assert!(w.n1.from_nat64(udp(remote, vm, 10), w.t));
    w.run(50);
    assert!(w.n2.take_vm_packet().is_none());
    // natd may only send from the prefix, never to it, never fabric IPC, never oversized
    let n2addr = w.n2.fabric_addr;
    assert!(!w.n1.from_nat64(udp(w.n1.fabric_addr, vm, 10), w.t));
    assert!(!w.n1.from_nat64(udp(remote, remote, 10), w.t));
    let mut ipc = udp(remote, n2addr, 10);
    ipc[42..44].copy_from_slice(&51900u16.to_be_bytes());
    assert!(!w.n1.from_nat64(ipc, w.t));
    assert!(!w.n1.from_nat64(udp(remote, n2addr, catenary_net::FABRIC_MTU), w.t));
    assert!(!w.n1.from_nat64(vec![0x60; 30], w.t));
    assert_eq!(w.n1.nat64_counters.refused, 6, "5 forgeries and the one before node1 was the gateway");
    // the queue to natd is bounded
    for _ in 0..catenary_net::nat64route::NAT64_QUEUE + 10 {
        w.n1.route_from_vm(udp(w.n1.fabric_addr, remote, 10), w.t, false);
    }
    assert_eq!(w.n1.nat64_pending(), catenary_net::nat64route::NAT64_QUEUE);
    assert_eq!(w.n1.nat64_counters.queue_full, 10);
}
