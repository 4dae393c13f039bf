//! The interface between a Catenary node and `catenary-init`, the guest's PID 1
//! (docs/guest-init.md):
//!
//! - [`wire`]: the **workload channel**, a framed byte stream the init writes on a dedicated
//!   virtio-console device: the workload's stdout and stderr, `ready`, and its exit status.
//!   `no_std`, no allocation; the node decodes it as hostile input. The node sends the
//!   other way on the same device: STOP and SIGNAL requests.
//! - [`signal`]: the image's `StopSignal` spellings.
//! - `config` (feature `config`): the run configuration the init reads: the image's
//!   `config.json` (docs/images.md) and the node's overrides (`node.json`).
#![cfg_attr(not(feature = "config"), no_std)]
#![forbid(unsafe_code)]

pub mod signal;
pub mod wire;

#[cfg(feature = "config")]
pub mod config;

/// A hostname the kernel and /etc/hosts accept: 1-64 bytes of letters, digits, `-` and `.`.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') && !h.starts_with(['-', '.'])
}
