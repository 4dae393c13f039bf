//! The `catenary` kernel binary: boot entry glue, the init sequence and the in-kernel tests.
//!
//! Hardware access lives in `catenary-arch`; this crate only decides what to do. The only code
//! here that is not plain safe Rust is the entry glue in `entry.rs` (exported symbols the
//! trampoline and the compiler runtime need), which is why this crate is `deny` rather than
//! `forbid(unsafe_code)`.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod cmdline;
mod entry;
mod init;
mod klog;
mod net;
mod task;
#[cfg(feature = "ktest")]
mod ktest;
#[cfg(feature = "ktest")]
mod ktest_core;
mod vm;
