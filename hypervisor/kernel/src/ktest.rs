//! In-kernel tests (the `ktest` build). Each test is registered by name in `TESTS`, runs on the
//! booted node, and is reported on serial as `ktest <name> ... ok|FAILED: why`. The run ends
//! with `ktest: N passed, N failed` and QEMU's isa-debug-exit (0 → success).
//!
//! Expectations that depend on how the node was booted come from the command line:
//! `ktest.protocol=pvh|multiboot2|limine`, `ktest.module_fnv=<hex>` (FNV-1a of the boot module),
//! `ktest.cpus=N`.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_arch::{apic, boot, memory, paging, println, qemu, time, trap};

use crate::init::Node;

type TestFn = fn(&Node) -> Result<(), String>;

const TESTS: &[(&str, TestFn)] = &[
    ("boot_protocol", boot_protocol),
    ("boot_module", boot_module),
    ("boot_cmdline", boot_cmdline),
    ("acpi_cpus", acpi_cpus),
    ("frame_alloc", frame_alloc),
    ("frame_alloc_contiguous", frame_alloc_contiguous),
    ("page_map_unmap_translate", page_map_unmap_translate),
    ("pf_unmapped_read_caught", pf_unmapped_read_caught),
    ("pf_nx_exec_caught", pf_nx_exec_caught),
    ("pf_rodata_write_caught", pf_rodata_write_caught),
    ("kernel_text_not_writable", kernel_text_not_writable),
    ("stack_guard_page_unmapped", stack_guard_page_unmapped),
    ("heap_alloc", heap_alloc),
    ("heap_large_alloc", heap_large_alloc),
    // Guest RAM zeroing and the loader's copies (arch fastmem, docs/vmm.md "Where the boot's time goes").
    ("fastmem_matches_the_plain_loops", |_| catenary_arch::fastmem::self_test()),
    ("tsc_monotonic", tsc_monotonic),
    ("timer_interrupts_arrive", timer_interrupts_arrive),
    ("smp_all_cpus_online", crate::ktest_core::smp_all_cpus_online),
    ("sched_tasks_on_every_cpu", crate::ktest_core::sched_tasks_on_every_cpu),
    ("sched_preemption", crate::ktest_core::sched_preemption),
    ("sched_priorities", crate::ktest_core::sched_priorities),
    ("sched_sleep_timeouts", crate::ktest_core::sched_sleep_timeouts),
    ("sched_avx_state_survives_preemption", crate::ktest_core::sched_avx_state_survives_preemption),
    ("ipc_ordering", crate::ktest_core::ipc_ordering),
    ("ipc_full_queue", crate::ktest_core::ipc_full_queue),
    ("ipc_call_timeout", crate::ktest_core::ipc_call_timeout),
    ("remote_call_unanswered_times_out", crate::ktest_remote::remote_call_unanswered_times_out),
    ("ipc_missing_capability", crate::ktest_core::ipc_missing_capability),
    ("ipc_dead_peer", crate::ktest_core::ipc_dead_peer),
    ("ipc_call_reply_across_cpus", crate::ktest_core::ipc_call_reply_across_cpus),
    ("ipc_fastpath_same_cpu", crate::ktest_core::ipc_fastpath_same_cpu),
    ("sched_user_regs_survive_preemption", crate::ktest_core::sched_user_regs_survive_preemption),
    ("sched_user_fpu_survives_ipc_and_preemption", crate::ktest_core::sched_user_fpu_survives_ipc_and_preemption),
    ("sched_user_fpu_of_a_killed_task_does_not_leak", crate::ktest_core::sched_user_fpu_of_a_killed_task_does_not_leak),
    ("sched_fpu_follows_a_migrating_task", crate::ktest_core::sched_fpu_follows_a_migrating_task),
    ("pcid_a_page_moved_while_its_space_was_away_is_read_anew", crate::ktest_pcid::pcid_a_page_moved_while_its_space_was_away_is_read_anew),
    ("pcid_a_reused_pcid_reads_its_new_space", crate::ktest_pcid::pcid_a_reused_pcid_reads_its_new_space),
    ("user_kernel_memory_access_killed", crate::ktest_core::user_kernel_memory_access_killed),
    ("user_ungranted_port_killed", crate::ktest_core::user_ungranted_port_killed),
    ("user_memory_map_unmap", crate::ktest_core::user_memory_map_unmap),
    ("user_killed_while_blocked_frees_frames", crate::ktest_core::user_killed_while_blocked_frees_frames),
    ("user_preempted_spinner", crate::ktest_core::user_preempted_spinner),
    ("user_spinner_killed_by_the_watchdog", crate::ktest_core::user_spinner_killed_by_the_watchdog),
    ("user_task_that_misses_its_heartbeat_is_killed", crate::ktest_core::user_task_that_misses_its_heartbeat_is_killed),
    ("driver_rtc_over_ipc", crate::ktest_core::driver_rtc_over_ipc),
    ("supervisor_restarts_echo", crate::ktest_supervisor::supervisor_restarts_echo),
    ("supervisor_restarted_after_death", crate::ktest_supervisor::supervisor_restarted_after_death),
    ("ipc_memory_grant", crate::ktest_core::ipc_memory_grant),
    ("driver_mmio_dma_grants", crate::ktest_core::driver_mmio_dma_grants),
    ("syscall_hostile_arguments", crate::ktest_syscall::syscall_hostile_arguments),
    ("syscall_entry_clears_ac", crate::ktest_syscall::syscall_entry_clears_ac),
    ("syscall_nmi_in_ring3_resumes", crate::ktest_syscall::syscall_nmi_in_ring3_resumes),
    ("syscall_noncanonical_return_killed", crate::ktest_syscall::syscall_noncanonical_return_killed),
    ("syscall_spawn_failure_frees_everything", crate::ktest_syscall::syscall_spawn_failure_frees_everything),
    ("caps_table_full_is_an_error", crate::ktest_lifecycle::caps_table_full_is_an_error),
    ("kernel_task_stacks_freed", crate::ktest_lifecycle::kernel_task_stacks_freed),
    ("ctx_killed_task_frees_stack_with_frame", crate::ktest_context::ctx_killed_task_frees_stack_with_frame),
    ("ctx_user_frame_refuses_kernel_half", crate::ktest_context::ctx_user_frame_refuses_kernel_half),
    ("ctx_kernel_syscall_regs_writable", crate::ktest_context::ctx_kernel_syscall_regs_writable),
    ("sound_user_frame_freed_once", crate::ktest_sound::sound_user_frame_freed_once),
    ("sound_lent_frames_outlive_owner", crate::ktest_sound::sound_lent_frames_outlive_owner),
    ("sound_destroy_loaded_space", crate::ktest_sound::sound_destroy_loaded_space),
    ("sound_phys_read_user_only", crate::ktest_sound::sound_phys_read_user_only),
    ("sound_boot_state_set_once", crate::ktest_sound::sound_boot_state_set_once),
    ("sound_device_mappings_refuse_ram", crate::ktest_sound::sound_device_mappings_refuse_ram),
    ("power_off_refused_before_a_press", crate::ktest_power::power_off_refused_before_a_press),
    ("vm_hostile_garbage_io", crate::ktest_vm::vm_hostile_garbage_io),
    ("vm_hostile_unknown_msr_gp", crate::ktest_vm::vm_hostile_unknown_msr_gp),
    ("vm_hostile_wild_mmio", crate::ktest_vm::vm_hostile_wild_mmio),
    ("vm_hostile_invalid_instruction", crate::ktest_vm::vm_hostile_invalid_instruction),
    ("vm_hostile_triple_fault", crate::ktest_vm::vm_hostile_triple_fault),
    ("vm_hostile_unsupported_mmio_insn", crate::ktest_vm::vm_hostile_unsupported_mmio_insn),
    ("vm_hostile_cache_flush", crate::ktest_vm::vm_hostile_cache_flush),
    ("vm_hostile_svm_instructions", crate::ktest_vm::vm_hostile_svm_instructions),
    ("vm_hostile_monitor_mwait", crate::ktest_vm::vm_hostile_monitor_mwait),
    ("vm_hostile_alignment_check", crate::ktest_vm::vm_hostile_alignment_check),
    ("vm_hostile_debug_registers", crate::ktest_vm::vm_hostile_debug_registers),
    ("vm_hostile_page_walk_outside_ram", crate::ktest_vm::vm_hostile_page_walk_outside_ram),
    ("vm_page_walk_maps_fresh_ram", crate::ktest_vm::vm_page_walk_maps_fresh_ram),
    ("vm_vcpu_loop_is_a_task", crate::ktest_core::vm_vcpu_loop_is_a_task),
    ("vm_event_redelivered_after_nested_fault", crate::ktest_reinject::vm_event_redelivered_after_nested_fault),
    ("vm_interrupt_delivered_once", crate::ktest_reinject::vm_interrupt_delivered_once),
    ("vm_world_switch_vs_fpu_restore", crate::ktest_reinject::vm_world_switch_vs_fpu_restore),
    ("vm_exit_profile_counts", crate::exitbench::vm_exit_profile_counts),
    ("vm_host_nmi_while_guest_runs", crate::ktest_nmi::vm_host_nmi_while_guest_runs),
    ("console_flood_leaves_node_running", crate::ktest_console::console_flood_leaves_node_running),
    ("workload_stop_grace_policy", crate::ktest_workload::workload_stop_grace_policy),
    ("store_upload_ids_unique", crate::ktest_store::store_upload_ids_unique),
];

/// Long tests that run only when `ktest.only` names them (their own `cargo xtask test` entry).
const ON_REQUEST: &[(&str, TestFn)] = &[
    ("syscall_fuzz", crate::ktest_sysfuzz::syscall_fuzz),
    ("smp_vm_eight_guests", crate::ktest_smp_vm::smp_vm_eight_guests),
    ("smp_vm_spinner_fair_share", crate::ktest_smp_vm::smp_vm_spinner_fair_share),
    ("workload_hostile_requests", crate::ktest_workd::workload_hostile_requests),
    ("workload_restart_on_failure", crate::ktest_workd::workload_restart_on_failure),
    ("workload_eight_at_once", crate::ktest_workd::workload_eight_at_once),
    ("workbench_service", crate::ktest_workd::workbench_service),
    ("workload_image_push", crate::ktest_workd::workload_image_push),
    ("workload_adopted_after_restart", crate::ktest_workd::workload_adopted_after_restart),
    ("workload_deadline_power_off", crate::ktest_workload::workload_deadline_power_off),
    ("pcid_flushes_a_space_exactly_when_it_changed", crate::ktest_pcid::pcid_flushes_a_space_exactly_when_it_changed),
];

pub fn run(node: &Node) -> ! {
    println!("ktest: running {} tests", TESTS.len());
    // The runner starts microVMs itself: keep it on one CPU where world switches are safe
    // (vm::vcpu_affinity; one CPU, because some tests compare per-CPU state before and after).
    let _ = crate::task::set_current_affinity(catenary_sched::Affinity::only(crate::vm::vm_test_cpu(node.cpus)));
    // Services the supervisor starts at boot (workd, netd, ...) allocate frames while they come
    // up; the frame-count tests compare the global count, so start once it has been still.
    let quiet = wait_for_quiet_memory();
    println!("ktest: node memory quiet after {} ms", quiet / 1_000_000);
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    // `ktest.only=<prefix>[,<prefix>…]` runs a subset (the Bochs runs take only some tests).
    let only = arg(node, "ktest.only");
    let requested = ON_REQUEST.iter().filter(|_| only.is_some());
    // `ktest.repeat=N` (xtask `--ktest-repeat N`): the selection N times over, to catch an
    // intermittent failure (each pass is reported; at most 10,000).
    let repeat = arg(node, "ktest.repeat").and_then(|n| n.parse::<u32>().ok()).unwrap_or(1).clamp(1, 10_000);
    // Several prefixes separated by commas select the union (the Bochs PCID run).
    let wanted = |name: &str| only.is_none_or(|o| o.split(',').any(|p| name.starts_with(p)));
    let selection: alloc::vec::Vec<&(&str, TestFn)> = TESTS.iter().chain(requested).filter(|(name, _)| wanted(name)).collect();
    for pass in 0..repeat {
        if repeat > 1 {
            println!("ktest: pass {} of {}", pass + 1, repeat);
        }
        for (name, f) in &selection {
            match f(node) {
                Ok(()) => {
                    passed += 1;
                    println!("ktest {} ... ok", name);
                }
                // A test that cannot run on this CPU says so: counted apart, never a pass.
                Err(e) if e.starts_with("SKIP: ") => {
                    skipped += 1;
                    println!("ktest {} ... SKIPPED: {}", name, &e["SKIP: ".len()..]);
                }
                Err(e) => {
                    failed += 1;
                    println!("ktest {} ... FAILED: {}", name, e);
                }
            }
        }
    }
    println!("ktest: {} passed, {} failed, {} skipped", passed, failed, skipped);
    qemu::exit(if failed == 0 { 0 } else { 1 });
    catenary_arch::cpu::halt_forever()
}

/// Free frames once the stacks of kernel tasks that have died are back (they are freed at
/// their CPU's next tick): what frame-count checks compare.
pub fn free_frames_settled() -> u64 {
    let end = catenary_arch::time::now_ns() + 1_000_000_000;
    while (crate::task::kernel_stacks_pending() > 0 || memory::user_frees_pending() > 0) && catenary_arch::time::now_ns() < end {
        crate::task::sleep_ns(1_000_000);
    }
    memory::stats().free
}

/// Wait (at most 5 s) until the free-frame count has not changed for 200 ms; the time waited.
fn wait_for_quiet_memory() -> u64 {
    let start = catenary_arch::time::now_ns();
    let (mut last, mut since) = (memory::stats().free, start);
    loop {
        crate::task::sleep_ns(10_000_000);
        let now = catenary_arch::time::now_ns();
        let free = memory::stats().free;
        if free != last {
            (last, since) = (free, now);
        } else if now - since >= 200_000_000 || now - start >= 5_000_000_000 {
            return now - start;
        }
    }
}

/// A capability the test task could not take (its table is full).
pub fn cap_err(e: catenary_ipc::IpcError) -> String {
    format!("capability table: {e:?}")
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

fn arg<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    crate::cmdline::get(&node.boot.cmdline, key)
}

fn boot_protocol(node: &Node) -> Result<(), String> {
    let want = arg(node, "ktest.protocol").ok_or("no ktest.protocol on the command line")?;
    let got = match node.boot.protocol {
        catenary_bootinfo::BootProtocol::Pvh => "pvh",
        catenary_bootinfo::BootProtocol::Multiboot2 => "multiboot2",
        catenary_bootinfo::BootProtocol::Limine => "limine",
    };
    check(got == want, || format!("booted via {got}, expected {want}"))
}

fn boot_module(node: &Node) -> Result<(), String> {
    let want = arg(node, "ktest.module_fnv").ok_or("no ktest.module_fnv on the command line")?;
    let want = u64::from_str_radix(want, 16).map_err(|_| "bad ktest.module_fnv")?;
    let m = node.boot.modules.first().ok_or("no boot module arrived")?;
    let got = crate::init::fnv1a(memory::boot_module(m).ok_or("module not registered")?);
    check(got == want, || format!("module fnv1a {got:016x}, expected {want:016x}"))?;
    // The module's frames must never be handed out.
    check(m.start % 4096 == 0 || m.len > 0, || "empty module".into())
}

fn boot_cmdline(node: &Node) -> Result<(), String> {
    check(arg(node, "ktest.marker") == Some("cmdline-ok"), || format!("cmdline was {:?}", node.boot.cmdline))
}

fn acpi_cpus(node: &Node) -> Result<(), String> {
    match arg(node, "ktest.cpus") {
        Some(n) => check(n.parse::<usize>().ok() == Some(node.cpus), || format!("{} CPUs found, expected {n}", node.cpus)),
        None => check(node.cpus >= 1, || "no CPU".into()),
    }
}

fn frame_alloc(_: &Node) -> Result<(), String> {
    let before = memory::stats();
    let mut frames = Vec::new();
    for _ in 0..256 {
        // zeroed on the way: each frame is real, writable memory reachable through the direct map
        frames.push(memory::FreshFrame::alloc().map_err(|e| format!("{e:?}"))?);
    }
    let mut sorted: Vec<u64> = frames.iter().map(|f| f.phys()).collect();
    sorted.sort();
    sorted.dedup();
    check(sorted.len() == frames.len(), || "duplicate frame handed out".into())?;
    check(sorted.iter().all(|f| f % 4096 == 0), || "unaligned frame".into())?;
    check(memory::stats().free == before.free - 256, || "stats did not drop by 256".into())?;
    drop(frames); // the tokens give their frames back
    check(memory::double_free_refused(), || "double free not detected".into())?;
    check(memory::stats().free == before.free, || "stats not restored".into())
}

fn frame_alloc_contiguous(_: &Node) -> Result<(), String> {
    let before = memory::stats().free;
    let big = memory::FreshRun::alloc_aligned(512, 512).map_err(|e| format!("{e:?}"))?;
    let p = big.phys();
    check(p % (2 << 20) == 0, || format!("{p:#x} not 2 MiB aligned"))?;
    let small = memory::FreshRun::alloc(16).map_err(|e| format!("{e:?}"))?;
    let q = small.phys();
    check(q + 16 * 4096 <= p || q >= p + (2 << 20), || "overlapping contiguous ranges".into())?;
    drop((big, small));
    check(memory::stats().free == before, || "contiguous runs not given back".into())
}

const TEST_VIRT: u64 = 0xffff_d000_0000_0000;

fn page_map_unmap_translate(_: &Node) -> Result<(), String> {
    let fresh = memory::FreshFrame::alloc().map_err(|e| format!("{e:?}"))?;
    let f = fresh.phys();
    check(paging::translate(TEST_VIRT).is_none(), || "test page already mapped".into())?;
    paging::map_fresh_test_page(TEST_VIRT, fresh).map_err(|e| format!("map: {e:?}"))?;
    let t = paging::translate(TEST_VIRT + 0x123).ok_or("not mapped after map")?;
    check(t.0 == f + 0x123 && t.1 && !t.2, || format!("translate gave {t:?}, frame {f:#x}"))?;
    trap::set_probe_dump(false);
    let r = trap::probe_read(TEST_VIRT);
    trap::set_probe_dump(true);
    check(r == Ok(0), || format!("read through the mapping: {r:?}"))?;
    let back = paging::unmap_test_page(TEST_VIRT).map_err(|e| format!("unmap: {e:?}"))?;
    check(back == f, || "unmap returned another frame".into())?;
    check(paging::translate(TEST_VIRT).is_none(), || "still mapped after unmap".into())?;
    trap::set_probe_dump(false);
    let r = trap::probe_read(TEST_VIRT);
    trap::set_probe_dump(true);
    check(r.is_err(), || "read after unmap did not fault (stale TLB?)".into())
}

fn pf_unmapped_read_caught(_: &Node) -> Result<(), String> {
    let addr = 0x0000_6000_0000_0000u64;
    let r = trap::probe_read(addr);
    let f = r.err().ok_or("read of unmapped memory did not fault")?;
    check(f.addr == addr && f.error_code & 1 == 0, || format!("{f:?}"))
}

fn pf_nx_exec_caught(_: &Node) -> Result<(), String> {
    let code: Box<[u8; 64]> = Box::new([0xc3; 64]); // `ret`, on the heap (NX)
    let addr = code.as_ptr() as u64;
    let r = trap::probe_exec_data(addr);
    let f = r.err().ok_or("executing heap memory did not fault: NX not enforced")?;
    check(f.error_code & 0x10 != 0 && f.error_code & 1 != 0, || format!("not an instruction-fetch protection fault: {f:?}"))
}

fn pf_rodata_write_caught(_: &Node) -> Result<(), String> {
    static RO: [u8; 16] = [7; 16];
    let addr = RO.as_ptr() as u64;
    let f = trap::probe_write_readonly(addr).err().ok_or("write to rodata did not fault")?;
    check(f.error_code & 0b11 == 0b11, || format!("not a write protection fault: {f:?}"))?;
    check(RO[0] == 7, || "rodata changed".into())
}

fn kernel_text_not_writable(_: &Node) -> Result<(), String> {
    let text = paging::kernel_sections().text.0 + 0x1000;
    let (_, w, x) = paging::translate(text).ok_or("text not mapped")?;
    check(!w && x, || format!("text writable={w} executable={x}"))?;
    let data = paging::kernel_sections().data.0;
    let (_, w, x) = paging::translate(data).ok_or("data not mapped")?;
    check(w && !x, || format!("data writable={w} executable={x}"))?;
    let ro = paging::kernel_sections().rodata.0;
    let (_, w, x) = paging::translate(ro).ok_or("rodata not mapped")?;
    check(!w && !x, || format!("rodata writable={w} executable={x}"))
}

fn stack_guard_page_unmapped(_: &Node) -> Result<(), String> {
    let g = boot::boot_stack_guard();
    check(paging::translate(g).is_none(), || "boot stack guard page is mapped".into())?;
    check(trap::probe_read(g).is_err(), || "boot stack guard page readable".into())?;
    let s = paging::alloc_stack(4).map_err(|e| format!("{e:?}"))?;
    let (bottom, top) = (s.bottom(), s.top());
    check(top - bottom == 4 * 4096, || "wrong stack size".into())?;
    check(paging::translate(bottom - 1).is_none(), || "allocated stack has no guard".into())?;
    check(paging::translate(bottom).is_some(), || "allocated stack unmapped".into())
}

fn heap_alloc(_: &Node) -> Result<(), String> {
    let mut m = BTreeMap::new();
    for i in 0..10_000u64 {
        m.insert(i, i * i);
    }
    check(m.get(&9_999) == Some(&(9_999 * 9_999)), || "btree lost data".into())?;
    let v: Vec<u64> = (0..100_000).collect();
    check(v.iter().sum::<u64>() == 4_999_950_000, || "vec sum wrong".into())?;
    let mut boxes: Vec<Box<[u8; 256]>> = (0..1000).map(|i| Box::new([i as u8; 256])).collect();
    boxes.reverse();
    check(boxes[0][0] == (999 % 256) as u8, || "box contents".into())
}

fn heap_large_alloc(_: &Node) -> Result<(), String> {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(16 << 20).map_err(|_| "16 MiB allocation failed")?;
    v.resize(16 << 20, 0xab);
    check(v[(16 << 20) - 1] == 0xab, || "large vec".into())?;
    drop(v);
    // An absurd request must fail as an error, not bring the node down.
    let mut huge: Vec<u8> = Vec::new();
    check(huge.try_reserve_exact(1 << 44).is_err(), || "16 TiB allocation succeeded?".into())
}

fn tsc_monotonic(_: &Node) -> Result<(), String> {
    let mut last = time::now_ns();
    for _ in 0..10_000 {
        let n = time::now_ns();
        check(n >= last, || format!("clock went back {last} -> {n}"))?;
        last = n;
    }
    check(time::tsc_hz() > 10_000_000, || "TSC not calibrated".into())
}

fn timer_interrupts_arrive(_: &Node) -> Result<(), String> {
    let t0 = apic::ticks();
    let start = time::now_ns();
    while apic::ticks() < t0 + 20 {
        // Generous: under TCG on a loaded 2-core host the vCPU threads can be descheduled.
        if time::now_ns() - start > 5_000_000_000 {
            return Err(format!("only {} ticks in 5 s", apic::ticks() - t0));
        }
        catenary_arch::cpu::wait_for_interrupt();
    }
    let ms = (time::now_ns() - start) / 1_000_000;
    // 20 ticks at 100 Hz = 200 ms: never much faster (a misprogrammed timer), and periodic.
    check((150..=5000).contains(&ms), || format!("20 ticks took {ms} ms"))
}
