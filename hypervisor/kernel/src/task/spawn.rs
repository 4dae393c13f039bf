//! Creating kernel and ring-3 tasks, and giving the calling task endpoints and capabilities.

use super::*;

pub(super) fn kernel_task_start(_: u64) {
    let entry = with(|k| {
        let me = k.sched.current(smp::cpu_index()).unwrap();
        k.sched.task(me).and_then(|t| t.context.kentry)
    });
    if let Some((f, arg)) = entry {
        f(arg);
    }
    uspace::ksyscall(SYS_EXIT, [0; 6]);
}

/// Start a kernel task running `f(arg)` (boot code: no memory for its stack stops the node;
/// [`try_spawn_kernel`] returns the error instead).
pub fn spawn_kernel(name: &str, prio: Priority, aff: Affinity, f: fn(u64), arg: u64) -> TaskId {
    try_spawn_kernel(name, prio, aff, f, arg).expect("kernel task stack")
}

/// Start a kernel task running `f(arg)`; `NoMemory` when its stack cannot be allocated.
pub fn try_spawn_kernel(name: &str, prio: Priority, aff: Affinity, f: fn(u64), arg: u64) -> Result<TaskId, SpawnError> {
    let stack = paging::alloc_kernel_stack(8).map_err(|_| SpawnError::NoMemory)?;
    extern "C" fn tramp(a: u64) -> ! {
        kernel_task_start(a);
        unreachable!("SYS_EXIT returned")
    }
    // the context owns the stack from here: it is freed with the context (task reaped) or,
    // while the task runs, by the CPU that runs it once it switches away for good
    let mut ctx = Ctx::new(TaskContext::kernel(tramp, stack, 0));
    ctx.kentry = Some((f, arg));
    Ok(with(|k| {
        let id = k.sched.create(name, prio, aff, ctx);
        wake(k, id);
        id
    }))
}

#[derive(Debug)]
#[allow(dead_code)] // the payload is for Debug output in error reports
pub enum SpawnError {
    BadElf,
    NoMemory,
    Cap(IpcError),
}

/// What a new ring-3 task gets.
pub struct UserSpec<'a> {
    pub name: &'a str,
    pub elf: &'a [u8],
    pub arg: u64,
    pub prio: Priority,
    pub affinity: Affinity,
    /// Give the task an endpoint of its own in slot 0 (receive + send).
    pub own_endpoint: bool,
    /// Further capabilities, in slot order.
    pub caps: &'a [Capability],
    /// I/O ports it may use.
    pub ports: &'a [u16],
    /// Physical MMIO ranges (base, len) it may map (uncached) with `map_mmio`.
    pub mmio: &'a [(u64, u64)],
    /// How many pages of DMA memory it may allocate with `dma_alloc`.
    pub dma_pages: u64,
    /// Its memory quota: pages it may take with `map` and `dma_alloc`, page tables included
    /// (its program image and stack are not charged; unmapping them gives at most their size
    /// back). [`DEFAULT_MEM_PAGES`] is a start.
    pub mem_pages: u64,
}

/// The program image and the stack of a new task.
fn load_image(space: &mut AddressSpace, frames: &mut alloc::collections::BTreeSet<u64>, elf: &[u8]) -> Result<u64, SpawnError> {
    let entry = load_elf(space, frames, elf)?;
    for i in 0..USER_STACK_PAGES {
        let fr = memory::FreshFrame::alloc().map_err(|_| SpawnError::NoMemory)?;
        frames.insert(space.map_fresh_frame(USER_STACK_TOP - (i + 1) * 4096, fr, true, false).map_err(|_| SpawnError::NoMemory)?);
    }
    Ok(entry)
}

/// A task that will not start (or has ended): its frames and page tables go back.
pub(super) fn discard(space: AddressSpace, frames: alloc::collections::BTreeSet<u64>) {
    for fr in frames {
        let _ = memory::free_user_frame(fr);
    }
    space.destroy();
}

/// Load an embedded program into a fresh address space and start it. Returns the task and its
/// endpoint (when `own_endpoint`).
pub fn spawn_user(s: &UserSpec) -> Result<(TaskId, Option<EndpointId>), SpawnError> {
    spawn_user_with(s, None, &mut |_, _| {})
}

/// [`spawn_user`] for a supervised service: the task adopts the held endpoint `adopt` in slot
/// 0 (see `supervisor`), and `created` runs under the kernel lock before the task can run.
pub(super) fn spawn_user_with(s: &UserSpec, adopt: Option<EndpointId>, created: &mut dyn FnMut(&mut Kernel, TaskId)) -> Result<(TaskId, Option<EndpointId>), SpawnError> {
    let mut space = AddressSpace::new().map_err(|_| SpawnError::NoMemory)?;
    let mut frames = alloc::collections::BTreeSet::new();
    let entry = match load_image(&mut space, &mut frames, s.elf) {
        Ok(e) => e,
        Err(e) => {
            discard(space, frames);
            return Err(e);
        }
    };
    let frame = match TaskContext::user(entry, USER_STACK_TOP, s.arg) {
        Ok(c) => c,
        Err(_) => {
            discard(space, frames);
            return Err(SpawnError::BadElf); // an entry point outside the user half
        }
    };
    let mut ctx = Ctx::new(frame);
    ctx.space = Some(space);
    ctx.frames = frames;
    if !s.ports.is_empty() {
        ctx.io = Some(uspace::io_bitmap_for(s.ports));
    }
    ctx.mmio = s.mmio.to_vec();
    ctx.dma_left = s.dma_pages;
    ctx.mem_left = s.mem_pages;
    with(|k| {
        let id = k.sched.create(s.name, s.prio, s.affinity, ctx);
        // Its capabilities; if they do not fit, the half-made task goes away with its memory.
        let setup = |k: &mut Kernel| -> Result<Option<EndpointId>, SpawnError> {
        let mut ep = None;
        if s.own_endpoint {
            let e = k.ipc.create_endpoint(id, catenary_ipc::DEFAULT_CAPACITY);
            let cap = Capability { target: Address::local(e), rights: Rights::SEND.union(Rights::RECV), badge: 0 };
            k.sched.task_mut(id).unwrap().context.caps.insert(cap).map_err(SpawnError::Cap)?;
            ep = Some(e);
        }
        if let Some(e) = adopt {
            if !k.ipc.adopt_endpoint(e, id) {
                return Err(SpawnError::Cap(IpcError::NoEndpoint));
            }
            let cap = Capability { target: Address::local(e), rights: Rights::SEND.union(Rights::RECV), badge: 0 };
            k.sched.task_mut(id).unwrap().context.caps.insert(cap).map_err(SpawnError::Cap)?;
            ep = Some(e);
        }
        for c in s.caps {
            k.sched.task_mut(id).unwrap().context.caps.insert(*c).map_err(SpawnError::Cap)?;
        }
        Ok(ep)
        };
        match setup(k) {
            Ok(ep) => {
                created(k, id);
                wake(k, id);
                Ok((id, ep))
            }
            Err(e) => {
                let _ = k.ipc.task_died(id);
                let _ = k.sched.kill(id);
                reap_dead(k, id);
                Err(e)
            }
        }
    })
}

/// A send capability for endpoint `ep` with `badge`.
pub fn send_cap(ep: EndpointId, badge: u64) -> Capability {
    Capability { target: Address::local(ep), rights: Rights::SEND, badge }
}

/// Give the calling task a new endpoint; returns (slot, endpoint), or `TableFull` when its
/// capability table has no free slot (then no endpoint is created).
pub fn try_create_endpoint_for_current(capacity: usize) -> Result<(usize, EndpointId), IpcError> {
    with(|k| {
        let me = k.sched.current(smp::cpu_index()).ok_or(IpcError::NoEndpoint)?;
        if !k.sched.task(me).ok_or(IpcError::NoEndpoint)?.context.caps.has_room() {
            return Err(IpcError::TableFull);
        }
        let e = k.ipc.create_endpoint(me, capacity);
        let cap = Capability { target: Address::local(e), rights: Rights::SEND.union(Rights::RECV), badge: 0 };
        let slot = k.sched.task_mut(me).ok_or(IpcError::NoEndpoint)?.context.caps.insert(cap)?;
        Ok((slot, e))
    })
}

/// Put a capability into the calling task's table; returns the slot, or `TableFull`.
pub fn try_give_current(c: Capability) -> Result<usize, IpcError> {
    with(|k| {
        let me = k.sched.current(smp::cpu_index()).ok_or(IpcError::NoEndpoint)?;
        k.sched.task_mut(me).ok_or(IpcError::NoEndpoint)?.context.caps.insert(c)
    })
}

/// [`try_create_endpoint_for_current`] for `net.rs`'s boot-time setup only (it moves to ring
/// 3 with netd, issue 10 item 4): panics when the table is full. Everything else uses the
/// `try_` form.
pub fn create_endpoint_for_current(capacity: usize) -> (usize, EndpointId) {
    try_create_endpoint_for_current(capacity).expect("capability table full")
}

/// [`try_give_current`] for `net.rs` (see [`create_endpoint_for_current`]).
pub fn give_current(c: Capability) -> usize {
    try_give_current(c).expect("capability table full")
}

/// Drop capability `slot` from the calling task's table (tests that hand out many).
pub fn drop_current(slot: usize) {
    with(|k| {
        if let Some(me) = k.sched.current(smp::cpu_index()) {
            let _ = k.sched.task_mut(me).map(|t| t.context.caps.remove(slot));
        }
    })
}

#[cfg_attr(feature = "ktest", allow(dead_code))]
pub fn current_task() -> TaskId {
    with(|k| k.sched.current(smp::cpu_index()).unwrap_or(0))
}
