//! The `catenary` kernel binary: boot entry glue, the init sequence and the in-kernel tests.
//!
//! Hardware access lives in `catenary-arch`; this crate only decides what to do. The only code
//! here that is not plain safe Rust is the entry glue in `entry.rs` (exported symbols the
//! trampoline and the compiler runtime need), which is why this crate is `deny` rather than
//! `forbid(unsafe_code)`.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
// Test-support entry points (task roles, raw test guests, IPC helpers) are only called by the
// `ktest` build; the ktest build still reports real dead code.
#![cfg_attr(not(feature = "ktest"), allow(dead_code))]

extern crate alloc;

mod cmdline;
mod entry;
mod init;
mod klog;
// Node networking runs in the normal build; the ktest build does not start it.
#[cfg_attr(feature = "ktest", allow(dead_code))]
mod net;
// The command-line test probes: only in the kernel built with the feature `probes` (the
// QEMU tests and benchmarks that arm one boot it, `xtask build::build_kernel_probes`); the
// node kernel `cargo xtask run`, the ISO and the Nix apps ship has neither their code nor the
// option names (`node_kernel_without_probes` checks its bytes).
#[cfg(feature = "probes")]
mod netdprobe;
mod orchprobe;
#[cfg(feature = "probes")]
mod tcpprobe;
#[cfg(feature = "probes")]
mod rpcprobe;
mod task;
#[cfg(feature = "ktest")]
mod ktest;
#[cfg(feature = "ktest")]
mod ktest_console;
#[cfg(feature = "ktest")]
mod ktest_context;
#[cfg(feature = "ktest")]
mod ktest_core;
#[cfg(feature = "ktest")]
mod ktest_lifecycle;
#[cfg(feature = "ktest")]
mod ktest_nmi;
#[cfg(feature = "ktest")]
mod ktest_reinject;
#[cfg(feature = "ktest")]
mod ktest_remote;
#[cfg(feature = "ktest")]
mod ktest_smp_vm;
#[cfg(feature = "ktest")]
mod ktest_supervisor;
#[cfg(feature = "ktest")]
mod ktest_syscall;
#[cfg(feature = "ktest")]
mod ktest_sound;
#[cfg(feature = "ktest")]
mod ktest_pcid;
#[cfg(feature = "ktest")]
mod ktest_power;
#[cfg(feature = "ktest")]
mod ktest_store;
#[cfg(feature = "ktest")]
mod ktest_sysfuzz;
#[cfg(feature = "ktest")]
mod ktest_vm;
#[cfg(feature = "ktest")]
mod ktest_workd;
#[cfg(feature = "ktest")]
mod ktest_workload;
// (the benchmarks `bench=exit|vmmem|ipc`: probes kernel; the in-kernel suite uses exitbench)
#[cfg(any(feature = "probes", feature = "ktest"))]
mod exitbench;
#[cfg(feature = "probes")]
mod vmmembench;
mod vm;
mod vmconsole;
mod vmcontrol;
mod vmstore;
mod power;
#[cfg(all(feature = "probes", not(feature = "ktest")))]
mod wkclient;
