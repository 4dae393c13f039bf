//! Nodes on an in-memory Ethernet hub: fabric handshake, encrypted ICMPv6 echo between fabric
//! addresses, plain echo between link-local addresses, an outsider gets no session.

use catenary_net::admission::RowKind;
use catenary_net::{cluster::link_local_from_mac, Cluster, Link, Member, Node, NodeConfig, Path, PLAINTEXT_MARKER};
use netfabric::Identity;
use rand_core::OsRng;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

#[derive(Default)]
struct Hub {
    ports: Vec<Rc<RefCell<VecDeque<Vec<u8>>>>>,
    wire: Vec<Vec<u8>>,
}

struct Port {
    mac: [u8; 6],
    idx: usize,
    hub: Rc<RefCell<Hub>>,
    rx: Rc<RefCell<VecDeque<Vec<u8>>>>,
}

impl Link for Port {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.borrow_mut().pop_front()
    }
    fn can_send(&self) -> bool {
        true
    }
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        let mut b = vec![0u8; len];
        f(&mut b);
        let mut h = self.hub.borrow_mut();
        for (i, p) in h.ports.iter().enumerate() {
            if i != self.idx {
                p.borrow_mut().push_back(b.clone());
            }
        }
        h.wire.push(b);
    }
}

fn port(hub: &Rc<RefCell<Hub>>, n: u8) -> Port {
    let rx = Rc::new(RefCell::new(VecDeque::new()));
    let mut h = hub.borrow_mut();
    h.ports.push(rx.clone());
    Port { mac: [0x52, 0x54, 0, 0, 0, n], idx: h.ports.len() - 1, hub: hub.clone(), rx }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn member(name: &str, id: &Identity, n: u8) -> Member {
    Member { name: name.into(), public_key: id.public_key(), underlay: link_local_from_mac([0x52, 0x54, 0, 0, 0, n]), port: 51820 }
}

#[test]
fn cluster_file_round_trip() {
    let a = Identity::generate(&mut OsRng);
    let c = Cluster { members: vec![member("node1", &a, 1)], operators: vec![] };
    let text = c.render();
    assert!(Cluster::is_cluster_file(text.as_bytes()));
    assert_eq!(Cluster::parse(&text).unwrap(), c);
    assert!(Cluster::parse("nope").is_err());
    assert!(Cluster::parse("catenary-cluster v1\nnode x zz fe80::1 1\n").is_err());
    assert_eq!(link_local_from_mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]).to_string(), "fe80::5054:ff:fe12:3456");
}

#[test]
fn fabric_echo_is_encrypted_and_outsiders_get_no_session() {
    let (a, b, c) = (Identity::generate(&mut OsRng), Identity::generate(&mut OsRng), Identity::generate(&mut OsRng));
    let cluster = Cluster { members: vec![member("node1", &a, 1), member("node2", &b, 2)], operators: vec![] };
    // node3 knows node1 but node1 does not know node3.
    let cluster3 = Cluster { members: vec![member("node1", &a, 1), member("node3", &c, 3)], operators: vec![] };
    let hub = Rc::new(RefCell::new(Hub::default()));
    let (mut l1, mut l2, mut l3) = (port(&hub, 1), port(&hub, 2), port(&hub, 3));
    let cfg = |id: &Identity, cl: &Cluster, s: u8| NodeConfig { identity: id.clone(), cluster: cl.clone(), unix_time_at_origin: 1_700_000_000, rng_seed: [s; 32] };
    let mut n1 = Node::new(&mut l1, cfg(&a, &cluster, 1), 0);
    let mut n2 = Node::new(&mut l2, cfg(&b, &cluster, 2), 0);
    let mut n3 = Node::new(&mut l3, cfg(&c, &cluster3, 3), 0);
    n1.connect_all(0);
    n2.connect_all(0);
    n3.connect_all(0);
    let mut t = 0u64;
    let run = |t: &mut u64, n1: &mut Node, n2: &mut Node, n3: &mut Node, l1: &mut Port, l2: &mut Port, l3: &mut Port, steps: usize| {
        for _ in 0..steps {
            *t += 1_000_000;
            n1.poll(l1, *t);
            n2.poll(l2, *t);
            n3.poll(l3, *t);
        }
    };
    run(&mut t, &mut n1, &mut n2, &mut n3, &mut l1, &mut l2, &mut l3, 200);
    assert!(n1.peer_by_name("node2").unwrap().established, "node1-node2 session");
    assert!(n2.peer_by_name("node1").unwrap().established);
    assert!(!n3.peer_by_name("node1").unwrap().established, "outsider must get no session");

    // Fabric ping node1 -> node2.
    hub.borrow_mut().wire.clear();
    let dst = n1.peer_by_name("node2").unwrap().fabric_addr;
    n1.start_ping(Path::Fabric, dst, 5, 100, 0, t);
    let mut rep = None;
    for _ in 0..2000 {
        run(&mut t, &mut n1, &mut n2, &mut n3, &mut l1, &mut l2, &mut l3, 1);
        if let Some(r) = n1.take_ping() {
            rep = Some(r);
            break;
        }
    }
    let rep = rep.expect("fabric ping finished");
    assert_eq!((rep.sent, rep.received), (5, 5));
    assert!(!hub.borrow().wire.is_empty());
    assert!(hub.borrow().wire.iter().all(|f| !contains(f, PLAINTEXT_MARKER)), "marker on the wire in plaintext");

    // Underlay ping node1 -> node2 link-local: the marker is visible (control).
    hub.borrow_mut().wire.clear();
    n1.start_ping(Path::Underlay, n2.link_local, 3, 100, 0, t);
    let mut rep = None;
    for _ in 0..2000 {
        run(&mut t, &mut n1, &mut n2, &mut n3, &mut l1, &mut l2, &mut l3, 1);
        if let Some(r) = n1.take_ping() {
            rep = Some(r);
            break;
        }
    }
    assert_eq!(rep.expect("underlay ping finished").received, 3);
    assert!(hub.borrow().wire.iter().any(|f| contains(f, PLAINTEXT_MARKER)));

    // Outsider pinging node1's fabric address: nothing comes back.
    n3.start_ping(Path::Fabric, n1.fabric_addr, 1, 64, 0, t);
    let mut rep = None;
    for _ in 0..3000 {
        run(&mut t, &mut n1, &mut n2, &mut n3, &mut l1, &mut l2, &mut l3, 1);
        if let Some(r) = n3.take_ping() {
            rep = Some(r);
            break;
        }
    }
    assert_eq!(rep.expect("outsider ping finished").received, 0);
    assert!(n1.fabric().counters().total_dropped() > 0, "outsider's handshake counted as dropped");
    assert!(!n3.peer_by_name("node1").unwrap().established);

    // Throughput stream over the fabric.
    n1.start_stream(Path::Fabric, dst, 200_000, 1200, t);
    let mut res = None;
    for _ in 0..5000 {
        run(&mut t, &mut n1, &mut n2, &mut n3, &mut l1, &mut l2, &mut l3, 1);
        if let Some(r) = n1.take_stream() {
            res = Some(r);
            break;
        }
    }
    let (bytes, _) = res.expect("stream finished");
    assert!(bytes > 100_000, "delivered {bytes}");
}

/// An operator's workstation (docs/api.md) is listed by key only: the node makes it a peer
/// without an endpoint, never initiates to it, accepts its handshake and answers it where the
/// handshake came from. The same workstation unlisted gets nothing.
#[test]
fn listed_operator_reaches_the_node_without_an_endpoint_in_the_file() {
    use catenary_net::cluster::Operator;
    let (a, b, op) = (Identity::generate(&mut OsRng), Identity::generate(&mut OsRng), Identity::generate(&mut OsRng));
    let operator = Operator { name: "alice".into(), public_key: op.public_key(), role: "admin".into() };
    let with_op = Cluster { members: vec![member("node1", &a, 1), member("node2", &b, 2)], operators: vec![operator] };
    let text = with_op.render();
    assert_eq!(Cluster::parse(&text).unwrap(), with_op, "operator lines round-trip");
    // the workstation's own view: node1 with its endpoint (what `catenary wg-config` writes)
    let ws = Cluster { members: vec![member("node1", &a, 1)], operators: vec![] };
    for listed in [true, false] {
        let hub = Rc::new(RefCell::new(Hub::default()));
        let (mut l1, mut l3) = (port(&hub, 1), port(&hub, 3));
        let node_cluster = if listed { with_op.clone() } else { Cluster { operators: vec![], ..with_op.clone() } };
        let cfg = |id: &Identity, cl: &Cluster, s: u8| NodeConfig { identity: id.clone(), cluster: cl.clone(), unix_time_at_origin: 1_700_000_000, rng_seed: [s; 32] };
        let mut n1 = Node::new(&mut l1, cfg(&a, &node_cluster, 1), 0);
        let mut w = Node::new(&mut l3, cfg(&op, &ws, 3), 0);
        let mut t = 0u64;
        n1.connect_all(t);
        for _ in 0..50 {
            t += 1_000_000;
            n1.poll(&mut l1, t);
            w.poll(&mut l3, t);
        }
        assert_eq!(n1.peer_by_name("operator:alice").is_some(), listed);
        w.connect("node1", t);
        w.start_ping(Path::Fabric, n1.fabric_addr, 3, 64, 0, t);
        let mut rep = None;
        for _ in 0..5000 {
            t += 1_000_000;
            n1.poll(&mut l1, t);
            w.poll(&mut l3, t);
            if let Some(r) = w.take_ping() {
                rep = Some(r);
                break;
            }
        }
        let rep = rep.expect("ping finished");
        if listed {
            assert_eq!(rep.received, 3, "the listed operator's echoes are answered");
            assert!(n1.peer_by_name("operator:alice").unwrap().established);
        } else {
            assert_eq!(rep.received, 0, "an unlisted key gets no answer at all");
            assert!(!w.peer_by_name("node1").unwrap().established);
        }
    }
}

/// Reproduction of crossed handshakes (both sides initiate at once): see docs/networking.md.
#[test]
fn crossed_handshakes() {
    let (a, b) = (Identity::generate(&mut OsRng), Identity::generate(&mut OsRng));
    let cluster = Cluster { members: vec![member("node1", &a, 1), member("node2", &b, 2)], operators: vec![] };
    let hub = Rc::new(RefCell::new(Hub::default()));
    let (mut l1, mut l2) = (port(&hub, 1), port(&hub, 2));
    let cfg = |id: &Identity, s: u8| NodeConfig { identity: id.clone(), cluster: cluster.clone(), unix_time_at_origin: 1_700_000_000, rng_seed: [s; 32] };
    let mut n1 = Node::new(&mut l1, cfg(&a, 1), 0);
    let mut n2 = Node::new(&mut l2, cfg(&b, 2), 0);
    // let NDP settle first so both initiations really cross
    let mut t = 0u64;
    n1.start_ping(Path::Underlay, n2.link_local, 1, 8, 0, 0);
    for _ in 0..100 { t += 1_000_000; n1.poll(&mut l1, t); n2.poll(&mut l2, t); }
    n1.connect("node2", t);
    n2.connect("node1", t);
    for _ in 0..200 { t += 1_000_000; n1.poll(&mut l1, t); n2.poll(&mut l2, t); }
    let dst = n1.peer_by_name("node2").unwrap().fabric_addr;
    n1.start_ping(Path::Fabric, dst, 20, 64, 0, t);
    let mut rep = None;
    for _ in 0..60000 {
        t += 1_000_000;
        n1.poll(&mut l1, t);
        n2.poll(&mut l2, t);
        if let Some(r) = n1.take_ping() { rep = Some(r); break; }
    }
    let rep = rep.unwrap();
    eprintln!("crossed: {}/{} replies; drops n1 {:?} n2 {:?}", rep.received, rep.sent, n1.fabric().counters(), n2.fabric().counters());
    assert_eq!(rep.received, 20);
}

/// Two nodes with an established session (node1 initiates).
fn two_nodes() -> (Node, Port, Node, Port, Identity, u64) {
    let (a, b, c) = (Identity::from_secret_bytes([1; 32]), Identity::from_secret_bytes([2; 32]), Identity::from_secret_bytes([3; 32]));
    let cluster = Cluster { members: vec![member("node1", &a, 1), member("node2", &b, 2), member("node3", &c, 3)], operators: vec![] };
    let hub = Rc::new(RefCell::new(Hub::default()));
    let (mut l1, mut l2) = (port(&hub, 1), port(&hub, 2));
    let cfg = |id: &Identity, s: u8| NodeConfig { identity: id.clone(), cluster: cluster.clone(), unix_time_at_origin: 1_700_000_000, rng_seed: [s; 32] };
    let mut n1 = Node::new(&mut l1, cfg(&a, 1), 0);
    let mut n2 = Node::new(&mut l2, cfg(&b, 2), 0);
    let mut t = 0u64;
    n1.connect("node2", t);
    for _ in 0..2000 {
        t += 1_000_000;
        n1.poll(&mut l1, t);
        n2.poll(&mut l2, t);
        if n1.peer_by_name("node2").unwrap().established && n2.peer_by_name("node1").unwrap().established {
            break;
        }
    }
    assert!(n1.peer_by_name("node2").unwrap().established);
    (n1, l1, n2, l2, c, t)
}

fn settle(n1: &mut Node, l1: &mut Port, n2: &mut Node, l2: &mut Port, t: &mut u64) {
    for _ in 0..50 {
        *t += 1_000_000;
        n1.poll(l1, *t);
        n2.poll(l2, *t);
    }
}

#[test]
fn remote_ipc_reaches_only_bound_addresses_and_names_the_authenticated_sender() {
    use catenary_net::ipcroute::{Body, Frame, IpcRouter, RouteError};
    let (mut n1, mut l1, mut n2, mut l2, c, mut t) = two_nodes();
    let mut r1 = IpcRouter::new(n1.fabric_addr);
    let mut r2 = IpcRouter::new(n2.fabric_addr);
    let echo = r2.bind(7).unwrap();
    let client = r1.bind(3).unwrap();
    let body = Body { label: 1, words: [1, 2, 3, 4] };
    let m = |src, dst, endpoint| Frame::Call { src, dst, endpoint, inc: 3, call_id: 11, watermark: 11, body };
    // a call from node1's bound task to node2's bound /128: delivered, sender = that task's /128
    let p = m(r1.source_for(Some(client)), echo, 0).packet().unwrap();
    assert!(n1.send_ipc(&p, t));
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    let got = n2.take_ipc().expect("delivered through the fabric");
    assert_eq!(r2.decode(&got), Ok(m(client, echo, 7)));
    // the same endpoint by number at node2's own /128: refused, never delivered
    let p = m(r1.source_for(None), n2.fabric_addr, 7).packet().unwrap();
    assert!(n1.send_ipc(&p, t));
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    let got = n2.take_ipc().unwrap();
    assert_eq!(r2.decode(&got), Err(RouteError::Unbound(n2.fabric_addr)));
    // node1 claims to be node3 (a /128 outside its /64): node2's fabric drops it
    let before = n2.fabric().counters().dropped_source_not_allowed;
    let forged = m(c.node_address(), echo, 0).packet().unwrap();
    assert!(n1.send_ipc(&forged, t));
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert!(n2.take_ipc().is_none());
    assert_eq!(n2.fabric().counters().dropped_source_not_allowed, before + 1);
}

#[test]
fn udp_sockets_on_the_fabric_address_reach_the_peer_encrypted() {
    use catenary_net::sockets::UdpError;
    let (mut n1, mut l1, mut n2, mut l2, _, mut t) = two_nodes();
    let a = n1.udp_open(n1.fabric_addr, 40000, 8, 1356).unwrap();
    let b = n2.udp_open(n2.fabric_addr, 7, 8, 1356).unwrap();
    n1.udp_send(a, n2.fabric_addr, 7, b"hello over the fabric").unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    let mut buf = [0u8; 64];
    let (n, from, port) = n2.udp_recv(b, &mut buf).expect("datagram delivered");
    assert_eq!((&buf[..n], from, port), (&b"hello over the fabric"[..], n1.fabric_addr, 40000));
    // the answer comes back the same way
    n2.udp_send(b, from, port, b"echo").unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    let (n, from, _) = n1.udp_recv(a, &mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"echo"[..], n2.fabric_addr));
    // bounded: a datagram over the buffer is refused, a full queue says so
    assert_eq!(n1.udp_send(a, n2.fabric_addr, 7, &[0u8; 20000]), Err(UdpError::TooLarge));
    let mut full = false;
    for _ in 0..20 {
        if n1.udp_send(a, n2.fabric_addr, 7, &[1u8; 1000]) == Err(UdpError::WouldBlock) {
            full = true;
            break;
        }
    }
    assert!(full);
    n1.udp_close(a);
    assert!(n2.udp_recv(b, &mut buf).is_none());
}

#[test]
fn microvm_ipc_blocked_by_default_and_big_packets_get_packet_too_big() {
    use catenary_net::ipcroute::{Body, Frame, IpcRouter};
    use netfabric::identity::{AddressKind, Prefix64};
    let (mut n1, mut l1, mut n2, mut l2, _, mut t) = two_nodes();
    let vm = Prefix64::of(&n1.fabric_addr).workload_address(AddressKind::MicroVm, 1).unwrap();
    n1.add_vm_route(vm);
    let mut r1 = IpcRouter::new(n1.fabric_addr);
    let local = r1.bind(5).unwrap();
    let remote = Prefix64::of(&n2.fabric_addr).workload_address(AddressKind::Task, 1).unwrap();
    // an IPC frame the guest built itself (its source is its /128, as its port checked)
    let frame = |dst| Frame::Call { src: vm, dst, endpoint: 0, inc: 1, call_id: 1, watermark: 1, body: Body::default() }.packet().unwrap();
    for dst in [local, n1.fabric_addr, remote] {
        assert!(!n1.route_from_vm(frame(dst), t, false), "{dst}");
    }
    assert_eq!(n1.counters.vm_ipc_blocked, 3);
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert!(n1.take_ipc().is_none() && n2.take_ipc().is_none());
    // a VM the node lets use IPC reaches it
    assert!(n1.route_from_vm(frame(local), t, true));
    assert!(n1.take_ipc().is_some());
    // a packet larger than the fabric MTU: dropped, and the VM gets Packet Too Big from the node
    let mut big = catenary_net::vmlink::ipv6_header(vm, n2.fabric_addr, 17, 63, 1460);
    big.extend(std::iter::repeat_n(0xab, 1460));
    assert!(!n1.route_from_vm(big.clone(), t, false));
    let ptb = n1.take_vm_packet().expect("packet too big for the VM");
    assert_eq!(&ptb[8..24], &n1.fabric_addr.octets());
    assert_eq!(&ptb[24..40], &vm.octets());
    assert_eq!(ptb[40], catenary_net::vmlink::ICMPV6_PACKET_TOO_BIG);
    assert_eq!(u32::from_be_bytes(ptb[44..48].try_into().unwrap()) as usize, catenary_net::FABRIC_MTU);
    assert_eq!(catenary_net::vmlink::icmpv6_checksum(&n1.fabric_addr, &vm, &ptb[40..]), 0);
    assert_eq!(n1.counters.vm_too_big, 1);
    // at the fabric MTU it goes through
    let mut fits = catenary_net::vmlink::ipv6_header(vm, n2.fabric_addr, 17, 63, catenary_net::FABRIC_MTU - 40);
    fits.resize(catenary_net::FABRIC_MTU, 0);
    assert!(n1.route_from_vm(fits, t, false));
}

/// A member whose underlay address does not resolve (no port on the hub answers neighbour
/// discovery: a node that is down) must not delay the sessions with the others: the handshake
/// to it is started first, so a shared underlay queue would hold everything behind it.
#[test]
fn unresolvable_member_does_not_block_the_others() {
    let (a, b, dead) = (Identity::generate(&mut OsRng), Identity::generate(&mut OsRng), Identity::generate(&mut OsRng));
    let cluster = Cluster { members: vec![member("node1", &a, 1), member("node3", &dead, 3), member("node2", &b, 2)], operators: vec![] };
    let hub = Rc::new(RefCell::new(Hub::default()));
    let (mut l1, mut l2) = (port(&hub, 1), port(&hub, 2));
    let cfg = |id: &Identity, s: u8| NodeConfig { identity: id.clone(), cluster: cluster.clone(), unix_time_at_origin: 1_700_000_000, rng_seed: [s; 32] };
    let mut n1 = Node::new(&mut l1, cfg(&a, 1), 0);
    let mut n2 = Node::new(&mut l2, cfg(&b, 2), 0);
    n1.connect("node3", 0);
    n1.connect("node2", 0);
    let mut t = 0u64;
    for _ in 0..3000 {
        t += 1_000_000;
        n1.poll(&mut l1, t);
        n2.poll(&mut l2, t);
    }
    assert!(!n1.peer_by_name("node3").unwrap().established);
    assert!(n1.peer_by_name("node2").unwrap().established, "node1-node2 session blocked by the unresolvable node3");
    assert!(n2.peer_by_name("node1").unwrap().established);
}

#[test]
fn tcp_between_task_addresses_flow_control_refusal_and_close() {
    use catenary_net::tcp::Phase;
    use netfabric::identity::{AddressKind, Prefix64};
    let (mut n1, mut l1, mut n2, mut l2, _, mut t) = two_nodes();
    let task1 = Prefix64::of(&n1.fabric_addr).workload_address(AddressKind::Task, 2).unwrap();
    let task2 = Prefix64::of(&n2.fabric_addr).workload_address(AddressKind::Task, 2).unwrap();
    // a task /128 with no socket on it gets nothing (the connect times out, no answer)
    let lonely = n1.tcp_connect(n1.fabric_addr, 40001, task2, 7, 8192).unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n1.tcp_phase(lonely), Phase::Connecting);
    n1.tcp_remove(lonely);
    n2.add_socket_addr(task2);
    n1.add_socket_addr(task1);
    let l = n2.tcp_listen(task2, 7, 8192).unwrap();
    // nothing listens on port 9: the SYN is answered with a reset (refused)
    let refused = n1.tcp_connect(task1, 40002, task2, 9, 8192).unwrap();
    let c = n1.tcp_connect(task1, 40003, task2, 7, 8192).unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n1.tcp_phase(refused), Phase::Closed);
    assert!(n1.tcp_readable(refused).is_err());
    assert_eq!(n1.tcp_phase(c), Phase::Open);
    assert_eq!(n2.tcp_phase(l), Phase::Open);
    assert_eq!(n2.tcp_peer(l), Some((task1, 40003)));
    // flow control: the reader does not read; the sender's buffer fills and stays full
    let chunk = [0x5au8; 4096];
    let mut sent = 0;
    for _ in 0..40 {
        sent += n1.tcp_send(c, &chunk).unwrap();
        settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    }
    assert_eq!(sent, 2 * 8192, "the receiver's buffer plus the sender's, no more");
    assert_eq!(n1.tcp_room(c), 0);
    assert_eq!(n1.tcp_send(c, &chunk), Ok(0));
    assert_eq!(n2.tcp_readable(l), Ok((8192, false)));
    // reading opens the window: everything arrives, in order
    let mut got = 0;
    let mut buf = [0u8; 3000];
    for _ in 0..20 {
        let n = n2.tcp_recv(l, &mut buf).unwrap();
        assert!(buf[..n].iter().all(|b| *b == 0x5a));
        got += n;
        settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    }
    assert_eq!(got, sent);
    // close: the peer reads its FIN as the end (0 bytes, finished), and can still answer
    n1.tcp_close(c);
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n2.tcp_phase(l), Phase::PeerClosed);
    assert_eq!(n2.tcp_readable(l), Ok((0, true)));
    assert_eq!(n2.tcp_send(l, b"bye"), Ok(3));
    n2.tcp_close(l);
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n1.tcp_recv(c, &mut buf), Ok(3));
    assert_eq!(n2.tcp_phase(l), Phase::Closed);
    // an abort resets the peer: it sees no FIN (an error, not the end of the data)
    let l = n2.tcp_listen(task2, 7, 8192).unwrap();
    let c = n1.tcp_connect(task1, 40004, task2, 7, 8192).unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n2.tcp_phase(l), Phase::Open);
    n1.tcp_abort(c);
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n2.tcp_phase(l), Phase::Closed);
    assert!(n2.tcp_readable(l).is_err());
    // a task /128 whose last socket went is not routed to the interface any more
    n2.remove_socket_addr(&task2);
    let late = n1.tcp_connect(task1, 40005, task2, 7, 8192).unwrap();
    let l = n2.tcp_listen(task2, 7, 8192).unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!((n1.tcp_phase(late), n2.tcp_phase(l)), (Phase::Connecting, Phase::Listening));
}

/// An established connection that ends without the peer's FIN: an RST from the peer is
/// `Reset`; a peer that stops answering (its node is gone: never polled again) is `TimedOut`
/// after smoltcp's 10 s, not `Reset` (docs/networking.md §3c).
#[test]
fn tcp_reset_and_timeout_are_told_apart() {
    use catenary_net::tcp::{Phase, TcpEnd, TcpWatch};
    use netfabric::identity::{AddressKind, Prefix64};
    let (mut n1, mut l1, mut n2, mut l2, _, mut t) = two_nodes();
    let task1 = Prefix64::of(&n1.fabric_addr).workload_address(AddressKind::Task, 2).unwrap();
    let task2 = Prefix64::of(&n2.fabric_addr).workload_address(AddressKind::Task, 2).unwrap();
    n1.add_socket_addr(task1);
    n2.add_socket_addr(task2);
    // 1. the peer aborts: an RST arrives
    let l = n2.tcp_listen(task2, 7, 8192).unwrap();
    let c = n1.tcp_connect(task1, 40010, task2, 7, 8192).unwrap();
    let mut w = TcpWatch::default();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n1.tcp_watch(c, &mut w), (Phase::Open, None));
    n2.tcp_abort(l);
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n1.tcp_watch(c, &mut w), (Phase::Closed, Some(TcpEnd::Reset)));
    // 2. the peer's node stops (no more polls) while we have data to send: a timeout
    let l = n2.tcp_listen(task2, 7, 8192).unwrap();
    let c = n1.tcp_connect(task1, 40011, task2, 7, 8192).unwrap();
    let mut w = TcpWatch::default();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n2.tcp_phase(l), Phase::Open);
    assert_eq!(n1.tcp_watch(c, &mut w), (Phase::Open, None));
    assert_eq!(n1.tcp_send(c, b"anyone there?"), Ok(13));
    let mut ended = None;
    for _ in 0..30_000 {
        t += 1_000_000;
        n1.poll(&mut l1, t);
        if let (Phase::Closed, e) = n1.tcp_watch(c, &mut w) {
            ended = e;
            break;
        }
    }
    assert_eq!(ended, Some(TcpEnd::TimedOut), "no answer for 10 s is a timeout, not a reset");
    // 3. an idle connection whose peer is there lives on (smoltcp's timeout also runs while
    // nothing is sent: the keep-alives keep it fed)
    let l = n2.tcp_listen(task2, 7, 8192).unwrap();
    let c = n1.tcp_connect(task1, 40013, task2, 7, 8192).unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n1.tcp_send(c, b"x"), Ok(1));
    for _ in 0..600 {
        settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t); // 30 s, nothing sent
    }
    assert_eq!((n1.tcp_phase(c), n2.tcp_phase(l)), (Phase::Open, Phase::Open), "an idle connection must not time out");
    // 4. a FIN is neither
    let l = n2.tcp_listen(task2, 7, 8192).unwrap();
    let c = n1.tcp_connect(task1, 40012, task2, 7, 8192).unwrap();
    let mut w = TcpWatch::default();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n1.tcp_watch(c, &mut w), (Phase::Open, None));
    n2.tcp_close(l);
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert_eq!(n1.tcp_watch(c, &mut w), (Phase::PeerClosed, None));
}


/// A port that takes at most `room` frames until the test gives it more (a NIC whose
/// transmit queue is full between the driver's turns).
struct Narrow {
    port: Port,
    room: usize,
}

impl Link for Narrow {
    fn mac(&self) -> [u8; 6] {
        self.port.mac
    }
    fn recv(&mut self) -> Option<Vec<u8>> {
        self.port.recv()
    }
    fn can_send(&self) -> bool {
        self.room > 0
    }
    fn room(&self) -> usize {
        self.room
    }
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        if self.room > 0 {
            self.room -= 1;
            self.port.send(len, f);
        }
    }
}

#[test]
fn a_full_link_holds_fabric_datagrams_in_the_socket_instead_of_dropping_them() {
    let (mut n1, l1, mut n2, mut l2, _, mut t) = two_nodes();
    let mut l1 = Narrow { port: l1, room: 0 };
    let a = n1.udp_open(n1.fabric_addr, 40000, 128, 1200).unwrap();
    let b = n2.udp_open(n2.fabric_addr, 7, 128, 1200).unwrap();
    for i in 0..100u32 {
        n1.udp_send(a, n2.fabric_addr, 7, &[i as u8; 1000]).unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 1200];
    for _ in 0..400 {
        t += 1_000_000;
        l1.room = 2; // two frames per pass, as a busy NIC takes them
        n1.poll(&mut l1, t);
        n2.poll(&mut l2, t);
        while n2.udp_recv(b, &mut buf).is_some() {
            got += 1;
        }
    }
    assert_eq!(n1.counters.underlay_queue_full, 0, "no datagram dropped at the underlay queue");
    assert_eq!(got, 100, "every datagram arrives");
}

static TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
fn ticking_clock() -> u64 {
    TICKS.fetch_add(10, std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn stage_counters_count_only_with_a_clock() {
    use catenary_net::stages::{Stage, StageCounts};
    let (mut n1, mut l1, mut n2, mut l2, _, mut t) = two_nodes();
    n1.set_stage_clock(Some(ticking_clock));
    let before = n1.stage_counts();
    let a = n1.udp_open(n1.fabric_addr, 40000, 8, 1356).unwrap();
    let b = n2.udp_open(n2.fabric_addr, 7, 8, 1356).unwrap();
    n1.udp_send(a, n2.fabric_addr, 7, b"ping").unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    let mut buf = [0u8; 16];
    let (_, from, port) = n2.udp_recv(b, &mut buf).unwrap();
    n2.udp_send(b, from, port, b"pong").unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    assert!(n1.udp_recv(a, &mut buf).is_some());
    let d = n1.stage_counts().since(&before);
    for s in [Stage::Encrypt, Stage::Decrypt, Stage::Fabric, Stage::Underlay] {
        assert!(d.calls[s as usize] >= 1 && d.cycles[s as usize] >= 10, "{} counted: {:?}", s.name(), d);
    }
    assert_eq!(n2.stage_counts(), StageCounts::default(), "no clock: nothing counted");
}

/// `catenary node remove`: once the committed removal reaches a node's fabric
/// (`Node::remove_peer`, what `netd` does on `orchd`'s `LABEL_REMOVE_PEER`), the removed node's
/// packets are refused (no session, an unknown index), its new handshakes as from an unknown
/// peer, the admission table says removed, and neither its own key nor an operator's can be
/// removed; admitting it again makes it a peer again.
#[test]
fn a_removed_peer_is_refused_and_listed_removed() {
    let (mut n1, mut l1, mut n2, mut l2, _, mut t) = two_nodes();
    let a = n1.udp_open(n1.fabric_addr, 40000, 8, 1356).unwrap();
    let b = n2.udp_open(n2.fabric_addr, 7, 8, 1356).unwrap();
    n1.udp_send(a, n2.fabric_addr, 7, b"before").unwrap();
    settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    let mut buf = [0u8; 64];
    assert!(n2.udp_recv(b, &mut buf).is_some(), "delivered before the removal");
    let k1 = Identity::from_secret_bytes([1; 32]).public_key();
    let own = n2.fabric().identity().public_key();
    assert!(n2.remove_peer(own).is_err(), "its own key");
    assert_eq!(n2.remove_peer(k1), Ok(true));
    assert!(n2.peer_by_name("node1").is_none());
    let rows = n2.admission_rows(t);
    assert!(rows.iter().any(|r| r.key == k1 && r.kind == RowKind::Removed && !r.established), "{rows:?}");
    // node1 still holds its session and keeps sending: nothing arrives.
    let before = *n2.fabric().counters();
    for _ in 0..3 {
        n1.udp_send(a, n2.fabric_addr, 7, b"after").unwrap();
        settle(&mut n1, &mut l1, &mut n2, &mut l2, &mut t);
    }
    assert!(n2.udp_recv(b, &mut buf).is_none(), "a removed node's datagram was delivered");
    let after = *n2.fabric().counters();
    assert!(after.dropped_unknown_index > before.dropped_unknown_index, "{after:?}");
    // Its session gone stale, node1 handshakes again: refused as an unknown peer.
    for _ in 0..200 {
        t += 1_000_000_000;
        n1.poll(&mut l1, t);
        n2.poll(&mut l2, t);
        let _ = n1.udp_send(a, n2.fabric_addr, 7, b"again");
        if n2.fabric().counters().dropped_unknown_peer > before.dropped_unknown_peer {
            break;
        }
    }
    assert!(n2.fabric().counters().dropped_unknown_peer > before.dropped_unknown_peer, "no handshake refused: {:?}", n2.fabric().counters());
    assert!(n2.udp_recv(b, &mut buf).is_none());
    assert_eq!(n2.remove_peer(k1), Ok(false), "removing twice: no peer any more");
    // Admitted again (`catenary node add`): a peer again, no longer listed removed.
    assert_eq!(n2.admit_peer(k1, t), Ok(true));
    assert!(n2.admission_rows(t).iter().all(|r| !(r.key == k1 && r.kind == RowKind::Removed)));
}

/// A `netd` that restarts builds its peers from the cluster file again, so a removed file
/// member is its peer again; `orchd` sees the restart and hands every committed removal again
/// (`FabricHand::netd_restarted`): the removed node gets no session with the new `netd` and
/// nothing it sends is delivered. (Without the hand-over again, it is a peer of the restarted
/// `netd` and its datagrams arrive: the hole this closes.)
#[test]
fn a_removal_survives_a_netd_restart_because_orchd_hands_it_again() {
    use catenary_cluster::desired::{Command, DesiredState, Limits};
    use catenary_cluster::service::{FabricHand, PeerChange};
    use catenary_cluster::NodeKey;
    let (mut n1, mut l1, mut n2, mut l2, _, mut t) = two_nodes();
    let k1 = Identity::from_secret_bytes([1; 32]).public_key();
    let id2 = Identity::from_secret_bytes([2; 32]);
    let file: Vec<NodeKey> = [[1u8; 32], [2; 32], [3; 32]].iter().map(|s| NodeKey(Identity::from_secret_bytes(*s).public_key())).collect();
    // node2's committed state: the three file members admitted, then node1 removed.
    let mut st = DesiredState::default();
    for k in &file {
        st.apply(&Command::AdmitNode(*k), &Limits::default()).unwrap();
    }
    st.apply(&Command::RemoveNode(NodeKey(k1)), &Limits::default()).unwrap();
    // node2's orchd hands it to node2's netd.
    let own = id2.public_key();
    let mut hand = FabricHand::default();
    let give = |hand: &mut FabricHand, n: &mut Node, st: &DesiredState, t: u64| {
        for c in hand.todo(st, &file, own, 8) {
            match c {
                PeerChange::Remove(k) => assert!(n.remove_peer(k).is_ok()),
                PeerChange::Admit(k) => assert!(n.admit_peer(k, t).is_ok()),
            }
            hand.done(c);
        }
    };
    give(&mut hand, &mut n2, &st, t);
    assert!(n2.peer_by_name("node1").is_none(), "removed");
    assert!(hand.todo(&st, &file, own, 8).is_empty(), "handed once");
    // node2's netd restarts: a new Node from the same boot configuration, node1 a peer again.
    let a = n1.udp_open(n1.fabric_addr, 40000, 8, 1356).unwrap();
    let cluster = Cluster { members: file.iter().zip(1u8..).map(|(k, i)| Member { name: format!("node{i}"), public_key: k.0, underlay: link_local_from_mac([0x52, 0x54, 0, 0, 0, i]), port: 51820 }).collect(), operators: vec![] };
    let mut n2 = Node::new(&mut l2, NodeConfig { identity: id2.clone(), cluster, unix_time_at_origin: 1_700_000_000, rng_seed: [22; 32] }, t);
    assert!(n2.peer_by_name("node1").is_some(), "the restarted netd has the file's peers again");
    n2.connect_all(t); // as netd does at its start
    // orchd's socket answers `Restarted`: it hands everything again (here before the new
    // netd's first poll; on a node a few of them may come first: docs/orchestration.md).
    hand.netd_restarted();
    give(&mut hand, &mut n2, &st, t);
    assert!(n2.peer_by_name("node1").is_none(), "the restarted netd dropped the removed node again");
    let b = n2.udp_open(n2.fabric_addr, 7, 8, 1356).unwrap();
    let before = *n2.fabric().counters();
    let mut buf = [0u8; 64];
    for _ in 0..300 {
        t += 100_000_000;
        n1.poll(&mut l1, t);
        n2.poll(&mut l2, t);
        let _ = n1.udp_send(a, n2.fabric_addr, 7, b"removed");
        assert!(n2.udp_recv(b, &mut buf).is_none(), "a removed node's datagram reached the restarted netd");
    }
    assert!(n2.peers.iter().all(|p| p.public_key != k1 || !p.established), "the removed node has a session with the restarted netd");
    let after = *n2.fabric().counters();
    assert!(after.dropped_unknown_peer > before.dropped_unknown_peer || after.dropped_unknown_index > before.dropped_unknown_index, "nothing from the removed node reached the fabric: {after:?}");
}
