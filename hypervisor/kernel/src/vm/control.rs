//! The node's stop, signal and kill requests applied to a running microVM (`vmcontrol`).

use catenary_arch::virt::GuestRam;
use catenary_arch::time;
use catenary_vmm::stop::{StopAction, StopPolicy};
use catenary_vmm::MicroVm;
use log::info;
use super::report::Ended;
use super::VmControl;

/// Apply the node's requests (`ctl`) and the stop policy's deadlines; `Some` when the node
/// powers the VM off now.
pub(super) fn apply_control(ctl: Option<&VmControl>, policy: &mut StopPolicy, vm: &mut MicroVm, ram: &mut GuestRam, name: &str) -> Option<Ended> {
    use catenary_vmm::guest_proto::wire;
    let ctl = ctl?;
    let now = time::now_ns();
    let mut actions = [None, None];
    let (mut kill, mut stop_grace) = (false, None);
    if let Some(p) = ctl.take() {
        for signo in (1..=wire::MAX_SIGNAL).filter(|s| p.signals & (1u64 << (s - 1)) != 0) {
            let sent = wire::encode_signal(signo).is_some_and(|f| vm.send_to_init(&f, ram));
            info!(target: "vmm", "microVM {name}: signal {signo} {}", if sent { "sent to its init" } else { "not sent: its init has not read the earlier requests" });
        }
        kill = p.kill;
        stop_grace = p.stop_grace;
    }
    // The owner's fence (`VmControl::set_deadline`): checked here, where the clock is read
    // after every exit and every halt poll, so it needs no owner, no timer and no task. One
    // decision with the pass's kill or stop (`StopPolicy::apply_requests`), so neither undoes
    // the other.
    let deadline = ctl.deadline_passed(now);
    let (action, by_deadline) = policy.apply_requests(now, kill, stop_grace, vm.has_channel(), deadline.is_some());
    actions[0] = action;
    if !kill && stop_grace.is_some() && action.is_some() && !by_deadline {
        info!(target: "vmm", "microVM {name}: stop requested (grace {} ms)", stop_grace.unwrap_or(0) / 1_000_000);
    }
    if let (true, Some(d)) = (by_deadline, deadline) {
        ctl.fenced(now);
        info!(target: "vmm", "microVM {name}: its power-off deadline passed {} us ago: powered off by the node", (now - d) / 1_000);
    }
    actions[1] = policy.poll(now);
    for a in actions.into_iter().flatten() {
        match a {
            StopAction::SendStop => {
                let sent = vm.send_to_init(&wire::encode_stop(), ram);
                info!(target: "vmm", "microVM {name}: {}", if sent { "the image's StopSignal sent to its init" } else { "STOP not sent: its init has not read the earlier requests" });
            }
            StopAction::SendSignal(s) => {
                let sent = wire::encode_signal(s).is_some_and(|f| vm.send_to_init(&f, ram));
                info!(target: "vmm", "microVM {name}: still running after its grace period: signal {s} {}", if sent { "sent to its init" } else { "not sent" });
            }
            StopAction::PowerOff => {
                info!(target: "vmm", "microVM {name}: powered off by the node");
                return Some(Ended::Killed);
            }
        }
    }
    None
}
