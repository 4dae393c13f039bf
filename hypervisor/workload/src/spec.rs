//! What a client asks to run: the workload spec, and its checks.

use crate::{Digest, Error};
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Longest workload name (a valid hostname: the guest gets it as its hostname).
pub const NAME_MAX: usize = 63;
/// vCPUs a spec may ask for (issue 14: 1–8). `workd` also refuses more than its node's
/// `max_vcpus` (8 on SVM and on VMX with unrestricted guest, at most the CPUs vCPU tasks may use) with
/// [`Error::Unsupported`].
pub const VCPUS_MAX: u8 = 8;
/// Guest memory bounds in MiB (a Linux guest with catenary-init needs about 32).
pub const MEMORY_MIN_MIB: u32 = 32;
pub const MEMORY_MAX_MIB: u32 = 16384;
/// Environment and argument overrides: entries and bytes per entry.
pub const ENV_MAX: usize = 64;
pub const ARGS_MAX: usize = 64;
pub const ENTRY_MAX: usize = 1024;
/// Restart limit an `on-failure` policy may name.
pub const RESTART_LIMIT_MAX: u32 = 1000;
/// Variables `workd` sets in every run's environment (a spec may not set them).
pub const ENV_ATTEMPT: &str = "CATENARY_ATTEMPT";
pub const ENV_WORKLOAD: &str = "CATENARY_WORKLOAD";

/// Bounds of a [`HealthCheck`] (the guest init checks the same: `catenary_guest_proto::config`).
pub const HEALTH_CMD_MAX: usize = 64;
pub const HEALTH_SECS_MAX: u32 = 3600;
pub const HEALTH_RETRIES_MAX: u32 = 100;

/// A command the guest init runs inside the VM to ask whether the workload is healthy
/// (docs/workloads.md "Health check"; Docker's `HEALTHCHECK`): as the workload's user, in its
/// environment and working directory, every `interval_secs` from the start; exit 0 within
/// `timeout_secs` passes. The first pass makes the workload healthy (a cluster replica counts as
/// healthy only from then: `crate::replicas`); `retries` failures in a row, not counting those
/// in the first `start_period_secs`, make the init kill it (`ExitStatus::Unhealthy`, a failure
/// for the restart policy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// argv: 1..=[`HEALTH_CMD_MAX`] entries of at most [`ENTRY_MAX`] bytes, the first not empty.
    pub cmd: Vec<String>,
    /// 1..=[`HEALTH_SECS_MAX`].
    pub interval_secs: u32,
    /// 1..=`interval_secs`.
    pub timeout_secs: u32,
    /// 1..=[`HEALTH_RETRIES_MAX`].
    pub retries: u32,
    /// 0..=[`HEALTH_SECS_MAX`].
    pub start_period_secs: u32,
}

impl HealthCheck {
    pub fn check(&self) -> Result<(), Error> {
        let bad = Err(Error::BadSpec(SpecError::Health));
        if self.cmd.is_empty() || self.cmd.len() > HEALTH_CMD_MAX || self.cmd[0].is_empty() || !self.cmd.iter().all(|s| valid_entry(s)) {
            return bad;
        }
        if self.interval_secs == 0 || self.interval_secs > HEALTH_SECS_MAX || self.timeout_secs == 0 || self.timeout_secs > self.interval_secs {
            return bad;
        }
        if self.retries == 0 || self.retries > HEALTH_RETRIES_MAX || self.start_period_secs > HEALTH_SECS_MAX {
            return bad;
        }
        Ok(())
    }
}

/// When a workload that ended is started again (with [`crate::restart::backoff_ms`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never.
    No,
    /// When it failed (anything but exit code 0), at most `limit` times in a row.
    OnFailure { limit: u32 },
    /// Whenever it ended, however it ended (unless stopped by a request).
    Always,
}

/// A workload to create (`Request::Create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Its name: unique on the node, 1..=[`NAME_MAX`] of `[a-z0-9-]`, not starting with `-`.
    pub name: String,
    /// The image in the node's store.
    pub image: Digest,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// `NAME=value` entries: a NAME the image sets is replaced, others are appended.
    pub env: Vec<String>,
    /// Replaces the image's `cmd` when present (`docker run IMAGE ARGS`).
    pub args: Option<Vec<String>>,
    pub restart: RestartPolicy,
    /// A network device with its own /128 of the node's /64, routed over the fabric (what
    /// clients default to: `--net none` turns it off). At most [`crate::net::LINKS_MAX`]
    /// workloads with network per node.
    pub net: bool,
    /// Its health check, if any.
    pub health: Option<HealthCheck>,
}

/// Whether `name` may name a workload.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_entry(s: &str) -> bool {
    s.len() <= ENTRY_MAX && !s.contains('\0')
}

impl WorkloadSpec {
    /// The sha256 of its postcard encoding: two specs have one digest when they are equal
    /// ([`crate::status::Summary::spec`]; `apid` compares it with the desired state's spec
    /// for a cluster replica).
    pub fn digest(&self) -> Digest {
        Digest::of(&postcard::to_allocvec(self).unwrap_or_default())
    }

    /// Check every field; the error names the first field that is wrong.
    pub fn check(&self) -> Result<(), Error> {
        if !valid_name(&self.name) {
            return Err(Error::BadSpec(SpecError::Name));
        }
        if self.vcpus == 0 || self.vcpus > VCPUS_MAX {
            return Err(Error::BadSpec(SpecError::Vcpus));
        }
        if self.memory_mib < MEMORY_MIN_MIB || self.memory_mib > MEMORY_MAX_MIB {
            return Err(Error::BadSpec(SpecError::Memory));
        }
        if self.env.len() > ENV_MAX {
            return Err(Error::BadSpec(SpecError::Env));
        }
        for e in &self.env {
            let Some((k, _)) = e.split_once('=') else { return Err(Error::BadSpec(SpecError::Env)) };
            let key_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !k.as_bytes()[0].is_ascii_digit();
            if !key_ok || !valid_entry(e) || k == ENV_ATTEMPT || k == ENV_WORKLOAD {
                return Err(Error::BadSpec(SpecError::Env));
            }
        }
        if let Some(a) = &self.args {
            if a.len() > ARGS_MAX || !a.iter().all(|s| valid_entry(s)) {
                return Err(Error::BadSpec(SpecError::Args));
            }
        }
        if let RestartPolicy::OnFailure { limit } = self.restart {
            if limit > RESTART_LIMIT_MAX {
                return Err(Error::BadSpec(SpecError::Restart));
            }
        }
        if let Some(h) = &self.health {
            h.check()?;
        }
        Ok(())
    }
}

/// Which field of a spec is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecError {
    Name,
    Vcpus,
    Memory,
    Env,
    Args,
    Restart,
    Health,
}

impl SpecError {
    pub fn message(self) -> &'static str {
        match self {
            SpecError::Name => "name: 1-63 of [a-z0-9-], not starting with '-'",
            SpecError::Vcpus => "vcpus: 1-8",
            SpecError::Memory => "memory: 32-16384 MiB",
            SpecError::Env => "env: at most 64 NAME=value entries of at most 1024 bytes, NAME of [A-Za-z0-9_] (CATENARY_* reserved)",
            SpecError::Args => "args: at most 64 arguments of at most 1024 bytes, no NUL",
            SpecError::Restart => "restart: on-failure limit at most 1000",
            SpecError::Health => "health: cmd of 1-64 arguments (the first not empty), interval 1-3600 s, timeout 1 s-interval, retries 1-100, start period 0-3600 s",
        }
    }
}
