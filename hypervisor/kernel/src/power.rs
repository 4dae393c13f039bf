//! The power task: the kernel's `"power"` endpoint (`catenary_ipc::power`).
//!
//! At boot [`init`] arms the ACPI fixed-hardware power button (`catenary_arch::power`). The
//! task polls it every [`POLL_NS`] and latches a press; the service that runs the orderly
//! shutdown (`apid`: leave the cluster, drain, wait for the replicas to stop) asks
//! `LABEL_BUTTON` on its tick and ends with `LABEL_POWER_OFF`. If no service has done so
//! [`power::SHUTDOWN_GRACE_MS`] after the press, the task switches the machine off itself:
//! the kernel never depends on a ring-3 service to honour the button.

use crate::task;
use catenary_ipc::{power, Message};
use log::{info, warn};

/// How often the button's status bit is read (one port read: nothing measurable).
const POLL_NS: u64 = 100_000_000;

/// Arm the power button (once, at boot, after the ACPI tables were read).
pub fn init(rsdp: Option<u64>) {
    let Some(rsdp) = rsdp else { return warn!(target: "power", "no ACPI: no power button, no soft-off") };
    match catenary_arch::power::init(rsdp) {
        Ok(p) => info!(target: "power", "power button armed (PM1a event {:#x}, control {:#x}{}); soft-off {}",
            p.pm1a_event, p.pm1a_control, if p.acpi_enabled_now { ", ACPI mode entered" } else { "" },
            match p.s5 { Some((a, b)) => alloc::format!("\\_S5 SLP_TYP {a}/{b}"), None => "unavailable (no plain \\_S5): a press makes the node leave, then it stays up".into() }),
        Err(e) => warn!(target: "power", "no power button: {:?}", e),
    }
}

/// Start the task (before the supervisor: services that send to `"power"` wait for it).
pub fn start() {
    if task::try_spawn_kernel("power", catenary_sched::Priority::DRIVER, catenary_sched::Affinity::ANY, run, 0).is_err() {
        // (apid, which sends to this endpoint, is then refused its start: a node that cannot
        // find 8 pages for a kernel stack at boot has no room for apid either)
        log::error!(target: "power", "no memory for the power task: the power button is ignored and apid cannot start");
        task::supervisor::provide_endpoint("power", None);
    }
}

fn service_name(badge: u64) -> &'static str {
    badge.checked_sub(1).and_then(|i| catenary_manifest::SERVICES.get(i as usize)).map(|s| s.name).unwrap_or("?")
}

/// Switch off; if the machine is still running afterwards, say so.
fn off(why: &str) {
    info!(target: "power", "powering off (ACPI S5): {why}");
    catenary_arch::power::power_off();
    warn!(target: "power", "the machine did not switch off (no plain \\_S5, or firmware ignored it): switch it off by hand");
}

fn run(_: u64) {
    let Ok((slot, ep)) = task::try_create_endpoint_for_current(8) else {
        log::error!(target: "power", "no room for the power endpoint: the power button is ignored and apid cannot start");
        return task::supervisor::provide_endpoint("power", None);
    };
    task::supervisor::provide_endpoint("power", Some(ep));
    let mut pressed_at: Option<u64> = None;
    let mut forced = false;
    loop {
        if let Ok(m) = task::recv(slot, POLL_NS) {
            let answer = match m.label {
                power::LABEL_BUTTON => {
                    let ms = pressed_at.map(|t| (catenary_arch::time::now_ns().saturating_sub(t)) / 1_000_000).unwrap_or(0);
                    Message::new(0, [pressed_at.is_some() as u64, ms, 0, 0])
                }
                // only after a press: a confused (or taken-over) service cannot switch the
                // node off by itself
                power::LABEL_POWER_OFF if pressed_at.is_some() => {
                    off(&alloc::format!("{} finished the orderly shutdown", service_name(m.badge)));
                    Message::new(power::ERR_NO_SOFT_OFF, [0; 4])
                }
                power::LABEL_POWER_OFF => {
                    warn!(target: "power", "{} asked to switch off, but the power button was not pressed: refused", service_name(m.badge));
                    Message::new(power::ERR_NOT_PRESSED, [0; 4])
                }
                _ => Message::new(power::ERR_UNKNOWN, [0; 4]),
            };
            let _ = task::reply(m.reply, answer);
        }
        let now = catenary_arch::time::now_ns();
        if pressed_at.is_none() && catenary_arch::power::take_button_press() {
            pressed_at = Some(now);
            info!(target: "power", "power button pressed: orderly shutdown (apid leaves the cluster and drains this node; off within {} s at most)",
                power::SHUTDOWN_GRACE_MS / 1000);
        }
        if let Some(t) = pressed_at {
            if !forced && now.saturating_sub(t) > power::SHUTDOWN_GRACE_MS * 1_000_000 {
                forced = true;
                off(&alloc::format!("no service finished the orderly shutdown within {} s of the power button", power::SHUTDOWN_GRACE_MS / 1000));
            }
        }
    }
}
