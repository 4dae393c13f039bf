//! Host tests of the local APIC, the I/O APIC and the MP table.

use crate::devices::ioapic::*;
use crate::devices::lapic::*;
use crate::mem::{GuestMemory, VecMemory};
use crate::mptable::*;
use crate::tsc::GuestTsc;
use std::vec::Vec;

const SVR: u64 = 0xf0;
const TPR: u64 = 0x80;
const EOI: u64 = 0xb0;
const LDR: u64 = 0xd0;
const DFR: u64 = 0xe0;
const ESR: u64 = 0x280;
const ICR_LO: u64 = 0x300;
const ICR_HI: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const TIMER_INIT: u64 = 0x380;
const TIMER_CUR: u64 = 0x390;
const TIMER_DIV: u64 = 0x3e0;

/// Two APICs set up as Linux's flat logical mode does (xAPIC MMIO).
fn two_flat() -> Vec<LocalApic> {
    let mut v = Vec::new();
    for i in 0..2u32 {
        let mut a = LocalApic::new(i, i == 0, GuestTsc::new(1_000_000_000));
        assert_eq!(a.mmio_read(0x30, 4, 0) as u32 & 0xff, 0x14);
        assert_eq!(a.mmio_read(0x20, 4, 0) as u32, i << 24);
        a.mmio_write(DFR, 4, 0xffff_ffff, 0);
        a.mmio_write(LDR, 4, 1 << (24 + i), 0);
        a.mmio_write(SVR, 4, 0x1ff, 0);
        assert!(a.sw_enabled());
        v.push(a);
    }
    v
}

fn send(apics: &mut [LocalApic], from: usize, hi: u32, lo: u32) -> u64 {
    apics[from].mmio_write(ICR_HI, 4, hi as u64, 0);
    match apics[from].mmio_write(ICR_LO, 4, lo as u64, 0) {
        ApicEffect::Send(r) => route(apics, Some(from), &r),
        _ => 0,
    }
}

#[test]
fn fixed_ipi_logical_flat_and_physical_then_ack_and_eoi() {
    let mut a = two_flat();
    // Logical (bit 11) to LDR bit 1 = APIC 1.
    assert_eq!(send(&mut a, 0, 0x0200_0000, 0x0000_0840), 0b10);
    assert_eq!(a[1].pending_vector(), Some(0x40));
    assert_eq!(a[0].pending_vector(), None);
    // Physical to ID 0.
    assert_eq!(send(&mut a, 1, 0, 0x0000_0041), 0b01);
    assert_eq!(a[0].ack(), Some(0x41));
    assert_eq!(a[0].mmio_read(0x100 + 0x20, 4, 0) as u32, 1 << 1, "ISR bit of 0x41");
    assert_eq!(a[0].mmio_write(EOI, 4, 0, 0), ApicEffect::None);
    assert_eq!(a[0].mmio_read(0x120, 4, 0), 0);
    // Shorthands: all excluding self from 0 → only 1; all including self → both.
    assert_eq!(send(&mut a, 0, 0, 0x000c_0050), 0b10);
    assert_eq!(send(&mut a, 0, 0, 0x0008_0051), 0b11);
    assert_eq!(send(&mut a, 1, 0, 0x0004_0052), 0b10);
    // Broadcast physical 0xff.
    assert_eq!(send(&mut a, 0, 0xff00_0000, 0x60), 0b11);
}

#[test]
fn priority_classes_tpr_and_isr_gate_delivery() {
    let mut a = two_flat();
    a[0].accept(DeliveryMode::Fixed, 0x31, false);
    a[0].accept(DeliveryMode::Fixed, 0x51, false);
    assert_eq!(a[0].ack(), Some(0x51));
    // 0x31 is a lower class than the in-service 0x51, 0x5f the same class: both wait.
    assert_eq!(a[0].pending_vector(), None);
    a[0].accept(DeliveryMode::Fixed, 0x5f, false);
    assert_eq!(a[0].pending_vector(), None);
    a[0].accept(DeliveryMode::Fixed, 0x61, false);
    assert_eq!(a[0].pending_vector(), Some(0x61), "a higher class preempts");
    assert_eq!(a[0].ack(), Some(0x61));
    a[0].mmio_write(EOI, 4, 0, 0); // ends 0x61 (highest in service)
    a[0].mmio_write(EOI, 4, 0, 0); // ends 0x51
    assert_eq!(a[0].ack(), Some(0x5f));
    a[0].mmio_write(EOI, 4, 0, 0);
    assert_eq!(a[0].pending_vector(), Some(0x31));
    a[0].mmio_write(TPR, 4, 0x40, 0);
    assert_eq!(a[0].pending_vector(), None, "TPR 0x40 masks class 3");
    assert_eq!(a[0].mmio_read(0xa0, 4, 0), 0x40, "PPR = TPR");
    a[0].mmio_write(TPR, 4, 0, 0);
    assert_eq!(a[0].ack(), Some(0x31));
    // Vectors below 16 are illegal: dropped, ESR says so after the ESR write.
    a[0].accept(DeliveryMode::Fixed, 5, false);
    assert_eq!(a[0].pending_vector(), None);
    assert_eq!(send(&mut a, 0, 0, 0x0000_0003), 0);
    a[0].mmio_write(ESR, 4, 0, 0);
    assert_eq!(a[0].mmio_read(ESR, 4, 0) as u32 & 0x60, 0x60);
    // A software-disabled APIC drops fixed interrupts.
    a[1].mmio_write(SVR, 4, 0xff, 0);
    a[1].accept(DeliveryMode::Fixed, 0x70, false);
    assert_eq!(a[1].pending_vector(), None);
}

#[test]
fn level_triggered_eoi_is_reported_for_the_ioapic() {
    let mut a = two_flat();
    a[0].accept(DeliveryMode::Fixed, 0x35, true);
    assert_eq!(a[0].ack(), Some(0x35));
    assert_eq!(a[0].mmio_write(EOI, 4, 0, 0), ApicEffect::LevelEoi(0x35));
    a[0].accept(DeliveryMode::Fixed, 0x35, false);
    a[0].ack();
    assert_eq!(a[0].mmio_write(EOI, 4, 0, 0), ApicEffect::None);
}

#[test]
fn lowest_priority_picks_the_lowest_processor_priority() {
    let mut a = two_flat();
    a[0].mmio_write(TPR, 4, 0x20, 0);
    assert_eq!(send(&mut a, 1, 0x0300_0000, 0x0000_0944), 0b10);
    a[1].mmio_write(TPR, 4, 0x30, 0);
    assert_eq!(send(&mut a, 1, 0x0300_0000, 0x0000_0945), 0b01);
}

#[test]
fn timer_one_shot_periodic_and_tsc_deadline() {
    let mut a = LocalApic::new(0, true, GuestTsc::new(1_000_000_000)); // TSC 1 GHz: 1 tick per ns
    a.mmio_write(SVR, 4, 0x1ff, 0);
    a.mmio_write(TIMER_DIV, 4, 3, 0); // divide by 16
    a.mmio_write(LVT_TIMER, 4, 0xec, 0); // one-shot, vector 0xec
    a.mmio_write(TIMER_INIT, 4, 1000, 1_000);
    assert_eq!(a.next_deadline_ns(), Some(17_000));
    assert_eq!(a.mmio_read(TIMER_CUR, 4, 9_000) as u32, 500);
    assert!(!a.poll(16_999));
    assert!(a.poll(17_000));
    assert_eq!(a.pending_vector(), Some(0xec));
    assert_eq!(a.next_deadline_ns(), None);
    assert!(!a.poll(1_000_000), "one-shot fires once");
    assert_eq!(a.mmio_read(TIMER_CUR, 4, 20_000), 0);
    a.ack();
    a.mmio_write(EOI, 4, 0, 0);

    // Periodic 1 ms (divide 1: reg 0xb); 10 ms late → one interrupt, next period in the future.
    a.mmio_write(LVT_TIMER, 4, 0x2_00ec, 0);
    a.mmio_write(TIMER_DIV, 4, 0xb, 0);
    a.mmio_write(TIMER_INIT, 4, 1_000_000, 0);
    assert_eq!(a.next_deadline_ns(), Some(1_000_000));
    assert!(a.poll(10_500_000));
    assert_eq!(a.next_deadline_ns(), Some(11_000_000));
    assert!(!a.poll(10_600_000));
    assert_eq!(a.mmio_read(TIMER_CUR, 4, 10_750_000) as u32, 250_000);
    // A 1-tick period is clamped: the host is not asked to wake more than every 100 µs.
    a.mmio_write(TIMER_INIT, 4, 1, 20_000_000);
    assert_eq!(a.next_deadline_ns(), Some(20_000_000 + MIN_PERIOD_NS));
    // Masked: no interrupt, timer keeps going.
    a.ack();
    a.mmio_write(EOI, 4, 0, 0);
    a.mmio_write(LVT_TIMER, 4, 0x3_00ec, 0);
    assert!(!a.poll(30_000_000));
    assert_eq!(a.pending_vector(), None);

    // TSC deadline: mode switch clears the count; the MSR arms it; 0 disarms.
    a.mmio_write(LVT_TIMER, 4, 0x4_00ed, 0);
    assert_eq!(a.next_deadline_ns(), None);
    a.wrmsr(MSR_TSC_DEADLINE, 50_000_000, 40_000_000).unwrap().unwrap();
    assert_eq!(a.rdmsr(MSR_TSC_DEADLINE, 0), Some(Ok(50_000_000)));
    assert_eq!(a.next_deadline_ns(), Some(50_000_000));
    assert!(a.poll(50_000_001));
    assert_eq!(a.pending_vector(), Some(0xed));
    assert_eq!(a.rdmsr(MSR_TSC_DEADLINE, 0), Some(Ok(0)));
    a.wrmsr(MSR_TSC_DEADLINE, 90_000_000, 60_000_000).unwrap().unwrap();
    a.wrmsr(MSR_TSC_DEADLINE, 0, 60_000_000).unwrap().unwrap();
    assert_eq!(a.next_deadline_ns(), None);
    // A deadline in the past fires at once.
    a.wrmsr(MSR_TSC_DEADLINE, 1, 70_000_000).unwrap().unwrap();
    assert_eq!(a.next_deadline_ns(), Some(70_000_000));
}

#[test]
fn timer_largest_count_and_divider_do_not_overflow() {
    // TMICT 0xffff_ffff with divide-by-128 (TDCR 0xa) and by 8 (TDCR 2): the guest's largest
    // values; the period in ns no longer fits u64 when multiplied by 10^9 first.
    for (tdcr, div) in [(0xa_u64, 128u64), (2, 8)] {
        let mut a = LocalApic::new(0, true, GuestTsc::new(1_000_000_000));
        a.mmio_write(SVR, 4, 0x1ff, 0);
        a.mmio_write(TIMER_DIV, 4, tdcr, 0);
        for lvt in [0xec_u64, 0x2_00ec] {
            a.mmio_write(LVT_TIMER, 4, lvt, 0);
            a.mmio_write(TIMER_INIT, 4, 0xffff_ffff, 5);
            let period = 0xffff_ffff * div; // 1 tick per ns before the divider
            assert_eq!(a.next_deadline_ns(), Some(5 + period));
            assert_eq!(a.mmio_read(TIMER_CUR, 4, 5) as u32, 0xffff_ffff);
            assert_eq!(a.mmio_read(TIMER_CUR, 4, 5 + period / 2) as u32, 0x8000_0000);
            assert!(!a.poll(4 + period));
            assert!(a.poll(5 + period));
            a.ack();
            a.mmio_write(EOI, 4, 0, 0);
        }
    }
}

#[test]
fn x2apic_msr_interface_and_mode_transitions() {
    let mut a = LocalApic::new(3, false, GuestTsc::new(1_000_000_000));
    let mut b = LocalApic::new(0, true, GuestTsc::new(1_000_000_000));
    // x2APIC registers #GP in xAPIC mode.
    assert_eq!(a.rdmsr(0x802, 0), Some(Err(ApicFault)));
    assert_eq!(a.rdmsr(0x10, 0), None, "not an APIC MSR");
    let base = a.rdmsr(MSR_APIC_BASE, 0).unwrap().unwrap();
    assert_eq!(base, APIC_DEFAULT_BASE | BASE_EN);
    // EXTD without EN, another base, reserved bits: #GP.
    assert_eq!(a.wrmsr(MSR_APIC_BASE, APIC_DEFAULT_BASE | BASE_EXTD, 0), Some(Err(ApicFault)));
    assert_eq!(a.wrmsr(MSR_APIC_BASE, 0xfed0_0000 | BASE_EN, 0), Some(Err(ApicFault)));
    assert_eq!(a.wrmsr(MSR_APIC_BASE, APIC_DEFAULT_BASE | BASE_EN | 1, 0), Some(Err(ApicFault)));
    for x in [&mut a, &mut b] {
        x.wrmsr(MSR_APIC_BASE, APIC_DEFAULT_BASE | BASE_EN | BASE_EXTD, 0).unwrap().unwrap();
        assert!(x.x2apic());
        x.wrmsr(0x80f, 0x1ff, 0).unwrap().unwrap();
    }
    assert_eq!(a.rdmsr(0x802, 0), Some(Ok(3)));
    assert_eq!(a.rdmsr(0x80d, 0), Some(Ok(1 << 3)), "x2APIC LDR: cluster 0, bit 3");
    assert_eq!(a.mmio_read(0x20, 4, 0), u64::MAX, "no MMIO in x2APIC mode");
    // Read-only / write-only / reserved: #GP.
    assert_eq!(a.wrmsr(0x802, 7, 0), Some(Err(ApicFault)));
    assert_eq!(a.rdmsr(0x80b, 0), Some(Err(ApicFault)));
    assert_eq!(a.wrmsr(0x80b, 1, 0), Some(Err(ApicFault)));
    assert_eq!(a.wrmsr(0x808, 1 << 32, 0), Some(Err(ApicFault)));
    assert_eq!(a.wrmsr(0x831, 0, 0), Some(Err(ApicFault)), "no ICR high in x2APIC");
    assert_eq!(a.wrmsr(0x830, 1 << 13, 0), Some(Err(ApicFault)), "reserved ICR bit");
    assert_eq!(a.rdmsr(0x8ff, 0), Some(Err(ApicFault)));
    // ICR (one 64-bit MSR): physical to x2APIC ID 3.
    let mut apics = [b, a];
    let eff = apics[0].wrmsr(0x830, (3u64 << 32) | 0x42, 0).unwrap().unwrap();
    let ApicEffect::Send(r) = eff else { panic!("{eff:?}") };
    assert_eq!(route(&mut apics, Some(0), &r), 0b10);
    assert_eq!(apics[1].rdmsr(0x822, 0), Some(Ok(1 << 2)), "IRR bit of 0x42");
    assert_eq!(apics[1].ack(), Some(0x42));
    // SELF IPI (after the EOI of 0x42: same priority class).
    assert_eq!(apics[1].wrmsr(0x80b, 0, 0), Some(Ok(ApicEffect::None)));
    apics[1].wrmsr(0x83f, 0x43, 0).unwrap().unwrap();
    assert_eq!(apics[1].pending_vector(), Some(0x43));
    // x2APIC → xAPIC directly: #GP; through disabled: fine, registers reset.
    assert_eq!(apics[1].wrmsr(MSR_APIC_BASE, APIC_DEFAULT_BASE | BASE_EN, 0), Some(Err(ApicFault)));
    apics[1].wrmsr(MSR_APIC_BASE, APIC_DEFAULT_BASE, 0).unwrap().unwrap();
    assert_eq!(apics[1].pending_vector(), None);
    apics[1].wrmsr(MSR_APIC_BASE, APIC_DEFAULT_BASE | BASE_EN, 0).unwrap().unwrap();
    assert!(apics[1].xapic_mmio());
    assert!(!apics[1].sw_enabled());
}

#[test]
fn init_sipi_starts_an_application_processor() {
    let mut a = two_flat();
    assert_eq!(a[1].run_state(), RunState::WaitForSipi);
    assert_eq!(a[0].run_state(), RunState::Running);
    // INIT assert (level, assert), INIT de-assert (ignored), SIPI ×2 (second ignored).
    assert_eq!(send(&mut a, 0, 0x0100_0000, 0x0000_c500), 0b10);
    assert!(a[1].take_init());
    assert!(!a[1].sw_enabled(), "INIT resets the registers");
    assert_eq!(send(&mut a, 0, 0x0100_0000, 0x0000_8500), 0);
    assert_eq!(send(&mut a, 0, 0x0100_0000, 0x0000_069f), 0b10);
    assert_eq!(send(&mut a, 0, 0x0100_0000, 0x0000_0690), 0b10);
    assert_eq!(a[1].take_sipi(), Some(0x9f));
    assert_eq!(a[1].run_state(), RunState::Running);
    assert_eq!(a[1].take_sipi(), None);
    // A running CPU ignores SIPIs.
    send(&mut a, 0, 0x0100_0000, 0x0000_069f);
    assert_eq!(a[1].take_sipi(), None);
    // NMI IPI.
    send(&mut a, 1, 0, 0x0000_0400);
    assert!(a[0].take_nmi());
    assert!(!a[0].take_nmi());
}

#[test]
fn ioapic_edge_and_level_pins() {
    let mut io = IoApic::new(2);
    let mut sent: Vec<IpiRequest> = Vec::new();
    io.mmio_write(0, 1, 1, &mut |m| sent.push(m));
    assert_eq!(io.mmio_read(0x10, 4) as u32, IOAPIC_VERSION);
    io.mmio_write(0, 1, 0, &mut |m| sent.push(m));
    assert_eq!(io.mmio_read(0x10, 4) as u32, 2 << 24);
    // Pin 4: edge, vector 0x24, physical dest 1.
    io.mmio_write(0, 1, 0x18, &mut |m| sent.push(m));
    io.mmio_write(0x10, 4, 0x24, &mut |m| sent.push(m));
    io.mmio_write(0, 1, 0x19, &mut |m| sent.push(m));
    io.mmio_write(0x10, 4, 0x0100_0000, &mut |m| sent.push(m));
    io.set_irq(4, true, &mut |m| sent.push(m));
    io.set_irq(4, true, &mut |m| sent.push(m));
    io.set_irq(4, false, &mut |m| sent.push(m));
    io.set_irq(4, true, &mut |m| sent.push(m));
    assert_eq!(sent.len(), 2, "one message per rising edge");
    assert_eq!(sent[0], IpiRequest { vector: 0x24, mode: DeliveryMode::Fixed, dest: Destination::Physical { id: 1, x2apic: false }, level_triggered: false });
    // Pin 5: level, masked at first; unmasking an asserted line delivers.
    sent.clear();
    io.mmio_write(0, 1, 0x1a, &mut |m| sent.push(m));
    io.mmio_write(0x10, 4, 0x1_8825, &mut |m| sent.push(m)); // masked, level, logical
    io.set_irq(5, true, &mut |m| sent.push(m));
    assert!(sent.is_empty());
    io.mmio_write(0x10, 4, 0x8825, &mut |m| sent.push(m));
    assert_eq!(sent.len(), 1);
    assert!(sent[0].level_triggered);
    assert_ne!(io.entry(5).unwrap() & (1 << 14), 0, "Remote IRR");
    // Guest cannot clear Remote IRR by writing; no re-delivery until the EOI.
    io.mmio_write(0x10, 4, 0x8825, &mut |m| sent.push(m));
    io.set_irq(5, true, &mut |m| sent.push(m));
    assert_eq!(sent.len(), 1);
    io.eoi(0x25, &mut |m| sent.push(m));
    assert_eq!(sent.len(), 2, "still asserted after EOI: sent again");
    io.set_irq(5, false, &mut |m| sent.push(m));
    io.eoi(0x25, &mut |m| sent.push(m));
    assert_eq!(sent.len(), 2);
    assert_eq!(io.entry(5).unwrap() & (1 << 14), 0);
    // Out-of-range pins and registers are ignored.
    io.set_irq(99, true, &mut |m| sent.push(m));
    io.mmio_write(0, 1, 0xff, &mut |m| sent.push(m));
    io.mmio_write(0x10, 4, 0xffff_ffff, &mut |m| sent.push(m));
    assert_eq!(io.mmio_read(0x10, 4), 0);
}

#[test]
fn ioapic_to_lapic_level_round_trip() {
    let mut apics = two_flat();
    let mut io = IoApic::new(2);
    let mut q: Vec<IpiRequest> = Vec::new();
    // Pin 9 level, vector 0x39, logical dest 0x2 (APIC 1).
    io.mmio_write(0, 1, 0x22, &mut |m| q.push(m));
    io.mmio_write(0x10, 4, 0x8939, &mut |m| q.push(m));
    io.mmio_write(0, 1, 0x23, &mut |m| q.push(m));
    io.mmio_write(0x10, 4, 0x0200_0000, &mut |m| q.push(m));
    io.set_irq(9, true, &mut |m| q.push(m));
    assert_eq!(route(&mut apics, None, &q.remove(0)), 0b10);
    assert_eq!(apics[1].ack(), Some(0x39));
    let ApicEffect::LevelEoi(v) = apics[1].mmio_write(EOI, 4, 0, 0) else { panic!() };
    io.set_irq(9, false, &mut |m| q.push(m));
    io.eoi(v, &mut |m| q.push(m));
    assert!(q.is_empty());
}

/// An MP table as [`parse`] reads it: the processors (APIC ID, BSP, feature flags), the I/O
/// interrupt entries (IRQ, flags, pin) and the I/O APIC (ID, usable).
type Parsed = (Vec<(u8, bool, u32)>, Vec<(u8, u16, u8)>, (u8, bool));

/// Parse the MP table the way Linux's mpparse does (signatures, checksums, entry walk).
fn parse(mem: &VecMemory) -> Parsed {
    let mut fp = [0u8; 16];
    mem.read(MPTABLE_GPA, &mut fp).unwrap();
    assert_eq!(&fp[0..4], b"_MP_");
    assert_eq!(fp.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
    let phys = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
    let mut hdr = [0u8; 44];
    mem.read(phys, &mut hdr).unwrap();
    assert_eq!(&hdr[0..4], b"PCMP");
    let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
    let mut t = std::vec![0u8; len];
    mem.read(phys, &mut t).unwrap();
    assert_eq!(t.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
    assert_eq!(u32::from_le_bytes(t[36..40].try_into().unwrap()), 0xfee0_0000);
    let count = u16::from_le_bytes([t[34], t[35]]);
    let (mut cpus, mut ints, mut io_id, mut io_usable) = (Vec::new(), Vec::new(), 0xff, false);
    let mut off = 44;
    for _ in 0..count {
        match t[off] {
            0 => {
                cpus.push((t[off + 1], t[off + 3] & 2 != 0, u32::from_le_bytes(t[off + 8..off + 12].try_into().unwrap())));
                off += 20
            }
            1 => {
                assert_eq!(&t[off + 2..off + 8], b"ISA   ");
                off += 8
            }
            2 => {
                io_id = t[off + 1];
                io_usable = t[off + 3] & 1 != 0;
                assert_eq!(u32::from_le_bytes(t[off + 4..off + 8].try_into().unwrap()), 0xfec0_0000);
                off += 8
            }
            3 => {
                ints.push((t[off + 5], u16::from_le_bytes([t[off + 2], t[off + 3]]), t[off + 7]));
                assert_eq!(t[off + 6], io_id);
                off += 8
            }
            4 => off += 8,
            x => panic!("entry type {x}"),
        }
    }
    assert_eq!(off, len);
    (cpus, ints, (io_id, io_usable))
}

#[test]
fn mptable_lists_every_cpu_the_ioapic_and_the_isa_irqs() {
    for n in 1..=MAX_VCPUS {
        let mut mem = VecMemory::new(0x10_0000);
        write_mptable(&mut mem, n, &[IsaIrq { irq: 5, level_triggered: true }, IsaIrq { irq: 4, level_triggered: false }]).unwrap();
        let (cpus, ints, (io_id, io_usable)) = parse(&mem);
        assert!(io_usable && cpus.iter().all(|c| c.2 & (1 << 9) != 0), "the APICs are usable");
        assert_eq!(cpus.len(), n as usize);
        assert!(cpus[0].1 && cpus.iter().skip(1).all(|c| !c.1), "only the first is the BSP");
        assert!(cpus.iter().enumerate().all(|(i, c)| c.0 == i as u8));
        assert_eq!(io_id, n);
        assert_eq!(ints.len(), 15);
        assert!(ints.contains(&(0, 0b0101, 2)), "IRQ 0 → pin 2");
        assert!(ints.contains(&(5, 0b1101, 5)), "IRQ 5 level");
        assert!(ints.contains(&(4, 0b0101, 4)));
        assert!(build_mptable(n, &[]).unwrap().len() <= 0x400, "fits the last KiB of base memory");
    }
    assert_eq!(build_mptable(0, &[]), Err(MpTableError::BadCpuCount));
    assert_eq!(build_mptable(9, &[]), Err(MpTableError::BadCpuCount));
    assert_eq!(build_mptable(2, &[IsaIrq { irq: 16, level_triggered: true }]), Err(MpTableError::BadIrq));
    let twice = [IsaIrq { irq: 5, level_triggered: true }, IsaIrq { irq: 5, level_triggered: false }];
    assert_eq!(build_mptable(2, &twice), Err(MpTableError::BadIrq));
    let mut small = VecMemory::new(0x9_0000);
    assert!(matches!(write_mptable(&mut small, 2, &[]), Err(MpTableError::Mem(_))));
}

/// A one-vCPU guest without APICs: one processor (the BSP, no APIC feature flag), the I/O
/// APIC listed but unusable (Linux does not register it), still every ISA IRQ's entry (without
/// them Linux warns and makes up defaults).
#[test]
fn pic_only_mptable_lists_one_cpu_and_an_unusable_ioapic() {
    let mut mem = VecMemory::new(0x10_0000);
    write_pic_only_mptable(&mut mem, &[IsaIrq { irq: 5, level_triggered: true }]).unwrap();
    let (cpus, ints, (io_id, io_usable)) = parse(&mem);
    assert_eq!(cpus, [(0, true, 1)], "one BSP with the FPU flag only");
    assert_eq!((io_id, io_usable), (1, false));
    assert_eq!(ints.len(), 15);
    assert!(ints.contains(&(5, 0b1101, 5)));
    let mut small = VecMemory::new(0x9_0000);
    assert!(matches!(write_pic_only_mptable(&mut small, &[]), Err(MpTableError::Mem(_))));
}

/// The absent APIC page (a guest without APICs): the version register's bytes, 0 elsewhere.
#[test]
fn absent_apic_page_reads_id_zero_and_the_version() {
    use crate::devices::lapic::{absent_apic_read, APIC_VERSION};
    assert_eq!(absent_apic_read(0x30), u64::from(APIC_VERSION));
    assert_eq!(absent_apic_read(0x32) & 0xff, 6, "max LVT entry byte");
    assert_eq!(absent_apic_read(0x20), 0, "APIC ID 0");
    for off in [0x0, 0x2f, 0x34, 0x80, 0xf0, 0xff0, 0xfff] {
        assert_eq!(absent_apic_read(off), 0, "offset {off:#x}");
    }
}

#[test]
fn fuzz_smoke_apic() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut buf = std::vec![0u8; 512];
    for round in 0..3000 {
        for b in buf.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let n = 16 + (round % 496);
        crate::fuzzing::apic_sequence(&buf[..n]);
    }
}
