//! `catenary-sched`: the scheduler's policy and bookkeeping as plain safe Rust, tested on the
//! host. The kernel owns one [`Scheduler`] (behind a lock) and calls it from the timer
//! interrupt, the syscall path and the IPC wake-ups; the machine part (saving registers,
//! switching address spaces) lives in `catenary-arch` and the kernel's `task.rs`.
//!
//! # Core types
//!
//! * [`Tcb`] — thread control block: id, name, [`TaskState`], [`Priority`], [`Affinity`], the
//!   CPU it last ran on, accounting, and the machine context `C` (for the kernel: the saved
//!   trap frame + FXSAVE area, the page-table root and the I/O bitmap).
//! * [`TaskState`] — `Ready` (in exactly one run queue), `Running(cpu)`, `Blocked` (sleep,
//!   IPC receive, call: with an optional deadline in the sleep queue) and `Dead`.
//! * Per-CPU run queues: one FIFO per priority level per CPU; `pick_next` takes the highest
//!   priority, round robin within a level, and steals from the busiest CPU when its own queue
//!   is empty (respecting affinity). `wake` places a task on an idle allowed CPU, else on the
//!   CPU running the lowest priority below its own (priorities hold across CPUs), else on the
//!   least loaded (its last CPU first when equal), and says whether that CPU should be
//!   preempted (the woken task outranks what runs there, or it idles). A task that has just
//!   blocked and is still its CPU's `current` counts as neither load nor priority there.
//! * The sleep queue: `(deadline, task)` ordered; `expire(now)` returns tasks whose timeout
//!   passed, which the kernel wakes with a timeout result.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

pub type TaskId = u64;
pub type CpuId = usize;

/// Priority levels: 0 (lowest, background) .. `PRIORITIES - 1` (highest, interrupt service).
pub const PRIORITIES: usize = 8;
/// Timer ticks a task may run before a task of the same priority gets the CPU.
pub const TIMESLICE_TICKS: u32 = 2;
pub const MAX_CPUS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Priority(pub u8);

impl Priority {
    pub const IDLE: Priority = Priority(0);
    pub const LOW: Priority = Priority(1);
    pub const NORMAL: Priority = Priority(3);
    pub const HIGH: Priority = Priority(5);
    pub const DRIVER: Priority = Priority(6);
    pub const fn level(self) -> usize {
        if (self.0 as usize) < PRIORITIES { self.0 as usize } else { PRIORITIES - 1 }
    }
}

/// CPUs a task may run on (bit n = CPU n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affinity(pub u64);

impl Affinity {
    pub const ANY: Affinity = Affinity(u64::MAX);
    pub const fn only(cpu: CpuId) -> Affinity {
        Affinity(1 << cpu)
    }
    pub fn allows(self, cpu: CpuId) -> bool {
        cpu < 64 && self.0 & (1 << cpu) != 0
    }
}

/// Why a task is blocked (the kernel interprets the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    Sleep,
    /// Receiving on an endpoint.
    Recv(u64),
    /// Waiting for the reply to call token.
    Reply(u64),
    /// Waiting for another task to exit.
    Join(TaskId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Ready,
    Running(CpuId),
    Blocked(BlockReason),
    Dead,
}

#[derive(Debug, Clone)]
pub struct Tcb<C> {
    pub id: TaskId,
    pub name: String,
    pub state: TaskState,
    pub priority: Priority,
    pub affinity: Affinity,
    /// CPU the task last ran on (or was queued on).
    pub cpu: CpuId,
    /// Deadline (ns) of a blocking operation with timeout.
    pub deadline: Option<u64>,
    pub ticks_left: u32,
    /// Times the task was switched in.
    pub dispatches: u64,
    pub context: C,
}

#[derive(Debug, Clone, Default)]
struct RunQueue {
    levels: [VecDeque<TaskId>; PRIORITIES],
    len: usize,
}

impl RunQueue {
    fn push(&mut self, id: TaskId, p: Priority) {
        self.levels[p.level()].push_back(id);
        self.len += 1;
    }
    fn top_priority(&self) -> Option<usize> {
        (0..PRIORITIES).rev().find(|l| !self.levels[*l].is_empty())
    }
    fn pop(&mut self) -> Option<TaskId> {
        let l = self.top_priority()?;
        self.len -= 1;
        self.levels[l].pop_front()
    }
    fn remove(&mut self, id: TaskId) -> bool {
        for l in self.levels.iter_mut() {
            if let Some(i) = l.iter().position(|t| *t == id) {
                l.remove(i);
                self.len -= 1;
                return true;
            }
        }
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedError {
    NoSuchTask,
    BadState,
    NoCpu,
}

/// Result of waking a task: where it was queued, and whether that CPU should reschedule now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    pub cpu: CpuId,
    pub preempt: bool,
}

pub struct Scheduler<C> {
    tasks: BTreeMap<TaskId, Tcb<C>>,
    queues: Vec<RunQueue>,
    current: Vec<Option<TaskId>>,
    online: Vec<bool>,
    sleepers: BTreeSet<(u64, TaskId)>,
    next_id: TaskId,
}

impl<C> Scheduler<C> {
    pub fn new(cpus: usize) -> Scheduler<C> {
        let cpus = cpus.clamp(1, MAX_CPUS);
        Scheduler {
            tasks: BTreeMap::new(),
            queues: (0..cpus).map(|_| RunQueue::default()).collect(),
            current: alloc::vec![None; cpus],
            online: alloc::vec![false; cpus],
            sleepers: BTreeSet::new(),
            next_id: 1,
        }
    }

    pub fn cpus(&self) -> usize {
        self.queues.len()
    }
    pub fn set_online(&mut self, cpu: CpuId, on: bool) {
        if let Some(o) = self.online.get_mut(cpu) {
            *o = on;
        }
    }
    pub fn is_online(&self, cpu: CpuId) -> bool {
        self.online.get(cpu).copied().unwrap_or(false)
    }

    pub fn task(&self, id: TaskId) -> Option<&Tcb<C>> {
        self.tasks.get(&id)
    }
    pub fn task_mut(&mut self, id: TaskId) -> Option<&mut Tcb<C>> {
        self.tasks.get_mut(&id)
    }
    pub fn tasks(&self) -> impl Iterator<Item = &Tcb<C>> {
        self.tasks.values()
    }
    /// Change where a task may run. A running or queued task keeps its place until it next
    /// blocks or is preempted; it is then placed on an allowed CPU (`cpu_for`).
    pub fn set_affinity(&mut self, id: TaskId, affinity: Affinity) -> Result<(), SchedError> {
        self.tasks.get_mut(&id).ok_or(SchedError::NoSuchTask)?.affinity = affinity;
        Ok(())
    }

    pub fn affinity(&self, id: TaskId) -> Option<Affinity> {
        self.tasks.get(&id).map(|t| t.affinity)
    }

    pub fn current(&self, cpu: CpuId) -> Option<TaskId> {
        self.current.get(cpu).copied().flatten()
    }
    pub fn queue_len(&self, cpu: CpuId) -> usize {
        self.queues.get(cpu).map(|q| q.len).unwrap_or(0)
    }

    /// Create a task in state Blocked(Join(0)) — not runnable until `wake`/`start`.
    pub fn create(&mut self, name: &str, priority: Priority, affinity: Affinity, context: C) -> TaskId {
        let id = self.next_id;
        self.next_id += 1;
        let cpu = (0..self.cpus()).find(|c| affinity.allows(*c)).unwrap_or(0);
        self.tasks.insert(
            id,
            Tcb {
                id,
                name: String::from(name),
                state: TaskState::Blocked(BlockReason::Join(0)),
                priority,
                affinity,
                cpu,
                deadline: None,
                ticks_left: TIMESLICE_TICKS,
                dispatches: 0,
                context,
            },
        );
        id
    }

    /// Register a context that is already running on `cpu` (the boot or idle context).
    pub fn adopt_running(&mut self, cpu: CpuId, name: &str, priority: Priority, context: C) -> TaskId {
        let id = self.create(name, priority, Affinity::only(cpu), context);
        let t = self.tasks.get_mut(&id).unwrap();
        t.state = TaskState::Running(cpu);
        t.cpu = cpu;
        self.current[cpu] = Some(id);
        id
    }

    /// The task `cpu` runs, if it still runs: a task that just blocked stays `current` until
    /// its CPU switches away, but is no load and holds no priority there.
    fn running_on(&self, cpu: CpuId) -> Option<&Tcb<C>> {
        self.current[cpu].and_then(|c| self.tasks.get(&c)).filter(|t| t.state == TaskState::Running(cpu))
    }

    /// Queued tasks + the running one (if it still runs).
    fn load(&self, cpu: CpuId) -> usize {
        self.queues[cpu].len + self.running_on(cpu).map_or(0, |_| 1)
    }

    /// Where a woken `t` goes: an idle CPU (nothing running or queued; its last CPU first);
    /// else the CPU whose highest priority (running or queued) is the lowest of all and below
    /// `t`'s, to preempt it (priorities hold across CPUs, not only within one); else the least
    /// loaded CPU (its last CPU when equally loaded).
    fn cpu_for(&self, t: &Tcb<C>) -> Option<CpuId> {
        let allowed = |c: &CpuId| t.affinity.allows(*c) && (self.online[*c] || t.affinity == Affinity::only(*c));
        let cpus = || (0..self.cpus()).filter(allowed);
        let least_loaded = cpus().min_by_key(|&c| (self.load(c), c != t.cpu, c))?;
        if self.load(least_loaded) == 0 {
            return Some(least_loaded);
        }
        let top = |c: CpuId| {
            let run = self.running_on(c).map(|r| r.priority.level());
            let queued = self.queues[c].top_priority();
            run.max(queued).unwrap_or(0)
        };
        let weakest = cpus().filter(|&c| top(c) < t.priority.level()).min_by_key(|&c| (top(c), c != t.cpu, c));
        Some(weakest.unwrap_or(least_loaded))
    }

    /// Make a blocked (or new) task runnable. Clears its deadline.
    pub fn wake(&mut self, id: TaskId) -> Result<Wake, SchedError> {
        let t = self.tasks.get(&id).ok_or(SchedError::NoSuchTask)?;
        if !matches!(t.state, TaskState::Blocked(_)) {
            return Err(SchedError::BadState);
        }
        let cpu = self.cpu_for(t).ok_or(SchedError::NoCpu)?;
        let prio = t.priority;
        if let Some(d) = t.deadline {
            self.sleepers.remove(&(d, id));
        }
        let t = self.tasks.get_mut(&id).unwrap();
        t.deadline = None;
        t.state = TaskState::Ready;
        t.cpu = cpu;
        self.queues[cpu].push(id, prio);
        let preempt = match self.running_on(cpu) {
            None => true,
            Some(cur) => cur.priority < prio,
        };
        Ok(Wake { cpu, preempt })
    }

    /// Block the task running on its CPU (or a ready one), optionally until `deadline` (ns).
    pub fn block(&mut self, id: TaskId, why: BlockReason, deadline: Option<u64>) -> Result<(), SchedError> {
        let t = self.tasks.get_mut(&id).ok_or(SchedError::NoSuchTask)?;
        match t.state {
            TaskState::Running(_) => {}
            TaskState::Ready => {
                let cpu = t.cpu;
                self.queues[cpu].remove(id);
            }
            _ => return Err(SchedError::BadState),
        }
        let t = self.tasks.get_mut(&id).unwrap();
        t.state = TaskState::Blocked(why);
        t.deadline = deadline;
        if let Some(d) = deadline {
            self.sleepers.insert((d, id));
        }
        Ok(())
    }

    /// Direct switch (the IPC fastpath): `cpu`'s current task `from` has just blocked (a call,
    /// or a reply-and-receive) and `to`, blocked waiting for it, takes the CPU without passing
    /// through the run queue. Refused (nothing changes) unless `from` is `cpu`'s current and
    /// blocked, `to` is blocked and may run on `cpu`, and no ready task of `cpu` outranks `to`
    /// (the direct switch never bypasses a higher priority). Clears `to`'s deadline.
    pub fn hand_over(&mut self, cpu: CpuId, from: TaskId, to: TaskId) -> Result<(), SchedError> {
        if self.current.get(cpu).copied().flatten() != Some(from) || from == to {
            return Err(SchedError::BadState);
        }
        let f = self.tasks.get(&from).ok_or(SchedError::NoSuchTask)?;
        let t = self.tasks.get(&to).ok_or(SchedError::NoSuchTask)?;
        if !matches!(f.state, TaskState::Blocked(_)) || !matches!(t.state, TaskState::Blocked(_)) || !t.affinity.allows(cpu) {
            return Err(SchedError::BadState);
        }
        if self.queues[cpu].top_priority().is_some_and(|l| l > t.priority.level()) {
            return Err(SchedError::BadState);
        }
        if let Some(d) = t.deadline {
            self.sleepers.remove(&(d, to));
        }
        let t = self.tasks.get_mut(&to).unwrap();
        t.deadline = None;
        t.state = TaskState::Running(cpu);
        t.cpu = cpu;
        t.dispatches += 1;
        if t.ticks_left == 0 {
            t.ticks_left = TIMESLICE_TICKS;
        }
        self.current[cpu] = Some(to);
        Ok(())
    }

    /// Mark a task dead and take it out of every queue. Its TCB stays until `reap`.
    pub fn kill(&mut self, id: TaskId) -> Result<TaskState, SchedError> {
        let t = self.tasks.get_mut(&id).ok_or(SchedError::NoSuchTask)?;
        let old = t.state;
        if let Some(d) = t.deadline.take() {
            self.sleepers.remove(&(d, id));
        }
        t.state = TaskState::Dead;
        if old == TaskState::Ready {
            let cpu = self.tasks[&id].cpu;
            self.queues[cpu].remove(id);
        }
        Ok(old)
    }

    /// Drop a dead task's TCB (after its CPU has switched away from it).
    pub fn reap(&mut self, id: TaskId) -> Option<Tcb<C>> {
        match self.tasks.get(&id) {
            Some(t) if t.state == TaskState::Dead && !self.current.contains(&Some(id)) => self.tasks.remove(&id),
            _ => None,
        }
    }

    /// Tasks whose deadline is at or before `now`, removed from the sleep queue (their state is
    /// unchanged: the kernel decides the result and calls `wake`).
    pub fn expire(&mut self, now: u64) -> Vec<TaskId> {
        let mut out = Vec::new();
        while let Some(&(d, id)) = self.sleepers.iter().next() {
            if d > now {
                break;
            }
            self.sleepers.remove(&(d, id));
            if let Some(t) = self.tasks.get_mut(&id) {
                t.deadline = None;
            }
            out.push(id);
        }
        out
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.sleepers.iter().next().map(|s| s.0)
    }

    /// Timer tick on `cpu`: charge the running task; true if it should be preempted.
    pub fn tick(&mut self, cpu: CpuId) -> bool {
        let Some(cur) = self.current(cpu) else {
            return self.queue_len(cpu) > 0 || self.stealable(cpu);
        };
        let top = self.queues[cpu].top_priority();
        let t = self.tasks.get_mut(&cur).unwrap();
        t.ticks_left = t.ticks_left.saturating_sub(1);
        match top {
            Some(l) if l > t.priority.level() => true,
            Some(l) if l == t.priority.level() => t.ticks_left == 0,
            _ => false,
        }
    }

    fn stealable(&self, cpu: CpuId) -> bool {
        (0..self.cpus()).any(|c| c != cpu && self.queues[c].len > 0)
    }

    /// Whether a task that became ready on `cpu` outranks the running one.
    pub fn should_preempt(&self, cpu: CpuId) -> bool {
        let top = self.queues[cpu].top_priority();
        match (self.current(cpu).and_then(|c| self.tasks.get(&c)), top) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(t), Some(l)) => l > t.priority.level(),
        }
    }

    /// Put the running task of `cpu` back in its queue (preemption or yield) if it is still
    /// Running; then pick the next task. `None` means run the idle loop.
    pub fn switch(&mut self, cpu: CpuId) -> Option<TaskId> {
        if let Some(cur) = self.current[cpu].take() {
            if let Some(t) = self.tasks.get_mut(&cur) {
                if t.state == TaskState::Running(cpu) {
                    t.state = TaskState::Ready;
                    t.ticks_left = TIMESLICE_TICKS;
                    let p = t.priority;
                    self.queues[cpu].push(cur, p);
                }
            }
        }
        let next = self.queues[cpu].pop().or_else(|| self.steal(cpu));
        if let Some(id) = next {
            let t = self.tasks.get_mut(&id).unwrap();
            t.state = TaskState::Running(cpu);
            t.cpu = cpu;
            t.dispatches += 1;
            if t.ticks_left == 0 {
                t.ticks_left = TIMESLICE_TICKS;
            }
        }
        self.current[cpu] = next;
        next
    }

    /// Take the highest-priority task this CPU may run from the busiest other CPU.
    fn steal(&mut self, cpu: CpuId) -> Option<TaskId> {
        let mut victims: Vec<CpuId> = (0..self.cpus()).filter(|c| *c != cpu && self.queues[*c].len > 0).collect();
        victims.sort_by_key(|c| core::cmp::Reverse(self.queues[*c].len));
        for v in victims {
            for l in (0..PRIORITIES).rev() {
                let found = self.queues[v].levels[l].iter().position(|id| self.tasks[id].affinity.allows(cpu));
                if let Some(i) = found {
                    let id = self.queues[v].levels[l].remove(i).unwrap();
                    self.queues[v].len -= 1;
                    return Some(id);
                }
            }
        }
        None
    }

    /// Periodic balancing: move a queued task from the busiest CPU to the idlest CPU its
    /// affinity allows while the difference is two or more. Returns the moves (task, from, to).
    /// (The idlest CPU overall may be one no queued task may use, e.g. CPU 0 for vCPU tasks
    /// on QEMU TCG: then the next idlest is tried.)
    pub fn balance(&mut self) -> Vec<(TaskId, CpuId, CpuId)> {
        let mut moves = Vec::new();
        for _ in 0..self.cpus() * 4 {
            let load = |s: &Self, c: CpuId| s.load(c);
            let mut cpus: Vec<CpuId> = (0..self.cpus()).filter(|c| self.online[*c]).collect();
            let Some(&hi) = cpus.iter().max_by_key(|c| load(self, **c)) else { break };
            cpus.sort_by_key(|c| (load(self, *c), *c));
            let mut moved = None;
            'find: for &lo in cpus.iter().filter(|lo| **lo != hi) {
                if load(self, hi) < load(self, lo) + 2 {
                    break;
                }
                for l in 0..PRIORITIES {
                    for (i, id) in self.queues[hi].levels[l].iter().enumerate() {
                        if self.tasks[id].affinity.allows(lo) {
                            moved = Some((l, i, *id, lo));
                            break 'find;
                        }
                    }
                }
            }
            let Some((l, i, id, lo)) = moved else { break };
            self.queues[hi].levels[l].remove(i);
            self.queues[hi].len -= 1;
            let p = self.tasks[&id].priority;
            self.queues[lo].push(id, p);
            self.tasks.get_mut(&id).unwrap().cpu = lo;
            moves.push((id, hi, lo));
        }
        moves
    }
}

#[cfg(test)]
mod tests;
