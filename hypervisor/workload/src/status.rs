//! A workload's states and the status record the service reports.

use crate::spec::RestartPolicy;
use crate::Digest;
use alloc::string::String;
use serde::{Deserialize, Serialize};

/// The node-wide handle of a workload (never reused while the service runs).
pub type WorkloadId = u32;

/// Where a workload is in its life.
///
/// ```text
/// created --start--> starting --(guest init READY)--> running --(ended)--> exited | failed
///                       ^                                 |stop              |
///                       |                             stopping --(ended)--> exited
///                       +--------(restart policy, after the backoff delay)---+
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Admitted and named; no microVM yet.
    Created,
    /// Its microVM is being created and booted, or a restart waits for its backoff delay
    /// ([`Status::restart_in_ms`]).
    Starting,
    /// The guest init reported that it runs the entrypoint.
    Running,
    /// A stop was asked for: the stop signal, then power-off after the grace period.
    Stopping,
    /// The workload ended and reported how (an exit code or a signal), or was stopped.
    Exited,
    /// Its microVM could not be created, or ended without the init's report (the guest
    /// crashed, the init failed, the node ran out of memory).
    Failed,
}

impl State {
    /// Every state (a name outside [`State::name`] of these is not a state).
    pub const ALL: [State; 6] = [State::Created, State::Starting, State::Running, State::Stopping, State::Exited, State::Failed];
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }
    /// Whether a microVM of it may exist (created, and not yet ended).
    pub fn active(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }
}

/// What the workload's health check says of the current run ([`crate::spec::HealthCheck`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// Its spec has no health check.
    Unchecked,
    /// It has one and the check has not passed in this run (or no run is going).
    Starting,
    /// The check passed in this run (the guest init's HEALTHY report).
    Healthy,
}

impl Health {
    pub const ALL: [Health; 3] = [Health::Unchecked, Health::Starting, Health::Healthy];

    pub fn name(self) -> &'static str {
        match self {
            Health::Unchecked => "unchecked",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// The entrypoint exited with this status.
    Code(i32),
    /// A signal killed the entrypoint.
    Signal(i32),
    /// The guest init could not run it (126 not executable, 127 not found, 1 otherwise).
    InitFailed(i32),
    /// The guest kernel's OOM killer was killing when this signal killed the entrypoint (the
    /// workload needs more memory than its microVM has).
    OomKilled(i32),
    /// The microVM ended without the init's report (guest crash, triple fault, reboot).
    Crashed,
    /// The node powered the microVM off (a stop whose grace period ran out, or no stop signal).
    PoweredOff,
    /// The microVM could not be created (the kernel refused: no memory, bad image).
    CreateFailed,
    /// The guest init killed the entrypoint with this signal because the VM thrashed (memory
    /// nearly gone, the kernel reading back the file pages it had just dropped): out of memory
    /// in all but name (docs/guest-init.md "Out of memory"). Last, so that encoded values keep
    /// their meaning.
    ThrashKilled(i32),
    /// The guest init killed the entrypoint with this signal because its health check failed
    /// `retries` times in a row ([`crate::spec::HealthCheck`]).
    Unhealthy(i32),
}

impl ExitStatus {
    /// A clean end: exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl core::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::InitFailed(s) => write!(f, "init failed (status {s})"),
            ExitStatus::OomKilled(s) => write!(f, "killed by the kernel's OOM killer (signal {s})"),
            ExitStatus::Crashed => write!(f, "crashed (no exit report)"),
            ExitStatus::PoweredOff => write!(f, "powered off by the node"),
            ExitStatus::CreateFailed => write!(f, "microVM not created"),
            ExitStatus::ThrashKilled(s) => write!(f, "killed by the guest init: out of memory, thrashing (signal {s})"),
            ExitStatus::Unhealthy(s) => write!(f, "killed by the guest init: unhealthy, its health check failed (signal {s})"),
        }
    }
}

/// The status record (`Request::Status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: WorkloadId,
    pub name: String,
    pub image: Digest,
    pub state: State,
    /// How the last run ended (None before the first end).
    pub exit: Option<ExitStatus>,
    /// Restarts by the policy since the last `start`.
    pub restarts: u32,
    /// Runs since it was created (the current one included).
    pub attempts: u32,
    pub restart: RestartPolicy,
    /// Time since the current run's microVM was created, or how long the last run lasted.
    pub uptime_ms: u64,
    /// Guest RAM the microVM touched (populated), as the kernel last reported it.
    pub memory_touched: u64,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// When a restart is waiting for its backoff delay: the time left.
    pub restart_in_ms: Option<u64>,
    /// Log bytes written since creation, and the oldest byte still in its ring.
    pub log_end: u64,
    pub log_start: u64,
    /// Its /128 (a workload created with network, once the node's network is up); the same
    /// for every run until it is destroyed.
    pub address: Option<core::net::Ipv6Addr>,
    pub health: Health,
    /// Its spec's health check.
    pub health_check: Option<crate::spec::HealthCheck>,
}

/// One line of `Request::List`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub id: WorkloadId,
    pub name: String,
    pub state: State,
    pub exit: Option<ExitStatus>,
    pub restarts: u32,
    pub memory_mib: u32,
    /// Its /128, as in [`Status::address`].
    pub address: Option<core::net::Ipv6Addr>,
    /// [`crate::WorkloadSpec::digest`] of the spec it was created from.
    pub spec: crate::Digest,
    /// Its run ended (or is ending) because a stop was asked (`Request::Stop`, or the cluster
    /// lease ran out), not by itself; a start clears it. `orchd` starts such a cluster replica
    /// again when the desired state wants it here (it asks nothing of its own memory, so a
    /// restarted `orchd` does the same).
    pub stopped: bool,
    pub health: Health,
}
