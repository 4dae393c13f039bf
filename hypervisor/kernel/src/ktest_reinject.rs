//! In-kernel test: an event interrupted in the middle of its delivery is delivered again exactly
//! as the CPU would have delivered it (docs/vmm.md, "Events interrupted mid-delivery").
//!
//! The guest (testguests/reinject.S) takes int3, `int 0x80`, #UD and a PIT interrupt (injected
//! by the VMM) each onto a stack in a RAM chunk it has never touched, so every delivery takes a
//! nested page fault (lazy guest RAM) half-way; its handlers check the return address the CPU
//! pushed. An interrupt the VMM does not deliver again is lost for good (the 8259 already
//! acknowledged it) and the guest reports it missing. (A software interrupt re-injected without
//! NRIPS returns to the INT instruction itself on hardware; QEMU happens to push the right
//! address, so that part only guards the re-execution path.)

use alloc::format;
use alloc::string::String;

use catenary_vmm::cpu::StopReason;

use crate::init::Node;
use crate::vm::{Ended, Image, HOSTILE_LOAD, REINJECT_GUEST};

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

pub fn vm_event_redelivered_after_nested_fault(_: &Node) -> Result<(), String> {
    let r = crate::vm::run("reinject", Image::Raw { code: REINJECT_GUEST, load: HOSTILE_LOAD, arg: 0 }, 16);
    crate::vm::report("reinject", &r);
    for ev in ["int3", "int 0x80", "ud2", "irq0"] {
        let line = format!("reinject: {ev} ok");
        check(r.console.iter().any(|l| l.trim_end() == line), || format!("missing `{line}`; console {:?}", r.console))?;
    }
    check(matches!(r.ended, Ended::Stopped(StopReason::PowerOff { .. })), || format!("ended {:?}", r.ended))?;
    // The four stacks sit in chunks 1-4, which only the deliveries touched (SVM maps RAM lazily).
    check(r.touched_bytes >= 10 << 20, || format!("only {} bytes of guest RAM touched", r.touched_bytes))?;
    Ok(())
}
