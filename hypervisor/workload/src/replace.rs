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
//! **Health-gated, one down at a time.** A replica is *healthy* once `workd` has listed it
//! running for [`crate::restart::HEALTHY_MS`] (10 s) without a restart; each node tells every
//! other which of its replicas are healthy, and on which spec, every second. An outdated
//! replica `r` is taken down for the update only when
//! - every lower replica `0..r` of the workload runs the *new* spec healthily, and
//! - every higher replica runs healthily, on any spec (one already down is not joined by a
//!   second),
//!
//! as the node the desired state assigns each to reports ([`Hold`] otherwise). So replica 0
//! goes first, then 1 once 0 runs the new spec, and so on. A new spec that does not start, or
//! keeps failing, takes down replica 0 only: the others keep the old spec and serve until the
//! spec changes again. A replica that has not been healthy for [`DOWN_MS`] (crash-looping,
//! or stuck booting) serves nothing and is replaced at once, whatever the others do: that is
//! how an update mends a workload whose old spec fails, and why the rule cannot deadlock
//! among placed replicas (each waits only for replicas that are healthy, becoming healthy,
//! or replaced at once). It stalls while a replica is placed nowhere ([`Hold::Unplaced`]).

use crate::admission::Admission;
use crate::spec::WorkloadSpec;
use crate::status::State;
use alloc::vec::Vec;

/// An outdated replica that has not been healthy for this long (ms) is replaced without
/// waiting for the others: three times [`crate::restart::HEALTHY_MS`], so that an old
/// instance that crashed once, was restarted (its backoff, a boot) and runs again (healthy
/// 10 s later) is not mistaken for one that keeps failing.
pub const DOWN_MS: u64 = 3 * crate::restart::HEALTHY_MS;

/// Why a running outdated replica is not replaced yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// This lower replica does not run its new spec healthily yet.
    Lower(u32),
    /// This higher replica is not healthy (down, restarting, or not reported by its node).
    Higher(u32),
    /// This replica (lower or higher) is placed on no node: the roll waits until the
    /// scheduler places it and it runs (a count raised past the eligible nodes, a drain
    /// that left it nowhere to go, or its node died and it is not placed again yet).
    Unplaced(u32),
}

/// What to do with one replica that `workd` has ([`decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Its spec is the desired one.
    Keep,
    /// Outdated, and the desired image is not in this node's store yet: the old instance runs
    /// on while the image is fetched.
    WaitForImage,
    /// Outdated, and taking it down now would break the roll's rule ([`Hold`], the first
    /// replica in the way): the old instance runs on.
    WaitFor(Hold),
    /// Outdated, and nothing it serves is lost by stopping it now: stop it.
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
        (have.health != want.health, "health"),
    ]
    .into_iter()
    .filter_map(|(differs, field)| differs.then_some(field))
    .collect()
}

/// What to do with a replica that `workd` created from `have` and now reports in `state`,
/// when the desired state gives it `want`: `image_here` says whether `want`'s image is in this
/// node's store, `free_mib` what `workd`'s admission has free now (`None`: unknown, taken as
/// enough), `down_ms` how long it has not been healthy (0: healthy). `hold` is asked only for
/// a starting or running replica that is to be replaced and has not been down for
/// [`DOWN_MS`]: the first other replica in the way of taking it down, if any.
#[allow(clippy::too_many_arguments)]
pub fn decide(have: &WorkloadSpec, want: &WorkloadSpec, state: State, image_here: bool, free_mib: Option<u64>, down_ms: u64, hold: &mut dyn FnMut() -> Option<Hold>) -> Replace {
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
        State::Stopping => Replace::Stopping,
        // ended for good (its restart policy gave up) or never started: serving nothing
        State::Created | State::Exited | State::Failed => Replace::Destroy,
        // not healthy for long: crash-looping or stuck booting, serving nothing
        State::Starting | State::Running if down_ms >= DOWN_MS => Replace::Stop,
        // running, or restarting after a failure it may recover from
        State::Starting | State::Running => match hold() {
            Some(h) => Replace::WaitFor(h),
            None => Replace::Stop,
        },
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
            health: None,
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
            assert_eq!(decide(&spec(), &spec(), st, false, None, 0, &mut || Some(Hold::Lower(0))), Replace::Keep);
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
            assert_eq!(decide(&spec(), &w, st, false, None, 0, &mut healthy()), Replace::WaitForImage);
        }
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 0, &mut healthy()), Replace::Stop);
    }

    /// The gate as `orchd` answers it when nothing is in the way.
    fn healthy() -> impl FnMut() -> Option<Hold> {
        || None
    }

    #[test]
    fn an_outdated_replica_waits_for_the_others_unless_it_has_been_down_long() {
        let mut w = spec();
        w.args = Some(vec![String::from("hello"), String::from("v2")]);
        let mut asked = 0;
        let mut gate = || {
            asked += 1;
            Some(Hold::Lower(0))
        };
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 0, &mut gate), Replace::WaitFor(Hold::Lower(0)));
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 0, &mut || Some(Hold::Higher(3))), Replace::WaitFor(Hold::Higher(3)));
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 0, &mut healthy()), Replace::Stop);
        // restarting after a failure, down a while but less than DOWN_MS: it may come back
        assert_eq!(decide(&spec(), &w, State::Starting, true, None, DOWN_MS - 1, &mut gate), Replace::WaitFor(Hold::Lower(0)));
        // not healthy for DOWN_MS (crash-looping, or stuck booting): replaced at once
        assert_eq!(decide(&spec(), &w, State::Starting, true, None, DOWN_MS, &mut gate), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, None, DOWN_MS, &mut gate), Replace::Stop);
        // ended for good, never started, or stopping: not held either
        for st in [State::Created, State::Exited, State::Failed] {
            assert_eq!(decide(&spec(), &w, st, true, None, 0, &mut gate), Replace::Destroy);
        }
        assert_eq!(decide(&spec(), &w, State::Stopping, true, None, 0, &mut gate), Replace::Stopping);
        // the gate is asked only for an outdated replica whose image is here
        assert_eq!(decide(&spec(), &spec(), State::Running, true, None, 0, &mut gate), Replace::Keep);
        assert_eq!(decide(&spec(), &w, State::Running, false, None, 0, &mut gate), Replace::WaitForImage);
        assert_eq!(asked, 2);
    }

    #[test]
    fn a_replacement_that_needs_more_memory_than_is_free_keeps_the_old_instance() {
        let mut w = spec();
        w.memory_mib = 512;
        // 64 + 4 come back: 512 + 4 fits in 448 free + 68, not in 447 + 68
        assert_eq!(decide(&spec(), &w, State::Running, true, Some(448), 0, &mut healthy()), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, Some(447), 0, &mut healthy()), Replace::NoRoom { need_mib: 516, free_mib: 515 });
        // also when it is not running (it would not be created again)
        assert_eq!(decide(&spec(), &w, State::Exited, true, Some(0), 0, &mut healthy()), Replace::NoRoom { need_mib: 516, free_mib: 68 });
        // less memory always fits; unknown room is taken as enough
        assert_eq!(decide(&w, &spec(), State::Running, true, Some(0), 0, &mut healthy()), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, None, 0, &mut healthy()), Replace::Stop);
    }

    #[test]
    fn a_stopped_or_unstarted_outdated_replica_is_destroyed_at_once_and_a_stopping_one_waited_for() {
        let mut w = spec();
        w.memory_mib = 256;
        for st in [State::Created, State::Exited, State::Failed] {
            assert_eq!(decide(&spec(), &w, st, true, None, 0, &mut healthy()), Replace::Destroy);
        }
        assert_eq!(decide(&spec(), &w, State::Stopping, true, None, 0, &mut healthy()), Replace::Stopping);
    }
}
