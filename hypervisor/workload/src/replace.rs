//! Replacing a cluster replica whose spec changed.
//!
//! `catenary run --replicas N --name NAME …` of a name the cluster already has replaces that
//! workload's spec in the desired state (`PutWorkload`). A replica `workd` already runs was
//! created from the old spec: `orchd` compares the spec `workd` holds ([`crate::Request::Spec`])
//! with the one the desired state gives that replica here, and [`decide`] says what to do with
//! it. The old instance runs on until the new image is in this node's store (the update never
//! waits for a fetch with the replica stopped), then it is stopped (its StopSignal, then the
//! grace period), destroyed, and created again from the new spec by the usual path.
//!
//! **Staggered, not health-gated.** Replica `r` waits `r ×` [`ROLL_STEP_MS`] (at most
//! [`ROLL_TURNS_MAX`] steps) from the moment its node had the new spec's image with the
//! replica outdated (`seen_ms`: for the same image, when the node saw the change; every node
//! sees it within a commit's spread), so the replicas of one workload are not all down at
//! once. A replica's turn does not wait for the one before it to run again (a node does not
//! know another node's replica state): a new image that cannot start takes every replica down,
//! one step apart; and copies of a new image that end at different times on different nodes
//! move the turns with them.

use crate::admission::Admission;
use crate::spec::WorkloadSpec;
use crate::status::State;
use alloc::vec::Vec;

/// The time between two replicas' turns: a stop's whole default grace
/// ([`crate::proto::GRACE_DEFAULT_MS`]) and 10 s more for the new instance to boot.
pub const ROLL_STEP_MS: u64 = crate::proto::GRACE_DEFAULT_MS as u64 + 10_000;
/// Replicas past this index wait as long as this one.
pub const ROLL_TURNS_MAX: u32 = 30;

/// What to do with one replica that `workd` has ([`decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Its spec is the desired one.
    Keep,
    /// Outdated, and the desired image is not in this node's store yet: the old instance runs
    /// on while the image is fetched.
    WaitForImage,
    /// Outdated; its turn comes in this many ms.
    WaitTurn(u64),
    /// Outdated and its turn: stop it.
    Stop,
    /// Outdated and stopping: wait for the stop to end.
    Stopping,
    /// Outdated and not running: destroy it (it is then created from the desired spec).
    Destroy,
    /// Outdated, but the desired spec needs more memory than this node's admission can give
    /// once the old instance's is back: the old instance runs on (replacing it would leave
    /// the replica down here: its create would be refused).
    NoRoom { need_mib: u64, free_mib: u64 },
}

/// The fields in which `have` (what `workd` was given) differs from `want` (the desired spec
/// for this replica), for the log; empty when they are the same.
pub fn differences(have: &WorkloadSpec, want: &WorkloadSpec) -> Vec<&'static str> {
    [
        (have.name != want.name, "name"),
        (have.image != want.image, "image"),
        (have.vcpus != want.vcpus, "vcpus"),
        (have.memory_mib != want.memory_mib, "memory"),
        (have.env != want.env, "env"),
        (have.args != want.args, "args"),
        (have.restart != want.restart, "restart"),
        (have.net != want.net, "network"),
    ]
    .into_iter()
    .filter_map(|(differs, field)| differs.then_some(field))
    .collect()
}

/// What to do with replica `replica` that `workd` created from `have` and now reports in
/// `state`, when the desired state gives it `want`: `image_here` says whether `want`'s image is
/// in this node's store, `free_mib` what `workd`'s admission has free now (`None`: unknown,
/// taken as enough), `seen_ms` since when this node has had that image with `have` outdated,
/// `now_ms` now.
#[allow(clippy::too_many_arguments)]
pub fn decide(have: &WorkloadSpec, want: &WorkloadSpec, state: State, image_here: bool, free_mib: Option<u64>, replica: u32, seen_ms: u64, now_ms: u64) -> Replace {
    if have == want {
        return Replace::Keep;
    }
    if !image_here {
        return Replace::WaitForImage;
    }
    // the old instance's memory comes back when it is destroyed
    let need_mib = Admission::need_mib(want.memory_mib);
    if let Some(free) = free_mib {
        if need_mib > free.saturating_add(Admission::need_mib(have.memory_mib)) {
            return Replace::NoRoom { need_mib, free_mib: free.saturating_add(Admission::need_mib(have.memory_mib)) };
        }
    }
    match state {
        State::Stopping => return Replace::Stopping,
        State::Created | State::Exited | State::Failed => return Replace::Destroy,
        State::Starting | State::Running => {}
    }
    let turn = seen_ms.saturating_add(u64::from(replica.min(ROLL_TURNS_MAX)) * ROLL_STEP_MS);
    if now_ms < turn {
        Replace::WaitTurn(turn - now_ms)
    } else {
        Replace::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RestartPolicy;
    use crate::Digest;
    use alloc::string::String;
    use alloc::vec;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            name: String::from("cl-web-1"),
            image: Digest([1; 32]),
            vcpus: 1,
            memory_mib: 64,
            env: vec![String::from("V=1")],
            args: Some(vec![String::from("hello"), String::from("v1")]),
            restart: RestartPolicy::Always,
            net: true,
        }
    }

    #[test]
    fn the_same_spec_is_kept_in_every_state() {
        for st in [State::Created, State::Starting, State::Running, State::Stopping, State::Exited, State::Failed] {
            assert_eq!(decide(&spec(), &spec(), st, false, None, 3, 0, 1_000_000), Replace::Keep);
        }
        assert!(differences(&spec(), &spec()).is_empty());
    }

    #[test]
    fn each_field_that_differs_is_named() {
        let mut w = spec();
        w.image = Digest([2; 32]);
        w.env.push(String::from("X=2"));
        w.args = None;
        assert_eq!(differences(&spec(), &w), ["image", "env", "args"]);
        let mut w = spec();
        w.memory_mib = 128;
        w.vcpus = 2;
        w.restart = RestartPolicy::No;
        w.net = false;
        assert_eq!(differences(&spec(), &w), ["vcpus", "memory", "restart", "network"]);
    }

    #[test]
    fn an_outdated_replica_runs_on_until_the_new_image_is_here() {
        let mut w = spec();
        w.image = Digest([2; 32]);
        for st in [State::Starting, State::Running, State::Exited] {
            assert_eq!(decide(&spec(), &w, st, false, None, 0, 0, u64::MAX), Replace::WaitForImage);
        }
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 0, 0, 0), Replace::Stop);
    }

    #[test]
    fn replicas_take_their_turns_one_step_apart() {
        let mut w = spec();
        w.args = Some(vec![String::from("hello"), String::from("v2")]);
        let seen = 5_000;
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 0, seen, seen), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 1, seen, seen), Replace::WaitTurn(ROLL_STEP_MS));
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 1, seen, seen + ROLL_STEP_MS - 1), Replace::WaitTurn(1));
        assert_eq!(decide(&spec(), &w, State::Starting, true, None, 1, seen, seen + ROLL_STEP_MS), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 2, seen, seen + ROLL_STEP_MS), Replace::WaitTurn(ROLL_STEP_MS));
        // a large index waits at most ROLL_TURNS_MAX steps; no overflow near the clock's end
        let last = seen + u64::from(ROLL_TURNS_MAX) * ROLL_STEP_MS;
        assert_eq!(decide(&spec(), &w, State::Running, true, None, u32::MAX, seen, last), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, None, u32::MAX, u64::MAX - 1, u64::MAX - 1), Replace::WaitTurn(1));
    }

    #[test]
    fn a_replacement_that_needs_more_memory_than_is_free_keeps_the_old_instance() {
        let mut w = spec();
        w.memory_mib = 512;
        // 64 + 4 come back: 512 + 4 fits in 448 free + 68, not in 447 + 68
        assert_eq!(decide(&spec(), &w, State::Running, true, Some(448), 0, 0, 0), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, Some(447), 0, 0, 0), Replace::NoRoom { need_mib: 516, free_mib: 515 });
        // also when it is not running (it would not be created again)
        assert_eq!(decide(&spec(), &w, State::Exited, true, Some(0), 0, 0, 0), Replace::NoRoom { need_mib: 516, free_mib: 68 });
        // less memory always fits; unknown room is taken as enough
        assert_eq!(decide(&w, &spec(), State::Running, true, Some(0), 0, 0, 0), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 0, 0, 0), Replace::Stop);
    }

    #[test]
    fn a_stopped_or_unstarted_outdated_replica_is_destroyed_at_once_and_a_stopping_one_waited_for() {
        let mut w = spec();
        w.memory_mib = 256;
        for st in [State::Created, State::Exited, State::Failed] {
            assert_eq!(decide(&spec(), &w, st, true, None, 7, 0, 0), Replace::Destroy);
        }
        assert_eq!(decide(&spec(), &w, State::Stopping, true, None, 0, 0, u64::MAX), Replace::Stopping);
    }
}
