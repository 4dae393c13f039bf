//! `SYS_VM`: the workload service's control of microVMs (docs/workloads.md; records in
//! `catenary_workload::vmctl`). Only mechanism lives here: create a microVM from a verified
//! image in the store (`vmstore`), power it off, and queue what the guest did (log lines,
//! READY, the init's EXIT report, the end) for the service, bounded. Names, restarts,
//! admission and logs are the service's.
//!
//! Authority: every operation needs a capability with the VMCTL right on the caller's own
//! endpoint, which the spawner mints only for the manifest's `vm_control` service (`workd`).
//! VMs belong to that endpoint, which outlives the service (the supervisor holds it while the
//! service is down). When the service dies its VMs keep running and their events keep
//! queueing for [`ADOPT_GRACE_NS`]: the restarted service asks for them (`OP_LIVE`, with the
//! tag it gave each one, `OP_TAG`) and adopts them; VMs nobody adopted by then are powered off
//! (the `vm-orphans` kernel task). The image store's uploads (`OP_IMAGE_*`, `vmstore`) also
//! belong to the endpoint.
//! Stop, signal, kill and the power-off deadline (`OP_DEADLINE`, the cluster lease's fence,
//! which holds while the owner is dead or hung) go through each VM's `VmControl`
//! (`vmcontrol`), which its vCPU task applies between exits.

use super::*;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use catenary_workload::logring::Stream;
use catenary_workload::spec::{valid_name, ARGS_MAX, ENTRY_MAX, ENV_MAX, MEMORY_MAX_MIB, MEMORY_MIN_MIB};
use catenary_workload::vmctl::*;
use catenary_workload::Digest;
use crate::vmcontrol::{ControlError, VmControl};
use core::sync::atomic::{AtomicU64, Ordering};

struct VmRec {
    owner: EndpointId,
    ctl: Arc<VmControl>,
    touched: Arc<AtomicU64>,
    /// The owner's bytes for this VM (`OP_TAG`), returned by `OP_LIVE`.
    tag: Vec<u8>,
    ready: bool,
    /// Its init reported HEALTHY (returned by `OP_LIVE`, so an adopting owner knows).
    healthy: bool,
    created_ns: u64,
    /// The owner died at this time and nobody adopted the VM yet.
    orphaned_ns: Option<u64>,
}

/// How long the VMs of a dead workload service wait to be adopted before they are powered off.
pub const ADOPT_GRACE_NS: u64 = 120_000_000_000;
static REAPER: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

#[derive(Default)]
struct Queue {
    events: VecDeque<VmEvent>,
    log_bytes: usize,
    /// Log bytes dropped per VM since its last queued line.
    lost: BTreeMap<VmHandle, u64>,
}

#[derive(Default)]
pub struct VmCtl {
    vms: BTreeMap<VmHandle, VmRec>,
    queues: BTreeMap<EndpointId, Queue>,
    next: VmHandle,
}

/// What a VM's task needs to start (taken by the task).
struct Launch {
    name: String,
    mem_mib: u64,
    vcpus: u8,
    image: Arc<crate::vmstore::ImageBytes>,
    args: Option<Vec<String>>,
    health: Option<catenary_workload::spec::HealthCheck>,
    env: Vec<String>,
    /// The workload service's network link slot (`catenary_workload::net`).
    net: Option<u8>,
    ctl: Arc<VmControl>,
    touched: Arc<AtomicU64>,
}

/// How long a workload VM's task waits for its network link (netd up, the last run's link
/// gone, room among the links) before it gives up.
const NET_WAIT_NS: u64 = 30_000_000_000;

static LAUNCH: spin::Mutex<BTreeMap<VmHandle, Launch>> = spin::Mutex::new(BTreeMap::new());

fn bad() -> u64 {
    ERR_BAD_ARG.wrapping_neg()
}

/// The caller and its endpoint, if capability `slot` carries VMCTL for an endpoint it owns.
fn owner_of(k: &Kernel, slot: usize) -> Result<(TaskId, EndpointId), u64> {
    let me = k.sched.current(smp::cpu_index()).ok_or(err(IpcError::NoCapability))?;
    let cap = k.sched.task(me).ok_or(err(IpcError::NoCapability))?.context.caps.check(slot, Rights::VMCTL).map_err(err)?;
    if !cap.target.is_local() || k.ipc.endpoint(cap.target.endpoint).map(|e| e.owner) != Some(me) {
        return Err(err(IpcError::NoRight));
    }
    Ok((me, cap.target.endpoint))
}

fn space(k: &Kernel, me: TaskId) -> Result<&AddressSpace, u64> {
    k.sched.task(me).and_then(|t| t.context.space.as_ref()).ok_or_else(bad)
}

fn copy_out(k: &Kernel, me: TaskId, ptr: u64, len: u64, data: &[u8]) -> Result<u64, u64> {
    if (data.len() as u64) > len {
        return Err(bad());
    }
    let r = UserRange::new(ptr, data.len() as u64).map_err(|_| bad())?;
    space(k, me)?.copy_to_user(r, data).map_err(|_| bad())?;
    Ok(data.len() as u64)
}

/// Most vCPUs one workload microVM may have here: the backend's limit (8; 1 on VMX without unrestricted guest:
/// `virt::max_vcpus_per_vm`), and no more than the CPUs vCPU tasks may run on (all but CPU 0
/// under QEMU TCG, `vm::vcpu_affinity`): more vCPUs than CPUs only time-share one guest's CPUs
/// and make its spinlocks wait for preempted holders.
pub fn max_vcpus() -> u8 {
    let cpus = smp::online_cpus();
    let usable = (crate::vm::vcpu_affinity(cpus).0 & (1u64.checked_shl(cpus as u32).unwrap_or(0).wrapping_sub(1))).count_ones();
    catenary_arch::virt::max_vcpus_per_vm().min(usable.clamp(1, 255) as u8)
}

/// `SYS_VM(slot, op, buf, len, arg)`.
pub(super) fn sys_vm(f: &mut TrapFrame) {
    let (slot, op, ptr, len, arg) = (f.rdi as usize, f.rsi, f.rdx, f.r10, f.r8);
    crate::vmstore::expire(catenary_arch::time::now_ns());
    let r: Result<u64, u64> = match op {
        OP_INFO => (|| {
            with(|k| owner_of(k, slot))?;
            let st = memory::stats();
            let vms = with(|k| k.vmctl.vms.len()) as u32;
            let info = NodeInfo {
                free_bytes: st.free_bytes(),
                total_bytes: st.total_bytes(),
                cpus: smp::online_cpus() as u32,
                max_vcpus: max_vcpus(),
                images: crate::vmstore::list().len() as u32,
                vms,
                autostart: crate::vmstore::autostart(),
            };
            let rec = encode(&info).ok_or_else(bad)?;
            with(|k| {
                let (me, _) = owner_of(k, slot)?;
                copy_out(k, me, ptr, len, &rec)
            })
        })(),
        OP_IMAGES => (|| {
            with(|k| owner_of(k, slot))?;
            let rec = encode(&crate::vmstore::list()).ok_or_else(bad)?;
            with(|k| {
                let (me, _) = owner_of(k, slot)?;
                copy_out(k, me, ptr, len, &rec)
            })
        })(),
        OP_CREATE => create(slot, ptr, len),
        OP_KILL | OP_SIGNAL | OP_STOP => with(|k| {
            let (_, ep) = owner_of(k, slot)?;
            let v = k.vmctl.vms.get(&arg).filter(|v| v.owner == ep).ok_or_else(bad)?;
            let r = match op {
                OP_KILL => v.ctl.request_kill(),
                OP_STOP => v.ctl.request_stop(len.saturating_mul(1_000_000)),
                _ => v.ctl.request_signal(u8::try_from(len).unwrap_or(0)),
            };
            match r {
                Ok(()) => Ok(0),
                Err(ControlError::NoInit) => Err(ERR_UNSUPPORTED.wrapping_neg()),
                Err(ControlError::BadSignal | ControlError::Ended) => Err(bad()),
            }
        }),
        OP_TOUCHED => with(|k| {
            let (_, ep) = owner_of(k, slot)?;
            let v = k.vmctl.vms.get(&arg).filter(|v| v.owner == ep).ok_or_else(bad)?;
            Ok(v.touched.load(Ordering::Relaxed))
        }),
        OP_EVENTS => take_events(slot, ptr, len),
        OP_NET => (|| {
            with(|k| owner_of(k, slot))?;
            let a = crate::net::node_fabric_address().ok_or(ERR_UNSUPPORTED.wrapping_neg())?;
            with(|k| {
                let (me, _) = owner_of(k, slot)?;
                copy_out(k, me, ptr, len, &a.octets())
            })
        })(),
        OP_IMAGE_BEGIN | OP_IMAGE_WRITE | OP_IMAGE_COMMIT | OP_IMAGE_ABORT | OP_IMAGE_REMOVE | OP_STORE => image_op(slot, op, ptr, len, arg),
        OP_IMAGE_READ => image_read(slot, ptr, len, arg),
        OP_TAG => tag(slot, ptr, len, arg),
        // only the VM's owner (its endpoint's VMCTL holder) moves its deadline
        OP_DEADLINE => with(|k| {
            let (_, ep) = owner_of(k, slot)?;
            let v = k.vmctl.vms.get(&arg).filter(|v| v.owner == ep).ok_or_else(bad)?;
            v.ctl.set_deadline(len).map(|()| 0).map_err(|_| bad())
        }),
        OP_LIVE => live(slot, ptr, len),
        _ => Err(bad()),
    };
    f.rax = r.unwrap_or_else(|e| e);
}

/// `len` bytes of the caller's memory at `ptr` (at most `max`).
fn copy_in(slot: usize, ptr: u64, len: u64, max: usize) -> Result<Vec<u8>, u64> {
    if len as usize > max {
        return Err(bad());
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(len as usize).map_err(|_| ERR_NO_MEMORY.wrapping_neg())?;
    buf.resize(len as usize, 0);
    with(|k| {
        let (me, _) = owner_of(k, slot)?;
        let r = UserRange::new(ptr, len).map_err(|_| bad())?;
        space(k, me)?.copy_from_user(r, &mut buf).map_err(|_| bad())
    })?;
    Ok(buf)
}

fn store_err(e: crate::vmstore::StoreErr) -> u64 {
    use crate::vmstore::StoreErr as E;
    match e {
        E::Invalid => ERR_IMAGE_INVALID,
        E::InUse | E::Busy => ERR_IN_USE,
        E::Quota => ERR_QUOTA,
        E::TooManyUploads => ERR_TOO_MANY_UPLOADS,
        E::NoUpload => ERR_NO_UPLOAD,
        E::NoSuchImage => ERR_BAD_ARG,
        E::NoMemory => ERR_NO_MEMORY,
    }
    .wrapping_neg()
}

/// The image store's operations (`vmstore`): uploads belong to the caller's endpoint.
fn image_op(slot: usize, op: u64, ptr: u64, len: u64, arg: u64) -> Result<u64, u64> {
    use crate::vmstore as st;
    let (_, ep) = with(|k| owner_of(k, slot))?;
    let owner = ep;
    let now = catenary_arch::time::now_ns();
    let upload = u32::try_from(arg & 0xffff).map_err(|_| bad())?;
    match op {
        OP_IMAGE_BEGIN => {
            let b: ImageBegin = decode(&copy_in(slot, ptr, len, RECORD_MAX)?).ok_or_else(bad)?;
            st::begin(owner, b, now).map(|(id, _)| id as u64).map_err(store_err)
        }
        OP_IMAGE_WRITE => {
            if len == 0 || len as usize > WRITE_MAX {
                return Err(bad());
            }
            let r = UserRange::new(ptr, len).map_err(|_| bad())?;
            // straight from the caller's memory into the store's frames, under the kernel lock
            // only for the copy (the caller's mappings cannot change meanwhile)
            st::write(owner, upload, arg >> 16, len, now, |dst| {
                with(|k| {
                    let Ok((me, _)) = owner_of(k, slot) else { return false };
                    space(k, me).ok().is_some_and(|s| s.copy_from_user(r, dst).is_ok())
                })
            })
            .map(|()| 0)
            .map_err(store_err)
        }
        OP_IMAGE_COMMIT => {
            let info = st::commit(owner, upload, now).map_err(store_err)?;
            let rec = encode(&info).ok_or_else(bad)?;
            with(|k| {
                let (me, _) = owner_of(k, slot)?;
                copy_out(k, me, ptr, len, &rec)
            })
        }
        OP_IMAGE_ABORT => st::abort(owner, upload).map(|()| 0).map_err(store_err),
        OP_IMAGE_REMOVE => {
            let b = copy_in(slot, ptr, len, 32)?;
            let d = Digest(b.try_into().map_err(|_| bad())?);
            st::remove(&d).map(|()| 0).map_err(store_err)
        }
        _ => {
            let rec = encode(&st::info()).ok_or_else(bad)?;
            with(|k| {
                let (me, _) = owner_of(k, slot)?;
                copy_out(k, me, ptr, len, &rec)
            })
        }
    }
}

/// `OP_IMAGE_READ`: copy a stored image's `image.json` (arg [`READ_MANIFEST`]) or up to `len`
/// bytes of its stream from offset `arg` to the caller's buffer, whose first 32 bytes name the
/// image. The image is held (an `Arc`) while it is copied, so a removal cannot free it meanwhile.
fn image_read(slot: usize, ptr: u64, len: u64, arg: u64) -> Result<u64, u64> {
    if len < 32 || len as usize > WRITE_MAX {
        return Err(bad());
    }
    let d = Digest(copy_in(slot, ptr, 32, 32)?.try_into().map_err(|_| bad())?);
    let (manifest, bytes) = crate::vmstore::get_with_manifest(&d).ok_or(ERR_BAD_ARG.wrapping_neg())?;
    let out = |data: &[u8], at: u64| {
        with(|k| {
            let (me, _) = owner_of(k, slot)?;
            copy_out(k, me, ptr + at, len - at, data)
        })
    };
    if arg == READ_MANIFEST {
        if manifest.len() as u64 > len {
            return Err(bad());
        }
        return out(&manifest, 0);
    }
    // the stream is config.json ‖ rootfs.squashfs: the two slices it spans, in order
    let (config, rootfs) = (bytes.config(), bytes.rootfs());
    let mut done = 0u64;
    for (part, start) in [(config, 0u64), (rootfs, config.len() as u64)] {
        let (from, end) = (arg.saturating_add(done), start + part.len() as u64);
        if done >= len || from >= end || from < start {
            continue;
        }
        let n = (end - from).min(len - done);
        let lo = (from - start) as usize;
        done += out(&part[lo..lo + n as usize], done)?;
    }
    Ok(done)
}

/// `OP_TAG`: keep the owner's bytes with VM `handle`.
fn tag(slot: usize, ptr: u64, len: u64, handle: u64) -> Result<u64, u64> {
    let b = copy_in(slot, ptr, len, TAG_MAX)?;
    with(|k| {
        let (_, ep) = owner_of(k, slot)?;
        let v = k.vmctl.vms.get_mut(&handle).filter(|v| v.owner == ep).ok_or_else(bad)?;
        v.tag = b;
        Ok(0)
    })
}

/// `OP_LIVE`: the caller's VMs, adopted by it (no longer orphans).
fn live(slot: usize, ptr: u64, len: u64) -> Result<u64, u64> {
    let now = catenary_arch::time::now_ns();
    let list: Vec<LiveVm> = with(|k| {
        let (_, ep) = owner_of(k, slot)?;
        Ok::<_, u64>(
            k.vmctl
                .vms
                .iter_mut()
                .filter(|(_, v)| v.owner == ep)
                .map(|(h, v)| {
                    v.orphaned_ns = None;
                    LiveVm { vm: *h, tag: v.tag.clone(), ready: v.ready, healthy: v.healthy, age_ms: (now - v.created_ns) / 1_000_000, touched_bytes: v.touched.load(Ordering::Relaxed) }
                })
                .collect(),
        )
    })?;
    let rec = encode(&list).ok_or_else(bad)?;
    with(|k| {
        let (me, _) = owner_of(k, slot)?;
        copy_out(k, me, ptr, len, &rec)
    })
}

fn take_events(slot: usize, ptr: u64, len: u64) -> Result<u64, u64> {
    let max = (len as usize).min(RECORD_MAX);
    // take a batch under the lock, encode outside it, put back what did not fit
    let batch: Vec<VmEvent> = with(|k| {
        let (_, ep) = owner_of(k, slot)?;
        let q = k.vmctl.queues.entry(ep).or_default();
        let mut v = Vec::new();
        let mut bytes = 0;
        while let Some(e) = q.events.front() {
            let sz = match &e.event {
                Event::Log { line, .. } => line.len() + 24,
                _ => 40,
            };
            if bytes + sz > max && !v.is_empty() {
                break;
            }
            bytes += sz;
            let e = q.events.pop_front().unwrap_or(VmEvent { vm: 0, event: Event::Ready });
            if let Event::Log { line, .. } = &e.event {
                q.log_bytes -= line.len();
            }
            v.push(e);
        }
        Ok::<_, u64>(v)
    })?;
    if batch.is_empty() {
        return Ok(0);
    }
    let (rec, n) = encode_events(&batch, max);
    let r = with(|k| {
        let (me, ep) = owner_of(k, slot)?;
        let written = if n > 0 { copy_out(k, me, ptr, len, &rec) } else { Err(bad()) };
        // what was not delivered goes back to the front, in order
        let q = k.vmctl.queues.entry(ep).or_default();
        let keep_from = if written.is_ok() { n } else { 0 };
        for e in batch[keep_from..].iter().rev() {
            if let Event::Log { line, .. } = &e.event {
                q.log_bytes += line.len();
            }
            q.events.push_front(e.clone());
        }
        written
    });
    r
}

fn create(slot: usize, ptr: u64, len: u64) -> Result<u64, u64> {
    if len == 0 || len as usize > RECORD_MAX {
        return Err(bad());
    }
    with(|k| owner_of(k, slot))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len as usize).map_err(|_| ERR_NO_MEMORY.wrapping_neg())?;
    buf.resize(len as usize, 0);
    with(|k| {
        let (me, _) = owner_of(k, slot)?;
        let r = UserRange::new(ptr, len).map_err(|_| bad())?;
        space(k, me)?.copy_from_user(r, &mut buf).map_err(|_| bad())
    })?;
    let req: CreateVm = decode(&buf).ok_or_else(bad)?;
    // the record is hostile: every field checked again
    let entry_ok = |v: &[String], max: usize| v.len() <= max && v.iter().all(|s| s.len() <= ENTRY_MAX && !s.contains('\0'));
    if req.vcpus == 0 || req.vcpus > max_vcpus()
        || !(MEMORY_MIN_MIB..=MEMORY_MAX_MIB).contains(&req.memory_mib)
        || !valid_name(&req.name)
        || !entry_ok(&req.env, ENV_MAX + 2)
        || !req.env.iter().all(|e| e.contains('='))
        || !req.args.as_deref().is_none_or(|a| entry_ok(a, ARGS_MAX))
        || !req.net.is_none_or(catenary_workload::net::valid_slot)
        || req.health.as_ref().is_some_and(|h| h.check().is_err())
    {
        return Err(bad());
    }
    let image = crate::vmstore::get(&req.image).ok_or_else(bad)?;
    crate::orchprobe::vm_created(&req.name);
    let ctl = Arc::new(VmControl::new());
    // before the VM's task exists: no instant of it runs without the owner's deadline
    let _ = ctl.set_deadline(req.deadline_ns);
    let touched = Arc::new(AtomicU64::new(0));
    let handle = with(|k| {
        let (_, ep) = owner_of(k, slot)?;
        if k.vmctl.vms.values().filter(|v| v.owner == ep).count() >= VMS_MAX {
            return Err(ERR_NO_MEMORY.wrapping_neg());
        }
        k.vmctl.next += 1;
        let h = k.vmctl.next;
        k.vmctl.vms.insert(h, VmRec { owner: ep, ctl: ctl.clone(), touched: touched.clone(), tag: Vec::new(), ready: false, healthy: false, created_ns: catenary_arch::time::now_ns(), orphaned_ns: None });
        Ok(h)
    })?;
    let name = alloc::format!("vm-{}", req.name);
    cpu::without_interrupts(|| {
        LAUNCH.lock().insert(handle, Launch { name: req.name, mem_mib: req.memory_mib as u64, vcpus: req.vcpus, image, args: req.args, health: req.health, env: req.env, net: req.net, ctl, touched });
    });
    if !REAPER.swap(true, Ordering::AcqRel) && try_spawn_kernel("vm-orphans", Priority::NORMAL, Affinity::ANY, reaper, 0).is_err() {
        REAPER.store(false, Ordering::Release);
    }
    if try_spawn_kernel(&name, Priority::NORMAL, crate::vm::vcpu_affinity(smp::online_cpus()), vm_task, handle).is_err() {
        cpu::without_interrupts(|| LAUNCH.lock().remove(&handle));
        with(|k| k.vmctl.vms.remove(&handle));
        return Err(ERR_NO_MEMORY.wrapping_neg());
    }
    Ok(handle)
}

/// A workload VM's kernel task: run it, report how it ended, forget it.
fn vm_task(handle: u64) {
    let Some(l) = cpu::without_interrupts(|| LAUNCH.lock().remove(&handle)) else { return };
    info!(target: "vmm", "workload microVM {} (handle {}): {} MiB, root filesystem {} bytes shared read-only from the image store", l.name, handle, l.mem_mib, l.image.rootfs().len());
    // A VM that asked for network runs with it or not at all (its link slot names its MAC and
    // /128; a second VM of the same slot, or no network within the wait, ends it here).
    let net = match l.net {
        None => None,
        Some(slot) => match crate::net::attach_workload(slot, NET_WAIT_NS) {
            Ok(addr) => {
                info!(target: "vmm", "workload microVM {}: virtio-net MAC {:02x?}, address {}/128 (link slot {}, routed by netd)", l.name, catenary_workload::net::mac(slot), addr, slot);
                Some(crate::vm::NetAttach { mac: catenary_workload::net::mac(slot), addr })
            }
            Err(why) => {
                warn!(target: "vmm", "workload microVM {}: no network link: {}; not started", l.name, why);
                push(handle, Event::Ended { how: Ended::CreateFailed, touched_bytes: 0, wall_ms: 0 });
                with(|k| k.vmctl.vms.remove(&handle));
                return;
            }
        },
    };
    // with a NAT64 gateway in the cluster, a networked workload resolves names through DNS64
    let dns: &[core::net::Ipv6Addr] = if net.is_some() && crate::net::nat64_named() { &[catenary_net::nat64route::DNS64_ADDR] } else { &[] };
    let node_json = catenary_workload::node::node_json_with_dns(&l.name, net.map(|n| n.addr), l.args.as_deref(), &l.env, dns, l.health.as_ref());
    let r = crate::vm::run_image_vm(handle, &l.name, l.mem_mib, l.vcpus, crate::vmstore::disk(&l.image), l.image.config(), &node_json, net, &l.ctl, &l.touched);
    drop(l.image); // the image may be removed now
    if let Some(n) = net {
        crate::net::detach_vm(n.addr);
    }
    crate::vm::report(&l.name, &r);
    crate::orchprobe::vm_ended(&l.name);
    let how = match &r.ended {
        crate::vm::Ended::Stopped(catenary_vmm::cpu::StopReason::PowerOff { .. }) => Ended::PowerOff,
        crate::vm::Ended::Stopped(_) => Ended::Crashed,
        crate::vm::Ended::Killed => Ended::Killed,
        crate::vm::Ended::OutOfMemory => Ended::OutOfMemory,
        crate::vm::Ended::Failed(_) if r.exits == 0 => Ended::CreateFailed,
        crate::vm::Ended::Failed(_) => Ended::Crashed,
    };
    if let Some(e) = r.workload_exit {
        use catenary_vmm::guest_proto::wire::WorkloadExit as W;
        let e = match e {
            W::Code(c) => Exit::Code(c),
            W::Signal(s) => Exit::Signal(s),
            W::InitFailed(s) => Exit::InitFailed(s),
            W::OomKilled(s) => Exit::OomKilled(s),
            W::ThrashKilled(s) => Exit::ThrashKilled(s),
            W::Unhealthy(s) => Exit::Unhealthy(s),
        };
        push(handle, Event::Exit(e));
    }
    push(handle, Event::Ended { how, touched_bytes: r.touched_bytes, wall_ms: r.wall_ns / 1_000_000 });
    with(|k| k.vmctl.vms.remove(&handle));
}

/// Queue an event for VM `handle`'s owner (dropped when the VM has no owner any more); notify
/// the owner when its queue was empty. Log lines beyond the queue's bound are counted, not kept.
fn push(handle: VmHandle, event: Event) {
    with(|k| {
        let Some(ep) = k.vmctl.vms.get(&handle).map(|v| v.owner) else { return };
        let q = k.vmctl.queues.entry(ep).or_default();
        if let Event::Log { line, .. } = &event {
            if q.log_bytes + line.len() > QUEUE_LOG_BYTES {
                *q.lost.entry(handle).or_default() += line.len() as u64 + 1;
                return;
            }
            if let Some(n) = q.lost.remove(&handle) {
                q.events.push_back(VmEvent { vm: handle, event: Event::Lost { bytes: n } });
            }
            q.log_bytes += line.len();
        }
        let was_empty = q.events.is_empty();
        q.events.push_back(VmEvent { vm: handle, event });
        if was_empty {
            if let Ok(Some((who, m))) = k.ipc.notify(ep, EVENT_BIT) {
                complete(k, who, Ok(m));
            }
        }
    })
}

/// A log line of VM `handle` (from its vCPU task).
pub fn log_line(handle: VmHandle, stream: catenary_vmm::guest_proto::wire::Stream, line: &[u8]) {
    use catenary_vmm::guest_proto::wire::Stream as S;
    let stream = match stream {
        S::Stdout => Stream::Stdout,
        S::Stderr => Stream::Stderr,
        S::Init => Stream::Init,
    };
    push(handle, Event::Log { stream, line: line.to_vec() });
}

/// VM `handle`'s init reported READY.
pub fn ready(handle: VmHandle) {
    with(|k| k.vmctl.vms.get_mut(&handle).map(|v| v.ready = true));
    push(handle, Event::Ready);
}

/// VM `handle`'s init reported that the workload's health check passed.
pub fn healthy(handle: VmHandle) {
    with(|k| k.vmctl.vms.get_mut(&handle).map(|v| v.healthy = true));
    push(handle, Event::Healthy);
}

/// The owner of `ep` (the workload service) died: its VMs keep running, their events keep
/// queueing (bounded as always) for the next incarnation, which adopts them (`OP_LIVE`); the
/// `vm-orphans` task powers off those not adopted within [`ADOPT_GRACE_NS`].
pub(super) fn owner_died(k: &mut Kernel, ep: EndpointId) {
    let now = catenary_arch::time::now_ns();
    let mut n = 0;
    for v in k.vmctl.vms.values_mut().filter(|v| v.owner == ep) {
        v.orphaned_ns.get_or_insert(now);
        n += 1;
    }
    if n > 0 {
        info!(target: "vmm", "the workload service died: its {} microVMs keep running; powered off unless adopted within {} s", n, ADOPT_GRACE_NS / 1_000_000_000);
    }
}

/// Started with the first VM: powers off VMs whose owner died and nobody adopted in time.
fn reaper(_: u64) {
    loop {
        crate::task::sleep_ns(2_000_000_000);
        let now = catenary_arch::time::now_ns();
        with(|k| {
            for (h, v) in k.vmctl.vms.iter_mut() {
                if v.orphaned_ns.is_some_and(|t| now.saturating_sub(t) > ADOPT_GRACE_NS) {
                    v.orphaned_ns = None;
                    if v.ctl.request_kill().is_ok() {
                        info!(target: "vmm", "microVM {h}: not adopted by a workload service within {} s: powered off", ADOPT_GRACE_NS / 1_000_000_000);
                    }
                }
            }
        });
    }
}
