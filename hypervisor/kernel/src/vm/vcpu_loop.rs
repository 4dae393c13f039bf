//! One vCPU's run loop: enter the guest, handle its exits, halt, wait for a Startup IPI.

use alloc::format;
use catenary_arch::virt::{self, GuestRam, Vcpu, VirtError};
use catenary_arch::{cpu, time};
use catenary_vmm::cpu::{Exit, StopReason, VcpuState};
use catenary_vmm::stop::StopPolicy;
use catenary_vmm::{Action, EventDecision, MicroVm, VmError};
use core::sync::atomic::{AtomicBool, Ordering};
use log::{info, warn};
use super::affinity::vcpu_affinity;
use super::control::apply_control;
use super::debug::{debug_vcpus, log_guest_walks, DEBUG_VCPUS};
use super::report::{Ended, LoopCycles};
use super::shared::{Core, Shared, NOT_IN_GUEST, SMP_VMS};
use super::{NetAttach, VmConsole, VmControl};

/// Application processor `arg & 0xff` of the microVM registered as `arg >> 8`: create its vCPU,
/// run its loop from wait-for-SIPI, and end the whole VM if it fails.
pub(super) fn ap_task(arg: u64) {
    let (key, idx) = (arg >> 8, (arg & 0xff) as usize);
    let Some((sh, vm_id)) = cpu::without_interrupts(|| SMP_VMS.lock().get(&key).cloned()) else { return };
    if crate::task::restrict_current_affinity(vcpu_affinity(catenary_arch::smp::online_cpus())).is_err() {
        sh.end(Ended::Failed(format!("vCPU {idx}: its task may only run on CPU 0")));
        return;
    }
    let made = {
        let g = sh.core();
        virt::create_vcpu(&g.ram, vm_id).map(|v| {
            let mapped: alloc::vec::Vec<bool> = (0..g.ram.chunks().len()).map(|i| !v.lazy_ram() || g.ram.is_populated(i)).collect();
            (v, mapped)
        })
    };
    let (mut vcpu, mapped) = match made {
        Ok(v) => v,
        Err(e) => {
            sh.end(Ended::Failed(format!("vCPU {idx}: {e:?}")));
            return;
        }
    };
    if let Some(e) = vcpu_loop(&sh, idx, &mut *vcpu, mapped, None) {
        sh.end(e);
    }
    let p = vcpu.placement();
    sh.ap_cpus.fetch_or(p.cpus, Ordering::Relaxed);
    sh.ap_moves.fetch_add(p.migrations, Ordering::Relaxed);
    sh.ap_overhead.fetch_add(vcpu.overhead_bytes(), Ordering::Relaxed);
    // (The vCPU, and with it its reference to guest RAM, is dropped before the task ends: the
    // BSP's join then knows no nested table maps the RAM any more.)
    drop(vcpu);
}

/// Move frames between the guest's virtio-net device and `netd`.
pub(super) fn net_sync(vm: &mut MicroVm, ram: &mut GuestRam, net: Option<NetAttach>) {
    let Some(n) = net else { return };
    let tx = vm.take_net_tx();
    if !tx.is_empty() {
        crate::net::vm_send(n.addr, tx);
    }
    for f in crate::net::vm_take(n.addr) {
        vm.push_net_rx(&f, ram);
    }
}

/// Longest a halted vCPU's task sleeps before polling the device model again.
const HALT_POLL_NS: u64 = 1_000_000;
/// Longest an application processor waiting for its Startup IPI sleeps between looks (a SIPI
/// wakes it at once through `Shared::kick`).
const SIPI_POLL_NS: u64 = 10_000_000;

/// What only vCPU 0's loop does: the console, the network, the node's stop/control requests,
/// the touched-memory figure and the cycle accounting.
pub(super) struct Bsp<'a, 'c> {
    pub(super) console: &'a mut VmConsole<'c>,
    pub(super) name: &'a str,
    pub(super) net: Option<NetAttach>,
    pub(super) stop: Option<&'a AtomicBool>,
    pub(super) ctl: Option<&'a VmControl>,
    pub(super) touched: Option<&'a core::sync::atomic::AtomicU64>,
    pub(super) cycles: &'a mut LoopCycles,
    pub(super) policy: StopPolicy,
    pub(super) next_debug: u64,
    /// The state-line requests it has answered (`debug::request_state_dump`).
    pub(super) dumped: u64,
    /// vCPU 0's last exits, for the state line: a ring of [`super::debug::RECENT`].
    pub(super) recent: super::debug::Recent,
    /// `vm.timeline=1`: exits by group over time since `t0` (the VM's creation).
    pub(super) timeline: Option<&'a mut catenary_vmm::timeline::Timeline>,
    pub(super) t0: u64,
}

impl Bsp<'_, '_> {
    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn record(&mut self, now: u64, group: usize) {
        if let Some(t) = self.timeline.as_deref_mut() {
            t.record(now.saturating_sub(self.t0), group);
        }
    }
}

/// Whether vCPU `idx` waits for a Startup IPI (an AP before the guest starts it, or after an
/// INIT); takes a pending INIT/SIPI first: a SIPI loads the real-mode start state.
fn sipi_wait(vm: &mut MicroVm, idx: usize, vcpu: &mut dyn Vcpu, st: &mut VcpuState) -> bool {
    let Some(l) = vm.apic_bus().and_then(|a| a.lapic_mut(idx)) else { return false };
    l.take_init();
    if let Some(v) = l.take_sipi() {
        *st = catenary_vmm::apic_bus::sipi_state(v);
        vcpu.set_state(st);
    }
    l.run_state() != catenary_vmm::devices::lapic::RunState::Running
}

/// One vCPU's loop (vCPU 0 with `bsp`). Returns why the VM ended when this vCPU ended it, None
/// when another vCPU (or the node) did.
pub(super) fn vcpu_loop(sh: &Shared, idx: usize, vcpu: &mut dyn Vcpu, mut mapped: alloc::vec::Vec<bool>, mut bsp: Option<&mut Bsp>) -> Option<Ended> {
    let mut st = vcpu.state();
    let name = bsp.as_ref().map(|b| b.name).unwrap_or("");
    loop {
        let t_pass = cpu::rdtsc();
        if sh.is_dead() {
            return None;
        }
        if bsp.as_ref().is_some_and(|b| b.stopped()) {
            return Some(Ended::Killed);
        }
        // Marked "in the guest" before the event decision: a vCPU that sends this one an
        // interrupt after that decision sees the mark and interrupts the entry.
        sh.in_guest[idx].store(catenary_arch::percpu::cpu_index(), Ordering::SeqCst);
        let (ev, now, waiting, wakeups) = {
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            vm.set_vcpu(idx);
            if let Some(b) = bsp.as_deref_mut() {
                if let Some(e) = apply_control(b.ctl, &mut b.policy, vm, ram, b.name) {
                    return Some(e);
                }
            }
            let now = time::now_ns();
            vm.poll(now);
            let waiting = sipi_wait(vm, idx, vcpu, &mut st);
            let ev = if waiting || vcpu.reinjection_pending() { EventDecision::None } else { vm.next_event(&st) };
            (ev, now, waiting, vm.apic_bus().map(|a| a.take_wakeups()).unwrap_or(0))
        };
        sh.kick(wakeups, idx);
        if waiting {
            sh.in_guest[idx].store(NOT_IN_GUEST, Ordering::SeqCst);
            crate::task::sleep_ns(SIPI_POLL_NS);
            continue;
        }
        let held_before = vcpu.reinjection_pending();
        let t_run = cpu::rdtsc();
        let run = vcpu.run(ev);
        let t_ran = cpu::rdtsc();
        sh.in_guest[idx].store(NOT_IN_GUEST, Ordering::SeqCst);
        let exit = match run {
            Ok(e) => e,
            Err(VirtError::EntryFailed(code)) => return Some(Ended::Failed(format!("VM entry failed ({code:#x}) on vCPU {idx}"))),
            Err(e) => return Some(Ended::Failed(format!("{e:?} on vCPU {idx}"))),
        };
        // Always read the state back first: the next event decision depends on the guest's
        // *current* RFLAGS.IF and interrupt shadow (injecting an interrupt into a guest that
        // just executed CLI deadlocks it inside its own critical section).
        st = vcpu.state();
        sh.exits[idx].fetch_add(1, Ordering::Relaxed);
        super::run::count_exit();
        sh.last_rip[idx].store(st.rip, Ordering::Relaxed);
        if let Some(b) = bsp.as_deref_mut().filter(|_| DEBUG_VCPUS.load(Ordering::Relaxed)) {
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            debug_vcpus(sh, vm, ram, b);
        }
        if let Some(b) = bsp.as_deref_mut() {
            b.recent.record(st.rip, catenary_vmm::stats::exit_name(&exit), st.interrupt_shadow, st.interrupts_enabled(), &ev, held_before);
        }
        if let Some(b) = bsp.as_deref_mut().filter(|b| super::debug::state_dump_asked(b)) {
            let held = vcpu.reinjection_pending();
            let g = sh.core();
            super::debug::log_state(b, &g.vm, &g.ram, held, &format!("after exit {exit:?}"), &st);
        }
        if let Exit::Mmio { gpa, .. } | Exit::PageWalkFault { gpa } = exit {
            // First touch of a RAM chunk the loader did not populate (by an instruction or by
            // the guest's page walk): zero it, map it, retry. (No lock: populating a chunk is
            // atomic, and each vCPU maps RAM into its own nested tables.)
            if gpa < sh.ram_size {
                let c = (gpa / virt::CHUNK) as usize;
                if !mapped[c] {
                    vcpu.map_ram_chunk(c);
                    mapped[c] = true;
                    if let Some(b) = bsp.as_deref_mut() {
                        b.record(time::now_ns(), catenary_vmm::timeline::NPT);
                    }
                    if let Some(t) = bsp.as_ref().and_then(|b| b.touched) {
                        t.store(sh.core().ram.populated_bytes(), Ordering::Relaxed);
                    }
                    continue;
                }
            }
        }
        if matches!(exit, Exit::ExternalInterrupt) {
            if let Some(b) = bsp.as_deref_mut() {
                b.record(time::now_ns(), catenary_vmm::timeline::group_of(&exit, st.cpl));
            }
            // The host took its interrupt when the backend re-enabled interrupts; count it.
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            vm.set_vcpu(idx);
            let _ = vm.handle_exit(exit, &mut st, ram, now);
            continue;
        }
        let now = time::now_ns();
        if let Some(b) = bsp.as_deref_mut() {
            b.record(now, catenary_vmm::timeline::group_of(&exit, st.cpl));
        }
        let (action, t_handle, t_handled, oom, wakeups) = {
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            vm.set_vcpu(idx);
            let t_handle = cpu::rdtsc();
            let action = vm.handle_exit(exit, &mut st, ram, now);
            let t_handled = cpu::rdtsc();
            if let Some(b) = bsp.as_deref_mut() {
                b.console.drain_vm(vm, now, false);
                net_sync(vm, ram, b.net);
            }
            (action, t_handle, t_handled, vm.out_of_memory(), vm.apic_bus().map(|a| a.take_wakeups()).unwrap_or(0))
        };
        sh.kick(wakeups, idx);
        vcpu.set_state(&st);
        if let Some(b) = bsp.as_deref_mut() {
            let t_end = cpu::rdtsc();
            let c = &mut *b.cycles;
            c.passes += 1;
            c.run += t_ran.wrapping_sub(t_run);
            c.handle += t_handled.wrapping_sub(t_handle);
            c.rest += t_end.wrapping_sub(t_pass).wrapping_sub(t_ran.wrapping_sub(t_run)).wrapping_sub(t_handled.wrapping_sub(t_handle));
        }
        if oom {
            return Some(Ended::OutOfMemory);
        }
        match action {
            Ok(Action::Resume) => {}
            Ok(Action::Halt) => {
                if let Some(e) = halt(sh, idx, vcpu, &st, bsp.as_deref_mut()) {
                    return e;
                }
            }
            Ok(Action::Stop(r)) => {
                if sh.n > 1 {
                    info!(target: "vmm", "{name}: vCPU {idx} ended the VM ({r}) at rip {:#x}, rflags {:#x}", st.rip, st.rflags);
                }
                if r == StopReason::TripleFault {
                    // What the guest was doing when it shut down (soak failures keep this line).
                    warn!(target: "vmm", "{name}: vCPU {idx}: triple fault at rip {:#x} (cs {:#x}, cpl {}) rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} xcr0 {:#x} idtr {:#x}+{:#x} gdtr {:#x}+{:#x} tr {:#x}",
                        st.rip, st.cs.selector, st.cpl, st.rsp, st.rflags, st.cr0, st.cr2, st.cr3, st.cr4, st.efer, st.xcr0,
                        st.idtr.base, st.idtr.limit, st.gdtr.base, st.gdtr.limit, st.tr.base);
                    log_guest_walks(&st, &sh.core().ram, &mapped, name);
                }
                return Some(Ended::Stopped(r));
            }
            Err(VmError::OutOfMemory) => return Some(Ended::OutOfMemory),
            Err(e) => {
                warn!(target: "vmm", "{name}: vCPU {idx}: device model rejected an exit: {e:?}");
                return Some(Ended::Failed(format!("{e:?}")));
            }
        }
    }
}


/// A halted vCPU waits (its task sleeps; other tasks run on its CPU) until its guest has
/// something to take: an interrupt (when its IF is set), an exception, an NMI, an event the
/// backend still holds, or an INIT. `Some(end)` when the wait ends the loop (`None` inside: another vCPU ended the VM).
fn halt(sh: &Shared, idx: usize, vcpu: &mut dyn Vcpu, st: &VcpuState, mut bsp: Option<&mut Bsp>) -> Option<Option<Ended>> {
    let interrupts_on = st.interrupts_enabled();
    loop {
        if sh.is_dead() {
            return Some(None);
        }
        let (wake, wait, stopped, wakeups) = {
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            vm.set_vcpu(idx);
            let now = time::now_ns();
            if let Some(b) = bsp.as_deref_mut() {
                net_sync(vm, ram, b.net);
                if vm.out_of_memory() {
                    return Some(Some(Ended::OutOfMemory));
                }
                vm.poll(now);
                b.console.drain_vm(vm, now, false);
                if let Some(e) = apply_control(b.ctl, &mut b.policy, vm, ram, b.name) {
                    return Some(Some(e));
                }
                debug_vcpus(sh, vm, ram, b);
                if super::debug::state_dump_asked(b) {
                    super::debug::log_state(b, vm, ram, vcpu.reinjection_pending(), "halted", st);
                }
            } else {
                vm.poll(now);
            }
            // (An interrupt the backend still holds armed for the guest counts too: `sti; hlt`
            // exits before the guest takes it.)
            let apic = vm.apic_bus().and_then(|a| a.lapic(idx)).map(|l| (l.nmi_pending(), l.run_state() != catenary_vmm::devices::lapic::RunState::Running));
            // (An AP halted with interrupts off, `cli; hlt`, waits for an NMI or INIT only.)
            let wake = (interrupts_on && vm.pending_irq().is_some()) || vm.pending_exception().is_some() || vcpu.reinjection_pending() || apic.is_some_and(|(nmi, init)| nmi || init);
            // Block until the device model's next deadline for this vCPU, at most 1 ms (another
            // vCPU's interrupt wakes the task sooner: `Shared::kick`).
            let wait = vm.next_deadline_ns().map(|d| d.saturating_sub(now)).unwrap_or(HALT_POLL_NS).min(HALT_POLL_NS);
            (wake, wait, vm.stop_reason().cloned(), vm.apic_bus().map(|a| a.take_wakeups()).unwrap_or(0))
        };
        sh.kick(wakeups, idx);
        if wake {
            return None;
        }
        if let Some(r) = stopped {
            return Some(Some(Ended::Stopped(r)));
        }
        if bsp.as_ref().is_some_and(|b| b.stopped()) {
            return Some(Some(Ended::Killed));
        }
        if wait > 0 {
            crate::task::sleep_ns(wait);
        }
    }
}
