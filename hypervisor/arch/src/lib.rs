//! `catenary-arch`: the only crate in Catenary that touches hardware with `unsafe`.
//!
//! Everything here is x86_64 machine access: the boot trampoline (PVH, Multiboot2, Limine
//! entries), GDT/TSS with IST stacks, the IDT and trap entry stubs, control registers and MSRs,
//! port I/O (16550 serial, PIT, PIC, QEMU debug exit), page tables and the direct map, the heap
//! arena, the local APIC and TSC clock, and the ACPI table mapping handler. Each `unsafe` block
//! carries a `// SAFETY:` comment, and no safe function exported here can break memory safety
//! whatever its arguments (docs/microkernel.md, "Arch API soundness"); e.g. a task's saved CPU
//! state is a `context::TaskContext` that owns the kernel stack a ring-0 frame runs on, and
//! only `context::switch` puts a saved frame on the CPU ("Saved contexts"). Policy (what to
//! map, when to tick, what to log) lives in the safe kernel crate and the host-tested logic
//! crates.
//!
//! The bare-metal parts (boot assembly, `mem*` symbols, global allocator) are compiled only with
//! the `kernel` feature, which the kernel binary enables; without it the crate builds on the
//! host so its pure helpers can be unit-tested.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod layers;
pub mod cpu;
pub mod percpu;
pub mod serial;
pub mod stages;
pub mod trap;
pub mod gdt;
pub mod paging;
pub mod pcid;
pub mod memory;
pub mod heap;
pub mod apic;
pub mod time;
pub mod acpi;
pub mod power;
pub mod boot;
pub mod qemu;
pub mod smp;
pub mod uspace;
pub mod context;
pub mod user_mem;
pub mod fastmem;
pub mod virt;
pub mod guest_switch;
pub mod svm;
pub mod vmx;
pub mod pci;
pub mod virtio;
pub mod entropy;
pub mod rtc;
#[cfg(feature = "kernel")]
pub mod limine;

#[cfg(feature = "kernel")]
core::arch::global_asm!(include_str!("asm/boot.s"));
#[cfg(feature = "kernel")]
core::arch::global_asm!(include_str!("asm/mem.s"));
#[cfg(feature = "kernel")]
core::arch::global_asm!(include_str!("asm/trap.s"));
#[cfg(feature = "kernel")]
core::arch::global_asm!(include_str!("asm/smp.s"));
#[cfg(feature = "kernel")]
core::arch::global_asm!(include_str!("asm/guest_fpu.s"));
#[cfg(feature = "kernel")]
core::arch::global_asm!(include_str!("asm/svm.s"));
#[cfg(feature = "kernel")]
core::arch::global_asm!(include_str!("asm/vmx.s"));
