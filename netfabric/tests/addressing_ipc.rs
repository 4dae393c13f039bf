//! Identity, address scheme, IPC frames and IPv6/UDP encapsulation.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use netfabric::identity::{self, classify, verify, AllocError};
use netfabric::ipc::{FrameError, FABRIC_IPC_PORT, FLAG_ACK_REQUESTED, HEADER_LEN, MAX_PAYLOAD};
use netfabric::ipv6::{self, Ipv6Error};
use netfabric::{AddressAllocator, AddressKind, FabricFrame, FrameKind, Identity, Prefix64};
use rand_core::OsRng;

#[test]
fn prefix_is_derived_and_verifiable() {
    let id = Identity::generate(&mut OsRng);
    let other = Identity::generate(&mut OsRng);
    let p = id.prefix();
    assert_eq!(p, Prefix64::from_public_key(&id.public_key()));
    assert_eq!(p.0[0], 0xfd);
    let node = id.node_address();
    assert_eq!(node.segments()[4..], [0, 0, 0, 1]);
    assert!(verify(&node, &id.public_key()));
    assert!(!verify(&node, &other.public_key()));
    assert_eq!(classify(&node), Some((AddressKind::Node, 1)));
    // Stable: same key, same prefix (known-answer via a fixed secret).
    let fixed = Identity::from_secret_bytes([7u8; 32]);
    assert_eq!(fixed.prefix(), Identity::from_secret_bytes([7u8; 32]).prefix());
    // Not a scheme address: reserved byte set, index 0, unknown kind, prefix::2.
    for iid in [0x0001_0000_0000_0001u64, 0x0100_0000_0000_0000, 0x0900_0000_0000_0001, 2] {
        assert!(!verify(&p.address(iid), &id.public_key()), "{iid:x}");
    }
}

#[test]
fn allocator_never_collides() {
    let id = Identity::generate(&mut OsRng);
    let mut a = AddressAllocator::new(id.prefix());
    let mut seen = BTreeSet::new();
    seen.insert(id.node_address());
    for i in 0..2000 {
        let kind = if i % 3 == 0 { AddressKind::Task } else { AddressKind::MicroVm };
        let addr = a.allocate(kind).unwrap();
        assert!(seen.insert(addr), "collision {addr}");
        assert!(verify(&addr, &id.public_key()));
        assert_eq!(classify(&addr).unwrap().0, kind);
        assert!(a.is_live(&addr));
        if i % 5 == 0 {
            assert!(a.release(&addr));
            assert!(!a.is_live(&addr));
        }
    }
    assert_eq!(a.allocate(AddressKind::Node), Err(AllocError::NotAllocatable));
    assert_eq!(id.prefix().workload_address(AddressKind::Task, identity::MAX_INDEX + 1), None);
    assert_eq!(id.prefix().workload_address(AddressKind::Task, 0), None);
}

#[test]
fn claimed_microvm_addresses_are_exclusive_and_reusable_after_release() {
    let id = Identity::generate(&mut OsRng);
    let other = Identity::generate(&mut OsRng);
    let mut a = AddressAllocator::new(id.prefix());
    let vm = id.prefix().workload_address(AddressKind::MicroVm, 0x1_0001).unwrap();
    assert!(a.claim(vm));
    assert!(!a.claim(vm), "a live address is not claimed twice");
    assert!(a.release(&vm));
    assert!(a.claim(vm), "released, it can be claimed again");
    // only microVM addresses of this prefix
    assert!(!a.claim(id.prefix().workload_address(AddressKind::Task, 0x1_0002).unwrap()));
    assert!(!a.claim(id.node_address()));
    assert!(!a.claim(other.prefix().workload_address(AddressKind::MicroVm, 0x1_0002).unwrap()));
    assert!(!a.claim(id.prefix().address(0x0100_0000_0000_0000)), "index 0");
}

fn frame() -> FabricFrame {
    let a = Identity::generate(&mut OsRng);
    let b = Identity::generate(&mut OsRng);
    let mut f = FabricFrame::message(
        a.prefix().workload_address(AddressKind::Task, 4).unwrap(),
        b.prefix().workload_address(AddressKind::MicroVm, 9).unwrap(),
        0xdead_beef_0000_0042,
        77,
        b"hello fabric".to_vec(),
    );
    f.flags = FLAG_ACK_REQUESTED;
    f
}

#[test]
fn frame_roundtrip_and_errors() {
    let f = frame();
    let b = f.encode().unwrap();
    assert_eq!(b.len(), HEADER_LEN + 12);
    assert_eq!(&b[..4], b"CFAB");
    assert_eq!(FabricFrame::decode(&b).unwrap(), f);
    for n in 0..HEADER_LEN {
        assert_eq!(FabricFrame::decode(&b[..n]), Err(FrameError::Truncated));
    }
    assert_eq!(FabricFrame::decode(&b[..b.len() - 1]), Err(FrameError::LengthMismatch));
    let mut long = b.clone();
    long.push(0);
    assert_eq!(FabricFrame::decode(&long), Err(FrameError::LengthMismatch));
    let mut x = b.clone();
    x[0] = b'X';
    assert_eq!(FabricFrame::decode(&x), Err(FrameError::BadMagic));
    let mut x = b.clone();
    x[4] = 2;
    assert_eq!(FabricFrame::decode(&x), Err(FrameError::UnsupportedVersion(2)));
    let mut x = b.clone();
    x[5] = 0;
    assert_eq!(FabricFrame::decode(&x), Err(FrameError::UnknownKind(0)));
    let mut x = b.clone();
    x[6] = 0x80;
    assert!(matches!(FabricFrame::decode(&x), Err(FrameError::ReservedFlags(_))));
    let mut x = b.clone();
    x[52..56].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(FabricFrame::decode(&x), Err(FrameError::PayloadTooLarge));
    let mut big = f.clone();
    big.payload = vec![0; MAX_PAYLOAD + 1];
    assert_eq!(big.encode(), Err(FrameError::PayloadTooLarge));
    big.payload.pop();
    big.kind = FrameKind::Error;
    assert_eq!(FabricFrame::decode(&big.encode().unwrap()).unwrap(), big);
}

#[test]
fn frame_in_ipv6_udp() {
    let f = frame();
    let p = ipv6::frame_to_packet(&f).unwrap();
    let u = ipv6::parse_udp(&p).unwrap();
    assert_eq!((u.sport, u.dport), (FABRIC_IPC_PORT, FABRIC_IPC_PORT));
    assert_eq!(ipv6::packet_to_frame(&p).unwrap(), f);
    // Checksum covers the pseudo-header, header and payload.
    for i in [8usize, 30, 41, 47, 60, p.len() - 1] {
        let mut x = p.clone();
        x[i] ^= 0x10;
        assert!(ipv6::packet_to_frame(&x).is_err(), "byte {i}");
    }
    let mut zero = p.clone();
    zero[46] = 0;
    zero[47] = 0;
    assert_eq!(ipv6::parse_udp(&zero), Err(Ipv6Error::BadChecksum));
    // Wrong port, mismatched addresses.
    let other = ipv6::build_udp(f.src, f.dst, 1, 2, &f.encode().unwrap()).unwrap();
    assert_eq!(ipv6::packet_to_frame(&other), Err(Ipv6Error::WrongPort));
    let moved = ipv6::build_udp(f.src, Ipv6Addr::LOCALHOST, FABRIC_IPC_PORT, FABRIC_IPC_PORT, &f.encode().unwrap()).unwrap();
    assert_eq!(ipv6::packet_to_frame(&moved), Err(Ipv6Error::AddressMismatch));
    for n in 0..p.len() {
        assert!(ipv6::parse_udp(&p[..n]).is_err());
    }
    // Trailing link padding is ignored.
    let mut padded = p.clone();
    padded.extend_from_slice(&[0; 7]);
    assert_eq!(ipv6::packet_to_frame(&padded).unwrap(), f);
}

#[test]
fn udp_checksum_known_answer() {
    // Checksum computed independently (RFC 8200 pseudo-header) for a tiny datagram.
    let src: Ipv6Addr = "fd00::1".parse().unwrap();
    let dst: Ipv6Addr = "fd00::2".parse().unwrap();
    let p = ipv6::build_udp(src, dst, 1000, 2000, b"abc").unwrap();
    // sum = src(0xfd00 + 1) + dst(0xfd00 + 2) + len 11 + proto 17 + ports 1000+2000 + len 11
    //     + "ab" 0x6162 + "c\0" 0x6300
    let mut s: u32 = 0xfd00 + 1 + 0xfd00 + 2 + 11 + 17 + 1000 + 2000 + 11 + 0x6162 + 0x6300;
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    let want = !(s as u16);
    assert_eq!(u16::from_be_bytes([p[46], p[47]]), want);
}

#[test]
fn icmpv6_echo_roundtrip() {
    let src: Ipv6Addr = "fd00::1".parse().unwrap();
    let dst: Ipv6Addr = "fd00::2".parse().unwrap();
    let p = ipv6::build_icmpv6_echo(src, dst, true, 5, 6, b"data");
    let e = ipv6::parse_icmpv6_echo(&p).unwrap();
    assert!(e.request && e.id == 5 && e.seq == 6 && e.data == b"data" && e.src == src && e.dst == dst);
    let mut x = p.clone();
    x[44] ^= 1;
    assert_eq!(ipv6::parse_icmpv6_echo(&x), Err(Ipv6Error::BadChecksum));
}
