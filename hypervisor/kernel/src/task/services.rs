//! Boot services: the APs and the first ring-3 services (rtcd, echo).

use super::*;

/// Bring up the APs, route the RTC interrupt and start the ring-3 services.
pub fn start_node(cpus: &[(u32, bool)], ioapic: Option<u64>) {
    IOAPIC_PHYS.store(ioapic.unwrap_or(0), core::sync::atomic::Ordering::Relaxed);
    let mut idx = 1;
    for &(apic_id, is_bsp) in cpus {
        if is_bsp {
            continue;
        }
        match smp::start_ap(idx, apic_id) {
            Ok(()) => {}
            Err(e) => warn!(target: "smp", "APIC id {}: {}", apic_id, e),
        }
        idx += 1;
    }
    info!(target: "smp", "{} of {} CPU(s) online", smp::online_cpus(), cpus.len());
    if RTCD_ELF.is_empty() {
        warn!(target: "task", "no ring-3 programs embedded (build with `cargo xtask build`)");
        return;
    }
    match spawn_user(&UserSpec {
        name: "rtcd",
        elf: RTCD_ELF,
        arg: 0,
        prio: Priority::DRIVER,
        affinity: Affinity::ANY,
        own_endpoint: true,
        caps: &[],
        ports: &[0x70, 0x71],
        mmio: &[],
        dma_pages: 0,
    }) {
        Ok((id, ep)) => {
            with(|k| k.rtc_endpoint = ep);
            if let (Some(io), Some(bsp)) = (ioapic, smp::apic_id_of(0)) {
                if let Err(e) = apic::ioapic_route(io, 8, RTC_VECTOR, bsp) {
                    warn!(target: "task", "IOAPIC: {:?}", e);
                }
            }
            info!(target: "task", "ring-3 service rtcd started: task {}, endpoint {}, ports 0x70-0x71, IRQ 8 -> vector {:#x}",
                id, ep.unwrap_or(0), RTC_VECTOR);
        }
        Err(e) => warn!(target: "task", "rtcd: {:?}", e),
    }
    match spawn_user(&UserSpec {
        name: "echo",
        elf: UAPP_ELF,
        arg: ROLE_ECHO,
        prio: Priority::NORMAL,
        affinity: Affinity::ANY,
        own_endpoint: true,
        caps: &[],
        ports: &[],
        mmio: &[],
        dma_pages: 0,
    }) {
        Ok((id, ep)) => {
            with(|k| k.echo_endpoint_set(ep));
            info!(target: "task", "ring-3 service echo started: task {}, endpoint {}", id, ep.unwrap_or(0));
        }
        Err(e) => warn!(target: "task", "echo: {:?}", e),
    }
}

pub const ROLE_ECHO: u64 = 1;
pub const ROLE_CLIENT: u64 = 2;
pub const ROLE_BENCH: u64 = 3;
pub const ROLE_TOUCH_KERNEL: u64 = 4;
pub const ROLE_BAD_PORT: u64 = 5;
pub const ROLE_SPIN: u64 = 6;
pub const ROLE_RTC_CLIENT: u64 = 7;
pub const ROLE_ONE_SHOT: u64 = 8;
pub const ROLE_MEMORY: u64 = 9;
pub const ROLE_GRANT_SERVER: u64 = 10;
pub const ROLE_GRANT_CLIENT: u64 = 11;
pub const ROLE_MMIO_DRIVER: u64 = 12;

static IOAPIC_PHYS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Physical address of the first IOAPIC (from ACPI), if any.
pub fn ioapic_phys() -> Option<u64> {
    Some(IOAPIC_PHYS.load(core::sync::atomic::Ordering::Relaxed)).filter(|a| *a != 0)
}

static ECHO_EP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
impl Kernel {
    fn echo_endpoint_set(&mut self, ep: Option<EndpointId>) {
        ECHO_EP.store(ep.unwrap_or(0), core::sync::atomic::Ordering::Relaxed);
    }
}
pub fn echo_endpoint() -> EndpointId {
    ECHO_EP.load(core::sync::atomic::Ordering::Relaxed)
}
pub fn rtc_endpoint() -> Option<EndpointId> {
    with(|k| k.rtc_endpoint)
}
