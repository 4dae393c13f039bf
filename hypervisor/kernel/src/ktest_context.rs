//! Saved task contexts own what their frames run on (issue 10 item 1, "what arch exports as
//! safe must be sound"; `catenary_arch::context`): a killed kernel task's stack goes back with
//! its context at once, leaving no frame that could run on it; a ring-3 context cannot start
//! in the kernel half; the registers of a kernel task stopped in a system call may be written
//! without breaking it.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};
use catenary_arch::context::{BadUserFrame, TaskContext};
use catenary_arch::paging;
use catenary_sched::{Affinity, Priority, TaskId};

use crate::init::Node;
use crate::task;

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

const MS: u64 = 1_000_000;

fn sleeper(_: u64) {
    task::sleep_ns(60_000 * MS);
}

/// Wait (at most 2 s) until `id` is blocked; its saved context then.
fn blocked(id: TaskId) -> Result<(bool, u64), String> {
    let end = catenary_arch::time::now_ns() + 2_000 * MS;
    loop {
        if let Some(c) = task::saved_context_for_test(id) {
            return Ok(c);
        }
        if catenary_arch::time::now_ns() > end {
            return Err(format!("task {id} never blocked"));
        }
        task::sleep_ns(MS);
    }
}

/// A kernel task killed while blocked: its saved context held its stack (the frame runs on
/// it), and killing it frees the stack there and then — with the context, so the task, its
/// frame and the stack are gone together and nothing is left that could load the frame. The
/// stack was kept in a separate list before, freed at a later tick, while the frame was a
/// `Copy` value anyone could have kept.
pub fn ctx_killed_task_frees_stack_with_frame(_: &Node) -> Result<(), String> {
    let id = task::try_spawn_kernel("ctx-sleeper", Priority::NORMAL, Affinity::ANY, sleeper, 0).map_err(|e| format!("spawn: {e:?}"))?;
    let (owns, vector) = blocked(id)?;
    check(owns, || "a blocked kernel task's saved context does not hold its stack".into())?;
    check(vector == catenary_arch::uspace::KSYSCALL_VECTOR as u64, || format!("blocked kernel task saved at vector {vector:#x}, not in a system call"))?;
    let live = paging::kernel_stacks_live();
    check(task::kill_for_test(id), || "could not kill the sleeper".into())?;
    let after = paging::kernel_stacks_live();
    check(after + 1 == live, || format!("{live} kernel stacks before the kill, {after} right after: the dead task's stack was not freed with it"))?;
    check(!task::task_exists(id), || "the killed task (and its frame) is still there".into())?;
    check(task::kernel_stacks_pending() == 0, || "a dead task still holds a kernel stack".into())
}

/// A ring-3 context cannot be made to start in the kernel half: the constructor refuses a
/// kernel or non-canonical RIP or RSP, and a program whose ELF entry point is a kernel address
/// is refused by `spawn_user` (it got a ring-3 frame pointing into the kernel before).
pub fn ctx_user_frame_refuses_kernel_half(_: &Node) -> Result<(), String> {
    let kernel_fn = ctx_user_frame_refuses_kernel_half as *const () as u64;
    check(matches!(TaskContext::user(kernel_fn, 0x7fff_0000, 0), Err(BadUserFrame::Rip(_))), || format!("a user context at kernel RIP {kernel_fn:#x} was made"))?;
    check(matches!(TaskContext::user(0x40_0000, 0xffff_8000_0000_0000, 0), Err(BadUserFrame::Rsp(_))), || "a user context with a kernel stack pointer was made".into())?;
    check(matches!(TaskContext::user(0x0000_8000_0000_1000, 0x7fff_0000, 0), Err(BadUserFrame::Rip(_))), || "a user context at a non-canonical RIP was made".into())?;
    let ok = TaskContext::user(0x40_0000, 0x7fff_0000, 0).map_err(|e| format!("a plain user context refused: {e:?}"))?;
    check(ok.frame().is_user() && ok.frame().cs() == 0x23 && ok.frame().ss() == 0x1b && ok.frame().rflags() == 0x202, || format!("user frame {:?}", ok.frame()))?;
    // the whole path: an ELF whose entry point is in the kernel half
    let mut elf = alloc::vec::Vec::from(task::UAPP_ELF);
    elf[24..32].copy_from_slice(&kernel_fn.to_le_bytes());
    let before = crate::ktest::free_frames_settled();
    let spec = task::UserSpec {
        name: "ctx-kentry",
        elf: &elf,
        arg: 0,
        prio: Priority::NORMAL,
        affinity: Affinity::ANY,
        own_endpoint: false,
        caps: &[],
        ports: &[],
        mmio: &[],
        dma_pages: 0,
        mem_pages: task::DEFAULT_MEM_PAGES,
    };
    match task::spawn_user(&spec) {
        Err(task::SpawnError::BadElf) => {}
        Err(e) => return Err(format!("refused, but as {e:?}")),
        Ok((id, _)) => {
            let code = task::join(id, 2_000 * MS);
            return Err(format!("a task with entry point {kernel_fn:#x} was started (exit {code:?})"));
        }
    }
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames not back after the refused spawn", before as i64 - after as i64))
}

static SUM: AtomicU64 = AtomicU64::new(0);
/// The sleep `busy_sleeper` is in (1-based).
static ROUND: AtomicU64 = AtomicU64::new(0);

/// Locals live across kernel system calls (sleeps); the result is checked by the test.
fn busy_sleeper(seed: u64) {
    let mut acc = seed;
    let mut xs = [0u64; 6];
    for (i, x) in xs.iter_mut().enumerate() {
        ROUND.store(i as u64 + 1, Ordering::SeqCst);
        task::sleep_ns(50 * MS);
        acc = acc.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 + 1);
        *x = acc ^ (i as u64) << 3;
    }
    SUM.store(xs.iter().fold(acc, |a, x| a.rotate_left(7) ^ x), Ordering::SeqCst);
}

fn expected(seed: u64) -> u64 {
    let mut acc = seed;
    let mut xs = [0u64; 6];
    for (i, x) in xs.iter_mut().enumerate() {
        acc = acc.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 + 1);
        *x = acc ^ (i as u64) << 3;
    }
    xs.iter().fold(acc, |a, x| a.rotate_left(7) ^ x)
}

/// The registers of a kernel task stopped in a system call are the kernel's to set (safe code
/// may write them through `TaskContext`): every general register but rax is overwritten with
/// garbage at each of its sleeps, and it still computes the right answer and exits. `ksyscall`
/// kept rbx, rbp, r14 and r15 live across `int 0x80` before (garbage there crashed the node).
pub fn ctx_kernel_syscall_regs_writable(_: &Node) -> Result<(), String> {
    const SEED: u64 = 0x1234_5678;
    SUM.store(0, Ordering::SeqCst);
    ROUND.store(0, Ordering::SeqCst);
    let id = task::try_spawn_kernel("ctx-scribbled", Priority::NORMAL, Affinity::ANY, busy_sleeper, SEED).map_err(|e| format!("spawn: {e:?}"))?;
    let (mut scribbled, mut done) = (0u64, 0);
    let end = catenary_arch::time::now_ns() + 5_000 * MS;
    while task::task_exists(id) && catenary_arch::time::now_ns() < end {
        // once per sleep, while it sleeps
        let round = ROUND.load(Ordering::SeqCst);
        if round != done && task::scribble_saved_regs_for_test(id, 0xdead_beef_0bad_f00d ^ scribbled) {
            scribbled += 1;
            done = round;
        }
        task::sleep_ns(MS);
    }
    let code = task::join(id, 2_000 * MS).ok_or("the scribbled task did not end")?;
    check(code == 0, || format!("the scribbled task exited with {code:#x}"))?;
    let (got, want) = (SUM.load(Ordering::SeqCst), expected(SEED));
    check(got == want, || format!("result {got:#x}, want {want:#x}: registers it kept across a system call were changed"))?;
    check(scribbled >= 3, || format!("only {scribbled} of its 6 sleeps scribbled"))
}
