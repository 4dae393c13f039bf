//! MicroVm-level tests of an APIC microVM: APIC/IOAPIC MMIO, MSRs and CPUID through exits as a
//! backend delivers them, interrupts as `next_event` hands them to each vCPU.

use crate::cpu::*;
use crate::mem::{GuestMemory, GuestMemoryExt, VecMemory};
use crate::vm::*;
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

fn apic_vm(vcpus: u8) -> MicroVm {
    let mut cfg = VmConfig::new("smp", 0x10_0000, 1_000_000_000);
    cfg.apic = true;
    cfg.vcpus = vcpus;
    MicroVm::new(cfg, &host_cpuid)
}

fn cpu32() -> VcpuState {
    let mut c = VcpuState::new();
    c.cr0 = CR0_PE | CR0_ET;
    c.cs = Segment::flat(0x10, 0xb, true, false);
    c.ds = Segment::flat(0x18, 3, true, false);
    c.es = c.ds;
    c.ss = c.ds;
    c.rip = CODE;
    c.rflags = RFLAGS_FIXED | RFLAGS_IF;
    c
}

/// `mov [gpa], eax` (write) or `mov eax, [gpa]` (read) by vCPU `v`, as an MMIO exit.
fn mmio32(vm: &mut MicroVm, mem: &mut VecMemory, v: usize, gpa: u32, write: Option<u32>) -> u32 {
    let op = if write.is_some() { 0x89 } else { 0x8b };
    let mut code = Vec::from([op, 0x05]);
    code.extend_from_slice(&gpa.to_le_bytes());
    mem.write(CODE, &code).unwrap();
    let mut c = cpu32();
    c.rax = u64::from(write.unwrap_or(0xdead_beef));
    vm.set_vcpu(v);
    let r = vm.handle_exit(Exit::Mmio { gpa: u64::from(gpa), write_hint: Some(write.is_some()) }, &mut c, mem, 0);
    assert_eq!(r, Ok(Action::Resume));
    assert_eq!(c.rip, CODE + 6);
    c.rax as u32
}

fn next_irq(vm: &mut MicroVm, v: usize) -> Option<u8> {
    vm.set_vcpu(v);
    match vm.next_event(&cpu32()) {
        EventDecision::Inject(i) if i.kind == InjectionKind::ExtInt => Some(i.vector),
        EventDecision::None => None,
        e => panic!("{e:?}"),
    }
}

const LAPIC: u32 = 0xfee0_0000;
const IOAPIC: u32 = 0xfec0_0000;

#[test]
fn two_vcpus_ipi_ioapic_timer_cpuid_and_mptable() {
    let mut vm = apic_vm(2);
    let mut mem = VecMemory::new(0x10_0000);
    vm.write_platform_tables(&mut mem).unwrap();
    assert_eq!(&mem.read_array::<4>(crate::mptable::MPTABLE_GPA).unwrap(), b"_MP_");
    // Each vCPU sees its own APIC ID in the register and in CPUID.1:EBX[31:24].
    for v in 0..2usize {
        assert_eq!(mmio32(&mut vm, &mut mem, v, LAPIC + 0x20, None), (v as u32) << 24);
        mmio32(&mut vm, &mut mem, v, LAPIC + 0xf0, Some(0x1ff));
        mem.write(CODE, &[0x0f, 0xa2]).unwrap();
        let mut c = cpu32();
        c.rax = 1;
        vm.set_vcpu(v);
        assert_eq!(vm.handle_exit(Exit::Cpuid, &mut c, &mut mem, 0), Ok(Action::Resume));
        assert_eq!(c.rbx >> 24, v as u64);
        assert_ne!(c.rdx & (1 << 9), 0, "APIC in CPUID");
    }
    // IPI 0 → 1, fixed vector 0x41: vCPU 1 is woken and takes it, vCPU 0 does not.
    vm.apic_bus().unwrap().take_wakeups();
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x310, Some(1 << 24));
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x300, Some(0x4041));
    assert_eq!(vm.apic_bus().unwrap().take_wakeups(), 0b10);
    assert_eq!(next_irq(&mut vm, 0), None);
    assert_eq!(next_irq(&mut vm, 1), Some(0x41));
    mmio32(&mut vm, &mut mem, 1, LAPIC + 0xb0, Some(0));

    // The UART's IRQ 4 through I/O APIC pin 4 (vector 0x34, physical APIC 1).
    mmio32(&mut vm, &mut mem, 0, IOAPIC, Some(0x18));
    mmio32(&mut vm, &mut mem, 0, IOAPIC + 0x10, Some(0x34));
    mmio32(&mut vm, &mut mem, 0, IOAPIC, Some(0x19));
    mmio32(&mut vm, &mut mem, 0, IOAPIC + 0x10, Some(1 << 24));
    mmio32(&mut vm, &mut mem, 0, IOAPIC, Some(0x18));
    assert_eq!(mmio32(&mut vm, &mut mem, 0, IOAPIC + 0x10, None), 0x34);
    let mut out = |vm: &mut MicroVm, port: u16, val: u8| {
        vm.set_vcpu(0);
        mem.write(CODE, &[0xee]).unwrap();
        let mut c = cpu32();
        c.rdx = u64::from(port);
        c.rax = u64::from(val);
        assert_eq!(vm.handle_exit(Exit::Io { port, size: 1, write: true, string: false, rep: false }, &mut c, &mut mem, 0), Ok(Action::Resume));
    };
    out(&mut vm, 0x3fc, 0x08); // MCR: OUT2
    out(&mut vm, 0x3f9, 0x02); // IER: THRE interrupt → IRQ 4 rises
    assert_eq!(next_irq(&mut vm, 0), None);
    assert_eq!(next_irq(&mut vm, 1), Some(0x34));

    // vCPU 0's APIC timer: one-shot, divide 1, 1000 ticks = 1 µs at the 1 GHz bus.
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x3e0, Some(0xb));
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x320, Some(0xec));
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x380, Some(1000));
    vm.set_vcpu(0);
    assert_eq!(vm.next_deadline_ns(), Some(1000));
    vm.poll(1000);
    assert_eq!(next_irq(&mut vm, 0), Some(0xec));

    // APIC MSRs: IA32_APIC_BASE reads back, x2APIC MSRs #GP in xAPIC mode (RIP stays).
    mem.write(CODE, &[0x0f, 0x32]).unwrap();
    let mut c = cpu32();
    c.rcx = 0x1b;
    vm.set_vcpu(1);
    assert_eq!(vm.handle_exit(Exit::Rdmsr, &mut c, &mut mem, 0), Ok(Action::Resume));
    assert_eq!(c.rax, 0xfee0_0800, "vCPU 1 is not the BSP");
    let mut c = cpu32();
    c.rcx = 0x802;
    assert_eq!(vm.handle_exit(Exit::Rdmsr, &mut c, &mut mem, 0), Ok(Action::Resume));
    assert_eq!(c.rip, CODE);
    assert_eq!(vm.take_injection(), Some(Injection::gp0()));
}

#[test]
fn the_8259_reaches_vcpu0_through_lint0_until_it_is_masked() {
    let mut vm = apic_vm(2);
    let mut mem = VecMemory::new(0x10_0000);
    // Program the PIC (ICW1-4, vector base 0x20, all unmasked) and the PIT (mode 2, 10 µs).
    let mut out = |vm: &mut MicroVm, port: u16, val: u8| {
        vm.set_vcpu(0);
        mem.write(CODE, &[0xee]).unwrap();
        let mut c = cpu32();
        c.rdx = u64::from(port);
        c.rax = u64::from(val);
        assert_eq!(vm.handle_exit(Exit::Io { port, size: 1, write: true, string: false, rep: false }, &mut c, &mut mem, 0), Ok(Action::Resume));
    };
    for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 4), (0x21, 1), (0x21, 0), (0x43, 0x34), (0x40, 12), (0x40, 0)] {
        out(&mut vm, p, v);
    }
    vm.poll(20_000);
    assert_eq!(next_irq(&mut vm, 1), None, "the 8259 is wired to the BSP only");
    assert_eq!(next_irq(&mut vm, 0), Some(0x20));
    // Linux masks LINT0 once its I/O APIC timer works: the 8259 no longer reaches vCPU 0.
    out(&mut vm, 0x20, 0x20);
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0xf0, Some(0x1ff));
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x350, Some(0x1_0700));
    vm.poll(60_000);
    assert_eq!(next_irq(&mut vm, 0), None);
}

/// Without `apic`: one vCPU, no APIC model, CPUID offers no APIC; the MP table lists one
/// processor and an unusable I/O APIC; the APIC page answers only what Linux's MP-table parser
/// reads (ID 0, the version), drops writes, and the page after it is wild MMIO.
#[test]
fn without_apic_one_vcpu_and_a_pic_only_mp_table() {
    let mut cfg = VmConfig::new("up", 0x10_0000, 1_000_000_000);
    cfg.vcpus = 4;
    // (Asking CPUID for the APIC without `apic` offers nothing: there is no model behind it.)
    cfg.cpuid.apic = true;
    let mut vm = MicroVm::new(cfg, &host_cpuid);
    let mut mem = VecMemory::new(0x10_0000);
    vm.write_platform_tables(&mut mem).unwrap();
    // (Its entries: apic_tests::pic_only_mptable_lists_one_cpu_and_an_unusable_ioapic.)
    let want = crate::mptable::build_pic_only_mptable(&[crate::mptable::IsaIrq { irq: crate::vm::VIRTIO_IRQS[0], level_triggered: true }]).unwrap();
    let mut table = alloc::vec![0u8; want.len()];
    mem.read(crate::mptable::MPTABLE_GPA, &mut table).unwrap();
    assert_eq!(table, want, "the PIC-only MP table");
    assert_eq!(vm.cfg.vcpus, 1);
    assert!(vm.apic_bus().is_none());
    // CPUID offers neither the APIC nor its TSC-deadline timer.
    mem.write(CODE, &[0x0f, 0xa2]).unwrap();
    let mut c = cpu32();
    c.rax = 1;
    assert_eq!(vm.handle_exit(Exit::Cpuid, &mut c, &mut mem, 0), Ok(Action::Resume));
    assert_eq!((c.rdx & (1 << 9), c.rcx & (1 << 24)), (0, 0), "APIC / TSC-deadline offered");
    // The APIC page: ID 0, the version as in the table, 0 elsewhere; a write changes nothing.
    assert_eq!(mmio32(&mut vm, &mut mem, 0, LAPIC + 0x20, None), 0);
    assert_eq!(mmio32(&mut vm, &mut mem, 0, LAPIC + 0x30, None), crate::devices::lapic::APIC_VERSION);
    assert_eq!(mmio32(&mut vm, &mut mem, 0, LAPIC + 0xf0, None), 0);
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x20, Some(0x0500_0000));
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0xf0, Some(0x1ff));
    assert_eq!(mmio32(&mut vm, &mut mem, 0, LAPIC + 0x20, None), 0);
    assert_eq!(mmio32(&mut vm, &mut mem, 0, LAPIC + 0xf0, None), 0);
    assert_eq!(vm.stats().absent_apic_mmio, 7);
    assert_eq!(vm.stats().wild_mmio, 0);
    // Past the page: wild MMIO.
    mem.write(CODE, &[0x8b, 0x05, 0x00, 0x10, 0xe0, 0xfe]).unwrap();
    let mut c = cpu32();
    let r = vm.handle_exit(Exit::Mmio { gpa: 0xfee0_1000, write_hint: Some(false) }, &mut c, &mut mem, 0);
    assert!(matches!(r, Ok(Action::Stop(StopReason::GuestFault(GuestFault::WildMmio { .. })))), "{r:?}");
}

#[test]
fn an_ap_starts_in_real_mode_at_the_sipi_vector() {
    let mut vm = apic_vm(2);
    let mut mem = VecMemory::new(0x10_0000);
    // vCPU 0 sends INIT then SIPI 0x9f to APIC 1 (Linux's wakeup_secondary_cpu_via_init).
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x310, Some(1 << 24));
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x300, Some(0xc500));
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x300, Some(0x069f));
    let bus = vm.apic_bus().unwrap();
    assert_eq!(bus.take_wakeups(), 0b10);
    let ap = bus.lapic_mut(1).unwrap();
    assert!(ap.take_init());
    let vector = ap.take_sipi().unwrap();
    let mut c = crate::apic_bus::sipi_state(vector);
    assert_eq!(c.mode(), CpuMode::Real);
    assert_eq!(c.cs.base + c.rip, 0x9_f000);
    // Its first instruction there, `out 0x80, al`, runs as a real-mode exit of vCPU 1.
    mem.write(0x9_f000, &[0xe6, 0x80]).unwrap();
    c.rax = 0x5a;
    vm.set_vcpu(1);
    assert_eq!(vm.handle_exit(Exit::Io { port: 0x80, size: 1, write: true, string: false, rep: false }, &mut c, &mut mem, 0), Ok(Action::Resume));
    assert_eq!(c.rip, 2);
    assert_eq!(vm.stats().post_code, 0x5a);
}

#[test]
fn an_nmi_waits_for_the_shadow_and_for_the_one_in_service() {
    let mut vm = apic_vm(2);
    let mut mem = VecMemory::new(0x10_0000);
    for v in 0..2usize {
        mmio32(&mut vm, &mut mem, v, LAPIC + 0xf0, Some(0x1ff));
    }
    let nmi = |vm: &mut MicroVm, mem: &mut VecMemory| {
        mmio32(vm, mem, 1, LAPIC + 0x310, Some(0));
        mmio32(vm, mem, 1, LAPIC + 0x300, Some(0x4400)); // NMI to APIC 0
    };
    let is_nmi = |d: EventDecision| matches!(d, EventDecision::Inject(i) if i.kind == InjectionKind::Nmi && i.vector == 2);
    vm.poll(1_000);
    nmi(&mut vm, &mut mem);
    vm.set_vcpu(0);
    // In an STI / MOV SS shadow: not now, and the NMI stays latched.
    let mut shadow = cpu32();
    shadow.interrupt_shadow = true;
    assert!(!is_nmi(vm.next_event(&shadow)));
    assert!(is_nmi(vm.next_event(&cpu32())));
    // A second NMI while the first is in service (no IRET seen): held, not injected ...
    nmi(&mut vm, &mut mem);
    vm.set_vcpu(0);
    assert!(!is_nmi(vm.next_event(&cpu32())));
    vm.poll(1_000 + NMI_HOLD_NS / 2);
    assert!(!is_nmi(vm.next_event(&cpu32())));
    // ... until the hold has passed; then exactly once.
    vm.poll(1_000 + NMI_HOLD_NS);
    assert!(is_nmi(vm.next_event(&cpu32())));
    vm.poll(1_000 + 3 * NMI_HOLD_NS);
    assert!(!is_nmi(vm.next_event(&cpu32())));
}

/// `cli; hlt` powers the VM off on vCPU 0 (Linux powers off that way) but only halts an
/// application processor (Linux's `stop_this_cpu` while another CPU panics or powers off).
#[test]
fn cli_hlt_powers_off_on_vcpu0_only() {
    let mut vm = apic_vm(2);
    let mut mem = VecMemory::new(0x10_0000);
    mem.write(CODE, &[0xf4]).unwrap();
    let mut c = cpu32();
    c.rflags = RFLAGS_FIXED;
    vm.set_vcpu(1);
    assert_eq!(vm.handle_exit(Exit::Hlt, &mut c, &mut mem, 0), Ok(Action::Halt));
    assert_eq!(c.rip, CODE + 1);
    assert_eq!(vm.stop_reason(), None);
    let mut c = cpu32();
    c.rflags = RFLAGS_FIXED;
    vm.set_vcpu(0);
    assert_eq!(vm.handle_exit(Exit::Hlt, &mut c, &mut mem, 0), Ok(Action::Stop(StopReason::PowerOff { code: None })));
}

/// The TSC-deadline timer as Linux drives it: CPUID offers it with the APIC (not without), the
/// LVT timer in TSC-deadline mode, then WRMSR 0x6e0 = the guest's TSC now + 1 ms of ticks. An
/// hour into the node's uptime, at a calibrated rate that is not whole kHz, the interrupt must
/// come 1 ms later, not early and not late (the guest TSC counts from the node's boot: crate::tsc).
#[test]
fn the_tsc_deadline_timer_fires_when_the_guest_tsc_reaches_the_deadline() {
    let hz = 2_596_136_789u64;
    let mut cfg = VmConfig::new("tsc", 0x10_0000, hz);
    cfg.apic = true;
    let mut vm = MicroVm::new(cfg, &host_cpuid);
    let mut mem = VecMemory::new(0x10_0000);
    let now = 3_600_000_000_000u64;
    mem.write(CODE, &[0x0f, 0xa2]).unwrap();
    let mut c = cpu32();
    c.rax = 1;
    assert_eq!(vm.handle_exit(Exit::Cpuid, &mut c, &mut mem, now), Ok(Action::Resume));
    assert_ne!(c.rcx & (1 << 24), 0, "TSC-deadline in CPUID with the APIC");
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0xf0, Some(0x1ff));
    mmio32(&mut vm, &mut mem, 0, LAPIC + 0x320, Some((2 << 17) | 0xec));
    let tsc_now = crate::tsc::GuestTsc::new(hz).at(now);
    let deadline = tsc_now + hz / 1000;
    mem.write(CODE, &[0x0f, 0x30]).unwrap();
    let mut c = cpu32();
    c.rcx = 0x6e0;
    c.rax = deadline & 0xffff_ffff;
    c.rdx = deadline >> 32;
    assert_eq!(vm.handle_exit(Exit::Wrmsr, &mut c, &mut mem, now), Ok(Action::Resume));
    assert_eq!(c.rip, CODE + 2);
    let due = vm.next_deadline_ns().expect("the deadline armed the timer");
    assert!(due.abs_diff(now + 1_000_000) <= 1, "due {} ns after the write, want 1 ms", due - now);
    vm.poll(due - 1);
    assert_eq!(next_irq(&mut vm, 0), None, "fired before the deadline");
    vm.poll(due);
    assert_eq!(next_irq(&mut vm, 0), Some(0xec));
}
