//! Workload network addresses (docs/workloads.md "Network"): every workload created with
//! `net` gets a **link slot** 1..=[`LINKS_MAX`] from `workd` (the lowest free one; it stays the
//! workload's across restarts and is freed by `destroy`), and the slot names its /128 in the
//! node's /64 and its MAC. The kernel (`SYS_VM` `OP_CREATE`) and `workd` (its status) compute
//! both with these functions, so they agree without the address crossing the interface.
//!
//! The /128 is a netfabric microVM address (interface identifier `01 00 …`, docs/networking.md)
//! with index [`INDEX_BASE`] + slot: `<prefix>:100:0:1:<slot>`. The kernel's sequential
//! allocator for command-line microVMs (`vm.net=1`) counts from index 1 and never reaches it.

use core::net::Ipv6Addr;

/// Network links the node's `netd` serves at once (the kernel's `MAX_VM_LINKS`: each link is a
/// frame ring in `netd`'s memory quota). A ninth networked workload is refused at `create`.
pub const LINKS_MAX: u8 = 8;
/// The first microVM index of workload addresses.
pub const INDEX_BASE: u64 = 0x1_0000;

/// Whether `slot` is a valid link slot.
pub fn valid_slot(slot: u8) -> bool {
    (1..=LINKS_MAX).contains(&slot)
}

/// The /128 of link slot `slot` in the /64 of `node` (the node's own fabric address).
pub fn address(node: Ipv6Addr, slot: u8) -> Ipv6Addr {
    let prefix = u128::from(node) & !((1u128 << 64) - 1);
    let iid = (1u128 << 56) | (INDEX_BASE + slot as u64) as u128;
    Ipv6Addr::from(prefix | iid)
}

/// The MAC of link slot `slot`'s virtio-net device (locally administered, unicast).
pub fn mac(slot: u8) -> [u8; 6] {
    [0x02, 0xca, 0x7e, 0x01, 0x00, slot]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_in_the_prefix_and_distinct() {
        let node: Ipv6Addr = "fd12:3456:789a:bcde::1".parse().unwrap();
        assert_eq!(address(node, 1), "fd12:3456:789a:bcde:100:0:1:1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(address(node, 8), "fd12:3456:789a:bcde:100:0:1:8".parse::<Ipv6Addr>().unwrap());
        assert_ne!(address(node, 1), address(node, 2));
        assert!(valid_slot(1) && valid_slot(LINKS_MAX) && !valid_slot(0) && !valid_slot(LINKS_MAX + 1));
        assert_ne!(mac(1), mac(2));
        assert_eq!(mac(3)[0] & 3, 2, "locally administered unicast");
    }
}
