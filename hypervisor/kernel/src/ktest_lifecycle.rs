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
