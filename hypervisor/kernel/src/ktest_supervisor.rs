//! The supervisor restarts a killed service, and capabilities to the service keep working.

use alloc::format;
use alloc::string::String;
use catenary_arch::time;
use catenary_ipc::Message;

use crate::init::Node;
use crate::task::{self, supervisor};

const SEC: u64 = 1_000_000_000;

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// Kill the supervisor `supd` itself: the kernel restarts it on the same endpoint, the new
/// incarnation adopts the running services (its `LABEL_QUERY` answer names echo's current
/// task and the kernel's restart count), and it restarts a service killed afterwards.
/// `echo` is killed with it (one hold of the kernel lock, after supd's death): its death
/// notice waits on the held endpoint and the new supd is told of it (its answer counts one
/// death of echo) as well as restarting it.
pub fn supervisor_restarted_after_death(node: &Node) -> Result<(), String> {
    let (old, restarts_before) = supervisor::supervisor_task();
    let old = old.ok_or("no supervisor running")?;
    let echo_before = supervisor::service_task("echo").ok_or("echo is not a running service")?;
    let echo_restarts = supervisor::service_restarts("echo");
    // Both under one hold of the kernel lock: supd's death, then echo's while no supd is
    // registered (the spawner needs the lock to start the next one).
    let end = time::now_ns() + 5 * SEC;
    while !task::kill_two_for_test(old, echo_before) {
        check(time::now_ns() < end, || "supd and echo were never both off their CPUs long enough to be killed".into())?;
        task::yield_now();
    }
    check(supervisor::service_task("echo").is_none(), || "echo still registered after the kill".into())?;
    let end = time::now_ns() + 10 * SEC;
    let new = loop {
        // (none registered until the spawner's backoff has passed)
        if let (Some(t), n) = supervisor::supervisor_task() {
            if t != old || n != restarts_before {
                check(t != old && n == restarts_before + 1, || format!("supervisor task {t} after {n} restarts"))?;
                break t;
            }
        }
        check(time::now_ns() < end, || "the supervisor was not restarted within 10 s".into())?;
        task::sleep_ns(10_000_000);
    };
    let supd = supervisor::supervisor_endpoint().ok_or("no supervisor endpoint")?;
    let q = task::try_give_current(task::send_cap(supd, 0)).map_err(crate::ktest::cap_err)?;
    let idx = catenary_manifest::index_of(catenary_manifest::SERVICES, "echo").ok_or("echo not in the manifest")? as u64;
    let end = time::now_ns() + 5 * SEC;
    loop {
        let a = task::call(q, Message::new(catenary_ipc::supervisor::LABEL_QUERY, [idx, 0, 0, 0])).map_err(|e| format!("query the new supd: {e:?}"))?;
        // (the kernel's echo now: the adoption request may have started it after the query above)
        let (echo, restarts) = (supervisor::service_task("echo").unwrap_or(0), supervisor::service_restarts("echo"));
        if a.words[1] == echo && a.words[0] == restarts as u64 && a.words[2] == 1 && restarts == echo_restarts + 1 && echo != echo_before {
            break;
        }
        check(time::now_ns() < end, || format!("new supd (task {new}) says echo is task {} after {} restarts, {} deaths told (want 1); kernel: task {echo} (killed {echo_before}), {restarts} restarts (before {echo_restarts})", a.words[1], a.words[0], a.words[2]))?;
        task::sleep_ns(10_000_000);
    }
    task::drop_current(q);
    // the new supervisor restarts a service that dies now
    supervisor_restarts_echo(node)
}

/// Kill the `echo` service: a call made through the capability taken before the kill, while
/// `echo` is down, is answered by the incarnation the supervisor starts; the kernel and the
/// supervisor (asked with `LABEL_QUERY`) both count one more restart.
pub fn supervisor_restarts_echo(_: &Node) -> Result<(), String> {
    let slot = task::try_give_current(task::send_cap(task::echo_endpoint(), 1)).map_err(crate::ktest::cap_err)?;
    let r = task::call(slot, Message::new(1, [10, 0, 0, 0])).map_err(|e| format!("echo before the kill: {e:?}"))?;
    check(r.words[0] == 11, || format!("echo answered {r:?}"))?;
    let old = supervisor::service_task("echo").ok_or("echo is not a running service")?;
    let before = supervisor::service_restarts("echo");
    let end = time::now_ns() + 5 * SEC;
    while !task::kill_for_test(old) {
        check(time::now_ns() < end, || "echo never stopped running long enough to be killed".into())?;
        task::yield_now();
    }
    check(supervisor::service_task("echo").is_none(), || "echo still registered after the kill".into())?;
    // echo is down: this call waits on its held endpoint for the next incarnation
    let r = task::call(slot, Message::new(1, [20, 0, 0, 0])).map_err(|e| format!("echo after the kill: {e:?}"))?;
    check(r.words[0] == 21, || format!("restarted echo answered {r:?}"))?;
    let new = supervisor::service_task("echo").ok_or("echo not running after its restart")?;
    check(new != old, || "the same task answered".into())?;
    let restarts = supervisor::service_restarts("echo");
    check(restarts == before + 1, || format!("kernel counts {restarts} restarts, expected {}", before + 1))?;
    let supd = supervisor::supervisor_endpoint().ok_or("no supervisor")?;
    let q = task::try_give_current(task::send_cap(supd, 0)).map_err(crate::ktest::cap_err)?;
    let idx = catenary_manifest::index_of(catenary_manifest::SERVICES, "echo").ok_or("echo not in the manifest")? as u64;
    // supd learns the new task from the spawner's answer, which may still be on its way
    let end = time::now_ns() + 5 * SEC;
    loop {
        let a = task::call(q, Message::new(catenary_ipc::supervisor::LABEL_QUERY, [idx, 0, 0, 0])).map_err(|e| format!("query: {e:?}"))?;
        if a.words[0] == restarts as u64 && a.words[1] == new {
            return Ok(());
        }
        check(time::now_ns() < end, || format!("supd says restarts {} task {}, kernel {} task {}", a.words[0], a.words[1], restarts, new))?;
        task::sleep_ns(10_000_000);
    }
}
