//! MicroVm-level tests: exits as a backend would deliver them, over a tiny guest in VecMemory.

use crate::boot::tests::{synthetic_bzimage, synthetic_pvh_elf};
use crate::cpu::*;
use crate::fuzzing;
use crate::mem::{GuestMemory, GuestMemoryExt, VecMemory};
use crate::vm::*;
use alloc::vec;
use alloc::vec::Vec;

const CODE: u64 = 0x10000;

fn host_cpuid(l: u32, s: u32) -> [u32; 4] {
    match (l, s) {
        (0, _) => [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
        (1, _) => [0x00a2_0f10, 0x0010_0800, 0xffff_ffff, 0xffff_ffff],
        (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
        _ => [0; 4],
    }
}

fn vm() -> MicroVm {
    let mut cfg = VmConfig::new("t", 0x40000, 2_000_000_000);
    cfg.virtio_blk = Some((vec![0u8; 4096], false));
    MicroVm::new(cfg, &host_cpuid)
}

/// Long mode, identity-mapped with 1 GiB pages (PML4 0x1000, PDPT 0x2000).
fn long_guest(code: &[u8]) -> (VcpuState, VecMemory) {
    let mut m = VecMemory::new(0x40000);
    m.write_u64(0x1000, 0x2000 | 3).unwrap();
    for i in 0..4u64 {
        m.write_u64(0x2000 + i * 8, (i << 30) | 0x83).unwrap();
    }
    m.write(CODE, code).unwrap();
    let mut c = VcpuState::new();
    c.cr0 = CR0_PE | CR0_PG | CR0_ET;
    c.cr4 = CR4_PAE;
    c.cr3 = 0x1000;
    c.efer = EFER_LME | EFER_LMA;
    c.cs = Segment::flat(0x10, 0xb, false, true);
    c.ds = Segment::flat(0x18, 3, true, false);
    c.es = c.ds;
    c.ss = c.ds;
    c.rip = CODE;
    (c, m)
}

fn prot32_guest(code: &[u8]) -> (VcpuState, VecMemory) {
    let mut m = VecMemory::new(0x40000);
    m.write(CODE, code).unwrap();
    let mut c = VcpuState::new();
    c.cr0 = CR0_PE | CR0_ET;
    c.cs = Segment::flat(0x10, 0xb, true, false);
    c.ds = Segment::flat(0x18, 3, true, false);
    c.es = c.ds;
    c.ss = c.ds;
    c.rip = CODE;
    (c, m)
}

fn io(port: u16, size: u8, write: bool) -> Exit {
    Exit::Io { port, size, write, string: false, rep: false }
}

#[test]
fn uart_out_lines_and_rip() {
    let mut v = vm();
    let (mut c, mut m) = long_guest(&[0xee]); // out dx, al
    for &ch in b"Linux version 6.1\n" {
        c.rip = CODE;
        c.rax = 0xffff_ff00 | ch as u64;
        assert_eq!(v.handle_exit(io(0x3f8, 1, true), &mut c, &mut m, 0), Ok(Action::Resume));
        assert_eq!(c.rip, CODE + 1);
    }
    assert_eq!(v.take_console_lines(), ["Linux version 6.1"]);
    // in al, dx from LSR keeps the upper RAX bits
    m.write(CODE, &[0xec]).unwrap();
    c.rip = CODE;
    c.rax = 0x1234_5678_9abc_def0;
    v.handle_exit(io(0x3fd, 1, false), &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rax, 0x1234_5678_9abc_de60);
    // in eax, dx from an unknown port: all-ones, zero-extended
    m.write(CODE, &[0xed]).unwrap();
    c.rip = CODE;
    v.handle_exit(io(0x1234, 4, false), &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rax, 0xffff_ffff);
    assert_eq!(v.stats().unknown_port_reads, 1);
    // the instruction at RIP is not an IN: the VM stops
    m.write(CODE, &[0x90]).unwrap();
    c.rip = CODE;
    assert!(matches!(
        v.handle_exit(io(0x3f8, 1, false), &mut c, &mut m, 0),
        Ok(Action::Stop(StopReason::GuestFault(GuestFault::InstructionMismatch { .. })))
    ));
}

#[test]
fn string_out_rep_outsb() {
    let mut v = vm();
    let (mut c, mut m) = prot32_guest(&[0xf3, 0x6e]); // rep outsb
    m.write(0x3000, b"hi there\n").unwrap();
    c.rsi = 0x3000;
    c.rcx = 9;
    c.rdx = 0x3f8;
    let e = Exit::Io { port: 0x3f8, size: 1, write: true, string: true, rep: true };
    assert_eq!(v.handle_exit(e, &mut c, &mut m, 0), Ok(Action::Resume));
    assert_eq!(c.rcx, 0);
    assert_eq!(c.rsi, 0x3009);
    assert_eq!(c.rip, CODE + 2);
    assert_eq!(v.take_console_lines(), ["hi there"]);
    // insb into an unbacked address stops the VM (paging off, GPA outside RAM)
    m.write(CODE, &[0x6c]).unwrap();
    c.rip = CODE;
    c.rdi = 0x100_0000;
    let e = Exit::Io { port: 0x3f8, size: 1, write: false, string: true, rep: false };
    assert!(matches!(v.handle_exit(e, &mut c, &mut m, 0), Ok(Action::Stop(_))));
}

#[test]
fn cpuid_exit() {
    let mut v = vm();
    let (mut c, mut m) = long_guest(&[0x0f, 0xa2]);
    c.rax = 0x4000_0000;
    v.handle_exit(Exit::Cpuid, &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rax, 0x4000_0010);
    assert_eq!(&c.rbx.to_le_bytes()[..4], b"Cate");
    assert_eq!(c.rip, CODE + 2);
    c.rip = CODE;
    c.rax = 0x4000_0010;
    v.handle_exit(Exit::Cpuid, &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rax, 2_000_000);
    c.rip = CODE;
    c.rax = 1;
    v.handle_exit(Exit::Cpuid, &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rdx & (1 << 9), 0);
    assert_ne!(c.rcx & (1 << 31), 0);
}

/// `Stats::cpuid_by_leaf`: per leaf, kernel and user apart, the hypervisor-range walk under one
/// key, and no more than `MAX_CPUID_LEAVES_TRACKED` keys whatever the guest asks.
#[test]
fn cpuid_exits_counted_by_leaf_and_bounded() {
    let mut v = vm();
    let (mut c, mut m) = long_guest(&[0x0f, 0xa2]);
    // User-accessible mappings, for the CPUIDs at CPL 3.
    m.write_u64(0x1000, 0x2000 | 7).unwrap();
    m.write_u64(0x2000, 0x87).unwrap();
    let mut cpuid = |v: &mut MicroVm, c: &mut VcpuState, leaf: u32, cpl: u8| {
        c.rip = CODE;
        c.rax = leaf as u64;
        c.cpl = cpl;
        v.handle_exit(Exit::Cpuid, c, &mut m, 0).unwrap();
    };
    cpuid(&mut v, &mut c, 1, 0);
    cpuid(&mut v, &mut c, 1, 0);
    cpuid(&mut v, &mut c, 1, 3);
    // Linux's signature walk: 0x40000000, 0x40000100, ..., 0x4000ff00.
    for base in (0x4000_0000u32..0x4001_0000).step_by(0x100) {
        cpuid(&mut v, &mut c, base, 0);
    }
    let get = |v: &MicroVm, k: (u32, bool)| v.stats().cpuid_by_leaf.get(&k).copied();
    assert_eq!(get(&v, (1, false)), Some(2));
    assert_eq!(get(&v, (1, true)), Some(1));
    assert_eq!(get(&v, (0x4000_0000, false)), Some(1));
    assert_eq!(get(&v, (CPUID_HV_SCAN_KEY, false)), Some(255));
    assert_eq!(v.stats().cpuid_by_leaf.len(), 4);
    for leaf in 0x100..0x300u32 {
        cpuid(&mut v, &mut c, leaf, 3);
    }
    assert_eq!(v.stats().cpuid_by_leaf.len(), MAX_CPUID_LEAVES_TRACKED);
    cpuid(&mut v, &mut c, 1, 3);
    assert_eq!(get(&v, (1, true)), Some(2), "a tracked key still counts when the table is full");
    assert_eq!(v.stats().exits[2], 3 + 256 + 0x200 + 1);
}

#[test]
fn unknown_msr_injects_gp() {
    let mut v = vm();
    let (mut c, mut m) = long_guest(&[0x0f, 0x32]);
    c.rcx = 0xdead_0001;
    assert_eq!(v.handle_exit(Exit::Rdmsr, &mut c, &mut m, 0), Ok(Action::Resume));
    assert_eq!(c.rip, CODE, "faulting RDMSR does not retire");
    assert_eq!(v.pending_exception(), Some(Injection::gp0()));
    assert_eq!(v.next_event(&c), EventDecision::Inject(Injection::gp0()));
    assert_eq!(v.stats().unknown_msr_total, 1);
    assert_eq!(v.stats().unknown_msrs.get(&0xdead_0001), Some(&1));
    // WRMSR to an unknown MSR too
    m.write(CODE, &[0x0f, 0x30]).unwrap();
    v.handle_exit(Exit::Wrmsr, &mut c, &mut m, 0).unwrap();
    assert_eq!(v.take_injection(), Some(Injection::gp0()));
    // known MSR: MTRRdefType
    m.write(CODE, &[0x0f, 0x32]).unwrap();
    c.rcx = 0x2ff;
    v.handle_exit(Exit::Rdmsr, &mut c, &mut m, 0).unwrap();
    assert_eq!((c.rax, c.rdx, c.rip), (0x806, 0, CODE + 2));
    // #GP while a #GP is pending -> #DF, then a third -> triple fault
    c.rip = CODE;
    c.rcx = 0x1;
    v.handle_exit(Exit::Rdmsr, &mut c, &mut m, 0).unwrap();
    v.handle_exit(Exit::Rdmsr, &mut c, &mut m, 0).unwrap();
    assert_eq!(v.pending_exception().map(|i| i.vector), Some(8));
    assert_eq!(v.handle_exit(Exit::Rdmsr, &mut c, &mut m, 0), Ok(Action::Stop(StopReason::TripleFault)));
}

/// Linux-style PIC init and PIT mode 2 through port exits, then HLT and timer injection.
#[test]
fn timer_interrupt_flow() {
    let mut v = vm();
    for (p, val) in [(0x20u16, 0x11u32), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0xa0, 0x11), (0xa1, 0x38), (0xa1, 0x02), (0xa1, 0x01), (0x21, 0xfa), (0xa1, 0xff)] {
        assert_eq!(v.io_out(p, 1, val, 0), None);
    }
    v.io_out(0x43, 1, 0x34, 0);
    v.io_out(0x40, 1, 1193 & 0xff, 0);
    v.io_out(0x40, 1, 1193 >> 8, 0);
    let (mut c, mut m) = long_guest(&[0xf4]);
    c.rflags |= RFLAGS_IF;
    assert_eq!(v.handle_exit(Exit::Hlt, &mut c, &mut m, 10), Ok(Action::Halt));
    assert_eq!(c.rip, CODE + 1);
    let d = v.next_deadline_ns().unwrap();
    assert!((999_000..1_001_000).contains(&d));
    v.poll(d);
    assert_eq!(v.pending_irq(), Some(0x30));
    // interrupts disabled: request a window
    let mut c2 = c.clone();
    c2.rflags &= !RFLAGS_IF;
    assert_eq!(v.next_event(&c2), EventDecision::RequestWindow);
    c2.rflags |= RFLAGS_IF;
    c2.interrupt_shadow = true;
    assert_eq!(v.next_event(&c2), EventDecision::RequestWindow);
    assert_eq!(v.next_event(&c), EventDecision::Inject(Injection { vector: 0x30, error_code: None, kind: InjectionKind::ExtInt }));
    assert_eq!(v.next_event(&c), EventDecision::None);
    // EOI, next tick
    v.io_out(0x20, 1, 0x20, d);
    let d2 = v.next_deadline_ns().unwrap();
    v.poll(d2);
    assert_eq!(v.pending_irq(), Some(0x30));
    // HLT with an interrupt already pending resumes at once; the HLT was the instruction the
    // `sti` shadow covered, so the shadow ends with it and the interrupt goes in at once
    c.rip = CODE;
    c.interrupt_shadow = true;
    assert_eq!(v.handle_exit(Exit::Hlt, &mut c, &mut m, d2), Ok(Action::Resume));
    assert!(!c.interrupt_shadow, "the shadow outlived the skipped HLT");
    assert_eq!(c.rip, CODE + 1);
    assert!(matches!(v.next_event(&c), EventDecision::Inject(Injection { vector: 0x30, .. })));
    assert_eq!(v.stats().exits_by_reason().collect::<Vec<_>>(), [("hlt", 2)]);
}

#[test]
fn poweroff_reboot_triplefault() {
    let (mut c, mut m) = long_guest(&[0xf4]);
    let mut v = vm();
    assert_eq!(v.handle_exit(Exit::Hlt, &mut c, &mut m, 0), Ok(Action::Stop(StopReason::PowerOff { code: None })));
    // once stopped, stays stopped
    assert!(matches!(v.handle_exit(Exit::Cpuid, &mut c, &mut m, 0), Ok(Action::Stop(_))));
    let mut v = vm();
    m.write(CODE, &[0xe6, 0x64]).unwrap(); // out 0x64, al
    c.rip = CODE;
    c.rax = 0xfe;
    assert_eq!(v.handle_exit(io(0x64, 1, true), &mut c, &mut m, 0), Ok(Action::Stop(StopReason::Reboot)));
    let mut v = vm();
    assert_eq!(v.handle_exit(Exit::Shutdown, &mut c, &mut m, 0), Ok(Action::Stop(StopReason::TripleFault)));
    // hypercall power off with status (CPL 0), #UD at CPL 3
    let mut v = vm();
    m.write(CODE, &[0x0f, 0x01, 0xd9]).unwrap(); // vmmcall
    c.rip = CODE;
    c.rax = HC_POWER_OFF;
    c.rbx = 7;
    c.cpl = 3;
    assert_eq!(v.handle_exit(Exit::Vmcall, &mut c, &mut m, 0), Ok(Action::Resume));
    assert_eq!(v.take_injection(), Some(Injection::ud()));
    c.cpl = 0;
    assert_eq!(v.handle_exit(Exit::Vmcall, &mut c, &mut m, 0), Ok(Action::Stop(StopReason::PowerOff { code: Some(7) })));
    let mut v = vm();
    c.rip = CODE;
    c.rax = 1;
    assert_eq!(v.handle_exit(Exit::Vmcall, &mut c, &mut m, 0), Ok(Action::Resume));
    assert_eq!(c.rax, HC_ENOSYS);
    assert_eq!(c.rip, CODE + 3);
}

#[test]
fn mmio_virtio_long_mode_and_32bit() {
    let mut v = vm();
    let (mut c, mut m) = long_guest(&[0x8b, 0x07]); // mov eax, [rdi]
    c.rdi = 0xd000_0000;
    c.rax = u64::MAX;
    assert_eq!(v.handle_exit(Exit::Mmio { gpa: 0xd000_0000, write_hint: Some(false) }, &mut c, &mut m, 0), Ok(Action::Resume));
    assert_eq!(c.rax, 0x7472_6976);
    assert_eq!(c.rip, CODE + 2);
    // device id of the second window (blk)
    m.write(CODE, &[0x8b, 0x47, 0x08]).unwrap(); // mov eax, [rdi+8]
    c.rip = CODE;
    c.rdi = 0xd000_1000;
    v.handle_exit(Exit::Mmio { gpa: 0xd000_1008, write_hint: None }, &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rax, 2);
    // 32-bit: mov [eax+0x70], ebx  (status write)
    let (mut c, mut m) = prot32_guest(&[0x89, 0x58, 0x70]);
    c.rax = 0xd000_0000;
    c.rbx = 1;
    v.handle_exit(Exit::Mmio { gpa: 0xd000_0070, write_hint: Some(true) }, &mut c, &mut m, 0).unwrap();
    assert_eq!(v.virtio[0].status(), 1);
    assert_eq!(c.rip, CODE + 3);
    // write hint contradicts the instruction
    c.rip = CODE;
    assert!(matches!(v.handle_exit(Exit::Mmio { gpa: 0xd000_0070, write_hint: Some(false) }, &mut c, &mut m, 0), Ok(Action::Stop(_))));
}

#[test]
fn hostile_mmio() {
    let (mut c, mut m) = long_guest(&[0x8b, 0x07]);
    let mut v = vm();
    assert_eq!(
        v.handle_exit(Exit::Mmio { gpa: 0xe000_0000, write_hint: None }, &mut c, &mut m, 0),
        Ok(Action::Stop(StopReason::GuestFault(GuestFault::WildMmio { gpa: 0xe000_0000, rip: CODE })))
    );
    // all-ones policy
    let mut cfg = VmConfig::new("t", 0x40000, 0);
    cfg.wild_mmio = WildMmioPolicy::AllOnes;
    let mut v = MicroVm::new(cfg, &host_cpuid);
    c.rip = CODE;
    c.rax = 0;
    assert_eq!(v.handle_exit(Exit::Mmio { gpa: 0xe000_0000, write_hint: None }, &mut c, &mut m, 0), Ok(Action::Resume));
    assert_eq!(c.rax, 0xffff_ffff);
    // unsupported instruction (add [rdi], eax)
    let mut v = vm();
    m.write(CODE, &[0x01, 0x07]).unwrap();
    c.rip = CODE;
    assert!(matches!(
        v.handle_exit(Exit::Mmio { gpa: 0xd000_0000, write_hint: None }, &mut c, &mut m, 0),
        Ok(Action::Stop(StopReason::GuestFault(GuestFault::UnsupportedMmioInstruction { .. })))
    ));
    // undecodable bytes
    let mut v = vm();
    m.write(CODE, &[0x0f, 0x0b]).unwrap(); // ud2
    c.rip = CODE;
    assert!(matches!(v.handle_exit(Exit::Mmio { gpa: 0xd000_0000, write_hint: None }, &mut c, &mut m, 0), Ok(Action::Stop(_))));
    // RIP on an unmapped page -> #PF injected with CR2, RIP unchanged
    let mut v = vm();
    m.write_u64(0x2000, 0).unwrap(); // unmap the first GiB
    c.rip = CODE;
    assert_eq!(v.handle_exit(Exit::Cpuid, &mut c, &mut m, 0), Ok(Action::Resume));
    assert_eq!(c.cr2, CODE);
    assert_eq!(v.take_injection(), Some(Injection::exception(14, Some(0x10))));
    assert_eq!(c.rip, CODE);
    // backend nonsense: I/O size 3
    assert!(v.handle_exit(io(0x80, 3, true), &mut c, &mut m, 0).is_err());
    // reflected exception; invalid vector stops
    let mut v = vm();
    v.handle_exit(Exit::Exception { vector: 6, error_code: None }, &mut c, &mut m, 0).unwrap();
    assert_eq!(v.take_injection(), Some(Injection::ud()));
    assert!(matches!(v.handle_exit(Exit::Exception { vector: 40, error_code: None }, &mut c, &mut m, 0), Ok(Action::Stop(_))));
}

#[test]
fn cmdline_extras() {
    let v = vm();
    assert_eq!(
        v.kernel_cmdline_extras(),
        "virtio_mmio.device=0x200@0xd0000000:5 virtio_mmio.device=0x200@0xd0001000:6 tsc_early_khz=2000000"
    );
}

#[test]
fn virtio_console_via_mmio_exits() {
    // Drive the console device through real MMIO exits (mov [rdi+off], eax) like a driver.
    let mut v = vm();
    let (mut c, mut m) = long_guest(&[0x89, 0x07]); // mov [rdi], eax
    let w = |v: &mut MicroVm, c: &mut VcpuState, m: &mut VecMemory, off: u64, val: u64| {
        c.rip = CODE;
        c.rdi = 0xd000_0000 + off;
        c.rax = val;
        assert_eq!(v.handle_exit(Exit::Mmio { gpa: 0xd000_0000 + off, write_hint: Some(true) }, c, m, 0), Ok(Action::Resume));
    };
    w(&mut v, &mut c, &mut m, 0x70, 3);
    w(&mut v, &mut c, &mut m, 0x24, 1);
    w(&mut v, &mut c, &mut m, 0x20, 1);
    w(&mut v, &mut c, &mut m, 0x70, 0xb);
    // tx queue 1 at 0x8000 (desc), 0x8100 (avail), 0x8200 (used), size 4
    w(&mut v, &mut c, &mut m, 0x30, 1);
    w(&mut v, &mut c, &mut m, 0x38, 4);
    w(&mut v, &mut c, &mut m, 0x80, 0x8000);
    w(&mut v, &mut c, &mut m, 0x90, 0x8100);
    w(&mut v, &mut c, &mut m, 0xa0, 0x8200);
    w(&mut v, &mut c, &mut m, 0x44, 1);
    w(&mut v, &mut c, &mut m, 0x70, 0xf);
    m.write(0x9000, b"catenary-init: ready\n").unwrap();
    m.write_u64(0x8000, 0x9000).unwrap();
    m.write_u32(0x8008, 21).unwrap();
    m.write_u16(0x8104, 0).unwrap();
    m.write_u16(0x8102, 1).unwrap();
    // unmask irq 5 on a Linux-initialised PIC
    for (p, val) in [(0x20u16, 0x11u32), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0xdb)] {
        v.io_out(p, 1, val, 0);
    }
    w(&mut v, &mut c, &mut m, 0x50, 1);
    assert_eq!(v.take_console_lines(), ["catenary-init: ready"]);
    assert_eq!(m.read_u16(0x8202).unwrap(), 1);
    // The chain is used inside the notify exit, with no interrupt: Linux's hvc writer polls,
    // and an interrupt taken on another vCPU races it (virtio::mmio::process_console_tx).
    assert_eq!(v.pending_irq(), None);
}

#[test]
fn console_queues_are_32_entries_the_others_the_vms_size() {
    // Linux posts a page and notifies once per receive-queue entry when it probes a console
    // (virtio::console::QUEUE_SIZE): the consoles offer 32, the disk the VM's queue_size.
    let mut cfg = VmConfig::new("t", 0x40000, 2_000_000_000);
    cfg.virtio_blk = Some((vec![0u8; 4096], false));
    cfg.workload_channel = true;
    let mut v = MicroVm::new(cfg.clone(), &host_cpuid);
    let mut m = VecMemory::new(0x1000);
    let mut max = |v: &mut MicroVm, dev: usize, q: u64| {
        v.virtio[dev].write(0x30, 4, q, &mut m);
        v.virtio[dev].read(0x34, 4)
    };
    // console and workload channel (receive and transmit queue), disk (one queue)
    for (dev, want, queues) in [(0, 32, 2), (1, 32, 2), (2, 256, 1)] {
        for q in 0..queues {
            assert_eq!(max(&mut v, dev, q), want, "device {dev} queue {q}");
        }
    }
    // A driver may pick a size up to the maximum, never past it: 64 is refused (the queue stays
    // not ready), 16 and 32 are taken.
    for (num, ready) in [(64u64, 0u64), (16, 1), (32, 1)] {
        let mut v = MicroVm::new(cfg.clone(), &host_cpuid);
        let mut m = VecMemory::new(0x1000);
        let t = &mut v.virtio[0];
        for (off, val) in [(0x70, 3), (0x24, 1), (0x20, 1), (0x70, 0xb), (0x30, 0), (0x38, num), (0x80, 0), (0x90, 0x400), (0xa0, 0x800), (0x44, 1)] {
            t.write(off, 4, val, &mut m);
        }
        assert_eq!(t.read(0x44, 4), ready, "QueueNum {num}");
    }
    // A VM with smaller queues keeps them for its consoles too.
    cfg.queue_size = 8;
    let mut v = MicroVm::new(cfg, &host_cpuid);
    assert_eq!([max(&mut v, 0, 0), max(&mut v, 1, 1), max(&mut v, 2, 0)], [8, 8, 8]);
}

#[test]
fn workload_channel_kept_apart() {
    // The channel is the second console (guest /dev/hvc1); what the guest writes there lands in
    // the channel ring, never among the console lines, and host console input never reaches it.
    let mut cfg = VmConfig::new("t", 0x40000, 2_000_000_000);
    cfg.workload_channel = true;
    cfg.virtio_blk = Some((vec![0u8; 4096], true));
    let mut v = MicroVm::new(cfg, &host_cpuid);
    assert_eq!(
        v.kernel_cmdline_extras(),
        "virtio_mmio.device=0x200@0xd0000000:5 virtio_mmio.device=0x200@0xd0001000:6 virtio_mmio.device=0x200@0xd0002000:9 tsc_early_khz=2000000"
    );
    let (mut c, mut m) = long_guest(&[0x89, 0x07]); // mov [rdi], eax
    let w = |v: &mut MicroVm, c: &mut VcpuState, m: &mut VecMemory, off: u64, val: u64| {
        c.rip = CODE;
        c.rdi = 0xd000_1000 + off;
        c.rax = val;
        assert_eq!(v.handle_exit(Exit::Mmio { gpa: 0xd000_1000 + off, write_hint: Some(true) }, c, m, 0), Ok(Action::Resume));
    };
    for (off, val) in [(0x70, 3), (0x24, 1), (0x20, 1), (0x70, 0xb), (0x30, 0), (0x38, 4), (0x80, 0xa000), (0x90, 0xa100), (0xa0, 0xa200), (0x44, 1), (0x30, 1), (0x38, 4), (0x80, 0x8000), (0x90, 0x8100), (0xa0, 0x8200), (0x44, 1), (0x70, 0xf)] {
        w(&mut v, &mut c, &mut m, off, val);
    }
    let mut frames = Vec::new();
    crate::guest_proto::wire::encode_data(crate::guest_proto::wire::Stream::Stdout, b"from the workload\n", &mut |b| frames.extend_from_slice(b));
    frames.extend_from_slice(&crate::guest_proto::wire::encode_exit(crate::guest_proto::wire::WorkloadExit::Code(3)));
    m.write(0x9000, &frames).unwrap();
    m.write_u64(0x8000, 0x9000).unwrap();
    m.write_u32(0x8008, frames.len() as u32).unwrap();
    m.write_u16(0x8104, 0).unwrap();
    m.write_u16(0x8102, 1).unwrap();
    // A receive buffer posted on the channel's queue 0: console input must not fill it.
    m.write_u64(0xa000, 0xb000).unwrap();
    m.write_u32(0xa008, 64).unwrap();
    m.write_u16(0xa00c, 2).unwrap(); // VIRTQ_DESC_F_WRITE
    m.write_u16(0xa104, 0).unwrap();
    m.write_u16(0xa102, 1).unwrap();
    w(&mut v, &mut c, &mut m, 0x50, 0);
    w(&mut v, &mut c, &mut m, 0x50, 1);
    assert!(v.take_console_lines().is_empty());
    v.push_console_input(b"typed", &mut m);
    assert_eq!(m.read_u16(0xa202).unwrap(), 0, "console input reached the channel");
    // A node → init request lands in that buffer, whole (the init's STOP/SIGNAL direction).
    use crate::guest_proto::wire::{encode_signal, encode_stop};
    assert!(v.send_to_init(&encode_stop(), &mut m));
    assert_eq!(m.read_u16(0xa202).unwrap(), 1, "the STOP frame was not delivered");
    assert_eq!(m.read_u32(0xa208).unwrap(), 4);
    let mut got = [0u8; 4];
    m.read(0xb000, &mut got).unwrap();
    assert_eq!(got, encode_stop());
    // No buffer posted now: requests wait, bounded, and a frame that does not fit is refused whole.
    let mut queued = 0;
    while v.send_to_init(&encode_signal(9).unwrap(), &mut m) {
        queued += 1;
        assert!(queued <= crate::virtio::console::MAX_CHANNEL_INPUT);
    }
    assert_eq!(queued, crate::virtio::console::MAX_CHANNEL_INPUT / 5);
    assert_eq!(m.read_u16(0xa202).unwrap(), 1);
    let ring = v.channel().unwrap();
    let mut buf = [0u8; 256];
    let n = ring.pop(&mut buf);
    let mut log = crate::workload::WorkloadLog::new();
    let mut lines = Vec::new();
    log.feed(&buf[..n], &mut |s, l| lines.push((s, alloc::string::String::from_utf8_lossy(l).into_owned())));
    assert_eq!(lines, [(crate::guest_proto::wire::Stream::Stdout, alloc::string::String::from("from the workload"))]);
    assert_eq!(log.exit(), Some(crate::guest_proto::wire::WorkloadExit::Code(3)));
}

#[test]
fn boot_then_first_exit() {
    // bzImage entry state decodes as 64-bit; PVH entry as 32-bit.
    let mut m = VecMemory::new(32 << 20);
    let img = synthetic_bzimage(0x020f, 1, 4096);
    let b = crate::load_bzimage(&mut m, &img, None, b"console=ttyS0", 32 << 20).unwrap();
    let mut c = b.cpu.clone();
    m.write(c.rip, &[0x0f, 0xa2]).unwrap();
    let mut v = vm();
    v.handle_exit(Exit::Cpuid, &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rip, b.cpu.rip + 2);
    let elf = synthetic_pvh_elf(0x100000, &[0x0f, 0xa2]);
    let mut m = VecMemory::new(32 << 20);
    let b = crate::load_pvh(&mut m, &elf, None, b"", 32 << 20).unwrap();
    let mut c = b.cpu.clone();
    v.handle_exit(Exit::Cpuid, &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rip, 0x100002);
}

// ----- no-panic runs of the fuzz entry points over pseudo-random inputs ------------------------

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn mutate(&mut self, seed: &[u8], flips: usize) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..flips {
            if v.is_empty() {
                break;
            }
            let i = (self.next() as usize) % v.len();
            v[i] = self.next() as u8;
        }
        if self.next().is_multiple_of(8) {
            let n = (self.next() as usize) % (v.len() + 1);
            v.truncate(n);
        }
        v
    }
}

#[test]
fn fuzz_smoke_exits() {
    let mut r = Rng(0x1234_5678_9abc_def1);
    for i in 0..3000 {
        let n = 64 + (r.next() as usize % 2048);
        let mut d = r.bytes(n);
        if i % 2 == 0 {
            // make the first exit an I/O or MMIO more often
            if let Some(b) = d.get_mut(200) {
                *b = 0;
            }
        }
        fuzzing::exit_sequence(&d);
    }
}

#[test]
fn fuzz_smoke_mmio() {
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let movs: [&[u8]; 6] = [&[0x8b, 0x07], &[0x89, 0x47, 0x50], &[0x48, 0xc7, 0x07, 1, 0, 0, 0], &[0x0f, 0xb6, 0x07], &[0x66, 0x89, 0x07], &[0xa1, 0, 0, 0, 0xd0]];
    for i in 0..4000 {
        let mut d = r.bytes(200);
        if i % 2 == 0 {
            let m = movs[(r.next() % movs.len() as u64) as usize];
            // place a plausible instruction where mmio_decode reads its code bytes
            let at = 3 + 16 * 8 + 8 + 8 + 8 + 1 + 1 + 1;
            d[at..at + m.len()].copy_from_slice(m);
        }
        fuzzing::mmio_decode(&d);
    }
}

#[test]
fn fuzz_smoke_ports() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2000 {
        let n = r.next() as usize % 600;
        fuzzing::port_sequence(&r.bytes(n));
    }
}

#[test]
fn fuzz_smoke_virtqueue() {
    let mut r = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..2000 {
        let n = r.next() as usize % 4096;
        let mut d = r.bytes(n);
        // bias ring indices small so chains are found
        for b in d.iter_mut().skip(40).step_by(7) {
            *b &= 0x0f;
        }
        fuzzing::virtqueue(&d);
    }
}

#[test]
fn fuzz_smoke_loaders() {
    let mut r = Rng(0x0123_4567_89ab_cdef);
    let elf = synthetic_pvh_elf(0x100010, &[0x90; 256]);
    let bz = synthetic_bzimage(0x020f, 3, 2048);
    for i in 0..600 {
        let seed: &[u8] = if i % 2 == 0 { &elf } else { &bz };
        let flips = 1 + (r.next() as usize % 8);
        let img = r.mutate(seed, flips);
        let mut d = vec![0u8, 0, 8];
        d.extend_from_slice(b"console=");
        d.extend_from_slice(&[0x10, 0x00]);
        d.extend_from_slice(&img);
        fuzzing::loaders(&d);
    }
    for i in 0..600 {
        let n = r.next() as usize % 1024;
        let mut d = r.bytes(n);
        if let Some(m) = d.first_mut() {
            *m = (i % 3) as u8; // raw, patched ELF, patched bzImage
        }
        fuzzing::loaders(&d);
    }
}

#[test]
fn real_mode_io_and_ip_wrap() {
    let mut v = vm();
    let mut m = VecMemory::new(0x40000);
    let mut c = VcpuState::new();
    c.cs = Segment::real(0x100, 0xb);
    c.rip = 0x10;
    m.write(0x1010, &[0xee]).unwrap(); // out dx, al at 0100:0010
    c.rax = b'R' as u64;
    v.handle_exit(io(0x3f8, 1, true), &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rip, 0x11);
    // IP wraps at 64 KiB: 66 ef (out dx, eax) at 0100:fffe
    m.write(0x1000 + 0xfffe, &[0x66, 0xef]).unwrap();
    c.rip = 0xfffe;
    c.rax = b'\n' as u64;
    v.handle_exit(io(0x3f8, 4, true), &mut c, &mut m, 0).unwrap();
    assert_eq!(c.rip, 0);
    assert_eq!(v.take_console_lines(), ["R"]);
}

#[test]
fn page_walk_fault_is_not_mmio_emulation() {
    // The instruction at RIP would be a valid virtio-mmio read of the faulting GPA; a fault
    // during the guest's own page walk must still end the VM, not touch the device.
    let (mut c, mut m) = long_guest(&[0x8b, 0x07]); // mov eax, [rdi]
    c.rdi = 0xd000_0000;
    c.rax = 0x1234;
    let mut v = vm();
    assert_eq!(
        v.handle_exit(Exit::PageWalkFault { gpa: 0xd000_0000 }, &mut c, &mut m, 0),
        Ok(Action::Stop(StopReason::GuestFault(GuestFault::PageWalkOutsideRam { gpa: 0xd000_0000, rip: CODE })))
    );
    assert_eq!(c.rax, 0x1234);
    assert_eq!(c.rip, CODE);
}

#[test]
fn cache_flushes_are_skipped_and_boundary_exceptions_reflected() {
    // WBINVD (0f 09) and INVD (0f 08): no-ops that retire.
    for (exit, bytes) in [(Exit::Wbinvd, [0x0f, 0x09]), (Exit::Invd, [0x0f, 0x08])] {
        let (mut c, mut m) = prot32_guest(&bytes);
        let mut v = vm();
        assert_eq!(v.handle_exit(exit, &mut c, &mut m, 0), Ok(Action::Resume));
        assert_eq!(c.rip, CODE + 2);
    }
    // #AC (error code 0), #DB and #UD (an SVM instruction) go back into the guest.
    for (vector, ec) in [(17u8, Some(0u32)), (1, None), (6, None)] {
        let (mut c, mut m) = prot32_guest(&[0x90]);
        let mut v = vm();
        assert_eq!(v.handle_exit(Exit::Exception { vector, error_code: ec }, &mut c, &mut m, 0), Ok(Action::Resume));
        assert_eq!(v.pending_exception(), Some(Injection::exception(vector, ec)));
        assert_eq!(c.rip, CODE);
    }
}

#[test]
fn out_of_memory_in_a_device_ends_the_vm() {
    // The virtio-console transmit path of `virtio_console_via_mmio_exits`, with host
    // allocations failing when the driver notifies: the exit reports OutOfMemory (the kernel
    // ends this VM with `Ended::OutOfMemory`), nothing panics.
    let mut v = vm();
    let (mut c, mut m) = long_guest(&[0x89, 0x07]); // mov [rdi], eax
    let w = |v: &mut MicroVm, c: &mut VcpuState, m: &mut VecMemory, off: u64, val: u64| {
        c.rip = CODE;
        c.rdi = 0xd000_0000 + off;
        c.rax = val;
        v.handle_exit(Exit::Mmio { gpa: 0xd000_0000 + off, write_hint: Some(true) }, c, m, 0)
    };
    for (off, val) in [(0x70, 3), (0x24, 1), (0x20, 1), (0x70, 0xb), (0x30, 1), (0x38, 4), (0x80, 0x8000), (0x90, 0x8100), (0xa0, 0x8200), (0x44, 1), (0x70, 0xf)] {
        assert_eq!(w(&mut v, &mut c, &mut m, off, val), Ok(Action::Resume));
    }
    m.write(0x9000, b"hello\n").unwrap();
    m.write_u64(0x8000, 0x9000).unwrap();
    m.write_u32(0x8008, 6).unwrap();
    m.write_u16(0x8104, 0).unwrap();
    m.write_u16(0x8102, 1).unwrap();
    assert!(!v.out_of_memory());
    crate::fallible::fail_allocations(true);
    let r = w(&mut v, &mut c, &mut m, 0x50, 1);
    crate::fallible::fail_allocations(false);
    assert_eq!(r, Err(VmError::OutOfMemory));
    assert!(v.out_of_memory());
    assert!(v.take_console_lines().is_empty());
}

#[test]
fn console_ring_allocation_failure_is_an_error() {
    let mut cfg = VmConfig::new("t", 0x40000, 2_000_000_000);
    cfg.console_ring_bytes = usize::MAX / 2;
    assert!(matches!(MicroVm::try_new(cfg, &host_cpuid), Err(VmError::OutOfMemory)));
}
