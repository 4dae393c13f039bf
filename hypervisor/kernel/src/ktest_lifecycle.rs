//! Task lifecycle and bounded kernel resources (issue 10 items 1–3): a full capability table
//! is an error for the caller, not a panic; a kernel task's stack goes back when it has died.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};
use catenary_ipc::{IpcError, Message};
use catenary_sched::{Affinity, Priority};

use crate::init::Node;
use crate::task;

const SEC: u64 = 1_000_000_000;

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// What `cap_filler` saw: slots it got, then bit 0 = `give` refused with `TableFull`, bit 1 =
/// endpoint creation refused with `TableFull`, bit 2 = after freeing one slot an endpoint
/// fits again.
static FILLED: AtomicU64 = AtomicU64::new(0);
static OUTCOME: AtomicU64 = AtomicU64::new(0);

fn cap_filler(_: u64) {
    let cap = task::send_cap(task::echo_endpoint(), 1);
    let mut n = 0u64;
    let mut out = 0u64;
    loop {
        match task::try_give_current(cap) {
            Ok(_) => n += 1,
            Err(IpcError::TableFull) => {
                out |= 1;
                break;
            }
            Err(_) => break,
        }
        if n > 1000 {
            break; // no bound at all
        }
    }
    if task::try_create_endpoint_for_current(4) == Err(IpcError::TableFull) {
        out |= 2;
    }
    task::drop_current(0);
    if task::try_create_endpoint_for_current(4).is_ok() {
        out |= 4;
    }
    FILLED.store(n, Ordering::SeqCst);
    OUTCOME.store(out, Ordering::SeqCst);
}

/// A kernel task fills its 64-slot capability table: the next capability and the next
/// endpoint are refused with `TableFull` (they panicked the node before), a freed slot is
/// usable again, and the node (the echo service) carries on.
pub fn caps_table_full_is_an_error(_: &Node) -> Result<(), String> {
    OUTCOME.store(0, Ordering::SeqCst);
    let id = task::try_spawn_kernel("cap-filler", Priority::NORMAL, Affinity::ANY, cap_filler, 0).map_err(|e| format!("{e:?}"))?;
    task::join(id, 10 * SEC).ok_or("the filler did not end")?;
    let (n, out) = (FILLED.load(Ordering::SeqCst), OUTCOME.load(Ordering::SeqCst));
    check(n == 64, || format!("{n} capabilities fitted a 64-slot table"))?;
    check(out == 7, || format!("outcome {out:#b} (want 0b111: give refused, endpoint refused, room after a drop)"))?;
    let slot = task::try_give_current(task::send_cap(task::echo_endpoint(), 1)).map_err(crate::ktest::cap_err)?;
    let r = task::call(slot, Message::new(1, [10, 0, 0, 0])).map_err(|e| format!("echo afterwards: {e:?}"))?;
    task::drop_current(slot);
    check(r.words[0] == 11, || format!("echo answered {r:?}"))
}

fn noop(_: u64) {}

/// Kernel tasks that end give their stacks back: after a warm-up task (the heap's own
/// growth), 20 kernel tasks spawned and joined one after the other (each on any CPU) leave
/// the free-frame count where it was. Each leaked its 8-frame stack before.
pub fn kernel_task_stacks_freed(_: &Node) -> Result<(), String> {
    const N: u64 = 20;
    let once = || -> Result<(), String> {
        let id = task::try_spawn_kernel("stack-cycle", Priority::NORMAL, Affinity::ANY, noop, 0).map_err(|e| format!("spawn: {e:?}"))?;
        task::join(id, 5 * SEC).ok_or("a kernel task did not end")?;
        // its stack's addresses are reused once every CPU has flushed its TLB (ticks)
        let end = catenary_arch::time::now_ns() + SEC;
        while (task::kernel_stacks_pending() > 0 || catenary_arch::paging::stack_slots_waiting() > 0) && catenary_arch::time::now_ns() < end {
            task::sleep_ns(1_000_000);
        }
        Ok(())
    };
    once()?;
    let before = crate::ktest::free_frames_settled();
    let slots_before = catenary_arch::paging::stack_slots_free();
    for _ in 0..N {
        once()?;
    }
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames not back after {N} kernel tasks ended ({} per task)", before as i64 - after as i64, (before as i64 - after as i64) / N as i64))?;
    check(task::kernel_stacks_pending() == 0, || "dead kernel stacks still pending".into())?;
    // one task at a time: each reuses a freed stack's addresses (else the stack region
    // grows, and with it the page tables): the list of freed slots does not grow
    let slots = catenary_arch::paging::stack_slots_free();
    check(slots <= slots_before, || format!("{slots} freed stack slots kept, {slots_before} before: addresses not reused"))
}
