//! The kernel's side of the ring-3 `netd`: finding the NIC, its boot data (`SYS_NET` `OP_BOOT`).

use super::*;

/// What the ring-3 `netd` gets at `SYS_NET(OP_BOOT)`: the command line, the boot modules
/// (node key, cluster file) and the virtio-net structures (found and MSI-X programmed here:
/// configuration space stays the kernel's).
pub(super) struct UserBoot {
    pub(super) cmdline: String,
    pub(super) modules: alloc::vec::Vec<Module>,
    pub(super) cfg: [u64; 7],
    pub(super) msix: bool,
}

pub(super) static USER_BOOT: Mutex<Option<UserBoot>> = Mutex::new(None);

/// The network stack runs in ring 3 (the default) as the manifest's `netd` service,
/// started (and restarted) by the supervisor. The kernel finds the NIC, programs its MSI-X
/// entry, and lets the supervisor start `nicd` and `netd`.
pub(super) fn start_user(cmdline: &str, modules: &[Module]) {
    use crate::task::{self, supervisor};
    if seeds(cmdline).is_none() {
        // no keys without hardware entropy (logged): netd never starts
        supervisor::enable("netd", false);
        supervisor::enable("nicd", false);
        supervisor::enable("natd", false);
        return;
    }
    let Some((df, info)) = catenary_arch::virtio::find_net() else {
        info!(target: "net", "no virtio-net device: networking off");
        supervisor::enable("netd", false);
        supervisor::enable("nicd", false);
        supervisor::enable("natd", false);
        return;
    };
    let msix = match catenary_arch::smp::apic_id_of(0).ok_or("no BSP APIC id").and_then(|bsp| catenary_arch::virtio::msix_program(df, task::NIC_VECTOR, bsp)) {
        Ok(n) => {
            info!(target: "net", "virtio-net: MSI-X on ({} entries): entry 0 -> vector {:#x} on the BSP (nicd's receive interrupt)", n, task::NIC_VECTOR);
            true
        }
        Err(e) => {
            warn!(target: "net", "virtio-net: no interrupts ({}): nicd polls", e);
            false
        }
    };
    let cfg = [info.common.0, info.notify.0, info.isr.0, info.device.0, info.notify_multiplier as u64, info.device.1, info.notify.1];
    catenary_arch::cpu::without_interrupts(|| {
        *USER_BOOT.lock() = Some(UserBoot { cmdline: String::from(cmdline), modules: modules.to_vec(), cfg, msix });
    });
    info!(target: "net", "virtio-net at PCI {:02x}:{:02x}.{}: the network stack runs in ring 3: the supervisor starts netd and nicd (driver in ring 3) with their manifest grants",
        df.bus, df.device, df.function);
    #[cfg(feature = "probes")]
    crate::rpcprobe::USER_NETD.store(true, core::sync::atomic::Ordering::Relaxed);
    supervisor::enable("nicd", true);
    supervisor::enable("netd", true);
    enable_natd(cmdline);
    NAT64_NAMED.store(crate::cmdline::get(cmdline, "net.nat64gw").is_some(), core::sync::atomic::Ordering::Relaxed);
    #[cfg(feature = "probes")]
    crate::netdprobe::start(cmdline, modules);
}

/// (`SYS_NET` `OP_BOOT`) The ring-3 netd's boot data (layout `catenary_ipc::netd::BOOT_*`):
/// fresh seeds from the hardware for each incarnation. None with the in-kernel `netd`, or
/// when the node may not create keys (no hardware entropy).
pub(crate) fn user_boot_data() -> Option<alloc::vec::Vec<u8>> {
    use catenary_ipc::netd::*;
    let (cmdline, modules, cfg, msix) = catenary_arch::cpu::without_interrupts(|| {
        USER_BOOT.lock().as_ref().map(|b| (b.cmdline.clone(), b.modules.clone(), b.cfg, b.msix))
    })?;
    let seeds = seeds(&cmdline)?;
    let given = node_key(&modules).or_else(|| crate::cmdline::get(&cmdline, "net.key").and_then(hex32));
    let generated = given.is_none();
    let key = match given {
        Some(k) => Some(k),
        None => Some(generated_identity(&seeds)?),
    };
    let cluster = cluster_text(&modules).unwrap_or(&[]);
    if BOOT_HEADER + cmdline.len() + cluster.len() > BOOT_MAX {
        warn!(target: "net", "netd boot data over {} bytes (cluster file too long)", BOOT_MAX);
        return None;
    }
    let mut b = alloc::vec![0u8; BOOT_HEADER];
    put_u64(&mut b, 0, 1);
    let first = crate::task::supervisor::service_restarts("netd") == 0;
    put_u64(&mut b, 8, if key.is_some() { BOOT_KEY } else { 0 } | if msix { BOOT_MSIX } else { 0 } | if first { BOOT_FIRST } else { 0 } | if generated { BOOT_GENERATED } else { 0 });
    put_u64(&mut b, 16, wall_clock_at_boot(&cmdline, time::now_ns()));
    for (i, w) in cfg.iter().enumerate() {
        put_u64(&mut b, 24 + 8 * i, *w);
    }
    put_u64(&mut b, 80, cmdline.len() as u64);
    put_u64(&mut b, 88, cluster.len() as u64);
    b[96..128].copy_from_slice(&key.unwrap_or([0; 32]));
    b[128..160].copy_from_slice(&seeds.identity);
    b[160..192].copy_from_slice(&seeds.fabric);
    put_u64(&mut b, 192, catenary_arch::smp::online_cpus() as u64);
    put_u64(&mut b, 200, memory::stats().total_bytes() >> 20);
    b.extend_from_slice(cmdline.as_bytes());
    b.extend_from_slice(cluster);
    Some(b)
}

/// The NAT64 gateway service `natd` runs only on a node given an IPv4 uplink: `nat64.uplink=`
/// on its command line and a second virtio-net function (docs/nat64.md). The kernel reads no
/// IPv4 here: `natd` parses its settings itself.
fn enable_natd(cmdline: &str) {
    use crate::task::supervisor;
    let asked = crate::cmdline::get(cmdline, "nat64.uplink").is_some();
    let device = catenary_arch::virtio::has_net_at(1);
    match (asked, device) {
        (true, true) => {
            info!(target: "net", "NAT64: an uplink is configured and a second virtio-net function is present: the supervisor starts natd");
            supervisor::enable("natd", true);
        }
        (true, false) => {
            warn!(target: "net", "NAT64: nat64.uplink is set but there is no second virtio-net function: natd does not run");
            supervisor::enable("natd", false);
        }
        _ => supervisor::enable("natd", false),
    }
}

/// The command line names a NAT64 gateway (`net.nat64gw=`): workloads get DNS64 as their name
/// server.
/// The identity a node without a `node.key` boot module generated at this boot: made once, so
/// that a restarted `netd` keeps the key the cluster may have admitted.
static GENERATED: Mutex<Option<[u8; 32]>> = Mutex::new(None);

/// This boot's generated identity (docs/boot.md, "Joining"): from the hardware entropy the
/// seeds were drawn from, refused (networking off) without RDSEED/RDRAND even when
/// `net.insecure-entropy` lets a keyed node's sessions start. The private key is never logged.
fn generated_identity(seeds: &catenary_net::entropy::Seeds) -> Option<[u8; 32]> {
    if let Some(k) = catenary_arch::cpu::without_interrupts(|| *GENERATED.lock()) {
        return Some(k);
    }
    let source = entropy::sample().source;
    if source == entropy::Source::None {
        log::error!(target: "net", "identity: no node.key boot module and no hardware entropy source (RDSEED/RDRAND): this node cannot make its identity; networking off");
        return None;
    }
    let k = seeds.identity;
    let public = netfabric::identity::Identity::from_secret_bytes(k).public_key();
    info!(target: "net", "identity: no node.key boot module: generated this boot's key from hardware entropy ({:?}); public key {} (pending until an admin runs `catenary node add` with it)",
        source, catenary_net::cluster::hex_encode(&public));
    info!(target: "net", "hardware: {} CPUs, {} MiB of memory (the NIC's MAC: netd's log)", catenary_arch::smp::online_cpus(), memory::stats().total_bytes() >> 20);
    catenary_arch::cpu::without_interrupts(|| *GENERATED.lock() = Some(k));
    Some(k)
}

static NAT64_NAMED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

pub(crate) fn nat64_named() -> bool {
    NAT64_NAMED.load(core::sync::atomic::Ordering::Relaxed)
}
