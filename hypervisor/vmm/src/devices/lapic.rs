//! Local APIC, one per vCPU: one register file behind both the xAPIC MMIO window
//! (0xfee0_0000, 16-byte-aligned 32-bit registers) and the x2APIC MSRs (0x800 + offset/16).
//!
//! Modelled: ID, version, TPR/PPR, EOI (with the vector of a level-triggered interrupt handed
//! back for the I/O APIC), LDR/DFR (flat and cluster logical destinations, x2APIC clusters),
//! spurious-vector register (software enable), ISR/TMR/IRR with priority classes, ESR, the ICR
//! (fixed, lowest-priority, NMI, INIT, SIPI, shorthands: turned into an [`IpiRequest`] that the
//! machine routes with [`route`]), the LVT (CMCI, timer, thermal, perf, LINT0/1, error) and the
//! timer in one-shot, periodic and TSC-deadline mode, x2APIC SELF IPI. IA32_APIC_BASE switches
//! disabled / xAPIC / x2APIC with the architectural rules (illegal transitions → #GP).
//!
//! Hostile input: every register value is masked to its defined bits, every MSR access either
//! succeeds or asks for #GP ([`ApicFault`]), MMIO accesses of any size/offset are accepted or
//! ignored; nothing panics. A periodic timer cannot fire faster than [`MIN_PERIOD_NS`] and
//! expired ticks coalesce into one interrupt, so a guest cannot make the host spin on it.
//!
//! Time is a pure function of `now_ns`: the timer counts at [`APIC_BUS_HZ`] (1 GHz, one tick
//! per ns before the divider, as CPUID 0x4000_0010 EBX reports); the TSC-deadline MSR is in
//! guest TSC ticks, turned into node time by [`GuestTsc`] (the guest's TSC counts from the
//! node's boot at the node's TSC rate: crate::tsc).

use crate::tsc::GuestTsc;

pub const APIC_BUS_HZ: u64 = 1_000_000_000;
pub const APIC_DEFAULT_BASE: u64 = 0xfee0_0000;
pub const APIC_MMIO_SIZE: u64 = 0x1000;
pub const MSR_APIC_BASE: u32 = 0x1b;
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
pub const X2APIC_MSR_FIRST: u32 = 0x800;
pub const X2APIC_MSR_LAST: u32 = 0x8ff;
pub const BASE_BSP: u64 = 1 << 8;
pub const BASE_EXTD: u64 = 1 << 10;
pub const BASE_EN: u64 = 1 << 11;
/// Version 0x14 (integrated APIC), 6 LVT entries + CMCI (max LVT index 6).
pub const APIC_VERSION: u32 = 0x14 | (6 << 16);
/// Shortest periodic timer period a guest can program.
pub const MIN_PERIOD_NS: u64 = 100_000;

// Register indices (xAPIC offset / 16 = x2APIC MSR - 0x800).
const ID: u32 = 0x2;
const VERSION: u32 = 0x3;
const TPR: u32 = 0x8;
const APR: u32 = 0x9;
const PPR: u32 = 0xa;
const EOI: u32 = 0xb;
const RRD: u32 = 0xc;
const LDR: u32 = 0xd;
const DFR: u32 = 0xe;
const SVR: u32 = 0xf;
const ISR0: u32 = 0x10;
const TMR0: u32 = 0x18;
const IRR0: u32 = 0x20;
const ESR: u32 = 0x28;
const LVT_CMCI: u32 = 0x2f;
const ICR_LO: u32 = 0x30;
const ICR_HI: u32 = 0x31;
const TIMER_INIT: u32 = 0x38;
const TIMER_CUR: u32 = 0x39;
const TIMER_DIV: u32 = 0x3e;
const SELF_IPI: u32 = 0x3f;

const LVT_MASKED: u32 = 1 << 16;
const SVR_ENABLE: u32 = 1 << 8;
const ESR_SEND_ILLEGAL: u32 = 1 << 5;
const ESR_RECV_ILLEGAL: u32 = 1 << 6;
const ESR_ILLEGAL_REG: u32 = 1 << 7;

/// LVT slots, in register order from CMCI: CMCI, timer, thermal, perf, LINT0, LINT1, error.
const LVT_SLOTS: usize = 7;
fn lvt_slot(reg: u32) -> Option<usize> {
    match reg {
        LVT_CMCI => Some(0),
        0x32..=0x37 => Some((reg - 0x32 + 1) as usize),
        _ => None,
    }
}
/// Writable bits of each LVT slot.
const LVT_BITS: [u32; LVT_SLOTS] = [
    0x1_07ff,     // CMCI: vector, delivery mode, mask
    0x7_00ff,     // timer: vector, mask, mode (bits 17-18)
    0x1_07ff,     // thermal
    0x1_07ff,     // perf
    0x1_a7ff,     // LINT0: vector, mode, polarity, trigger, mask
    0x1_a7ff,     // LINT1
    0x1_00ff,     // error: vector, mask
];

/// The guest must get #GP(0) for this MSR access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicFault;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    Startup,
    ExtInt,
}

impl DeliveryMode {
    /// The 3-bit delivery-mode field of an ICR / LVT / redirection entry (None: reserved).
    pub fn from_bits(b: u32) -> Option<Self> {
        Some(match b & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::Startup,
            7 => DeliveryMode::ExtInt,
            _ => return None,
        })
    }
}

/// Who an interrupt message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Physical APIC ID (`x2apic`: 32-bit ID, broadcast 0xffff_ffff; else 8-bit, 0xff).
    Physical { id: u32, x2apic: bool },
    /// Logical destination (flat / cluster per the receiver's DFR, or x2APIC cluster).
    Logical { dest: u32, x2apic: bool },
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// An interrupt message on the APIC bus: from an ICR write or an I/O APIC redirection entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpiRequest {
    pub vector: u8,
    pub mode: DeliveryMode,
    pub dest: Destination,
    pub level_triggered: bool,
}

/// Side effect of a register write the machine must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicEffect {
    None,
    /// Route this message ([`route`]) from this APIC.
    Send(IpiRequest),
    /// EOI of a level-triggered vector: the I/O APIC clears Remote IRR of entries with it.
    LevelEoi(u8),
}

/// INIT/SIPI state of the vCPU that owns this APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// After INIT: the vCPU waits for a Startup IPI.
    WaitForSipi,
}

#[derive(Debug, Clone)]
pub struct LocalApic {
    id: u32,
    base: u64,
    tpr: u32,
    svr: u32,
    ldr: u32,
    dfr: u32,
    esr: u32,
    esr_pending: u32,
    irr: [u32; 8],
    isr: [u32; 8],
    tmr: [u32; 8],
    icr: u64,
    lvt: [u32; LVT_SLOTS],
    timer_init: u32,
    timer_div_reg: u32,
    timer_start_ns: u64,
    /// Next expiry (one-shot/periodic/TSC-deadline), None when disarmed.
    timer_due_ns: Option<u64>,
    tsc_deadline: u64,
    tsc: GuestTsc,
    nmi_pending: bool,
    init_pending: bool,
    sipi_vector: Option<u8>,
    run_state: RunState,
}

fn bit_set(v: &mut [u32; 8], n: u8) {
    v[(n >> 5) as usize] |= 1 << (n & 31);
}
fn bit_clear(v: &mut [u32; 8], n: u8) {
    v[(n >> 5) as usize] &= !(1 << (n & 31));
}
fn bit_test(v: &[u32; 8], n: u8) -> bool {
    v[(n >> 5) as usize] & (1 << (n & 31)) != 0
}
fn highest(v: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find(|&i| v[i] != 0).map(|i| (i as u32 * 32 + 31 - v[i].leading_zeros()) as u8)
}

/// Whether `gpa` is in the local APIC's page (for a guest that has none: see
/// [`absent_apic_read`]).
pub fn in_absent_apic_page(gpa: u64) -> bool {
    (APIC_DEFAULT_BASE..APIC_DEFAULT_BASE + APIC_MMIO_SIZE).contains(&gpa)
}

/// A read at `offset` in the local APIC page of a guest that has no local APIC (no CPUID APIC
/// bit) but an MP table naming one (`crate::mptable::write_pic_only_mptable`): Linux's MP
/// table parser reads the boot CPU's APIC ID and version before it sees that CPUID has no
/// APIC. ID 0 and [`APIC_VERSION`] (as in the table, so that Linux finds no mismatch; a read
/// inside the version register gets its bytes from there on), every other byte 0; writes are
/// dropped. Stateless: nothing a guest does here changes anything.
pub fn absent_apic_read(offset: u64) -> u64 {
    let version = u64::from(VERSION) << 4;
    if (version..version + 4).contains(&offset) {
        u64::from(APIC_VERSION) >> (8 * (offset - version))
    } else {
        0
    }
}

impl LocalApic {
    /// APIC of vCPU `id` (its APIC ID); `bsp` marks the boot processor. Starts in xAPIC mode,
    /// enabled, at the default base, as after power-on.
    pub fn new(id: u32, bsp: bool, tsc: GuestTsc) -> Self {
        let mut a = LocalApic {
            id,
            base: APIC_DEFAULT_BASE | BASE_EN | if bsp { BASE_BSP } else { 0 },
            tpr: 0,
            svr: 0xff,
            ldr: 0,
            dfr: 0xffff_ffff,
            esr: 0,
            esr_pending: 0,
            irr: [0; 8],
            isr: [0; 8],
            tmr: [0; 8],
            icr: 0,
            lvt: [LVT_MASKED; LVT_SLOTS],
            timer_init: 0,
            timer_div_reg: 0,
            timer_start_ns: 0,
            timer_due_ns: None,
            tsc_deadline: 0,
            tsc,
            nmi_pending: false,
            init_pending: false,
            sipi_vector: None,
            run_state: if bsp { RunState::Running } else { RunState::WaitForSipi },
        };
        a.reset_registers();
        if bsp {
            // What firmware leaves behind on the BSP: LINT0 = ExtINT (the 8259 in virtual-wire
            // mode), LINT1 = NMI. Linux keeps the wire until its I/O APIC timer check.
            a.lvt[4] = 0x700;
            a.lvt[5] = 0x400;
        }
        a
    }

    /// The register state after INIT or a hardware disable (APIC_BASE and the ID survive).
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.svr = 0xff;
        self.ldr = if self.x2apic() { self.x2apic_ldr() } else { 0 };
        self.dfr = 0xffff_ffff;
        self.esr = 0;
        self.esr_pending = 0;
        self.irr = [0; 8];
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.icr = 0;
        self.lvt = [LVT_MASKED; LVT_SLOTS];
        self.timer_init = 0;
        self.timer_div_reg = 0;
        self.timer_due_ns = None;
        self.tsc_deadline = 0;
    }

    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn base_msr(&self) -> u64 {
        self.base
    }
    /// Hardware-enabled (IA32_APIC_BASE.EN).
    pub fn hw_enabled(&self) -> bool {
        self.base & BASE_EN != 0
    }
    pub fn x2apic(&self) -> bool {
        self.base & (BASE_EN | BASE_EXTD) == BASE_EN | BASE_EXTD
    }
    /// xAPIC mode: the MMIO window answers.
    pub fn xapic_mmio(&self) -> bool {
        self.base & (BASE_EN | BASE_EXTD) == BASE_EN
    }
    pub fn sw_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }
    fn x2apic_ldr(&self) -> u32 {
        ((self.id >> 4) << 16) | (1 << (self.id & 0xf))
    }
    pub fn run_state(&self) -> RunState {
        self.run_state
    }

    // ----- priorities and delivery to the CPU ------------------------------------------------

    fn ppr(&self) -> u32 {
        let isrv = highest(&self.isr).map_or(0, u32::from);
        if (self.tpr & 0xf0) >= (isrv & 0xf0) {
            self.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    /// The vector the CPU should take next, if any (IRR above the processor priority).
    pub fn pending_vector(&self) -> Option<u8> {
        if !self.hw_enabled() {
            return None;
        }
        let v = highest(&self.irr)?;
        (u32::from(v) & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// Interrupt acknowledge: the highest deliverable IRR vector moves to the ISR.
    pub fn ack(&mut self) -> Option<u8> {
        let v = self.pending_vector()?;
        bit_clear(&mut self.irr, v);
        bit_set(&mut self.isr, v);
        Some(v)
    }

    /// Whether an NMI is latched and not yet taken.
    pub fn nmi_pending(&self) -> bool {
        self.nmi_pending
    }

    /// Take a pending NMI (delivered by an NMI IPI or LINT1/an LVT in NMI mode).
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi_pending)
    }

    /// An INIT arrived: the owner resets the vCPU and waits for a SIPI. Returns it once.
    pub fn take_init(&mut self) -> bool {
        core::mem::take(&mut self.init_pending)
    }

    /// A Startup IPI arrived while waiting for one: start at `vector << 12` in real mode.
    pub fn take_sipi(&mut self) -> Option<u8> {
        let v = self.sipi_vector.take();
        if v.is_some() {
            self.run_state = RunState::Running;
        }
        v
    }

    /// Accept a message that [`route`] selected this APIC for.
    pub fn accept(&mut self, mode: DeliveryMode, vector: u8, level_triggered: bool) {
        match mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                // A software-disabled APIC drops fixed interrupts (as KVM does).
                if !self.hw_enabled() || !self.sw_enabled() {
                    return;
                }
                if vector < 16 {
                    self.esr_pending |= ESR_RECV_ILLEGAL;
                    return;
                }
                bit_set(&mut self.irr, vector);
                if level_triggered {
                    bit_set(&mut self.tmr, vector);
                } else {
                    bit_clear(&mut self.tmr, vector);
                }
            }
            DeliveryMode::Nmi => self.nmi_pending = true,
            DeliveryMode::Init => {
                let base = self.base;
                self.reset_registers();
                self.base = base;
                self.nmi_pending = false;
                self.sipi_vector = None;
                self.init_pending = true;
                self.run_state = RunState::WaitForSipi;
            }
            DeliveryMode::Startup => {
                if self.run_state == RunState::WaitForSipi && self.sipi_vector.is_none() {
                    self.sipi_vector = Some(vector);
                }
            }
            // SMIs are not modelled; ExtINT comes from the 8259 through LINT0, not the bus.
            DeliveryMode::Smi | DeliveryMode::ExtInt => {}
        }
    }

    /// Whether LINT0 passes the 8259's INTR through (virtual-wire mode: unmasked, ExtINT), or
    /// the APIC is hardware-disabled (then INTR goes straight to the CPU).
    pub fn accepts_pic(&self) -> bool {
        if !self.hw_enabled() {
            return true;
        }
        let l = self.lvt[4];
        l & LVT_MASKED == 0 && DeliveryMode::from_bits(l >> 8) == Some(DeliveryMode::ExtInt)
    }

    // ----- timer ------------------------------------------------------------------------------

    fn timer_mode(&self) -> u32 {
        (self.lvt[1] >> 17) & 3
    }
    fn divide(&self) -> u64 {
        let v = (self.timer_div_reg & 3) | ((self.timer_div_reg >> 1) & 4);
        if v == 7 {
            1
        } else {
            2u64 << v
        }
    }
    fn period_ns(&self) -> u64 {
        // Guest-controlled (TMICT up to 2^32-1, divider up to 128): widen, then saturate.
        let p = u128::from(self.timer_init) * u128::from(self.divide()) * 1_000_000_000 / u128::from(APIC_BUS_HZ);
        let p = u64::try_from(p).unwrap_or(u64::MAX);
        if self.timer_mode() == 1 {
            p.max(MIN_PERIOD_NS)
        } else {
            p
        }
    }

    fn start_timer(&mut self, now: u64) {
        self.timer_start_ns = now;
        self.timer_due_ns = if self.timer_init == 0 || self.timer_mode() > 1 {
            None
        } else {
            Some(now.saturating_add(self.period_ns()))
        };
    }

    fn current_count(&self, now: u64) -> u32 {
        if self.timer_init == 0 || self.timer_mode() > 1 {
            return 0;
        }
        let per_tick = (self.divide().saturating_mul(1_000_000_000) / APIC_BUS_HZ).max(1);
        let elapsed = now.saturating_sub(self.timer_start_ns);
        match self.timer_due_ns {
            None => 0,
            Some(_) if self.timer_mode() == 1 => {
                let period = self.period_ns().max(1);
                let into = elapsed % period;
                let ticks = into / per_tick;
                let total = period / per_tick;
                u32::try_from(total.saturating_sub(ticks)).unwrap_or(u32::MAX).min(self.timer_init).max(1)
            }
            Some(_) => {
                let ticks = elapsed / per_tick;
                u32::try_from(u64::from(self.timer_init).saturating_sub(ticks)).unwrap_or(0)
            }
        }
    }

    /// Advance the timer to `now_ns`; an expiry raises the LVT timer vector (missed periods
    /// coalesce into one). Returns true if an interrupt was raised.
    pub fn poll(&mut self, now: u64) -> bool {
        let Some(due) = self.timer_due_ns else { return false };
        if now < due {
            return false;
        }
        match self.timer_mode() {
            1 => {
                let period = self.period_ns().max(1);
                let missed = (now - due) / period;
                self.timer_due_ns = Some(due.saturating_add(period.saturating_mul(missed.saturating_add(1))));
            }
            2 => {
                self.timer_due_ns = None;
                self.tsc_deadline = 0;
            }
            _ => self.timer_due_ns = None,
        }
        let lvt = self.lvt[1];
        if lvt & LVT_MASKED != 0 {
            return false;
        }
        self.accept(DeliveryMode::Fixed, lvt as u8, false);
        true
    }

    /// When the timer next expires (to bound a HLT wait).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.timer_due_ns
    }

    // ----- register file ----------------------------------------------------------------------

    fn read_reg(&self, reg: u32, now: u64) -> Option<u32> {
        let x2 = self.x2apic();
        Some(match reg {
            ID => {
                if x2 {
                    self.id
                } else {
                    self.id << 24
                }
            }
            VERSION => APIC_VERSION,
            TPR => self.tpr,
            APR if !x2 => 0,
            PPR => self.ppr(),
            RRD if !x2 => 0,
            LDR => self.ldr,
            DFR if !x2 => self.dfr,
            SVR => self.svr,
            0x10..=0x17 => self.isr[(reg - ISR0) as usize],
            0x18..=0x1f => self.tmr[(reg - TMR0) as usize],
            0x20..=0x27 => self.irr[(reg - IRR0) as usize],
            ESR => self.esr,
            ICR_LO => self.icr as u32,
            ICR_HI if !x2 => (self.icr >> 32) as u32,
            r if lvt_slot(r).is_some() => self.lvt[lvt_slot(r).unwrap_or(0)],
            TIMER_INIT => self.timer_init,
            TIMER_CUR => self.current_count(now),
            TIMER_DIV => self.timer_div_reg,
            _ => return None,
        })
    }

    /// Write a register. `Err` = the x2APIC interface must raise #GP (xAPIC ignores it).
    fn write_reg(&mut self, reg: u32, val: u32, now: u64) -> Result<ApicEffect, ApicFault> {
        let x2 = self.x2apic();
        match reg {
            ID | VERSION | PPR | 0x10..=0x27 | TIMER_CUR => {
                if x2 {
                    return Err(ApicFault);
                }
            }
            APR | RRD if !x2 => {}
            LDR => {
                if x2 {
                    return Err(ApicFault);
                }
                self.ldr = val & 0xff00_0000;
            }
            DFR if !x2 => self.dfr = val | 0x0fff_ffff,
            TPR => self.tpr = val & 0xff,
            EOI => {
                if x2 && val != 0 {
                    return Err(ApicFault);
                }
                return Ok(self.eoi());
            }
            SVR => {
                self.svr = val & 0x1ff;
                if !self.sw_enabled() {
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                }
            }
            ESR => {
                if x2 && val != 0 {
                    return Err(ApicFault);
                }
                self.esr = core::mem::take(&mut self.esr_pending);
            }
            ICR_LO => {
                if x2 {
                    return self.write_icr(u64::from(val), now);
                }
                self.icr = (self.icr & !0xffff_ffff) | u64::from(val & !(1 << 12));
                return Ok(self.send_icr());
            }
            ICR_HI if !x2 => self.icr = (self.icr & 0xffff_ffff) | (u64::from(val & 0xff00_0000) << 32),
            r if lvt_slot(r).is_some() => {
                let slot = lvt_slot(r).unwrap_or(0);
                let mut v = val & LVT_BITS[slot];
                if !self.sw_enabled() {
                    v |= LVT_MASKED;
                }
                if slot == 1 {
                    // Mode 3 is reserved.
                    if (v >> 17) & 3 == 3 {
                        v &= !(3 << 17);
                    }
                    let old_mode = self.timer_mode();
                    self.lvt[1] = v;
                    if self.timer_mode() != old_mode {
                        self.timer_init = 0;
                        self.timer_due_ns = None;
                        self.tsc_deadline = 0;
                    }
                } else {
                    // LINT0/1 keep their read-only remote-IRR bit (never set here).
                    self.lvt[slot] = v;
                }
            }
            TIMER_INIT => {
                if self.timer_mode() <= 1 {
                    self.timer_init = val;
                    self.start_timer(now);
                }
            }
            TIMER_DIV => {
                // Keep the count going at the new rate from here (a simplification: restart).
                self.timer_div_reg = val & 0xb;
                if self.timer_due_ns.is_some() && self.timer_mode() <= 1 {
                    self.start_timer(now);
                }
            }
            SELF_IPI if x2 => {
                self.accept(DeliveryMode::Fixed, val as u8, false);
            }
            _ => {
                if x2 {
                    return Err(ApicFault);
                }
                self.esr_pending |= ESR_ILLEGAL_REG;
            }
        }
        Ok(ApicEffect::None)
    }

    fn eoi(&mut self) -> ApicEffect {
        let Some(v) = highest(&self.isr) else { return ApicEffect::None };
        bit_clear(&mut self.isr, v);
        if bit_test(&self.tmr, v) {
            bit_clear(&mut self.tmr, v);
            ApicEffect::LevelEoi(v)
        } else {
            ApicEffect::None
        }
    }

    fn write_icr(&mut self, val: u64, _now: u64) -> Result<ApicEffect, ApicFault> {
        // x2APIC ICR: bits 12, 13, 16-17, 20-31 are reserved.
        if val & 0xfff3_3000 != 0 {
            return Err(ApicFault);
        }
        self.icr = val;
        Ok(self.send_icr())
    }

    /// Turn the ICR into a message (the write that triggers the send already happened).
    fn send_icr(&mut self) -> ApicEffect {
        let lo = self.icr as u32;
        let x2 = self.x2apic();
        let vector = lo as u8;
        let Some(mode) = DeliveryMode::from_bits(lo >> 8) else { return ApicEffect::None };
        let level_assert = lo & (1 << 14) != 0;
        let level_trig = lo & (1 << 15) != 0;
        // INIT level de-assert: a no-op on every APIC since the Pentium 4.
        if mode == DeliveryMode::Init && !level_assert && level_trig {
            return ApicEffect::None;
        }
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.esr_pending |= ESR_SEND_ILLEGAL;
            return ApicEffect::None;
        }
        let dest_field = if x2 { (self.icr >> 32) as u32 } else { (self.icr >> 56) as u32 };
        let dest = match (lo >> 18) & 3 {
            0 if lo & (1 << 11) != 0 => Destination::Logical { dest: dest_field, x2apic: x2 },
            0 => Destination::Physical { id: dest_field, x2apic: x2 },
            1 => Destination::SelfOnly,
            2 => Destination::AllIncludingSelf,
            _ => Destination::AllExcludingSelf,
        };
        ApicEffect::Send(IpiRequest { vector, mode, dest, level_triggered: level_trig && mode == DeliveryMode::Fixed })
    }

    /// Does this APIC answer to a logical destination?
    fn matches_logical(&self, dest: u32, x2_format: bool) -> bool {
        if self.x2apic() {
            if dest == 0xffff_ffff || (!x2_format && dest == 0xff) {
                return true;
            }
            (dest >> 16) == (self.ldr >> 16) && dest & self.ldr & 0xffff != 0
        } else {
            let d = dest & 0xff;
            if d == 0xff {
                return true;
            }
            let l = self.ldr >> 24;
            if self.dfr >> 28 == 0xf {
                l & d != 0
            } else {
                (l >> 4) == (d >> 4) && l & d & 0xf != 0
            }
        }
    }

    fn matches_physical(&self, id: u32, x2_format: bool) -> bool {
        if self.x2apic() {
            id == 0xffff_ffff || (!x2_format && id == 0xff) || id == self.id
        } else {
            let d = id & 0xff;
            d == 0xff || d == (self.id & 0xff)
        }
    }

    // ----- the two guest interfaces -----------------------------------------------------------

    /// RDMSR of IA32_APIC_BASE, TSC_DEADLINE or an x2APIC register; `None` = not an APIC MSR.
    pub fn rdmsr(&self, msr: u32, now: u64) -> Option<Result<u64, ApicFault>> {
        Some(match msr {
            MSR_APIC_BASE => Ok(self.base),
            MSR_TSC_DEADLINE => Ok(if self.timer_mode() == 2 { self.tsc_deadline } else { 0 }),
            X2APIC_MSR_FIRST..=X2APIC_MSR_LAST => {
                let reg = msr - X2APIC_MSR_FIRST;
                if !self.x2apic() {
                    Err(ApicFault)
                } else if reg == ICR_LO {
                    Ok(self.icr)
                } else {
                    self.read_reg(reg, now).map(u64::from).ok_or(ApicFault)
                }
            }
            _ => return None,
        })
    }

    /// WRMSR of an APIC MSR; `None` = not an APIC MSR.
    pub fn wrmsr(&mut self, msr: u32, val: u64, now: u64) -> Option<Result<ApicEffect, ApicFault>> {
        Some(match msr {
            MSR_APIC_BASE => self.write_base(val).map(|_| ApicEffect::None),
            MSR_TSC_DEADLINE => {
                if self.timer_mode() == 2 && self.hw_enabled() {
                    self.tsc_deadline = val;
                    self.timer_due_ns = if val == 0 { None } else { self.tsc.ns_at(val).map(|t| t.max(now)) };
                }
                Ok(ApicEffect::None)
            }
            X2APIC_MSR_FIRST..=X2APIC_MSR_LAST => {
                let reg = msr - X2APIC_MSR_FIRST;
                if !self.x2apic() {
                    Err(ApicFault)
                } else if reg == ICR_LO {
                    self.write_icr(val, now)
                } else if val >> 32 != 0 {
                    Err(ApicFault)
                } else {
                    self.write_reg(reg, val as u32, now)
                }
            }
            _ => return None,
        })
    }

    /// IA32_APIC_BASE write: base fixed at the default, transitions checked (SDM 10.12.5).
    fn write_base(&mut self, val: u64) -> Result<(), ApicFault> {
        const ALLOWED: u64 = 0xf_ffff_f000 | BASE_EN | BASE_EXTD | BASE_BSP;
        if val & !ALLOWED != 0 || val & 0xf_ffff_f000 != APIC_DEFAULT_BASE {
            return Err(ApicFault);
        }
        let (en, extd) = (val & BASE_EN != 0, val & BASE_EXTD != 0);
        if extd && !en {
            return Err(ApicFault);
        }
        // x2APIC → xAPIC directly is illegal; only through disabled.
        if self.x2apic() && en && !extd {
            return Err(ApicFault);
        }
        let was_enabled = self.hw_enabled();
        let was_x2 = self.x2apic();
        // The BSP flag is the hardware's, not the guest's.
        self.base = (val & !BASE_BSP) | (self.base & BASE_BSP);
        if was_enabled && !en {
            self.reset_registers();
        }
        if !was_x2 && self.x2apic() {
            self.ldr = self.x2apic_ldr();
        }
        Ok(())
    }

    /// xAPIC MMIO read at `offset` inside the 4 KiB window (all-ones when not in xAPIC mode).
    pub fn mmio_read(&self, offset: u64, size: u8, now: u64) -> u64 {
        if !self.xapic_mmio() || offset >= APIC_MMIO_SIZE {
            return u64::MAX;
        }
        let reg = (offset >> 4) as u32;
        let v = self.read_reg(reg, now).unwrap_or(0);
        let shift = (offset & 3) * 8;
        // Bytes 4-15 of a 16-byte slot read as zero.
        if offset & 0xf >= 4 {
            return 0;
        }
        let v = u64::from(v) >> shift;
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    /// xAPIC MMIO write; only aligned 32-bit (or wider: the low dword) writes take effect.
    pub fn mmio_write(&mut self, offset: u64, size: u8, val: u64, now: u64) -> ApicEffect {
        if !self.xapic_mmio() || offset >= APIC_MMIO_SIZE || offset & 0xf != 0 || size < 4 {
            return ApicEffect::None;
        }
        self.write_reg((offset >> 4) as u32, val as u32, now).unwrap_or(ApicEffect::None)
    }
}

/// Deliver `req`, sent by APIC `from` (None: the I/O APIC), to every APIC it addresses.
/// Returns a bit mask of the vCPUs (indices into `apics`, at most 64) that received something,
/// so the machine can wake them.
pub fn route(apics: &mut [LocalApic], from: Option<usize>, req: &IpiRequest) -> u64 {
    let mut hit = 0u64;
    let targets = |a: &LocalApic, i: usize| -> bool {
        match req.dest {
            Destination::Physical { id, x2apic } => a.matches_physical(id, x2apic),
            Destination::Logical { dest, x2apic } => a.matches_logical(dest, x2apic),
            Destination::SelfOnly => Some(i) == from,
            Destination::AllIncludingSelf => true,
            Destination::AllExcludingSelf => Some(i) != from,
        }
    };
    if req.mode == DeliveryMode::LowestPriority {
        // The lowest processor priority among the addressed APICs (first one on a tie).
        let pick = apics
            .iter()
            .enumerate()
            .take(64)
            .filter(|(i, a)| targets(a, *i) && a.hw_enabled() && a.sw_enabled())
            .min_by_key(|(_, a)| a.ppr() & 0xf0)
            .map(|(i, _)| i);
        if let Some(i) = pick {
            if let Some(a) = apics.get_mut(i) {
                a.accept(DeliveryMode::Fixed, req.vector, req.level_triggered);
                hit |= 1 << i;
            }
        }
        return hit;
    }
    for (i, a) in apics.iter_mut().enumerate().take(64) {
        if targets(a, i) {
            a.accept(req.mode, req.vector, req.level_triggered);
            hit |= 1 << i;
        }
    }
    hit
}
