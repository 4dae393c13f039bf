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
//! **Health-gated.** A running replica `r` is replaced only once every lower replica of the
//! workload runs the new spec and has for [`crate::restart::HEALTHY_MS`] without a restart,
//! as the node the desired state assigns it to reports (`orchd` sends which of its replicas
//! are healthy to every member each second): replica 0 first, then 1, and so on, one down at
//! a time. A new spec that does not start (or keeps failing) takes down replica 0 only; the
//! others keep the old spec and serve until the spec changes again. One that is not running
//! (created, starting, exited, failed: it serves nothing) is replaced at once.

use crate::admission::Admission;
use crate::spec::WorkloadSpec;
use crate::status::State;
use alloc::vec::Vec;

/// What to do with one replica that `workd` has ([`decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Its spec is the desired one.
    Keep,
    /// Outdated, and the desired image is not in this node's store yet: the old instance runs
    /// on while the image is fetched.
    WaitForImage,
    /// Outdated and running, and this lower replica does not run the new spec healthily yet
    /// (the first such): the old instance runs on.
    WaitFor(u32),
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
    ]
    .into_iter()
    .filter_map(|(differs, field)| differs.then_some(field))
    .collect()
}

/// What to do with a replica that `workd` created from `have` and now reports in `state`,
/// when the desired state gives it `want`: `image_here` says whether `want`'s image is in this
/// node's store, `free_mib` what `workd`'s admission has free now (`None`: unknown, taken as
/// enough). `unhealthy_below` is asked only for a running replica that is to be replaced: the
/// first lower replica of its workload that does not run its new spec healthily, if any.
pub fn decide(have: &WorkloadSpec, want: &WorkloadSpec, state: State, image_here: bool, free_mib: Option<u64>, unhealthy_below: &mut dyn FnMut() -> Option<u32>) -> Replace {
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
        State::Created | State::Exited | State::Failed => Replace::Destroy,
        // booting, or waiting to be restarted after a failure: serving nothing yet
        State::Starting => Replace::Stop,
        State::Running => match unhealthy_below() {
            Some(j) => Replace::WaitFor(j),
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
            assert_eq!(decide(&spec(), &spec(), st, false, None, &mut || Some(0)), Replace::Keep);
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
            assert_eq!(decide(&spec(), &w, st, false, None, &mut healthy()), Replace::WaitForImage);
        }
        assert_eq!(decide(&spec(), &w, State::Running, true, None, &mut healthy()), Replace::Stop);
    }

    /// The gate as `orchd` answers it: every lower replica healthy on the new spec.
    fn healthy() -> impl FnMut() -> Option<u32> {
        || None
    }

    #[test]
    fn a_running_replica_waits_for_the_lower_ones_and_one_serving_nothing_does_not() {
        let mut w = spec();
        w.args = Some(vec![String::from("hello"), String::from("v2")]);
        // replica 0 not healthy on the new spec yet: a running replica waits for it
        let mut asked = 0;
        let mut gate = || {
            asked += 1;
            Some(0)
        };
        assert_eq!(decide(&spec(), &w, State::Running, true, None, &mut gate), Replace::WaitFor(0));
        assert_eq!(decide(&spec(), &w, State::Running, true, None, &mut || Some(3)), Replace::WaitFor(3));
        assert_eq!(decide(&spec(), &w, State::Running, true, None, &mut healthy()), Replace::Stop);
        // one that serves nothing (booting, or waiting to be restarted) is not held back
        assert_eq!(decide(&spec(), &w, State::Starting, true, None, &mut gate), Replace::Stop);
        for st in [State::Created, State::Exited, State::Failed] {
            assert_eq!(decide(&spec(), &w, st, true, None, &mut gate), Replace::Destroy);
        }
        assert_eq!(decide(&spec(), &w, State::Stopping, true, None, &mut gate), Replace::Stopping);
        // the gate is asked only for a running, outdated replica whose image is here
        assert_eq!(decide(&spec(), &spec(), State::Running, true, None, &mut gate), Replace::Keep);
        assert_eq!(decide(&spec(), &w, State::Running, false, None, &mut gate), Replace::WaitForImage);
        assert_eq!(asked, 1);
    }

    #[test]
    fn a_replacement_that_needs_more_memory_than_is_free_keeps_the_old_instance() {
        let mut w = spec();
        w.memory_mib = 512;
        // 64 + 4 come back: 512 + 4 fits in 448 free + 68, not in 447 + 68
        assert_eq!(decide(&spec(), &w, State::Running, true, Some(448), &mut healthy()), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, Some(447), &mut healthy()), Replace::NoRoom { need_mib: 516, free_mib: 515 });
        // also when it is not running (it would not be created again)
        assert_eq!(decide(&spec(), &w, State::Exited, true, Some(0), &mut healthy()), Replace::NoRoom { need_mib: 516, free_mib: 68 });
        // less memory always fits; unknown room is taken as enough
        assert_eq!(decide(&w, &spec(), State::Running, true, Some(0), &mut healthy()), Replace::Stop);
        assert_eq!(decide(&spec(), &w, State::Running, true, None, &mut healthy()), Replace::Stop);
    }

    #[test]
    fn a_stopped_or_unstarted_outdated_replica_is_destroyed_at_once_and_a_stopping_one_waited_for() {
        let mut w = spec();
        w.memory_mib = 256;
        for st in [State::Created, State::Exited, State::Failed] {
            assert_eq!(decide(&spec(), &w, st, true, None, &mut healthy()), Replace::Destroy);
        }
        assert_eq!(decide(&spec(), &w, State::Stopping, true, None, &mut healthy()), Replace::Stopping);
    }
}
