//! The microVM runner: create a microVM (guest RAM, device model, vCPU), run its vCPU loop, and
//! destroy it, reporting why it ended. Backend-neutral: the vCPU is SVM or VMX behind
//! `catenary_arch::virt::Vcpu`; the device model is `catenary_vmm::MicroVm`.
//!
//! Guest images come from the boot module "guest bundle": a cpio archive holding `vmlinux`
//! (PVH entry), `bzImage` (Linux boot protocol) and `initramfs.cpio.gz`.
//!
//! Kernel command line: `vm=none` skips the demo microVM; `vm.boot=pvh|bzimage`,
//! `vm.mem=<MiB>`, `vm.cmd=<base64 shell command>`, `vm.exit=poweroff|reboot|halt`,
//! `vm.disk=<MiB>` (a read-only virtio-blk disk with a marker line), `vm.vcpus=<N>` (N vCPUs,
//! each its own task, with local APICs, an I/O APIC and an MP table) and `vm.debug` shape it;
//! `vm.count=N` starts N copies of it (`demo`, `demo-2`, …), each its own vCPU task on any CPU.
//! `vm.net=1` gives the demo microVM a virtio-net device and a /128 of the node's /64
//! (`net::attach_vm`); `netd` routes it (the guest gets `catenary.addr=<addr>` on its command
//! line; with it the guest's init configures `eth0`, or `vm.cmd` does).
//! `vm.image=1` runs the Catenary image the bundle carries (`image/rootfs.squashfs`,
//! `image/config.json`) under `catenary-init`: the root filesystem as a read-only virtio-blk
//! disk, the run config appended to the initramfs, the workload channel for its log and exit
//! status (docs/guest-init.md). (Stopping such a VM is the workload service's: its VMs
//! take stop requests through their [`VmControl`].)
//!
//! A VM started with a [`VmControl`] (`run_workload_ctl`) takes signal, stop and kill requests
//! from any task while it runs (`vmcontrol`).

use crate::vmconsole::VmConsole;
pub use crate::vmcontrol::VmControl;

mod affinity;
mod bundle;
mod control;
mod debug;
mod demo;
mod guests;
mod report;
mod run;
mod shared;
mod vcpu_loop;

#[cfg_attr(not(any(feature = "probes", feature = "ktest")), allow(unused_imports))] // (the benchmarks and the in-kernel tests)
pub use affinity::{vcpu_affinity, vm_test_cpu};
#[cfg(feature = "ktest")]
pub use debug::request_state_dump;
pub use bundle::find_bundle;
pub use demo::{demo_count, run_demo2, run_demo_nth, second_demo_wanted};
#[cfg_attr(not(any(feature = "probes", feature = "ktest")), allow(unused_imports))] // (the benchmarks and the in-kernel tests)
pub use guests::{CPUIDLOOP_GUEST, HOSTILE_LOAD, PROGRESS_GUEST};
#[cfg_attr(not(any(feature = "probes", feature = "ktest")), allow(unused_imports))] // (the benchmarks and the in-kernel tests)
pub use report::{report, Ended, RunReport};
#[cfg_attr(not(feature = "probes"), allow(unused_imports))] // (the benchmarks and the in-kernel tests)
pub use run::{run, run_image_vm, run_stoppable_workload, vm_counts, vm_exits};
// Used by the in-kernel tests only (the node build allows dead code the same way: main.rs).
#[cfg_attr(not(feature = "ktest"), allow(unused_imports))]
pub use guests::{EXITLOOP_GUEST, FLOOD_GUEST, HOSTILE_GUEST, IRQONCE_GUEST, NMISPIN_GUEST, REINJECT_GUEST};
#[cfg_attr(not(feature = "ktest"), allow(unused_imports))]
pub use report::cpu_list;
#[cfg_attr(not(feature = "ktest"), allow(unused_imports))]
pub use run::{run_stoppable, run_workload_ctl};

/// What to load into the microVM.
#[allow(clippy::enum_variant_names)] // bzImage is the format's name
pub enum Image<'a> {
    /// Linux via PVH (uncompressed vmlinux) or the 64-bit boot protocol (bzImage). The initrd
    /// is `initrd` (the node's one copy, shared by every VM) followed by the per-VM `tail`
    /// (a Catenary image's run config cpio; empty for none), both written straight into guest
    /// RAM; `tail` is freed once the guest is loaded (docs/images.md "beyond guest RAM").
    LinuxPvh { vmlinux: &'a [u8], initrd: &'a [u8], tail: alloc::vec::Vec<u8>, cmdline: &'a str },
    LinuxBzImage { bzimage: &'a [u8], initrd: &'a [u8], tail: alloc::vec::Vec<u8>, cmdline: &'a str },
    /// Raw code loaded at `load` and entered in 32-bit flat protected mode at `load`,
    /// with EBX = `arg` (small test guests).
    Raw { code: &'a [u8], load: u64, arg: u32 },
}

/// A microVM's network attachment: its MAC and its /128 (routed by `netd`).
#[derive(Clone, Copy)]
pub struct NetAttach {
    pub mac: [u8; 6],
    pub addr: core::net::Ipv6Addr,
}

/// A workload VM's shared root disk, and where its events go (`task::vmctl`).
pub struct Sink<'a> {
    pub handle: u64,
    /// Guest RAM touched so far (`OP_TOUCHED`), updated as chunks are populated.
    pub touched: &'a core::sync::atomic::AtomicU64,
}
