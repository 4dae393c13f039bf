//! Where a node's packet path spends its time: cycles and calls per stage of [`crate::Node::poll`],
//! counted only when the caller gives a clock ([`crate::Node::set_stage_clock`]; `netd` gives
//! the TSC). Without one nothing is read or counted. Figures for `cargo xtask bench net`'s
//! per-stage breakdown, never for decisions.

/// A stage of the node's packet path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// smoltcp's underlay (Ethernet) interface: NDP, ICMPv6, UDP in and out, including the
    /// link's receive and transmit (the driver's ring) it calls.
    Underlay = 0,
    /// netfabric receiving datagrams: parse, replay check, decrypt (and handshakes).
    Decrypt = 1,
    /// Routing decrypted packets and queueing datagrams for the underlay sockets.
    FabricOut = 2,
    /// smoltcp's fabric interface: echo replies, socket delivery, packets out.
    Fabric = 3,
    /// netfabric sending: route lookup, encrypt (and rekeys).
    Encrypt = 4,
    /// The probes and responders (ping, throughput, the bench's UDP counter).
    Apps = 5,
}

/// How many [`Stage`]s there are.
pub const STAGES: usize = 6;

impl Stage {
    pub const ALL: [Stage; STAGES] = [Stage::Underlay, Stage::Decrypt, Stage::FabricOut, Stage::Fabric, Stage::Encrypt, Stage::Apps];
    pub fn name(self) -> &'static str {
        match self {
            Stage::Underlay => "underlay-stack",
            Stage::Decrypt => "decrypt",
            Stage::FabricOut => "fabric-route",
            Stage::Fabric => "fabric-stack",
            Stage::Encrypt => "encrypt",
            Stage::Apps => "apps",
        }
    }
}

/// Cycles and calls per stage, cumulative (take differences between two snapshots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageCounts {
    pub cycles: [u64; STAGES],
    pub calls: [u64; STAGES],
}

impl StageCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &StageCounts) -> StageCounts {
        let mut d = StageCounts::default();
        for i in 0..STAGES {
            d.cycles[i] = self.cycles[i].wrapping_sub(earlier.cycles[i]);
            d.calls[i] = self.calls[i].wrapping_sub(earlier.calls[i]);
        }
        d
    }
}

/// The counters and the clock they are read with.
#[derive(Default)]
pub(crate) struct Stages {
    clock: Option<fn() -> u64>,
    pub(crate) counts: StageCounts,
}

impl Stages {
    pub(crate) fn set_clock(&mut self, clock: Option<fn() -> u64>) {
        self.clock = clock;
    }
    /// The clock now (0 without one).
    pub(crate) fn start(&self) -> u64 {
        self.clock.map_or(0, |c| c())
    }
    /// Count the time since `t0` (from [`Stages::start`]) for `stage`.
    pub(crate) fn end(&mut self, stage: Stage, t0: u64) {
        if let Some(c) = self.clock {
            let i = stage as usize;
            self.counts.cycles[i] = self.counts.cycles[i].wrapping_add(c().saturating_sub(t0));
            self.counts.calls[i] += 1;
        }
    }
}
