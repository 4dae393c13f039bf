//! Node networking: the virtio-net driver, the IPv6 stack and the fabric, run by one kernel
//! task (`netd`).
//!
//! The NIC driver runs in ring 3 (`nicd`, hypervisor/user/src/bin/nicd.rs), granted the
//! device's virtio structures, DMA memory and the receive interrupt; frames pass through a ring
//! in its DMA memory ([`UserNic`]). `net.driver=kernel` keeps the in-kernel driver
//! (`arch::virtio::VirtioNet`). With that driver the receive queue interrupts through MSI-X
//! ([`NIC_VECTOR`](crate::task::NIC_VECTOR)), delivered as an IPC notification to an endpoint
//! `netd` waits on (the ring-3 drivers' mechanism): `netd` polls the stack until a pass finds
//! no work, then waits for the interrupt or 10 ms (the stack's timers), whichever comes first.
//! Without MSI-X (or with `net.irq=off`) it falls back to polling: busy while traffic flowed in
//! the last 200 ms, otherwise one scheduler tick (10 ms) of sleep. See docs/networking.md.
//!
//! Kernel command line:
//! - `net=off` — do not start networking;
//! - `net.driver=kernel` — drive the NIC in the kernel instead of the ring-3 `nicd`;
//! - `net.irq=off` — with `net.driver=kernel`: poll the NIC instead of taking its interrupts;
//! - `net.key=HEX` — the node's x25519 secret key (64 hex digits), if no boot module carries it
//!   (`node.key` in a cpio module, which is how xtask passes it: the command line is logged,
//!   redacted); random if neither;
//! - `net.time=SECS` — Unix time now, for handshake timestamps when the CMOS RTC cannot be read;
//! - `net.insecure-entropy` — create keys even without RDSEED/RDRAND (timing jitter only: the
//!   keys may be guessable; logged loudly). Without it such a node keeps networking off;
//! - `net.ping=NAME` — once the fabric session with peer NAME is up, ping its fabric address
//!   (5 echoes) and its link-local address (3 echoes) and print the results;
//! - `net.bench=NAME` — latency and throughput to NAME over the fabric and the plain link;
//! - `net.wait=SECS` — how long the probes wait for the session (default 60);
//! - `net.ipccall=NAME` — once the session with NAME is up, a kernel task calls NAME's `echo`
//!   service by its fabric address (3 calls, same `call` syscall as a local call) and sends
//!   one message to an unbound /128 of NAME's /64.
//! - `net.rpcsvc=1`, `net.rpctest=NAME[,GHOST]`, `net.rpcquota=fill|other:NAME`,
//!   `net.ipcbench=NAME` — reliable fabric IPC
//!   probes and the remote call benchmark (see `rpcprobe.rs`);
//! - `net.test-loss=PCT` — TESTS ONLY: drop PCT% (1..=90) of fabric IPC datagrams in each
//!   direction (logged loudly; anything else is refused).
//!
//! Fabric IPC: `netd` is the node's IPC router. It keeps the table /128 → local endpoint
//! ([`bind_address`], netfabric's allocator gives task /128s of the node's /64; the `echo`
//! service gets the first one), delivers decrypted IPC frames (IPv6/UDP port 51900) for the
//! node's /128s as IPC messages, and carries sends and calls whose address names another node
//! (queued for it by the kernel, `task::take_remote`) in fabric frames. See
//! docs/networking.md.
//!
//! The cluster file (see `catenary_net::cluster`) is the boot module that starts with
//! `catenary-cluster v1`, or the entry `cluster.txt` of a cpio boot module (the guest bundle,
//! where only one module can be passed).
//!
//! MicroVMs: `attach_vm` gives a microVM a /128 of the node's /64 (netfabric's allocator, kind
//! microVM) and a link to `netd` (two bounded frame queues under a lock; the vCPU task moves
//! frames between them and its virtio-net device and wakes `netd`). `netd` is the VM's router:
//! `catenary_net::vmlink::VmPort` answers the guest's neighbour solicitations and checks that
//! what it sends comes from its /128 (other sources are counted and dropped); the node routes
//! the packets to its own stack, another microVM or over the fabric, and packets for the
//! /128 back to the VM.

use alloc::string::String;
use catenary_arch::virtio::{NicError, VirtioNet};
use catenary_arch::{entropy, memory, time};
use catenary_bootinfo::Module;
use catenary_net::ipcroute::{Body, Frame, IpcRouter, RouteError};
use catenary_net::rpc::{Delivery, Outcome, Rpc};
use catenary_net::{Cluster, Link, Node, NodeConfig, Path};
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
mod probes;
use nic::*;
use knetd::*;
pub(crate) use router::*;
pub(crate) use vmlink::*;
pub(crate) use boot::*;
pub(crate) use ring3::*;
use probes::*;

/// Start `netd`, which probes the NIC and brings the stack up (on its own stack, so boot goes
/// on meanwhile). Nothing happens without a virtio-net device or with `net=off`.
pub fn start(cmdline: &str, modules: &[Module]) {
    use crate::task::supervisor;
    if crate::cmdline::get(cmdline, "net") == Some("off") {
        supervisor::enable("netd", false);
        supervisor::enable("nicd", false);
        return;
    }
    if crate::cmdline::get(cmdline, "net.netd") == Some("user") {
        if crate::cmdline::get(cmdline, "net.driver") == Some("kernel") {
            warn!(target: "net", "net.netd=user needs the ring-3 driver nicd: net.driver=kernel ignored");
        }
        return start_user(cmdline, modules);
    }
    // the in-kernel stack adopts the netd service's endpoint; the ring-3 program never runs
    supervisor::enable("netd", false);
    *BOOT.lock() = Some(Boot { cmdline: String::from(cmdline), modules: modules.to_vec() });
    crate::task::spawn_kernel("netd", Priority::DRIVER, Affinity::ANY, netd, 0);
}
