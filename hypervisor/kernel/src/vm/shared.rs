//! What the vCPUs of one microVM share, and how they find, wake and stop each other.

use alloc::sync::Arc;
use catenary_arch::virt::GuestRam;
use catenary_vmm::MicroVm;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use super::report::Ended;

/// What the vCPUs of one microVM share: the device model and guest RAM, behind one lock that a
/// vCPU takes only around device-model calls (`poll`, `next_event`, `handle_exit`, the console
/// and network), never across `Vcpu::run` (docs/vmm.md "Multi-vCPU microVMs").
pub(crate) struct Core {
    pub(super) vm: MicroVm,
    pub(super) ram: GuestRam,
}

/// A microVM's shared state: `Core` plus how its vCPU tasks find, wake and stop each other.
pub(crate) struct Shared {
    pub(super) core: spin::Mutex<Core>,
    pub(super) n: usize,
    pub(super) ram_size: u64,
    /// Set once when the VM ends (any vCPU's stop or fatal fault, the node's stop): every vCPU
    /// loop leaves at its next pass.
    pub(super) dead: AtomicBool,
    /// Why it ended, as the first vCPU to end it saw it.
    pub(super) ended: spin::Mutex<Option<Ended>>,
    /// Per vCPU: its task (to wake it from a halt), and the CPU it is about to enter or is in
    /// its guest on (`NOT_IN_GUEST` otherwise), to interrupt it there.
    pub(super) task: [AtomicU64; MAX_VCPUS],
    pub(super) in_guest: [AtomicUsize; MAX_VCPUS],
    /// Per vCPU: exits and the RIP of the last one (what `vm.debug` logs every 2 s).
    pub(super) exits: [AtomicU64; MAX_VCPUS],
    pub(super) last_rip: [AtomicU64; MAX_VCPUS],
    /// The application processors' figures for the run report.
    pub(super) ap_cpus: AtomicU64,
    pub(super) ap_moves: AtomicU64,
    pub(super) ap_overhead: AtomicU64,
}

pub(super) const MAX_VCPUS: usize = catenary_vmm::mptable::MAX_VCPUS as usize;
pub(super) const NOT_IN_GUEST: usize = usize::MAX;

impl Shared {
    pub(super) fn new(vm: MicroVm, ram: GuestRam, n: usize, ram_size: u64) -> Shared {
        Shared {
            core: spin::Mutex::new(Core { vm, ram }),
            n: n.clamp(1, MAX_VCPUS),
            ram_size,
            dead: AtomicBool::new(false),
            ended: spin::Mutex::new(None),
            task: [const { AtomicU64::new(0) }; MAX_VCPUS],
            in_guest: [const { AtomicUsize::new(NOT_IN_GUEST) }; MAX_VCPUS],
            exits: [const { AtomicU64::new(0) }; MAX_VCPUS],
            last_rip: [const { AtomicU64::new(0) }; MAX_VCPUS],
            ap_cpus: AtomicU64::new(0),
            ap_moves: AtomicU64::new(0),
            ap_overhead: AtomicU64::new(0),
        }
    }

    /// The device model and RAM. The lock is held for a device-model call, never across a world
    /// switch or a sleep; a waiter yields its CPU now and then (the holder may have been
    /// preempted on this very CPU).
    pub(super) fn core(&self) -> spin::MutexGuard<'_, Core> {
        loop {
            for _ in 0..64 {
                if let Some(g) = self.core.try_lock() {
                    return g;
                }
                core::hint::spin_loop();
            }
            crate::task::yield_now();
        }
    }

    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// End the VM (the first reason wins) and get every vCPU out of its guest or its halt.
    pub(super) fn end(&self, why: Ended) {
        {
            let mut e = self.ended.lock();
            if e.is_none() {
                *e = Some(why);
            }
        }
        self.dead.store(true, Ordering::SeqCst);
        self.kick_all();
    }

    pub(super) fn kick_all(&self) {
        self.kick(u64::MAX, usize::MAX);
    }

    /// Wake the vCPUs in `mask` (from `ApicBus::take_wakeups`) other than `me`: a halted one's
    /// task is woken, one in its guest is interrupted (a host IPI forces the exit, so it looks
    /// at its interrupts again). One that is between the two looks anyway before its next entry:
    /// it marks itself in the guest *before* taking the lock for `next_event`.
    pub(super) fn kick(&self, mask: u64, me: usize) {
        for j in (0..self.n).filter(|&j| j != me && mask & (1u64 << j) != 0) {
            let c = self.in_guest[j].load(Ordering::SeqCst);
            if c != NOT_IN_GUEST {
                crate::task::kick_cpu(c);
            }
            let t = self.task[j].load(Ordering::SeqCst);
            if t != 0 {
                crate::task::wake_sleeping(t);
            }
        }
    }
}

/// Multi-vCPU microVMs whose application processors are starting: key → (shared state, VM id).
pub(super) static SMP_VMS: spin::Mutex<alloc::collections::BTreeMap<u64, (Arc<Shared>, u32)>> = spin::Mutex::new(alloc::collections::BTreeMap::new());
pub(super) static NEXT_SMP_KEY: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);
