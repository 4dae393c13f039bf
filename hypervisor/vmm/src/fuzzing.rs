//! Fuzz entry points (shared by `fuzz/` cargo-fuzz targets and the no-panic tests).
//! Each takes arbitrary bytes and must never panic.

use crate::boot::{load_bzimage, load_pvh};
use crate::cpu::*;
use crate::mem::{GuestMemory, GuestMemoryExt, VecMemory};
use crate::virtio::blk::VirtioBlk;
use crate::virtio::console::VirtioConsole;
use crate::virtio::net::VirtioNet;
use crate::virtio::mmio::{Device, VirtioMmio};
use crate::vm::{EventDecision, MicroVm, VmConfig, WildMmioPolicy};
use alloc::vec;
use alloc::vec::Vec;

/// Test/fuzz seed: a minimal ELF64 vmlinux with a PVH note.
pub fn synthetic_pvh_elf(entry: u32, code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x200];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes());
    f[18..20].copy_from_slice(&62u16.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&2u16.to_le_bytes());
    // note at 0x100
    let note_off = 0x100usize;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&8u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(entry as u64).to_le_bytes());
    f[note_off..note_off + note.len()].copy_from_slice(&note);
    // PT_LOAD
    let ph = 64;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    f[ph + 8..ph + 16].copy_from_slice(&0x200u64.to_le_bytes());
    f[ph + 24..ph + 32].copy_from_slice(&0x100000u64.to_le_bytes());
    f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64 + 0x1000).to_le_bytes());
    // PT_NOTE
    let ph = 64 + 56;
    f[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
    f[ph + 8..ph + 16].copy_from_slice(&(note_off as u64).to_le_bytes());
    f[ph + 32..ph + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// Test/fuzz seed: a minimal bzImage setup header + payload.
pub fn synthetic_bzimage(version: u16, xlf: u16, payload: usize) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut f = vec![0u8; 2 * 512 + payload];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x200] = 0xeb;
    f[0x201] = 0x6a; // header ends at 0x26c
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    f[0x211] = 1; // LOADED_HIGH
    f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    f[0x234] = 1;
    f[0x236..0x238].copy_from_slice(&xlf.to_le_bytes());
    f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    f[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes());
    for (i, b) in f[1024..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}


/// Byte reader that yields zeros when exhausted.
pub struct Bytes<'a> {
    d: &'a [u8],
    i: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(d: &'a [u8]) -> Self {
        Bytes { d, i: 0 }
    }
    pub fn u8(&mut self) -> u8 {
        let v = self.d.get(self.i).copied().unwrap_or(0);
        self.i = self.i.saturating_add(1);
        v
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.d.get(self.i..).unwrap_or(&[]);
        self.i = self.d.len();
        r
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let end = self.i.saturating_add(n).min(self.d.len());
        let r = self.d.get(self.i..end).unwrap_or(&[]);
        self.i = end;
        r
    }
    pub fn exhausted(&self) -> bool {
        self.i >= self.d.len()
    }
}

const MEM: usize = 0x4_0000;

fn host_cpuid(l: u32, _s: u32) -> [u32; 4] {
    match l {
        0 => [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        _ => [0xffff_ffff; 4],
    }
}

fn new_vm(b: &mut Bytes) -> MicroVm {
    let mut cfg = VmConfig::new("fuzz", MEM as u64, 1_000_000_000);
    cfg.wild_mmio = if b.bool() { WildMmioPolicy::Stop } else { WildMmioPolicy::AllOnes };
    cfg.cpuid.xsave = b.bool();
    cfg.virtio_blk = Some((vec![0u8; 4096], b.bool()));
    cfg.queue_size = 8;
    // Half the VMs have the APICs (1–8 vCPUs): their MMIO windows and MSRs through exits.
    let a = b.u8();
    cfg.apic = a & 1 != 0;
    cfg.vcpus = 1 + (a >> 1) % 8;
    MicroVm::new(cfg, &host_cpuid)
}

fn cpu_from(b: &mut Bytes) -> VcpuState {
    let mut c = VcpuState::new();
    for n in 0..16 {
        c.set_gpr(n, b.u64());
    }
    c.rip = b.u64() & 0x3ffff;
    c.rflags = (b.u64() & 0x3f_7fd7) | RFLAGS_FIXED;
    c.cr3 = b.u64() & 0x3f000;
    c.cr2 = 0;
    c.cpl = b.u8() & 3;
    c.interrupt_shadow = b.bool();
    match b.u8() % 6 {
        0 => c.cs = Segment::real(b.u16(), 0xb),
        1 => {
            c.cr0 = CR0_PE;
            c.cs = Segment::flat(8, 0xb, true, false);
        }
        2 => {
            c.cr0 = CR0_PE | CR0_PG;
            c.cr4 = CR4_PAE;
            c.cs = Segment::flat(8, 0xb, true, false);
        }
        3 => {
            c.cr0 = CR0_PE | CR0_PG;
            c.cr4 = CR4_PSE;
            c.cs = Segment::flat(8, 0xb, false, false);
        }
        4 => {
            c.cr0 = CR0_PE | CR0_PG | CR0_WP;
            c.cr4 = CR4_PAE | if b.bool() { CR4_LA57 } else { 0 };
            c.efer = EFER_LME | EFER_LMA | EFER_NXE;
            c.cs = Segment::flat(8, 0xb, false, true);
        }
        _ => {
            c.cr0 = CR0_PE;
            c.efer = EFER_LME | EFER_LMA;
            c.cs = Segment::flat(8, 0xb, false, true);
        }
    }
    c.ds = Segment::flat(0x10, 3, true, false);
    c.es = c.ds;
    c.ss = c.ds;
    c
}

fn exit_from(b: &mut Bytes) -> Exit {
    match b.u8() % 20 {
        0 => Exit::Io { port: b.u16(), size: [1, 2, 4, 3][(b.u8() % 4) as usize], write: b.bool(), string: b.bool(), rep: b.bool() },
        1 => Exit::Mmio { gpa: match b.u8() % 4 { 0 => 0xd000_0000 + (b.u16() as u64 % 0x2000), 1 => 0xfee0_0000 + (b.u16() as u64 % 0x1000), 2 => 0xfec0_0000 + (b.u8() as u64 % 0x20), _ => b.u64() }, write_hint: match b.u8() % 3 { 0 => None, 1 => Some(false), _ => Some(true) } },
        2 => Exit::Cpuid,
        3 => Exit::Rdmsr,
        4 => Exit::Wrmsr,
        5 => Exit::Hlt,
        6 => Exit::InterruptWindow,
        7 => Exit::ExternalInterrupt,
        8 => Exit::Nmi,
        9 => Exit::Exception { vector: b.u8(), error_code: if b.bool() { Some(b.u32()) } else { None } },
        10 => Exit::Shutdown,
        11 => Exit::Vmcall,
        12 => Exit::Xsetbv,
        13 => Exit::Invd,
        14 => Exit::Wbinvd,
        15 => Exit::Pause,
        16 => Exit::InvalidGuestState { code: b.u64() },
        17 => Exit::Other { code: b.u64() },
        18 => Exit::PageWalkFault { gpa: b.u64() },
        _ => Exit::Io { port: 0x3f8 + (b.u8() % 8) as u16, size: 1, write: b.bool(), string: false, rep: false },
    }
}

/// Arbitrary exits over an arbitrary CPU state and guest memory.
pub fn exit_sequence(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mut vm = new_vm(&mut b);
    let mut cpu = cpu_from(&mut b);
    let mem_len = (b.u16() as usize) * 4;
    let mut img = b.take(mem_len).to_vec();
    img.resize(MEM, 0);
    // Sprinkle instruction bytes at RIP so decode gets exercised.
    let code = b.take(15).to_vec();
    let rip = (cpu.rip as usize).min(MEM - 16);
    img[rip..rip + code.len()].copy_from_slice(&code);
    let mut mem = VecMemory::from_bytes(img);
    let mut now = 0u64;
    for _ in 0..64 {
        if b.exhausted() {
            break;
        }
        vm.set_vcpu(b.u8() as usize);
        let exit = exit_from(&mut b);
        now = now.saturating_add(b.u32() as u64);
        let _ = vm.handle_exit(exit, &mut cpu, &mut mem, now);
        if let Some(bus) = vm.apic_bus() {
            assert!(bus.take_wakeups() < 1 << bus.vcpus());
        }
        vm.poll(now);
        if let EventDecision::Inject(_) = vm.next_event(&cpu) {}
        let _ = vm.next_deadline_ns();
        let _ = vm.take_console_lines();
    }
    let _ = vm.stats().exits_by_reason().count();
}

/// One MMIO exit with arbitrary instruction bytes at RIP, in an arbitrary mode.
pub fn mmio_decode(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mut vm = new_vm(&mut b);
    let mut cpu = cpu_from(&mut b);
    cpu.cr0 &= !CR0_PG; // paging off: bytes are at the linear RIP
    cpu.rip &= 0xffff;
    let mut mem = VecMemory::new(0x2_0000);
    let code = b.take(15);
    let _ = mem.write(cpu.rip, code);
    let gpa = 0xd000_0000 + (b.u16() as u64 % 0x1400);
    let hint = match b.u8() % 3 {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    };
    let _ = vm.handle_exit(Exit::Mmio { gpa, write_hint: hint }, &mut cpu, &mut mem, 0);
}

const PORTS: [u16; 24] = [
    0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd,
    0x3fe, 0x3ff, 0x70, 0x71, 0x60, 0x64, 0x80,
];

/// Port I/O sequences against UART/PIC/PIT/RTC/i8042 with time passing and interrupt acks.
pub fn port_sequence(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mut vm = new_vm(&mut b);
    let mut now = 0u64;
    let mut cpu = VcpuState::new();
    cpu.rflags |= RFLAGS_IF;
    while !b.exhausted() {
        let op = b.u8();
        let port = if op & 0x80 != 0 { b.u16() } else { PORTS[(op as usize) % PORTS.len()] };
        let size = [1u8, 1, 2, 4][(b.u8() % 4) as usize];
        if b.bool() {
            let _ = vm.io_out(port, size, b.u32(), now);
        } else {
            let _ = vm.io_in(port, size, now);
        }
        now = now.saturating_add(b.u16() as u64 * 1000);
        vm.poll(now);
        if b.bool() {
            let _ = vm.next_event(&cpu);
        }
        if b.u8() == 0 {
            vm.uart.push_input(b"x");
        }
    }
    let _ = vm.take_console_lines();
}

/// Virtqueue processing (blk + console) over arbitrary guest memory and queue registers.
pub fn virtqueue(data: &[u8]) {
    let mut b = Bytes::new(data);
    let which = b.u8();
    let qsize = 1u16 << (b.u8() % 5);
    let regs: Vec<(u64, u64)> = (0..3).map(|_| (b.u16() as u64 & 0xfff0, b.u64())).collect();
    let mut img = b.rest().to_vec();
    img.resize(0x1_0000, 0);
    let mut mem = VecMemory::from_bytes(img);
    let dev = if which & 4 != 0 {
        let mut n = VirtioNet::new([2, 0, 0, 0, 0, 1]);
        n.push_rx_frame(&[0x33u8; 60]);
        Device::Net(n)
    } else if which & 1 == 0 {
        Device::Blk(VirtioBlk::new(vec![0u8; 8192], which & 2 != 0, "fuzz"))
    } else {
        let mut c = VirtioConsole::new();
        c.push_input(b"input");
        Device::Console(c)
    };
    let mut t = VirtioMmio::new(0, 5, dev, 16);
    t.write(0x70, 4, 3, &mut mem);
    t.write(0x24, 4, 1, &mut mem);
    t.write(0x20, 4, 1, &mut mem);
    t.write(0x24, 4, 0, &mut mem);
    t.write(0x20, 4, 1 << 28, &mut mem);
    t.write(0x70, 4, 0xb, &mut mem);
    for q in 0..2u64 {
        t.write(0x30, 4, q, &mut mem);
        t.write(0x38, 4, qsize as u64, &mut mem);
        // desc, avail, used: low 16 bits from the input (so they mostly land in RAM), the
        // rest occasionally hostile.
        for (i, (lo, raw)) in regs.iter().enumerate() {
            let v = if raw & 0xff == 0 { *raw } else { *lo };
            t.write(0x80 + 0x10 * i as u64, 4, v & 0xffff_ffff, &mut mem);
            t.write(0x84 + 0x10 * i as u64, 4, v >> 32, &mut mem);
        }
        t.write(0x44, 4, 1, &mut mem);
    }
    t.write(0x70, 4, 0xf, &mut mem);
    let mut ring = crate::console::ConsoleRing::try_new(4096).expect("small ring");
    for _ in 0..4 {
        t.write(0x50, 4, 0, &mut mem);
        t.write(0x50, 4, 1, &mut mem);
        t.process_console_tx(&mut mem, &mut ring);
        t.kick_rx(&mut mem);
        let _ = mem.write_u16(0, 0); // perturb
    }
    for off in (0..0x120).step_by(4) {
        let _ = t.read(off, 4);
    }
    let _ = t.take_tx_frames();
    let _ = t.push_rx_frame(&[0x44u8; 60], &mut mem);
}

/// PVH and bzImage loaders over arbitrary images: raw bytes, or a valid synthetic ELF /
/// bzImage with `(offset, byte)` patches from the input.
pub fn loaders(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mode = b.u8() % 3;
    let ram = 0x20_0000 + ((b.u8() as u64) << 16);
    let cmd_len = (b.u8() % 64) as usize;
    let cmd: Vec<u8> = b.take(cmd_len).to_vec();
    let initrd_len = b.u16() as usize;
    let initrd = vec![0xa5u8; initrd_len];
    let owned;
    let image: &[u8] = if mode == 0 {
        b.rest()
    } else {
        let mut img = if mode == 1 {
            synthetic_pvh_elf(0x100010, &[0x90; 64])
        } else {
            synthetic_bzimage(0x020f, 3, 2048)
        };
        let trunc = b.u16() as usize;
        while !b.exhausted() {
            let off = b.u16() as usize;
            let v = b.u8();
            if let Some(x) = img.get_mut(off % 0x300) {
                *x = v;
            }
        }
        if trunc < img.len() && trunc > 0x40 {
            img.truncate(trunc);
        }
        owned = img;
        &owned
    };
    let mut mem = VecMemory::new(ram as usize);
    let _ = load_pvh(&mut mem, image, Some(crate::boot::Initrd::whole(&initrd)), &cmd, ram);
    let _ = load_bzimage(&mut mem, image, Some(crate::boot::Initrd::whole(&initrd)), &cmd, ram);
    let _ = load_pvh(&mut mem, image, None, &cmd, ram);
}

/// The workload channel end to end on the node's side: a channel console device (virtio-mmio,
/// the guest's queue layout from the input) whose transmitted bytes go through the decoder
/// and line splitter (`crate::workload`). The first input byte picks how the rest is split
/// into chunks before decoding; the decoder must never panic and lines stay bounded.
/// The other direction too: the same bytes through the init's command decoder, and node → init
/// frames delivered into receive buffers the input describes (bounded, never a panic).
pub fn workload_channel(data: &[u8]) {
    let mut b = Bytes::new(data);
    let step = 1 + b.u8() as usize;
    let rest = b.rest();
    let mut log = crate::workload::WorkloadLog::new();
    for c in rest.chunks(step) {
        log.feed(c, &mut |_, l| assert!(l.len() <= crate::console::MAX_OUT_LINE));
    }
    log.flush(&mut |_, l| assert!(l.len() <= crate::console::MAX_OUT_LINE));
    let s = log.stats();
    assert!(s.garbage_bytes <= rest.len() as u64);
    // The same bytes as guest output through a channel console's transmit queue.
    let mut img = rest.to_vec();
    img.resize(0x1_0000, 0);
    let mut mem = VecMemory::from_bytes(img);
    let mut t = VirtioMmio::new(0, 5, Device::Console(VirtioConsole::new_channel()), 16);
    for (off, v) in [(0x70u64, 3u64), (0x24, 1), (0x20, 1), (0x24, 0), (0x20, 0), (0x70, 0xb), (0x30, 1), (0x38, 16), (0x80, 0x100), (0x90, 0x200), (0xa0, 0x300), (0x44, 1), (0x70, 0xf), (0x50, 1)] {
        t.write(off, 4, v, &mut mem);
    }
    let mut ring = crate::console::ConsoleRing::try_new(4096).expect("small ring");
    t.process_console_tx(&mut mem, &mut ring);
    let mut buf = [0u8; 512];
    loop {
        let n = ring.pop(&mut buf);
        if n == 0 {
            break;
        }
        log.feed(&buf[..n], &mut |_, l| assert!(l.len() <= crate::console::MAX_OUT_LINE));
    }
    // Node → guest: the init's decoder on arbitrary bytes accepts only valid requests.
    let mut cmds = catenary_guest_proto::wire::CommandDecoder::new();
    for c in rest.chunks(step) {
        cmds.feed(c, &mut |c| assert!(!matches!(c, catenary_guest_proto::wire::Command::Signal(0) | catenary_guest_proto::wire::Command::Signal(65..))));
    }
    // … and requests queued on a receive queue the input laid out (queue 0).
    for (off, v) in [(0x30u64, 0u64), (0x38, 16), (0x80, 0x400), (0x90, 0x500), (0xa0, 0x600), (0x44, 1), (0x50, 0)] {
        t.write(off, 4, v, &mut mem);
    }
    if let Device::Console(c) = &mut t.dev {
        for i in 0..200u8 {
            let f = catenary_guest_proto::wire::encode_signal(1 + i % 64).unwrap_or_default();
            let _ = if i % 3 == 0 { c.push_frame(&catenary_guest_proto::wire::encode_stop()) } else { c.push_frame(&f) };
            assert!(c.input.len() <= crate::virtio::console::MAX_CHANNEL_INPUT);
        }
    }
    t.kick_rx(&mut mem);
}

/// Arbitrary MSR, MMIO, line and timer traffic against 1–8 local APICs and an I/O APIC wired
/// together as in a microVM, plus the MP table builder. Checks the invariants a vCPU loop
/// relies on: only vectors ≥ 16 are ever pending, an expired timer's next deadline lies in the
/// future, one input sends at most one message per pin/APIC.
pub fn apic_sequence(data: &[u8]) {
    use crate::devices::ioapic::IoApic;
    use crate::devices::lapic::{route, ApicEffect, IpiRequest, LocalApic};
    let mut b = Bytes::new(data);
    let n = 1 + (b.u8() % 8) as usize;
    // (A rate that need not be whole kHz, as calibration gives.)
    let tsc = crate::tsc::GuestTsc::new(u64::from(b.u32() % 4_000_000_000));
    let mut apics: Vec<LocalApic> = (0..n).map(|i| LocalApic::new(i as u32, i == 0, tsc)).collect();
    let mut io = IoApic::new(n as u8);
    let mut now = 0u64;
    let irqs: Vec<crate::mptable::IsaIrq> =
        (0..b.u8() % 4).map(|_| crate::mptable::IsaIrq { irq: b.u8() % 20, level_triggered: b.bool() }).collect();
    if let Ok(t) = crate::mptable::build_mptable(b.u8() % 10, &irqs) {
        assert!(t.len() <= 0x400);
    }
    let mut queue: Vec<IpiRequest> = Vec::new();
    let mut steps = 0;
    while !b.exhausted() && steps < 2000 {
        steps += 1;
        let who = (b.u8() as usize) % n;
        let mut eff = ApicEffect::None;
        match b.u8() % 12 {
            0 => {
                let msr = match b.u8() % 4 {
                    0 => 0x1b,
                    1 => 0x6e0,
                    _ => 0x800 + u32::from(b.u8()),
                };
                let _ = apics[who].rdmsr(msr, now);
            }
            1 | 2 => {
                let msr = match b.u8() % 5 {
                    0 => 0x1b,
                    1 => 0x6e0,
                    2 => 0x830,
                    _ => 0x800 + u32::from(b.u8()),
                };
                let v = if b.bool() { u64::from(b.u32()) } else { b.u64() };
                if let Some(Ok(e)) = apics[who].wrmsr(msr, v, now) {
                    eff = e;
                }
            }
            3 => {
                let _ = apics[who].mmio_read(u64::from(b.u16() % 0x1100), [1, 2, 4, 8][(b.u8() % 4) as usize], now);
            }
            4 | 5 => {
                let off = if b.bool() { u64::from(b.u8()) << 4 } else { u64::from(b.u16()) };
                eff = apics[who].mmio_write(off, [1, 2, 4, 8][(b.u8() % 4) as usize], b.u64(), now);
            }
            6 => {
                let off = u64::from(b.u8() % 0x24);
                if b.bool() {
                    io.mmio_write(off, [1, 2, 4][(b.u8() % 3) as usize], u64::from(b.u32()), &mut |m| queue.push(m));
                } else {
                    let _ = io.mmio_read(off, 4);
                }
            }
            7 => io.set_irq((b.u8() % 26) as usize, b.bool(), &mut |m| queue.push(m)),
            8 => {
                now = now.saturating_add(u64::from(b.u32()) * u64::from(b.u8() % 4));
                for a in apics.iter_mut() {
                    if a.poll(now) {
                        if let Some(d) = a.next_deadline_ns() {
                            assert!(d > now, "an expired timer must be re-armed in the future");
                        }
                    }
                }
            }
            9 => {
                if let Some(v) = apics[who].ack() {
                    assert!(v >= 16);
                }
            }
            10 => {
                let _ = (apics[who].take_init(), apics[who].take_sipi(), apics[who].take_nmi());
            }
            _ => {
                let _ = apics[who].accepts_pic();
                if let Some(v) = apics[who].pending_vector() {
                    assert!(v >= 16);
                }
            }
        }
        match eff {
            ApicEffect::Send(r) => queue.push(r),
            ApicEffect::LevelEoi(v) => io.eoi(v, &mut |m| queue.push(m)),
            ApicEffect::None => {}
        }
        assert!(queue.len() <= 24, "one input sends at most one message per pin");
        for r in queue.drain(..) {
            let hit = route(&mut apics, Some(who), &r);
            assert!(hit < (1u64 << n));
        }
    }
}
