//! The power task (`crate::power`) refuses what no press asked for, and the power button is
//! armed once per boot. Nobody presses the button during `ktest`: a `LABEL_POWER_OFF` that
//! the task did not refuse would switch QEMU off (its DSDT has a plain `\_S5`), and the run
//! would end without its `ktest: N passed` line.

use alloc::format;
use alloc::string::String;
use catenary_arch::time;
use catenary_ipc::{power, Message};

use crate::init::Node;
use crate::task::{self, supervisor};

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// Before a press: `LABEL_BUTTON` says not pressed, `LABEL_POWER_OFF` is refused
/// (`ERR_NOT_PRESSED`) and the node keeps running, an unknown label gets `ERR_UNKNOWN`; a
/// second `catenary_arch::power::init` is refused (`AlreadyDone`) without touching a port.
pub fn power_off_refused_before_a_press(node: &Node) -> Result<(), String> {
    let end = time::now_ns() + 5_000_000_000;
    let ep = loop {
        if let Some(ep) = supervisor::kernel_endpoint("power") {
            break ep;
        }
        check(time::now_ns() < end, || "the power task provided no endpoint within 5 s".into())?;
        task::sleep_ns(10_000_000);
    };
    let slot = task::try_give_current(task::send_cap(ep, 0)).map_err(crate::ktest::cap_err)?;
    let ask = |label: u64| task::call_timeout(slot, Message::new(label, [0; 4]), 5_000).map_err(|e| format!("label {label}: {e:?}"));
    let b = ask(power::LABEL_BUTTON)?;
    check(b.label == 0 && b.words[0] == 0, || format!("LABEL_BUTTON before any press: {b:?}"))?;
    let off = ask(power::LABEL_POWER_OFF)?;
    check(off.label == power::ERR_NOT_PRESSED, || format!("LABEL_POWER_OFF before a press answered {off:?}, not ERR_NOT_PRESSED"))?;
    let u = ask(0x7777)?;
    check(u.label == power::ERR_UNKNOWN, || format!("an unknown label answered {u:?}"))?;
    // (still here: the node did not switch off)
    let rsdp = node.boot.rsdp.or_else(catenary_arch::boot::scan_rsdp).ok_or("no RSDP")?;
    match catenary_arch::power::init(rsdp) {
        Err(catenary_arch::power::PowerProblem::AlreadyDone) => Ok(()),
        r => Err(format!("a second power::init: {r:?}")),
    }
}
