//! The node's handle on a running microVM: signal its workload, stop it, kill it
//! (docs/guest-init.md, "Stopping a workload").
//!
//! A [`VmControl`] is created by whoever starts the VM (the workload service; the demo path),
//! shared with the VM's vCPU task (`vm::run_workload_ctl`) and kept for as long as the VM may
//! need to be told something. Requests only set atomics: any task (or a syscall handler) may
//! make them, they never block and never allocate. The vCPU task applies them between exits:
//!
//! - [`VmControl::request_signal`]: a SIGNAL frame to `catenary-init`, which delivers it to the
//!   workload's process group;
//! - [`VmControl::request_stop`]: the grace policy (`catenary_vmm::stop::StopPolicy`): a STOP
//!   frame (the init delivers the image's StopSignal, SIGTERM by default), SIGKILL after
//!   `grace_ns`, then power-off `catenary_vmm::stop::KILL_GRACE_NS` later if the VM is still
//!   running. A VM without catenary-init (no workload channel) is powered off at once;
//! - [`VmControl::request_kill`]: power-off now;
//! - [`VmControl::set_deadline`]: power-off once the monotonic clock passes a deadline (the
//!   workload service's fence for the cluster lease: it holds while the service is dead or
//!   hung). One atomic; the vCPU task compares it with the clock it already reads between
//!   exits, so a VM whose owner does nothing is still powered off on time.
//!
//! Requests made before the VM starts wait for it; requests after it ended fail with
//! [`ControlError::Ended`]. Pending signals are a bit set (one per number): repeating a signal
//! before the vCPU task applied it sends it once, so nothing a caller does makes the VM's
//! queue grow.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

pub use catenary_vmm::stop::MAX_GRACE_NS;

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const ENDED: u8 = 2;
/// No stop requested (`stop_grace`).
const NO_STOP: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// The VM has ended (or its vCPU task has returned).
    Ended,
    /// Not a signal number (1..=64).
    BadSignal,
    /// The VM does not run catenary-init (it has no workload channel): signals cannot be
    /// delivered; stop and kill still work.
    NoInit,
}

/// See the module docs.
#[derive(Debug)]
pub struct VmControl {
    state: AtomicU8,
    /// The VM has the workload channel (set when it starts).
    has_init: AtomicBool,
    /// Something below changed since the vCPU task last looked.
    dirty: AtomicBool,
    /// Bit `n - 1`: signal `n` waits to be sent.
    signals: AtomicU64,
    /// The grace period of a pending stop request, `NO_STOP` without one.
    stop_grace: AtomicU64,
    kill: AtomicBool,
    /// Power-off deadline on the monotonic clock (ns; 0: none).
    deadline: AtomicU64,
    /// When the vCPU task found the deadline passed and powered the VM off (ns; 0: never).
    fenced_at: AtomicU64,
}

impl Default for VmControl {
    fn default() -> Self {
        Self::new()
    }
}

/// What the vCPU task found pending ([`VmControl::take`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub signals: u64,
    pub stop_grace: Option<u64>,
    pub kill: bool,
}

impl VmControl {
    pub const fn new() -> Self {
        VmControl {
            state: AtomicU8::new(NOT_STARTED),
            has_init: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            signals: AtomicU64::new(0),
            stop_grace: AtomicU64::new(NO_STOP),
            kill: AtomicBool::new(false),
            deadline: AtomicU64::new(0),
            fenced_at: AtomicU64::new(0),
        }
    }

    fn check(&self) -> Result<(), ControlError> {
        if self.state.load(Ordering::Acquire) == ENDED {
            return Err(ControlError::Ended);
        }
        Ok(())
    }

    /// Deliver signal `signo` (1..=64) to the workload's process group, through its init.
    /// `NoInit` once the VM runs and has no init; before it starts the signal waits.
    pub fn request_signal(&self, signo: u8) -> Result<(), ControlError> {
        if !(1..=catenary_vmm::guest_proto::wire::MAX_SIGNAL).contains(&signo) {
            return Err(ControlError::BadSignal);
        }
        self.check()?;
        if self.state.load(Ordering::Acquire) == RUNNING && !self.has_init.load(Ordering::Acquire) {
            return Err(ControlError::NoInit);
        }
        self.signals.fetch_or(1 << (signo - 1), Ordering::AcqRel);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Stop the VM: the image's StopSignal now, SIGKILL after `grace_ns` (at most
    /// [`MAX_GRACE_NS`]; [`catenary_vmm::stop::DEFAULT_GRACE_NS`] is Docker's 10 s), power-off [`catenary_vmm::stop::KILL_GRACE_NS`]
    /// after that. The VM ends as its init reports (the workload's exit status lands in the
    /// run report) or, if it never does, as `Ended::Killed`. A second request while a stop is
    /// under way changes nothing.
    pub fn request_stop(&self, grace_ns: u64) -> Result<(), ControlError> {
        self.check()?;
        // (NO_STOP is u64::MAX: a caller's u64::MAX becomes MAX_GRACE_NS, which is less.)
        let _ = self.stop_grace.compare_exchange(NO_STOP, grace_ns.min(MAX_GRACE_NS), Ordering::AcqRel, Ordering::Acquire);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Power the VM off now (no grace).
    pub fn request_kill(&self) -> Result<(), ControlError> {
        self.check()?;
        self.kill.store(true, Ordering::Release);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Power the VM off once the monotonic clock passes `until_ns` (0: no deadline; one in the
    /// past: at its next look, within a timer tick). Replaces the last one, earlier or later: a
    /// deadline far ahead is as harmless as none, since whoever may set it may kill the VM.
    pub fn set_deadline(&self, until_ns: u64) -> Result<(), ControlError> {
        self.check()?;
        self.deadline.store(until_ns, Ordering::Release);
        Ok(())
    }

    /// The deadline, if one is set and `now_ns` passed it (one atomic load: it runs after every exit).
    pub(crate) fn deadline_passed(&self, now_ns: u64) -> Option<u64> {
        let d = self.deadline.load(Ordering::Relaxed);
        (d != 0 && now_ns >= d).then_some(d)
    }

    /// When the deadline powered the VM off, on the monotonic clock as the vCPU task read it
    /// when it decided (not when a poller noticed the end).
    pub fn fenced_at(&self) -> Option<u64> {
        let t = self.fenced_at.load(Ordering::Acquire);
        (t != 0).then_some(t)
    }

    pub(crate) fn fenced(&self, now_ns: u64) {
        self.fenced_at.store(now_ns.max(1), Ordering::Release);
    }

    /// Whether the VM's vCPU task has returned.
    pub fn ended(&self) -> bool {
        self.state.load(Ordering::Acquire) == ENDED
    }

    /// Whether the VM's vCPU task is running it.
    pub fn running(&self) -> bool {
        self.state.load(Ordering::Acquire) == RUNNING
    }

    // The vCPU task's side.

    pub(crate) fn started(&self, has_init: bool) {
        self.has_init.store(has_init, Ordering::Release);
        self.state.store(RUNNING, Ordering::Release);
    }

    pub(crate) fn finished(&self) {
        self.state.store(ENDED, Ordering::Release);
    }

    /// The requests made since the last call (`None`: nothing new). Signals are taken; a stop
    /// request stays recorded (taking it twice is harmless: the policy ignores a second one).
    pub(crate) fn take(&self) -> Option<Pending> {
        // (A plain load first: this runs after every VM exit, the swap only when needed.)
        if !self.dirty.load(Ordering::Relaxed) || !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        let g = self.stop_grace.load(Ordering::Acquire);
        Some(Pending { signals: self.signals.swap(0, Ordering::AcqRel), stop_grace: (g != NO_STOP).then_some(g), kill: self.kill.load(Ordering::Acquire) })
    }
}
