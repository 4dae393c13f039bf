//! Node networking, the kernel's side. The network stack — smoltcp, the fabric sessions, the
//! fabric IPC router, the microVM links' routing — is the ring-3 service `netd`
//! (hypervisor/user/src/bin/netd.rs), started and restarted by the supervisor; the NIC driver
//! is the ring-3 `nicd`. The kernel keeps, one concern per file:
//!
//! - `ring3.rs`: finding the NIC and programming its MSI-X entry (configuration space is the
//!   kernel's), `netd`'s boot data (`SYS_NET` `OP_BOOT`);
//! - `boot.rs`: the node key, the cluster file, entropy seeds, the wall clock at boot;
//! - `router.rs`: the fabric IPC routing table (/128 -> local endpoint; `bind_address`), kept
//!   across `netd`'s restarts;
//! - `vmlink.rs`: the microVM links (a /128 each, a frame ring in `netd`'s memory between the
//!   vCPU task's virtio-net device and `netd`).
//!
//! `net.netd=kernel` (or `net.driver=kernel`) runs the same stack as a kernel task instead,
//! kept as the reference for the benchmarks and for the in-kernel NIC driver
//! (`arch::virtio::VirtioNet`): `knetd.rs` (the task, its fabric IPC pump), `nic.rs` (the NIC
//! as it sees it: the in-kernel driver or `nicd`'s ring through the direct map), `probes.rs`
//! (its probes; `ipcclient` serves both). It has no microVM links and serves no sockets.
//!
//! Kernel command line:
//! - `net=off` — do not start networking;
//! - `net.netd=kernel` — the in-kernel `netd` (see above);
//! - `net.driver=kernel` — drive the NIC in the kernel instead of the ring-3 `nicd` (implies
//!   the in-kernel `netd`);
//! - `net.irq=off` — with `net.driver=kernel`: poll the NIC instead of taking its interrupts;
//! - `net.key=HEX` — the node's x25519 secret key (64 hex digits), if no boot module carries it
//!   (`node.key` in a cpio module, which is how xtask passes it: the command line is logged,
//!   redacted); random if neither;
//! - `net.time=SECS` — Unix time now, for handshake timestamps when the CMOS RTC cannot be read;
//! - `net.insecure-entropy` — create keys even without RDSEED/RDRAND (timing jitter only: the
//!   keys may be guessable; logged loudly). Without it such a node keeps networking off;
//! - (the probes kernel only, the cargo feature `probes`; docs/testing.md "The probes
//!   kernel":) `net.ping=NAME`, `net.bench=NAME`, `net.wait=SECS` — probes `netd` runs on its stack
//!   (user/src/bin/netd/probes.rs, or `probes.rs` here);
//! - `net.ipccall=NAME`, `net.rpcsvc=1`, `net.rpctest=NAME[,GHOST]`,
//!   `net.rpcquota=fill|other:NAME`, `net.ipcbench=NAME`, `net.nicd_restart=NAME`,
//!   `net.netdtest=NAME`, `net.panicsvc=1`, `net.udpecho=PORT`, `net.udptest=NAME` — fabric
//!   IPC and socket probes, kernel tasks (`netdprobe.rs`, `rpcprobe.rs`);
//! - `net.test-loss=PCT` — TESTS ONLY (probes kernel only): drop PCT% (1..=90) of fabric IPC datagrams in each
//!   direction (logged loudly; anything else is refused).
//!
//! The cluster file (see `catenary_net::cluster`) is the boot module that starts with
//! `catenary-cluster v1`, or the entry `cluster.txt` of a cpio boot module (the guest bundle,
//! where only one module can be passed). See docs/networking.md.

use alloc::string::String;
use catenary_arch::virtio::{NicError, VirtioNet};
use catenary_arch::{entropy, memory, time};
use catenary_bootinfo::Module;
use catenary_net::ipcroute::{Body, Frame, IpcRouter, RouteError};
use catenary_net::rpc::{Delivery, Outcome, Rpc};
use catenary_net::{Cluster, Link, Node, NodeConfig};
use catenary_sched::{Affinity, Priority};
use log::{info, warn};
use netfabric::Identity;
use spin::Mutex;
/// The frame ring shared with `nicd` (one definition for both sides).
use catenary_ipc::nic_ring as ring;

mod nic;
mod knetd;
mod router;
mod vmlink;
mod boot;
mod ring3;
// the in-kernel netd's probes (`net.ping`, `net.bench`, …): probes kernel only
#[cfg(feature = "probes")]
mod probes;
use nic::*;
use knetd::*;
pub(crate) use router::*;
pub(crate) use vmlink::*;
pub(crate) use boot::*;
pub(crate) use ring3::*;
#[cfg(feature = "probes")]
pub(crate) use probes::*;

/// The in-kernel `netd` runs (`net.netd=kernel`): no microVM links, no socket protocol.
pub(crate) static KERNEL_NETD: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Start `netd`, which probes the NIC and brings the stack up (on its own stack, so boot goes
/// on meanwhile). Nothing happens without a virtio-net device or with `net=off`.
pub fn start(cmdline: &str, modules: &[Module]) {
    use crate::task::supervisor;
    if crate::cmdline::get(cmdline, "net") == Some("off") {
        supervisor::enable("netd", false);
        supervisor::enable("nicd", false);
        supervisor::enable("natd", false);
        return;
    }
    // The ring-3 netd unless the in-kernel one is asked for (`net.netd=kernel`, or the
    // in-kernel driver, which only it can use).
    let which = crate::cmdline::get(cmdline, "net.netd");
    let kernel_driver = crate::cmdline::get(cmdline, "net.driver") == Some("kernel");
    if which == Some("user") || (which != Some("kernel") && !kernel_driver) {
        if kernel_driver {
            warn!(target: "net", "net.netd=user needs the ring-3 driver nicd: net.driver=kernel ignored");
        }
        return start_user(cmdline, modules);
    }
    KERNEL_NETD.store(true, core::sync::atomic::Ordering::Relaxed);
    // the in-kernel stack adopts the netd service's endpoint; the ring-3 program never runs
    supervisor::enable("netd", false);
    supervisor::enable("natd", false); // only the ring-3 netd serves the NAT64 gateway
    *BOOT.lock() = Some(Boot { cmdline: String::from(cmdline), modules: modules.to_vec() });
    crate::task::spawn_kernel("netd", Priority::DRIVER, Affinity::ANY, netd, 0);
}
