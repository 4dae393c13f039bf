//! Diagnostics: `vm.debug`'s periodic per-vCPU lines, the guest page walks logged after a triple fault.

use alloc::format;
use catenary_arch::time;
use catenary_arch::virt::{self, GuestRam};
use catenary_vmm::cpu::VcpuState;
use catenary_vmm::MicroVm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use log::{info, warn};
use super::shared::{Shared, NOT_IN_GUEST};
use super::vcpu_loop::Bsp;

/// Requests for a state line from every running microVM ([`request_state_dump`]).
static STATE_DUMPS: AtomicU64 = AtomicU64::new(0);

/// A test that gave up waiting for a microVM: each running VM's vCPU-0 loop logs its
/// interrupt state once (within 1 ms if it is halted, at its next exit if it runs), so a hang
/// says whether an interrupt was lost, held or never raised.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn request_state_dump() {
    STATE_DUMPS.fetch_add(1, Ordering::SeqCst);
}

/// Exits remembered for the state line.
pub(super) const RECENT: usize = 16;

/// vCPU 0's last [`RECENT`] exits: RIP, reason, interrupt shadow and IF at the exit, what the
/// entry before it armed (`-` nothing, `i` an interrupt, `w` a window) and whether the backend
/// held an event then.
#[derive(Default)]
pub(super) struct Recent {
    ring: [(u64, &'static str, bool, bool, u8, bool); RECENT],
    next: usize,
}

impl Recent {
    pub(super) fn record(&mut self, rip: u64, exit: &'static str, shadow: bool, interrupts_on: bool, ev: &catenary_vmm::EventDecision, held: bool) {
        let armed = match ev {
            catenary_vmm::EventDecision::None => b'-',
            catenary_vmm::EventDecision::Inject(_) => b'i',
            catenary_vmm::EventDecision::RequestWindow => b'w',
        };
        self.ring[self.next % RECENT] = (rip, exit, shadow, interrupts_on, armed, held);
        self.next = self.next.wrapping_add(1);
    }

    fn lines(&self) -> alloc::string::String {
        let mut s = alloc::string::String::new();
        for i in 0..RECENT {
            let (rip, exit, shadow, on, armed, held) = self.ring[self.next.wrapping_add(i) % RECENT];
            if !exit.is_empty() {
                s.push_str(&format!(" [{exit} at {rip:#x} shadow {} IF {} armed {} held {}]", shadow as u8, on as u8, armed as char, held as u8));
            }
        }
        s
    }
}

/// The request count now (a new VM starts from it: earlier requests are not for it).
pub(super) fn state_dumps() -> u64 {
    STATE_DUMPS.load(Ordering::SeqCst)
}

/// Whether a request came since this VM's last state line.
pub(super) fn state_dump_asked(b: &Bsp) -> bool {
    STATE_DUMPS.load(Ordering::Relaxed) != b.dumped
}

/// The state line ([`request_state_dump`]): where vCPU 0 is, what the interrupt controllers and
/// the PIT hold, whether the backend still holds an event for the guest, and (paging off: RSP
/// is a guest-physical address) the four dwords just below the guest's stack pointer, where
/// the last interrupt frame it returned from still lies.
pub(super) fn log_state(b: &mut Bsp, vm: &MicroVm, ram: &GuestRam, held: bool, place: &str, st: &VcpuState) {
    use catenary_vmm::mem::GuestMemoryExt;
    b.dumped = STATE_DUMPS.load(Ordering::Relaxed);
    let below: Option<[u32; 4]> = (st.cr0 & (1 << 31) == 0).then(|| core::array::from_fn(|i| ram.read_u32(st.rsp.wrapping_sub(16).wrapping_add(4 * i as u64) & 0xffff_ffff).unwrap_or(0)));
    warn!(target: "vmm", "{}: state on request ({place}): rip {:#x}, rsp {:#x} (dwords below it {below:x?}), IF {}, shadow {}, pending irq {:?}, pending exception {:?}, backend holds an event {held}, next deadline in {:?} ns; {:?}; {:?}",
        b.name, st.rip, st.rsp, st.interrupts_enabled(), st.interrupt_shadow, vm.pending_irq(), vm.pending_exception(), vm.next_deadline_ns().map(|d| d as i64 - time::now_ns() as i64), vm.pic, vm.pit);
    warn!(target: "vmm", "{}: its last exits, oldest first:{}", b.name, b.recent.lines());
}

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
