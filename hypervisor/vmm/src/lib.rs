//! # catenary-vmm — backend-neutral microVM device model
//!
//! Safe, `no_std` + `alloc`, host-tested. The kernel's SVM and VMX backends run the guest and
//! translate each hardware exit into an [`Exit`]; everything after that — instruction decode,
//! RIP advance, devices, interrupts, boot loading — lives here. Every value the guest controls
//! (registers, memory, instruction bytes, rings, port/MMIO data, kernel images) is treated as
//! hostile: errors end at most the VM, never the host.
//!
//! ## Pieces
//! - [`GuestMemory`] (`read`/`write` at a GPA, all-or-nothing) + [`GuestMemoryExt`] LE helpers;
//!   [`VecMemory`] for tests. The kernel implements it over the VM's host frames.
//! - [`VcpuState`]: GPRs, RIP, RFLAGS, CR0/2/3/4, EFER, XCR0, all segments (VMCB attribute
//!   layout, with VMCS conversion helpers), GDTR/IDTR, CPL, interrupt shadow.
//! - [`Exit`] → [`MicroVm::handle_exit`] → [`Action`] (`Resume` / `Halt` / `Stop(StopReason)`).
//! - [`boot::load_pvh`] / [`boot::load_bzimage`] → [`boot::BootSetup`] (full initial state).
//! - [`paging`]: guest page walker (4/5-level, PAE, 32-bit, paging off); [`insn`]: iced-x86
//!   based fetch/decode and MMIO operand classification.
//! - Devices: 8259 pair, 8254 + port 0x61, 16550 UART (COM1, IRQ 4), CMOS RTC, i8042, POST
//!   port, reset ports 0x92/0xcf9, virtio-mmio v2 transport with virtio-console and virtio-blk.
//! - [`intercepts`]: which guest events each backend intercepts (the guest boundary), host-tested.
//! - Policies: [`cpuid`] (hypervisor leaf 0x4000_0000 "CatenaryVMM", TSC kHz in 0x4000_0010),
//!   [`msr`] (small emulated set, unknown → #GP(0)).
//!
//! ## Backend contract (per vCPU loop iteration)
//! ```text
//! let boot = load_pvh(&mut mem, elf, Some(Initrd::whole(initrd)), cmdline, ram)?;   // or load_bzimage
//! let mut vm = MicroVm::new(cfg, &host_cpuid);   let mut cpu = boot.cpu;
//! loop {
//!     vm.poll(now_ns());
//!     match vm.next_event(&cpu) {                 // exception first, then PIC interrupt
//!         EventDecision::Inject(i) => write EVENTINJ / VM-entry interruption info (+ error code),
//!         EventDecision::RequestWindow => enable VINTR intercept (V_IRQ) / interrupt-window exiting,
//!         EventDecision::None => {}
//!     }
//!     load cpu into the VMCB/VMCS (at least GPRs, RIP, RFLAGS, CR2, XCR0, EFER — the only
//!     fields the device model writes), VMRUN / VMRESUME;
//!     store the guest state back into `cpu` (all fields; CPL; interrupt shadow);
//!     if an event was being delivered when the exit happened (EXITINTINFO bit 31 /
//!     IDT-vectoring info), re-inject it yourself before anything from the VMM;
//!     let exit = decode the hardware exit into an Exit (RIP still AT the instruction);
//!     match vm.handle_exit(exit, &mut cpu, &mut mem, now_ns())? {
//!         Action::Resume => {}
//!         Action::Halt => wait until vm.pending_irq().is_some() after vm.poll(now), sleeping at
//!                         most until vm.next_deadline_ns(); host interrupts may end the wait,
//!         Action::Stop(reason) => { tear down; report reason; break }
//!     }
//!     for line in vm.take_console_lines() { println!("[vm:{}] {}", name, line) }
//! }
//! ```
//! **Who advances RIP.** Always the device model, for every exit that retires an instruction:
//! IN/OUT (and INS/OUTS, possibly partially for large REP counts — RIP then stays so the
//! instruction resumes), MMIO, CPUID, RDMSR/WRMSR (not when #GP is injected), HLT, PAUSE,
//! INVD/WBINVD, XSETBV, VMCALL/VMMCALL. It decodes the bytes at CS:RIP through the guest's page
//! tables (no NRIPS / decode assists needed) and checks that the instruction matches the
//! exit. The backend must never advance RIP itself, and must report RIP pointing at the
//! instruction (SVM: VMCB RIP; VMX: guest RIP — do not add the exit instruction length).
//! Exceptions (`Exit::Exception`) are reflected: the model queues the same exception.
//!
//! **Interrupts** (without `VmConfig::apic`; with it see [`apic_bus`]: per-vCPU local APICs,
//! the I/O APIC and the MP table, docs/vmm.md "Multi-vCPU microVMs"). The only interrupt controller is the 8259 pair (the local APIC is hidden in
//! CPUID). [`MicroVm::next_event`] does the INTA cycle ([`MicroVm::ack_irq`]) when RFLAGS.IF=1
//! and no interrupt shadow, and returns an `ExtInt` injection; otherwise it asks for an
//! interrupt window. Timers are pure functions of `now_ns`: call [`MicroVm::poll`] before each
//! entry; [`MicroVm::next_deadline_ns`] tells when IRQ 0 fires next (program a host timer to
//! kick the vCPU out of the guest / out of HLT then).
//!
//! **Stops.** HLT with RFLAGS.IF=0 = power off (Linux without ACPI halts this way);
//! the CPL-0 hypercall `RAX = HC_POWER_OFF, RBX = status` = power off with status; i8042 0xFE,
//! port 0x92 bit 0, port 0xcf9 bit 2 = reboot; Shutdown = triple fault; wild MMIO (no device),
//! MMIO by an unsupported instruction, an unfetchable RIP, invalid guest state or an unknown exit
//! = [`StopReason::GuestFault`]. Unknown ports read all-ones and ignore writes (counted);
//! unknown MSRs inject #GP(0) (counted).
//!
//! ## Guest-physical layout
//! RAM is one block at GPA 0 (≤ 3.25 GiB), E820: RAM below 0x9fc00, reserved to 1 MiB, RAM
//! above. virtio-mmio windows at 0xd000_0000 + n·0x1000 (0x200 bytes, IRQs 5, 6, 9, …). No PCI,
//! no ACPI. See [`boot`] for where boot structures go and [`MicroVm::kernel_cmdline_extras`]
//! for the `virtio_mmio.device=` / `tsc_early_khz=` arguments Linux needs.

#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod apic_bus;
pub mod boot;
pub mod console;
pub mod cpu;
pub mod cpuid;
pub mod devices;
pub mod exitprofile;
pub mod fallible;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod insn;
pub mod intercepts;
pub mod mem;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod virtio;
pub mod stats;
pub mod stop;
pub mod svm_exit;
pub mod timeline;
pub mod tsc;
pub mod vm;
pub mod vmx_exit;
pub mod workload;
#[cfg(test)]
mod apic_tests;
#[cfg(test)]
mod vm_apic_tests;
#[cfg(test)]
mod vm_tests;

pub use boot::{load_bzimage, load_pvh, BootError, Initrd, BootSetup, LINUX_CMDLINE, LINUX_CMDLINE_SERIAL};
pub use cpu::{
    Action, CpuMode, DescTable, Exit, GuestFault, Injection, InjectionKind, Segment, StopReason, VcpuState, VmError,
};
pub use cpuid::CpuidConfig;
pub use mem::{GuestMemory, GuestMemoryExt, MemError, VecMemory};
pub use catenary_guest_proto as guest_proto;
pub use vm::{EventDecision, MicroVm, Stats, VmConfig, WildMmioPolicy};
