//! What a committed `PutWorkload` did to the workload it names: created it, changed some of
//! its fields, or nothing (the API's `change` and `changed`, docs/api.md).
//!
//! It is computed as the command is applied ([`crate::replica::Replica`]), from the state just
//! before it in the log, so every node that applies the command gets the same answer. The
//! node that took the write answers from it, however far behind the leader its own state was
//! when the write came in (before, `apid` compared with that state, and a lagging node could
//! say `created` for a workload another node had just created).
use crate::desired::WorkloadSpec;

/// The fields of a [`WorkloadSpec`] an update changed, one bit each ([`Fields::NAMES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Fields(pub u16);

impl Fields {
    pub const IMAGE: u16 = 1 << 0;
    pub const REPLICAS: u16 = 1 << 1;
    pub const VCPUS: u16 = 1 << 2;
    pub const MEM: u16 = 1 << 3;
    pub const ENV: u16 = 1 << 4;
    pub const ARGS: u16 = 1 << 5;
    pub const RESTART: u16 = 1 << 6;
    pub const CONSTRAINTS: u16 = 1 << 7;
    pub const HEALTH: u16 = 1 << 8;
    /// Each bit's field in the API's names, bit 0 first.
    pub const NAMES: [&'static str; 9] = ["image", "replicas", "cpus", "memory_mib", "env", "args", "restart", "constraints", "health"];

    /// The changed fields' API names, in [`Fields::NAMES`] order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES.into_iter().enumerate().filter(move |(i, _)| self.0 & (1 << i) != 0).map(|(_, n)| n)
    }
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutChange {
    Created,
    /// At least one field differs.
    Updated(Fields),
    Unchanged,
}

impl PutChange {
    /// A put of `new` over `old` (`None`: no workload of that name).
    pub fn of(old: Option<&WorkloadSpec>, new: &WorkloadSpec) -> PutChange {
        let Some(old) = old else { return PutChange::Created };
        let differs = [
            (old.image != new.image, Fields::IMAGE),
            (old.replicas != new.replicas, Fields::REPLICAS),
            (old.vcpus != new.vcpus, Fields::VCPUS),
            (old.mem_mib != new.mem_mib, Fields::MEM),
            (old.env != new.env, Fields::ENV),
            (old.args != new.args, Fields::ARGS),
            (old.restart != new.restart, Fields::RESTART),
            (old.constraints != new.constraints, Fields::CONSTRAINTS),
            (old.health != new.health, Fields::HEALTH),
        ];
        let bits = differs.iter().filter(|(d, _)| *d).fold(0u16, |a, (_, b)| a | b);
        if bits == 0 {
            PutChange::Unchanged
        } else {
            PutChange::Updated(Fields(bits))
        }
    }

    /// As `orchd` answers a committed ticket (`LABEL_TICKET`): words[0] is 1 created,
    /// 2 updated (words[1] the [`Fields`] bits), 3 unchanged; 0 is "not known" (not a put, or
    /// one of the 256 latest puts any more, or an `orchd` from before this answer).
    pub fn to_words(self) -> [u64; 2] {
        match self {
            PutChange::Created => [1, 0],
            PutChange::Updated(f) => [2, u64::from(f.0)],
            PutChange::Unchanged => [3, 0],
        }
    }

    /// The inverse of [`PutChange::to_words`]; `None` for "not known" and for words no
    /// `orchd` sends (an update with no field, a field past the ninth).
    pub fn from_words(w: [u64; 2]) -> Option<PutChange> {
        match w {
            [1, 0] => Some(PutChange::Created),
            [2, f] if f != 0 && f < 1 << Fields::NAMES.len() => Some(PutChange::Updated(Fields(f as u16))),
            [3, 0] => Some(PutChange::Unchanged),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::RestartPolicy;
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;

    fn spec() -> WorkloadSpec {
        WorkloadSpec { health: None, name: "web".to_string(), image: [7; 32], replicas: 2, vcpus: 1, mem_mib: 64, env: vec![("A".to_string(), "1".to_string())], args: vec!["hello".to_string()], restart: RestartPolicy::Always, constraints: Vec::new() }
    }

    #[test]
    fn each_field_is_named_and_nothing_else() {
        let old = spec();
        assert_eq!(PutChange::of(None, &old), PutChange::Created);
        assert_eq!(PutChange::of(Some(&old), &old), PutChange::Unchanged);
        let changes: [(WorkloadSpec, &str); 9] = [
            (WorkloadSpec { image: [8; 32], ..spec() }, "image"),
            (WorkloadSpec { replicas: 3, ..spec() }, "replicas"),
            (WorkloadSpec { vcpus: 2, ..spec() }, "cpus"),
            (WorkloadSpec { mem_mib: 128, ..spec() }, "memory_mib"),
            (WorkloadSpec { env: vec![("A".to_string(), "2".to_string())], ..spec() }, "env"),
            (WorkloadSpec { args: vec!["hello".to_string(), "v2".to_string()], ..spec() }, "args"),
            (WorkloadSpec { restart: RestartPolicy::No, ..spec() }, "restart"),
            (WorkloadSpec { constraints: vec![crate::placement::Constraint::LabelEquals { key: "zone".to_string(), value: "a".to_string() }], ..spec() }, "constraints"),
            (WorkloadSpec { health: Some(crate::desired::HealthCheck { cmd: vec!["true".to_string()], interval_secs: 10, timeout_secs: 5, retries: 3, start_period_secs: 0 }), ..spec() }, "health"),
        ];
        for (new, name) in &changes {
            let PutChange::Updated(f) = PutChange::of(Some(&old), new) else { panic!("{name}: not an update") };
            assert_eq!(f.names().collect::<Vec<_>>(), [*name]);
        }
        let both = WorkloadSpec { image: [8; 32], args: Vec::new(), ..spec() };
        let PutChange::Updated(f) = PutChange::of(Some(&old), &both) else { panic!("not an update") };
        assert_eq!(f.names().collect::<Vec<_>>(), ["image", "args"]);
    }

    #[test]
    fn words_round_trip_and_odd_words_are_not_known() {
        for c in [PutChange::Created, PutChange::Unchanged, PutChange::Updated(Fields(1)), PutChange::Updated(Fields(0x1ff))] {
            assert_eq!(PutChange::from_words(c.to_words()), Some(c));
        }
        for w in [[0, 0], [2, 0], [2, 0x200], [1, 1], [3, 4], [4, 0], [u64::MAX, u64::MAX]] {
            assert_eq!(PutChange::from_words(w), None, "{w:?}");
        }
    }
}
