//! Backend-neutral vCPU state, exits, injections and stop reasons.

use alloc::string::String;

/// A segment register in a backend-neutral form.
///
/// `attr` uses the AMD VMCB 12-bit "attrib" layout: bits 0-3 type, 4 S, 5-6 DPL, 7 P, 8 AVL,
/// 9 L, 10 D/B, 11 G. [`Segment::vmx_access_rights`] converts to the VMCS layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    /// Byte-granular limit (already scaled by G, as both VMCB and VMCS store it).
    pub limit: u32,
    pub attr: u16,
}

impl Segment {
    pub const ATTR_P: u16 = 1 << 7;
    pub const ATTR_S: u16 = 1 << 4;
    pub const ATTR_L: u16 = 1 << 9;
    pub const ATTR_DB: u16 = 1 << 10;
    pub const ATTR_G: u16 = 1 << 11;

    /// Flat 4 GiB segment of the given type (e.g. 0xb code exec/read accessed, 0x3 data r/w accessed).
    pub const fn flat(selector: u16, typ: u16, db: bool, l: bool) -> Segment {
        let mut attr = (typ & 0xf) | Self::ATTR_S | Self::ATTR_P | Self::ATTR_G;
        if db {
            attr |= Self::ATTR_DB;
        }
        if l {
            attr |= Self::ATTR_L;
        }
        Segment { selector, base: 0, limit: 0xffff_ffff, attr }
    }
    /// Real-mode style segment (base = selector*16, 64 KiB limit).
    pub const fn real(selector: u16, typ: u16) -> Segment {
        Segment {
            selector,
            base: (selector as u64) << 4,
            limit: 0xffff,
            attr: (typ & 0xf) | Self::ATTR_S | Self::ATTR_P,
        }
    }
    pub fn long(&self) -> bool {
        self.attr & Self::ATTR_L != 0
    }
    pub fn db(&self) -> bool {
        self.attr & Self::ATTR_DB != 0
    }
    pub fn present(&self) -> bool {
        self.attr & Self::ATTR_P != 0
    }
    pub fn dpl(&self) -> u8 {
        ((self.attr >> 5) & 3) as u8
    }
    /// VMCS access-rights format (bit 16 "unusable" set when not present).
    pub fn vmx_access_rights(&self) -> u32 {
        let a = self.attr as u32;
        let mut ar = (a & 0xff) | ((a & 0xf00) << 4);
        if !self.present() {
            ar |= 1 << 16;
        }
        ar
    }
    /// Inverse of [`Segment::vmx_access_rights`].
    pub fn attr_from_vmx(ar: u32) -> u16 {
        if ar & (1 << 16) != 0 {
            return 0;
        }
        ((ar & 0xff) | ((ar >> 4) & 0xf00)) as u16
    }
    /// The 8-byte GDT descriptor encoding of this segment (for code/data segments).
    pub fn gdt_descriptor(&self) -> u64 {
        let (limit, g) = if self.attr & Self::ATTR_G != 0 {
            (self.limit >> 12, true)
        } else {
            (self.limit, false)
        };
        let base = self.base as u32;
        let mut attr = self.attr as u64;
        if g {
            attr |= Self::ATTR_G as u64;
        }
        (limit as u64 & 0xffff)
            | ((base as u64 & 0xff_ffff) << 16)
            | ((attr & 0xff) << 40)
            | (((limit as u64 >> 16) & 0xf) << 48)
            | (((attr >> 8) & 0xf) << 52)
            | (((base as u64 >> 24) & 0xff) << 56)
    }
}

/// GDTR/IDTR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescTable {
    pub base: u64,
    pub limit: u16,
}

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_LA57: u64 = 1 << 12;
pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;
pub const EFER_SVME: u64 = 1 << 12;
pub const RFLAGS_IF: u64 = 1 << 9;
pub const RFLAGS_DF: u64 = 1 << 10;
pub const RFLAGS_VM: u64 = 1 << 17;
/// Bit 1 of RFLAGS is always 1.
pub const RFLAGS_FIXED: u64 = 1 << 1;

/// The architectural state the device model reads and writes.
///
/// The backend fills it from the VMCB/VMCS (plus its saved GPRs) before [`crate::MicroVm::handle_exit`]
/// and writes back the GPRs, `rip`, `rflags`, `cr2` and `xcr0` afterwards (the device model never
/// changes control registers, EFER or segments).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuState {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub xcr0: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr: DescTable,
    pub idtr: DescTable,
    /// Current privilege level (VMCB CPL; on VMX take SS.DPL).
    pub cpl: u8,
    /// STI / MOV SS interrupt shadow is active (no interrupt may be injected now).
    pub interrupt_shadow: bool,
}

/// Operating mode of the vCPU, from CR0/EFER/CS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    Real,
    Virtual8086,
    Protected16,
    Protected32,
    Compat16,
    Compat32,
    Long64,
}

impl CpuMode {
    /// Default operand/address size in bits (16, 32 or 64).
    pub fn bitness(self) -> u32 {
        match self {
            CpuMode::Real | CpuMode::Virtual8086 | CpuMode::Protected16 | CpuMode::Compat16 => 16,
            CpuMode::Protected32 | CpuMode::Compat32 => 32,
            CpuMode::Long64 => 64,
        }
    }
}

impl VcpuState {
    /// Reset-like state: real mode, CS:IP = 0:0 flat, RFLAGS = 2.
    pub fn new() -> Self {
        VcpuState { rflags: RFLAGS_FIXED, cr0: CR0_ET, ..Default::default() }
    }

    pub fn mode(&self) -> CpuMode {
        if self.cr0 & CR0_PE == 0 {
            return CpuMode::Real;
        }
        if self.efer & EFER_LMA != 0 {
            if self.cs.long() {
                return CpuMode::Long64;
            }
            return if self.cs.db() { CpuMode::Compat32 } else { CpuMode::Compat16 };
        }
        if self.rflags & RFLAGS_VM != 0 {
            return CpuMode::Virtual8086;
        }
        if self.cs.db() {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        }
    }

    /// Paging is enabled (CR0.PG with CR0.PE).
    pub fn paging(&self) -> bool {
        self.cr0 & CR0_PG != 0 && self.cr0 & CR0_PE != 0
    }

    /// GPR by its x86 encoding number (0 = RAX … 15 = R15).
    pub fn gpr(&self, n: usize) -> u64 {
        match n & 15 {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            4 => self.rsp,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            _ => self.r15,
        }
    }

    pub fn set_gpr(&mut self, n: usize, v: u64) {
        let r = match n & 15 {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            4 => &mut self.rsp,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            _ => &mut self.r15,
        };
        *r = v;
    }

    /// Write a GPR the way hardware does for an operand of `size` bytes: 1/2 bytes merge into
    /// the low bits, 4 bytes zero-extend (in every mode), 8 bytes replace.
    pub fn write_gpr_sized(&mut self, n: usize, size: u8, v: u64) {
        let old = self.gpr(n);
        let new = match size {
            1 => (old & !0xff) | (v & 0xff),
            2 => (old & !0xffff) | (v & 0xffff),
            4 => v & 0xffff_ffff,
            _ => v,
        };
        self.set_gpr(n, new);
    }

    /// Advance RIP by `len` bytes, wrapping as the current mode does.
    ///
    /// The instruction is done, so an STI / MOV SS interrupt shadow that covered it is over (as
    /// on hardware, and as KVM clears it when it skips an emulated instruction): an interrupt
    /// may come in before the next one. (A kept shadow delayed interrupts by one instruction,
    /// and never let one into a guest that halts again right after, once the backend stopped
    /// arming interrupts into a shadow.)
    pub fn advance_rip(&mut self, len: u64) {
        self.interrupt_shadow = false;
        let next = self.rip.wrapping_add(len);
        self.rip = match self.mode().bitness() {
            64 => next,
            32 => next & 0xffff_ffff,
            _ => next & 0xffff,
        };
    }

    pub fn interrupts_enabled(&self) -> bool {
        self.rflags & RFLAGS_IF != 0
    }
}

/// A VM exit, decoded by the backend into a backend-neutral form.
///
/// Every exit is reported with the guest's RIP still pointing **at** the instruction that caused
/// it (SVM without NRIPS and VMX both do this); the device model advances RIP where needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Port I/O intercept; the backend has not performed it. `size` is 1, 2 or 4.
    Io { port: u16, size: u8, write: bool, string: bool, rep: bool },
    /// Nested/EPT page fault on a GPA that is not RAM. `write_hint` comes from the fault error
    /// code / exit qualification when the backend has it; the instruction at RIP is decoded anyway.
    Mmio { gpa: u64, write_hint: Option<bool> },
    /// Nested/EPT page fault while the CPU walked the **guest's own page tables** (SVM NPF
    /// EXITINFO1 bit 33; VMX EPT violation with qualification bit 8 clear): `gpa` is a
    /// paging-structure address, not an operand of the instruction at RIP. Lazily mapped
    /// when it is guest RAM, otherwise the VM ends ([`GuestFault::PageWalkOutsideRam`]).
    PageWalkFault { gpa: u64 },
    Cpuid,
    Rdmsr,
    Wrmsr,
    Hlt,
    /// The guest can now take an interrupt (VINTR / interrupt-window exiting).
    InterruptWindow,
    /// A host interrupt arrived while the guest ran (the backend services it).
    ExternalInterrupt,
    /// NMI arrived while the guest ran (host NMI; the backend services it).
    Nmi,
    /// An intercepted guest exception (reflected back into the guest).
    Exception { vector: u8, error_code: Option<u32> },
    /// Shutdown (SVM) / triple fault (VMX).
    Shutdown,
    /// VMMCALL (SVM) / VMCALL (VMX).
    Vmcall,
    /// XSETBV (VMX exits unconditionally).
    Xsetbv,
    /// INVD (VMX exits unconditionally).
    Invd,
    Wbinvd,
    Pause,
    /// VMRUN/VM-entry refused the guest state (VMEXIT_INVALID / entry failure); `code` is the
    /// backend's raw reason.
    InvalidGuestState { code: u64 },
    /// Anything else, with the backend's raw exit code.
    Other { code: u64 },
}

/// How an injected event is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectionKind {
    /// Hardware exception (SVM EVENTINJ type 3 / VMX type 3).
    Exception,
    /// External interrupt (SVM type 0 / VMX type 0).
    ExtInt,
    /// NMI (type 2).
    Nmi,
}

/// An event the backend must inject at the next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    pub vector: u8,
    pub error_code: Option<u32>,
    pub kind: InjectionKind,
}

impl Injection {
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Self {
        Injection { vector, error_code, kind: InjectionKind::Exception }
    }
    pub const fn gp0() -> Self {
        Self::exception(13, Some(0))
    }
    pub const fn ud() -> Self {
        Self::exception(6, None)
    }
    /// AMD EVENTINJ encoding (valid bit set).
    pub fn svm_eventinj(&self) -> u64 {
        let typ: u64 = match self.kind {
            InjectionKind::ExtInt => 0,
            InjectionKind::Nmi => 2,
            InjectionKind::Exception => 3,
        };
        let mut v = self.vector as u64 | (typ << 8) | (1 << 31);
        if let Some(ec) = self.error_code {
            v |= (1 << 11) | ((ec as u64) << 32);
        }
        v
    }
    /// VMX VM-entry interruption-information field (valid bit set); the error code goes to
    /// VM_ENTRY_EXCEPTION_ERROR_CODE when `error_code` is `Some`.
    pub fn vmx_entry_info(&self) -> u32 {
        let typ: u32 = match self.kind {
            InjectionKind::ExtInt => 0,
            InjectionKind::Nmi => 2,
            InjectionKind::Exception => 3,
        };
        let mut v = self.vector as u32 | (typ << 8) | (1 << 31);
        if self.error_code.is_some() {
            v |= 1 << 11;
        }
        v
    }
}

/// Why a guest fault ended the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFault {
    /// MMIO access to a GPA with no device behind it.
    WildMmio { gpa: u64, rip: u64 },
    /// An MMIO access by an instruction the device model does not emulate.
    UnsupportedMmioInstruction { rip: u64, bytes: [u8; 15], len: u8 },
    /// The instruction at RIP could not be fetched (unmapped / not RAM) or decoded.
    InstructionFetch { rip: u64 },
    /// The instruction at RIP is not the one the exit reported.
    InstructionMismatch { rip: u64, exit: &'static str },
    /// The backend reported guest state that the CPU refused.
    InvalidGuestState { code: u64 },
    /// An exit the device model does not handle.
    UnhandledExit { code: u64 },
    /// A reflected exception was reported in a way that cannot be injected.
    BadException { vector: u8 },
    /// The guest's page tables (a paging-structure entry at `gpa`) are not in guest RAM.
    PageWalkOutsideRam { gpa: u64, rip: u64 },
    /// Anything else, described.
    Other(String),
}

impl core::fmt::Display for GuestFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GuestFault::WildMmio { gpa, rip } => write!(f, "MMIO to {gpa:#x} where no device is (rip {rip:#x})"),
            GuestFault::UnsupportedMmioInstruction { rip, bytes, len } => {
                write!(f, "MMIO by an unsupported instruction at rip {rip:#x}:")?;
                for b in bytes.iter().take(*len as usize) {
                    write!(f, " {b:02x}")?;
                }
                Ok(())
            }
            GuestFault::InstructionFetch { rip } => write!(f, "cannot fetch/decode the instruction at rip {rip:#x}"),
            GuestFault::InstructionMismatch { rip, exit } => {
                write!(f, "the instruction at rip {rip:#x} does not match the {exit} exit")
            }
            GuestFault::InvalidGuestState { code } => write!(f, "invalid guest state (exit code {code:#x})"),
            GuestFault::UnhandledExit { code } => write!(f, "unhandled exit (code {code:#x})"),
            GuestFault::BadException { vector } => write!(f, "exception {vector} reported inconsistently"),
            GuestFault::PageWalkOutsideRam { gpa, rip } => {
                write!(f, "guest page-table walk touched {gpa:#x}, outside guest RAM (rip {rip:#x})")
            }
            GuestFault::Other(s) => write!(f, "{s}"),
        }
    }
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off: HLT with RFLAGS.IF=0 (how Linux without ACPI "powers off"), or
    /// the Catenary power-off hypercall (`code` = its status).
    PowerOff { code: Option<u64> },
    /// The guest asked for a reset (i8042 0xFE, port 0xCF9).
    Reboot,
    /// Shutdown / triple fault.
    TripleFault,
    /// The guest did something the VMM refuses to emulate.
    GuestFault(GuestFault),
}

impl core::fmt::Display for StopReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StopReason::PowerOff { code: None } => write!(f, "power off"),
            StopReason::PowerOff { code: Some(c) } => write!(f, "power off (status {c})"),
            StopReason::Reboot => write!(f, "reboot requested"),
            StopReason::TripleFault => write!(f, "triple fault / shutdown"),
            StopReason::GuestFault(g) => write!(f, "guest fault: {g}"),
        }
    }
}

/// What the backend does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Re-enter the guest (after injecting whatever is pending, see [`crate::MicroVm::next_event`]).
    Resume,
    /// The guest executed HLT with interrupts enabled (RIP already advanced): do not re-enter
    /// until [`crate::MicroVm::pending_irq`] is `Some` (after [`crate::MicroVm::poll`]) — wait
    /// at most until [`crate::MicroVm::next_deadline_ns`].
    Halt,
    /// End the VM.
    Stop(StopReason),
}

/// Errors that are the backend's fault (a broken contract), not the guest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmError {
    /// The exit carried impossible values (e.g. I/O size 3).
    BadExit(&'static str),
    /// A host allocation for guest-driven work failed (virtqueue chains, frames, console):
    /// the VM ends, the node does not.
    OutOfMemory,
}
