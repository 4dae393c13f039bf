//! Diagnostics: `vm.debug`'s periodic per-vCPU lines, the guest page walks logged after a triple fault.

use alloc::format;
use catenary_arch::time;
use catenary_arch::virt::{self, GuestRam};
use catenary_vmm::cpu::VcpuState;
use catenary_vmm::MicroVm;
use core::sync::atomic::{AtomicBool, Ordering};
use log::{info, warn};
use super::shared::{Shared, NOT_IN_GUEST};
use super::vcpu_loop::Bsp;

/// `vm.debug`: multi-vCPU demo microVMs log each vCPU's exits and last exit RIP every 2 s.
pub(super) static DEBUG_VCPUS: AtomicBool = AtomicBool::new(false);

/// `vm.debug` on a multi-vCPU VM: every 2 s (vCPU 0's loop, halted or not), each vCPU's exits,
/// the RIP of its last exit, whether it is in its guest, and what its APIC has pending.
pub(super) fn debug_vcpus(sh: &Shared, vm: &mut MicroVm, ram: &GuestRam, b: &mut Bsp) {
    if !DEBUG_VCPUS.load(Ordering::Relaxed) || sh.n < 2 || time::now_ns() < b.next_debug {
        return;
    }
    b.next_debug = time::now_ns() + 2_000_000_000;
    let cur = vm.vcpu();
    for j in 0..sh.n {
        vm.set_vcpu(j);
        let (nmi, run) = vm.apic_bus().and_then(|a| a.lapic(j)).map(|l| (l.nmi_pending(), l.run_state())).unwrap_or((false, catenary_vmm::devices::lapic::RunState::Running));
        info!(target: "vmm", "{}: vCPU {j}: {} exits, last at rip {:#x}, {}, pending irq {:?} nmi {nmi} {run:?}, deadline in {:?} ns", b.name, sh.exits[j].load(Ordering::Relaxed), sh.last_rip[j].load(Ordering::Relaxed),
            if sh.in_guest[j].load(Ordering::Relaxed) != NOT_IN_GUEST { "in its guest" } else { "out" }, vm.pending_irq(), vm.next_deadline_ns().map(|d| d as i64 - time::now_ns() as i64));
    }
    for (i, d) in vm.virtio.iter().enumerate() {
        if let Some(e) = d.error {
            info!(target: "vmm", "{}: virtio device {i} failed: {e:?}", b.name);
        }
        use catenary_vmm::mem::GuestMemoryExt;
        for (qi, q) in d.queues.iter().enumerate().filter(|(_, q)| q.ready) {
            let avail = q.avail.checked_add(2).and_then(|a| ram.read_u16(a).ok());
            let used = q.used.checked_add(2).and_then(|a| ram.read_u16(a).ok());
            info!(target: "vmm", "{}: virtio {i} q{qi}: notifies {} int {:#x}, device last_avail {} used_idx {}, guest avail.idx {avail:?} used.idx {used:?}, avail at {:#x} used at {:#x}", b.name, d.notifies, d.interrupt_status, q.last_avail, q.used_idx, q.avail, q.used);
        }
    }
    vm.set_vcpu(cur);
}

/// After a guest triple fault: the guest's own page walk (as its tables are now) of what the
/// last event delivery touched (its IDT's #DF/#PF gates, RIP, RSP, the TSS), and whether each
/// table lies in a chunk our nested tables map. A walk that succeeds now means the delivery
/// fault was not in the guest's tables as they ended up (docs/vmm.md "Soak").
pub(super) fn log_guest_walks(st: &VcpuState, ram: &GuestRam, mapped: &[bool], name: &str) {
    use catenary_vmm::mem::GuestMemoryExt;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    if st.cr0 & (1 << 31) == 0 || st.efer & (1 << 10) == 0 {
        return;
    }
    let levels: u32 = if st.cr4 & (1 << 12) != 0 { 5 } else { 4 };
    // (Every address here is the guest's: wrapping arithmetic, the test build traps overflow.)
    let targets = [("idt#DF", st.idtr.base.wrapping_add(0x80)), ("idt#PF", st.idtr.base.wrapping_add(0xe0)), ("rip", st.rip), ("rsp", st.rsp), ("tss", st.tr.base.wrapping_add(4))];
    for (what, va) in targets {
        let mut line = format!("{name}: walk {what} {va:#x}:");
        let mut table = st.cr3 & ADDR;
        for l in (1..=levels).rev() {
            let shift = 12 + 9 * (l - 1);
            let at = table + ((va >> shift) & 511) * 8;
            let chunk = (at / virt::CHUNK) as usize;
            let m = mapped.get(chunk).copied().unwrap_or(false);
            let Ok(e) = ram.read_u64(at) else {
                line.push_str(&format!(" L{l}@{at:#x} outside RAM"));
                break;
            };
            line.push_str(&format!(" L{l}@{at:#x}{}={e:#x}", if m { "" } else { "(chunk unmapped)" }));
            if e & 1 == 0 {
                line.push_str(" not present");
                break;
            }
            if l == 1 || (l <= 3 && e & 0x80 != 0) {
                let size = 1u64 << shift;
                let pa = (e & ADDR & !(size - 1)) | (va & (size - 1));
                let pm = mapped.get((pa / virt::CHUNK) as usize).copied().unwrap_or(false);
                line.push_str(&format!(" -> {pa:#x}{}", if pm { "" } else { " (chunk unmapped)" }));
                break;
            }
            table = e & ADDR;
        }
        warn!(target: "vmm", "{line}");
    }
}
