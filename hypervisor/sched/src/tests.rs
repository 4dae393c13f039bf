use super::*;
use alloc::vec;
use alloc::vec::Vec;

fn sched(cpus: usize) -> Scheduler<()> {
    let mut s = Scheduler::new(cpus);
    for c in 0..cpus {
        s.set_online(c, true);
    }
    s
}

fn spawn(s: &mut Scheduler<()>, p: Priority, a: Affinity) -> TaskId {
    let id = s.create("t", p, a, ());
    s.wake(id).unwrap();
    id
}

#[test]
fn highest_priority_first_then_round_robin() {
    let mut s = sched(1);
    let a = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    let b = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    let h = spawn(&mut s, Priority::HIGH, Affinity::ANY);
    assert_eq!(s.switch(0), Some(h));
    s.block(h, BlockReason::Sleep, None).unwrap();
    assert_eq!(s.switch(0), Some(a));
    assert_eq!(s.switch(0), Some(b));
    assert_eq!(s.switch(0), Some(a));
    assert_eq!(s.task(b).unwrap().state, TaskState::Ready);
}

#[test]
fn timeslice_preemption_only_for_equal_or_higher() {
    let mut s = sched(1);
    let a = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    assert_eq!(s.switch(0), Some(a));
    for _ in 0..10 {
        assert!(!s.tick(0), "alone: never preempted");
    }
    let _low = spawn(&mut s, Priority::LOW, Affinity::ANY);
    for _ in 0..10 {
        assert!(!s.tick(0), "lower priority never preempts");
    }
    let b = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    let mut n = 0;
    while !s.tick(0) {
        n += 1;
    }
    assert!(n < TIMESLICE_TICKS as usize);
    assert_eq!(s.switch(0), Some(b));
    let h = s.create("h", Priority::HIGH, Affinity::ANY, ());
    let w = s.wake(h).unwrap();
    assert!(w.preempt);
    assert!(s.should_preempt(0) && s.tick(0));
}

#[test]
fn wake_spreads_over_cpus_and_respects_affinity() {
    let mut s = sched(4);
    let ids: Vec<TaskId> = (0..8).map(|_| spawn(&mut s, Priority::NORMAL, Affinity::ANY)).collect();
    for c in 0..4 {
        assert_eq!(s.queue_len(c), 2, "cpu {c}");
    }
    let pinned = s.create("p", Priority::NORMAL, Affinity::only(3), ());
    assert_eq!(s.wake(pinned).unwrap().cpu, 3);
    assert_eq!(ids.len(), 8);
}

#[test]
fn idle_cpu_steals_but_not_against_affinity() {
    let mut s = sched(2);
    let p = s.create("p", Priority::NORMAL, Affinity::only(0), ());
    s.wake(p).unwrap();
    let q = s.create("q", Priority::NORMAL, Affinity::only(0), ());
    s.wake(q).unwrap();
    assert_eq!(s.switch(1), None, "cpu 1 may not run tasks pinned to 0");
    let free = s.create("f", Priority::NORMAL, Affinity::ANY, ());
    s.set_online(1, false);
    s.wake(free).unwrap();
    s.set_online(1, true);
    assert_eq!(s.task(free).unwrap().cpu, 0);
    assert_eq!(s.switch(1), Some(free));
    assert_eq!(s.task(free).unwrap().state, TaskState::Running(1));
}

#[test]
fn sleep_queue_expires_in_deadline_order() {
    let mut s = sched(1);
    let a = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    let b = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    let c = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    s.block(a, BlockReason::Sleep, Some(300)).unwrap();
    s.block(b, BlockReason::Recv(1), Some(100)).unwrap();
    s.block(c, BlockReason::Sleep, None).unwrap();
    assert_eq!(s.next_deadline(), Some(100));
    assert_eq!(s.expire(50), vec![]);
    assert_eq!(s.expire(300), vec![b, a]);
    assert_eq!(s.expire(10_000), vec![]);
    s.wake(b).unwrap();
    assert_eq!(s.switch(0), Some(b));
}

#[test]
fn wake_before_deadline_removes_timer() {
    let mut s = sched(1);
    let a = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    s.block(a, BlockReason::Recv(3), Some(500)).unwrap();
    s.wake(a).unwrap();
    assert_eq!(s.expire(1000), vec![]);
    assert_eq!(s.wake(a), Err(SchedError::BadState), "double wake refused");
}

#[test]
fn kill_and_reap() {
    let mut s = sched(1);
    let a = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    let b = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    assert_eq!(s.switch(0), Some(a));
    assert_eq!(s.kill(b), Ok(TaskState::Ready));
    assert_eq!(s.kill(a), Ok(TaskState::Running(0)));
    assert!(s.reap(a).is_none(), "still current on cpu 0");
    assert_eq!(s.switch(0), None);
    assert!(s.reap(a).is_some() && s.reap(b).is_some());
    assert!(s.task(a).is_none());
}

/// The idlest CPU may be one no queued task may use (CPU 0 for vCPU tasks on QEMU TCG): balancing
/// then moves work to the next idlest CPU instead of giving up.
#[test]
fn balance_skips_an_idle_cpu_the_tasks_may_not_use() {
    let mut s = sched(3);
    s.set_online(2, false);
    let not_cpu0 = Affinity(!1);
    let ids: Vec<TaskId> = (0..6).map(|_| spawn(&mut s, Priority::NORMAL, not_cpu0)).collect();
    assert_eq!(s.queue_len(1), 6);
    s.set_online(2, true);
    let moves = s.balance();
    assert!(!moves.is_empty(), "nothing moved to CPU 2");
    assert_eq!(s.queue_len(0), 0);
    assert_eq!((s.queue_len(1), s.queue_len(2)), (3, 3));
    for (_, from, to) in moves {
        assert_eq!((from, to), (1, 2));
    }
    for id in ids {
        assert_ne!(s.task(id).unwrap().cpu, 0);
    }
}

#[test]
fn balance_moves_load_to_idle_cpus() {
    let mut s = sched(4);
    for c in 1..4 {
        s.set_online(c, false);
    }
    let ids: Vec<TaskId> = (0..8).map(|_| spawn(&mut s, Priority::NORMAL, Affinity::ANY)).collect();
    assert_eq!(s.queue_len(0), 8);
    for c in 1..4 {
        s.set_online(c, true);
    }
    let moves = s.balance();
    assert!(!moves.is_empty());
    for c in 0..4 {
        assert_eq!(s.queue_len(c), 2, "cpu {c}");
    }
    for id in ids {
        let t = s.task(id).unwrap();
        assert!(s.queue_len(t.cpu) > 0);
    }
}

#[test]
fn adopt_running_context() {
    let mut s = sched(2);
    let boot = s.adopt_running(0, "boot", Priority::NORMAL, ());
    assert_eq!(s.current(0), Some(boot));
    s.block(boot, BlockReason::Sleep, Some(10)).unwrap();
    assert_eq!(s.switch(0), None);
    assert_eq!(s.expire(10), vec![boot]);
    let w = s.wake(boot).unwrap();
    assert_eq!(w, Wake { cpu: 0, preempt: true });
    assert_eq!(s.switch(0), Some(boot));
}

#[test]
fn randomized_invariants() {
    let mut s = sched(3);
    let mut x: u64 = 0xdead_beef;
    let mut ids = Vec::new();
    for i in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 6 {
            0 => ids.push(spawn(&mut s, Priority((x >> 8) as u8 % 8), Affinity::ANY)),
            1 => {
                s.switch((x >> 16) as usize % 3);
            }
            2 => {
                if let Some(&id) = ids.get((x >> 20) as usize % ids.len().max(1)) {
                    let _ = s.block(id, BlockReason::Sleep, Some(i));
                }
            }
            3 => {
                for id in s.expire(i) {
                    let _ = s.wake(id);
                }
            }
            4 => {
                s.tick((x >> 12) as usize % 3);
            }
            _ => {
                s.balance();
            }
        }
        // Each Ready task sits in exactly one queue; each Running task is current somewhere.
        let queued: usize = (0..3).map(|c| s.queue_len(c)).sum();
        let ready = s.tasks().filter(|t| t.state == TaskState::Ready).count();
        assert_eq!(queued, ready);
        for t in s.tasks() {
            if let TaskState::Running(c) = t.state {
                assert_eq!(s.current(c), Some(t.id));
            }
        }
    }
}

/// A caller that just blocked (still its CPU's `current` until the switch) is no load: the
/// server it wakes, last run there, stays on that CPU (no IPI to another one) and is told to
/// preempt (the CPU is about to pick). Before, the blocked caller counted as load and the
/// server went to the idle CPU 1.
#[test]
fn blocked_caller_is_not_load() {
    let mut s = sched(2);
    let server = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    assert_eq!(s.switch(0), Some(server));
    s.block(server, BlockReason::Recv(1), None).unwrap();
    let caller = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    assert_eq!(s.switch(0), Some(caller));
    s.block(caller, BlockReason::Reply(9), None).unwrap();
    assert_eq!(s.current(0), Some(caller), "the caller is current until the switch");
    assert_eq!(s.wake(server).unwrap(), Wake { cpu: 0, preempt: true });
    assert_eq!(s.switch(0), Some(server));
}

/// Priorities hold across CPUs: a woken task goes to the CPU running the lowest priority
/// below its own and preempts it, rather than queueing behind a higher priority on its last
/// CPU while another CPU runs background work.
#[test]
fn woken_task_preempts_the_lowest_priority_cpu() {
    let mut s = sched(3);
    let hi = s.create("hi", Priority::HIGH, Affinity::only(0), ());
    s.wake(hi).unwrap();
    let normal = s.create("n", Priority::NORMAL, Affinity::only(1), ());
    s.wake(normal).unwrap();
    let low = s.create("low", Priority::LOW, Affinity::only(2), ());
    s.wake(low).unwrap();
    for c in 0..3 {
        s.switch(c);
    }
    let t = s.create("t", Priority::NORMAL, Affinity::ANY, ());
    // last ran on CPU 0 (created there), which runs HIGH; CPU 2 runs LOW
    assert_eq!(s.task(t).unwrap().cpu, 0);
    assert_eq!(s.wake(t).unwrap(), Wake { cpu: 2, preempt: true });
    assert_eq!(s.switch(2), Some(t));
    // A DRIVER task: CPUs 1 and 2 both top out at NORMAL (CPU 2 runs NORMAL with LOW
    // queued); the first of them is preempted.
    let d = s.create("d", Priority::DRIVER, Affinity::ANY, ());
    assert_eq!(s.wake(d).unwrap(), Wake { cpu: 1, preempt: true });
    // A task that outranks nothing goes to the least loaded CPU and waits its turn.
    let bg = s.create("bg", Priority::LOW, Affinity::ANY, ());
    assert_eq!(s.wake(bg).unwrap(), Wake { cpu: 0, preempt: false });
}

/// The IPC fastpath's direct switch: the blocked caller's CPU goes straight to the waiting
/// receiver (no queue), with its deadline cleared; refused when a higher priority is ready
/// there, when the receiver may not run there, or when either is not blocked.
#[test]
fn hand_over_switches_directly_or_refuses() {
    let mut s = sched(2);
    let server = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    assert_eq!(s.switch(0), Some(server));
    s.block(server, BlockReason::Recv(1), Some(500)).unwrap();
    let caller = spawn(&mut s, Priority::NORMAL, Affinity::ANY);
    assert_eq!(s.switch(0), Some(caller));
    assert_eq!(s.hand_over(0, caller, server), Err(SchedError::BadState), "the caller still runs");
    s.block(caller, BlockReason::Reply(7), None).unwrap();
    let pinned = s.create("p", Priority::NORMAL, Affinity::only(1), ());
    assert_eq!(s.hand_over(0, caller, pinned), Err(SchedError::BadState), "not allowed on cpu 0");
    assert_eq!(s.hand_over(1, caller, server), Err(SchedError::BadState), "not cpu 1's current");
    let high = s.create("h", Priority::HIGH, Affinity::only(0), ());
    s.wake(high).unwrap();
    assert_eq!(s.hand_over(0, caller, server), Err(SchedError::BadState), "a higher priority is ready");
    s.kill(high).unwrap();
    assert_eq!(s.hand_over(0, caller, server), Ok(()));
    assert_eq!((s.current(0), s.task(server).unwrap().state), (Some(server), TaskState::Running(0)));
    assert_eq!(s.task(server).unwrap().deadline, None);
    assert!(s.expire(1_000).is_empty(), "the deadline left the sleep queue");
    assert_eq!(s.queue_len(0), 0);
    // and back on the reply: the server blocks in receive, the caller runs
    s.block(server, BlockReason::Recv(1), None).unwrap();
    assert_eq!(s.hand_over(0, server, caller), Ok(()));
    assert_eq!(s.current(0), Some(caller));
    assert_eq!(s.hand_over(0, caller, caller), Err(SchedError::BadState));
}
