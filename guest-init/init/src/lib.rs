//! `catenary-init`, the guest's PID 1 (docs/guest-init.md). The parts that need no Linux
//! privileges live here and are host-tested: user resolution against the image's
//! `/etc/passwd` and `/etc/group`, and the generated `/etc` files. `main.rs` is the boot
//! sequence itself.
#![forbid(unsafe_code)]

pub mod etc;
pub mod user;
pub mod exec;
pub mod oom;
pub mod thrash;
pub mod health;
pub mod signal;
