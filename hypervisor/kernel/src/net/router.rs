//! The node's fabric IPC routing table (/128 -> local endpoint), kept by the kernel for either
//! `netd` (a restarted ring-3 `netd` finds it as it was).

use super::*;

/// The node's fabric IPC routing table (set up by `netd`).
pub(super) static ROUTER: Mutex<Option<IpcRouter>> = Mutex::new(None);

pub(super) fn with_router<R>(f: impl FnOnce(&mut IpcRouter) -> R) -> Option<R> {
    catenary_arch::cpu::without_interrupts(|| ROUTER.lock().as_mut().map(f))
}

/// (The `SYS_BIND_ADDRESS` syscall, after its capability check) Give local endpoint `ep` a
/// task /128 of the node's /64: fabric IPC frames to that address are delivered to it. None
/// before networking is up. Called with the kernel lock held (lock order: kernel, router).
pub(crate) fn router_bind(ep: catenary_ipc::EndpointId) -> Option<core::net::Ipv6Addr> {
    with_router(|r| r.bind(ep)).flatten()
}

/// Bind local endpoint `ep` to a fabric /128 through the checked syscall path: the calling
/// kernel task is handed a capability with the bind right for it (as the kernel would grant
/// one to a ring-3 service) and makes the same `bind_address` syscall.
pub(super) fn bind_endpoint(ep: catenary_ipc::EndpointId) -> Result<core::net::Ipv6Addr, catenary_ipc::IpcError> {
    use catenary_ipc::{Address, Capability, Rights};
    let slot = crate::task::give_current(Capability { target: Address::local(ep), rights: Rights::BIND, badge: 0 });
    crate::task::bind_address(slot).map(core::net::Ipv6Addr::from)
}

/// (`SYS_NET` `OP_UP`) The ring-3 netd is up with fabric /128 `node`: the kernel's routing
/// table (kept across its restarts) is made the first time, with `echo` bound first. False
/// if a table for another /128 exists (a netd with another key).
pub(crate) fn user_router_up(node: core::net::Ipv6Addr) -> bool {
    // (read before the router lock: lock order kernel, router)
    let echo = crate::task::echo_endpoint();
    // echo is bound in the same critical section that makes the table, so no other binder
    // (a probe service waiting for the router) can take its /128
    let fresh = catenary_arch::cpu::without_interrupts(|| {
        let mut r = ROUTER.lock();
        match r.as_ref() {
            Some(t) => Err(t.node_address() == node),
            None => {
                let mut t = IpcRouter::new(node);
                let a = t.bind(echo);
                *r = Some(t);
                Ok(a)
            }
        }
    });
    match fresh {
        Err(same) => same,
        Ok(a) => {
            match a {
                Some(a) => info!(target: "net", "ipc: routing fabric IPC (UDP {}) for {}/64 through the ring-3 netd; endpoint {} (echo) has fabric address {}",
                    netfabric::ipc::FABRIC_IPC_PORT, netfabric::identity::Prefix64::of(&node).network(), echo, a),
                None => info!(target: "net", "ipc: routing fabric IPC for {}/64 through the ring-3 netd (no echo service to bind)",
                    netfabric::identity::Prefix64::of(&node).network()),
            }
            true
        }
    }
}

/// Whether the routing table exists (a `netd` is up).
pub(crate) fn router_ready() -> bool {
    with_router(|_| ()).is_some()
}

/// The endpoint bound to fabric /128 `a` (the kernel's table).
pub(crate) fn router_lookup(a: &core::net::Ipv6Addr) -> Option<u64> {
    with_router(|r| r.lookup(a)).flatten()
}
