//! Node memory per microVM beyond its guest RAM, measured (`bench=vmmem`; issue 14 item 6,
//! docs/vmm.md "Memory per microVM"): the frame allocator's and the kernel heap's counters are
//! read before N microVMs start, while all N run, and after they ended. A microVM here has the
//! devices of a workload VM (virtio console + workload channel, their rings, the console
//! capture) and its own vCPU task (stack), running a raw test guest. Figures only.

use crate::vm::{Image, HOSTILE_LOAD, PROGRESS_GUEST};
use core::sync::atomic::{AtomicBool, Ordering};
use log::{info, warn};

/// MicroVMs started at once.
const N: u64 = 4;
/// Guest RAM of each (MiB; whole 2 MiB chunks, taken from the frame allocator at creation).
const RAM_MIB: u64 = 4;

static STOP: AtomicBool = AtomicBool::new(false);

fn vm_task(i: u64) {
    let name = alloc::format!("mem{i}");
    let r = crate::vm::run_stoppable_workload(&name, Image::Raw { code: PROGRESS_GUEST, load: HOSTILE_LOAD, arg: 0x1234_5678 + i as u32 }, RAM_MIB, &STOP);
    if !matches!(r.ended, crate::vm::Ended::Killed) {
        warn!(target: "bench", "bench vmmem: {name} ended early: {:?}", r.ended);
    }
}

/// (bytes allocated from the heap, bytes the heap holds, free frames)
fn sample() -> (u64, u64, u64) {
    (catenary_arch::heap::used_bytes(), catenary_arch::heap::size(), catenary_arch::memory::stats().free)
}

/// Node bytes taken between `a` and `b` beyond `guest` bytes of guest RAM: frames taken (less
/// those the heap grew by, whose use the heap counter already shows) plus heap allocations.
fn beyond(a: (u64, u64, u64), b: (u64, u64, u64), guest: u64) -> (i64, i64) {
    let frames = (a.2 as i64 - b.2 as i64) * 4096 - (b.1 as i64 - a.1 as i64) - guest as i64;
    let heap = b.0 as i64 - a.0 as i64;
    (frames, heap)
}

/// One round: `n` microVMs started together, counters read before, while all run, after.
/// Returns (per-VM bytes beyond guest RAM while running, bytes not back after they ended).
fn round(cpus: usize, n: u64) -> Option<(i64, i64)> {
    let aff = crate::vm::vcpu_affinity(cpus);
    STOP.store(false, Ordering::Relaxed);
    let (running0, _) = crate::vm::vm_counts();
    let before = sample();
    let mut ids = alloc::vec::Vec::new();
    for i in 0..n {
        match crate::task::try_spawn_kernel(&alloc::format!("vmmem{i}"), catenary_sched::Priority::NORMAL, aff, vm_task, i) {
            Ok(id) => ids.push(id),
            Err(_) => {
                STOP.store(true, Ordering::Relaxed);
                warn!(target: "bench", "bench vmmem: no memory for a vCPU task");
                return None;
            }
        }
    }
    // All n in their vCPU loops (created, devices built, guests entered), then a moment of
    // running so every lazily made structure exists.
    let t0 = catenary_arch::time::now_ns();
    while crate::vm::vm_counts().0 < running0 + n as usize {
        if catenary_arch::time::now_ns() - t0 > 60_000_000_000 {
            STOP.store(true, Ordering::Relaxed);
            warn!(target: "bench", "bench vmmem: the microVMs did not start in 60 s");
            return None;
        }
        crate::task::sleep_ns(10_000_000);
    }
    crate::task::sleep_ns(200_000_000);
    let during = sample();
    STOP.store(true, Ordering::Relaxed);
    for id in ids {
        let _ = crate::task::join(id, 60_000_000_000);
    }
    crate::task::sleep_ns(100_000_000);
    let after = sample();
    let guest = n * (RAM_MIB << 20);
    let (frames, heap) = beyond(before, during, guest);
    let (left_frames, left_heap) = beyond(before, after, 0);
    info!(target: "bench", "bench vmmem: {n} microVMs of {RAM_MIB} MiB running: frames {frames} bytes beyond their guest RAM, heap {heap} bytes (counters before {before:?}, running {during:?}, after {after:?}: heap used, heap size, free frames)");
    info!(target: "bench", "bench vmmem: {n} microVMs: after they ended frames {left_frames} bytes, heap {left_heap} bytes not back");
    Some(((frames + heap) / n as i64, left_frames + left_heap))
}

pub fn run(cpus: usize) {
    // A first round of one: what the node allocates once, on its first microVM, shows there
    // and not in the second round.
    let Some((first, _)) = round(cpus, 1) else { return };
    let Some((per, _)) = round(cpus, N) else { return };
    info!(target: "bench", "bench vmmem: first microVM alone: {first} bytes beyond guest RAM");
    info!(target: "bench", "bench vmmem: per microVM beyond guest RAM {per} bytes ({N} at once, after the first round)");
    info!(target: "bench", "bench vmmem: done");
}
