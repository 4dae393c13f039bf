//! What `orchd` makes `workd` do for the cluster's replicas, one turn at a time
//! ([`Replicas::turn`]; docs/orchestration.md "On nodes: `orchd`" and "A workload's spec
//! changes"). `orchd` gives each turn `workd`'s list, the replicas the desired state assigns
//! here (as `workd` specs, named `cl-NAME-R`) and the images in the store; this decides and
//! calls `workd` through [`Workd`], so that the whole flow runs on the host against a fake.
//!
//! Per turn:
//! - a cluster replica `workd` has that is not assigned here is stopped at once (grace 0),
//!   then destroyed once it has ended;
//! - an assigned replica `workd` lacks is created and started once its image is in the store;
//!   until then it *waits* ([`Replicas::wanted_image`] names the image the longest-waiting one
//!   needs, which `apid` fetches from another node);
//! - an assigned replica `workd` has whose spec is not the desired one is replaced as
//!   [`crate::replace::decide`] says (one at a time, as the other replicas' nodes report them
//!   healthy: [`Peers`]);
//! - the replicas that have run for [`HEALTHY_MS`] without a restart (and whose health check,
//!   if their spec has one, passed in this run: [`Summary::health`]) are noted
//!   ([`Replicas::healthy`]: what `orchd` reports to the other nodes), and since when each
//!   other one has not been healthy.
//! - an assigned replica that `workd` says ended because it was stopped ([`Summary::stopped`]:
//!   by this service before it was assigned here again or its spec went back, by an earlier
//!   `orchd`, or by an operator's node-level stop) is started again; one that ended by itself
//!   is left to its restart policy. This is `workd`'s to remember, not this service's: a
//!   restarted `orchd` starts it just the same.

use crate::replace::{self, Hold, Replace};
use crate::restart::HEALTHY_MS;
use crate::spec::WorkloadSpec;
use crate::status::{Health, State, Summary, WorkloadId};
use crate::Digest;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;

/// `workd`'s requests as this logic makes them. `None`: no answer (the call failed).
pub trait Workd {
    /// `Request::Spec(Id(id))`.
    fn spec(&mut self, id: WorkloadId) -> Option<WorkloadSpec>;
    /// What admission has free (`Request::Node`: capacity less committed), in MiB.
    fn free_mib(&mut self) -> Option<u64>;
    /// `Request::Stop`; `grace_ms` as there. Whether it was done.
    fn stop(&mut self, id: WorkloadId, grace_ms: Option<u32>) -> Option<bool>;
    fn destroy(&mut self, id: WorkloadId) -> Option<bool>;
    fn start(&mut self, id: WorkloadId) -> Option<bool>;
    /// `Request::Create`, then `Request::Start` when it was created: `Err` is the create's
    /// answer (for the log), `Ok` whether the start was done.
    fn create_and_start(&mut self, spec: &WorkloadSpec) -> Result<Option<bool>, String>;
}

/// What the nodes report of a workload's replicas (`orchd`: `Orch::replica_healthy` over the
/// reports of the node the desired state assigns each replica to).
pub trait Peers {
    /// How many replicas the desired state gives `workload`.
    fn replicas(&mut self, workload: &str) -> u32;
    /// Replica `j` of `workload` runs healthily on the node the state assigns it to: on its
    /// desired spec (`new`), or on any spec.
    fn healthy(&mut self, workload: &str, j: u32, new: bool) -> bool;
    /// The desired state assigns replica `j` of `workload` to a node.
    fn placed(&mut self, workload: &str, j: u32) -> bool;
}

/// A cluster replica as this node lists it, between turns.
struct Run {
    /// Since when (ms) it runs without a restart (`None`: not running).
    running_since: Option<u64>,
    restarts: u32,
    spec: Digest,
    /// Since when (ms) it has not been healthy (`None`: healthy).
    unhealthy_since: Option<u64>,
}

/// A replica the desired state assigns to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The cluster workload's name and the replica's index (for the log).
    pub workload: String,
    pub replica: u32,
    /// As `workd` takes it: named `cl-NAME-R`, the image and the rest from the desired state.
    pub spec: WorkloadSpec,
}

/// What was learnt of a replica's spec in `workd` (asked again only when the workload's id or
/// the desired spec changes).
struct SpecCheck {
    id: WorkloadId,
    want: WorkloadSpec,
    have: WorkloadSpec,
    /// "Keeps its old spec: no room" was logged.
    no_room: bool,
}

/// The state kept between turns.
#[derive(Default)]
pub struct Replicas {
    /// Replicas assigned here whose image the store lacks: name -> (image, since when, ms).
    waiting: BTreeMap<String, (Digest, u64)>,
    specs: BTreeMap<String, SpecCheck>,
    /// Replicas `workd` refused to create, with its last answer (logged once per answer).
    create_failed: BTreeMap<String, String>,
    /// The cluster replicas `workd` listed last, by id.
    runs: BTreeMap<WorkloadId, Run>,
    /// The names of the healthy ones, with their specs, as of the last list.
    healthy: alloc::vec::Vec<(String, Digest)>,
    /// Outdated replicas held back by another replica: which (logged when it changes).
    held: BTreeMap<String, Hold>,
}

/// The memory (MiB) that the cluster replicas of `list` assigned here (`assigned`, by `workd`
/// name) hold in `workd`'s admission: each one's spec as created, plus the microVM overhead.
/// `orchd` reports admission's room plus this as the node's capacity for the cluster's
/// replicas, so a replica whose desired spec grew past what its node can give shows as the
/// node being over its capacity (`catenary_cluster::reconcile` then moves it, where another
/// node has room). A replica assigned here that `workd` has not created yet holds nothing.
pub fn held_mib(list: &[Summary], assigned: &alloc::collections::BTreeSet<String>) -> u64 {
    list.iter().filter(|s| assigned.contains(&s.name)).map(|s| u64::from(s.memory_mib) + crate::admission::VM_OVERHEAD_MIB).sum()
}

impl Replicas {
    /// The image the longest-waiting replica needs (for `apid`'s fetch).
    pub fn wanted_image(&self) -> Option<Digest> {
        self.waiting.values().min_by_key(|w| w.1).map(|w| w.0)
    }

    /// The cluster replicas that have run here for [`HEALTHY_MS`] without a restart, as of the
    /// last turn's list: each one's `workd` name and the digest of the spec it was created
    /// from (at most `crate::proto::WORKLOADS_MAX`).
    pub fn healthy(&self) -> &[(String, Digest)] {
        &self.healthy
    }

    /// One turn at `now_ms`: `list` is `workd`'s list, `want` the replicas assigned here by
    /// name, `images` the store's (`None`: unknown, so nothing is created or replaced this
    /// turn), `lease` whether this node's lease holds (for the log), `peers` what the nodes
    /// report of the replicas (asked only to take a replica down for an update). Log lines go
    /// to `log`.
    #[allow(clippy::too_many_arguments)]
    pub fn turn(&mut self, list: &[Summary], want: &BTreeMap<String, Wanted>, images: Option<&[Digest]>, lease: bool, now_ms: u64, peers: &mut dyn Peers, w: &mut dyn Workd, log: &mut dyn FnMut(String)) {
        self.note_runs(list, now_ms);
        for s in list.iter().filter(|s| crate::proto::is_cluster_replica(&s.name)) {
            if want.contains_key(&s.name) {
                continue;
            }
            if s.state.active() {
                if s.state != State::Stopping {
                    log(format!("orchd: stopping {} (not assigned here{})", s.name, if lease { "" } else { ": no lease" }));
                    let _ = w.stop(s.id, Some(0));
                    self.healthy.retain(|(n, _)| *n != s.name);
                }
            } else if w.destroy(s.id) == Some(true) {
                log(format!("orchd: destroyed {}", s.name));
            }
        }
        let Some(images) = images else { return };
        self.waiting.retain(|n, _| want.contains_key(n));
        self.specs.retain(|n, c| want.contains_key(n) && list.iter().any(|s| s.name == *n && s.id == c.id));
        self.create_failed.retain(|n, _| want.contains_key(n));
        self.held.retain(|n, _| want.contains_key(n));
        for (name, x) in want {
            self.one(name, x, list.iter().find(|s| s.name == *name), images.contains(&x.spec.image), now_ms, peers, w, log);
        }
    }

    /// Note since when each cluster replica in `list` runs without a restart (a restart between
    /// two lists, seen by its count, starts the run over) and since when it is not healthy.
    fn note_runs(&mut self, list: &[Summary], now_ms: u64) {
        let mut runs = BTreeMap::new();
        for s in list.iter().filter(|s| crate::proto::is_cluster_replica(&s.name)) {
            let before = self.runs.get(&s.id).filter(|r| r.spec == s.spec);
            let running_since = match before {
                _ if s.state != State::Running => None,
                Some(r) if r.restarts == s.restarts => r.running_since.or(Some(now_ms)),
                _ => Some(now_ms),
            };
            // and, with a health check, once the check passed in this run
            let healthy = running_since.is_some_and(|t| now_ms.saturating_sub(t) >= HEALTHY_MS) && s.health != Health::Starting;
            let unhealthy_since = if healthy { None } else { Some(before.and_then(|r| r.unhealthy_since).unwrap_or(now_ms)) };
            runs.insert(s.id, Run { running_since, restarts: s.restarts, spec: s.spec, unhealthy_since });
        }
        self.runs = runs;
        self.healthy = list.iter().filter(|s| self.runs.get(&s.id).is_some_and(|r| r.unhealthy_since.is_none())).map(|s| (s.name.clone(), s.spec)).collect();
    }

    #[allow(clippy::too_many_arguments)]
    fn one(&mut self, name: &str, x: &Wanted, existing: Option<&Summary>, image_here: bool, now_ms: u64, peers: &mut dyn Peers, w: &mut dyn Workd, log: &mut dyn FnMut(String)) {
        let image = x.spec.image;
        let replace = match existing {
            Some(s) => match self.replacement(s, x, image_here, now_ms, peers, w, log) {
                Some(d) => Some(d),
                None => return, // workd did not say what it runs: next turn
            },
            None => None,
        };
        if (existing.is_none() && !image_here) || replace == Some(Replace::WaitForImage) {
            // a spec that changed again names another image: the fetch follows it
            if self.waiting.get(name).is_none_or(|v| v.0 != image) {
                // (a console line holds about 250 bytes: the replacement's line is the short one)
                if existing.is_some() {
                    log(format!("orchd: {} ({} replica {}) runs on while image {} is fetched", name, x.workload, x.replica, image));
                } else {
                    log(format!("orchd: {} ({} replica {}) waits for image {}: not in this node's store; fetching it from a node that has it", name, x.workload, x.replica, image));
                }
                self.waiting.insert(String::from(name), (image, now_ms));
            }
            return;
        }
        match self.waiting.remove(name) {
            Some((d, since)) if d == image => {
                let what = if replace.is_some_and(|r| r != Replace::Keep) { "replacing on its turn" } else { "starting" };
                log(format!("orchd: image {} in the store after {} ms: {} {}", d, now_ms.saturating_sub(since), what, name));
            }
            Some((d, _)) => log(format!("orchd: {} no longer waits for image {}: its spec changed", name, d)),
            None => {}
        }
        match replace {
            Some(Replace::WaitFor(h)) => {
                if self.held.insert(String::from(name), h) != Some(h) {
                    let until = match h {
                        Hold::Lower(j) => format!("replica {j} runs the new spec healthily ({} s running)", HEALTHY_MS / 1000),
                        Hold::Higher(j) => format!("replica {j} is healthy again (down, restarting, or not reported by its node)"),
                        Hold::Unplaced(j) => format!("replica {j} is placed on a node and runs (the scheduler has placed it nowhere)"),
                    };
                    log(format!("orchd: {} ({} replica {}) runs on until {}", name, x.workload, x.replica, until));
                }
            }
            _ => {
                self.held.remove(name);
            }
        }
        match (existing, replace) {
            (Some(s), Some(Replace::Stop)) => {
                let why = self.specs.get(name).map_or(String::new(), |c| replace::differences(&c.have, &c.want).join(", "));
                let stopped = w.stop(s.id, None);
                log(format!("orchd: replacing {} ({} replica {}): its spec changed ({}); stopping it: {:?}", name, x.workload, x.replica, why, stopped));
                // no longer healthy from now: the report after this turn says so at once
                self.healthy.retain(|(n, _)| n != name);
                // should the spec go back to the one it runs before it is destroyed, it is
                // started again: workd lists it stopped
                return;
            }
            (Some(s), Some(Replace::Destroy)) => {
                let destroyed = w.destroy(s.id);
                log(format!("orchd: destroyed {} to create it from the changed spec: {:?}", name, destroyed));
                return;
            }
            (Some(_), Some(Replace::Stopping | Replace::WaitFor(_) | Replace::WaitForImage)) => return,
            _ => {}
        }
        match existing {
            Some(s) if s.state == State::Created => {
                let _ = w.start(s.id);
            }
            // stopped (unassigned here, or for a spec that went back before it was destroyed;
            // by this orchd, an earlier one or an operator) and wanted here: run it again
            Some(s) if matches!(s.state, State::Exited | State::Failed) && s.stopped => {
                let started = w.start(s.id);
                log(format!("orchd: started {} again (it was stopped; {} replica {}): {:?}", name, x.workload, x.replica, started));
            }
            Some(_) => {}
            None => match w.create_and_start(&x.spec) {
                Ok(started) => {
                    self.create_failed.remove(name);
                    log(format!("orchd: started {} ({} replica {}): {:?}", name, x.workload, x.replica, started));
                }
                // tried again every turn: logged when the answer changes
                Err(why) => {
                    if self.create_failed.get(name) != Some(&why) {
                        log(format!("orchd: cannot create {}: {}", name, why));
                        self.create_failed.insert(String::from(name), why);
                    }
                }
            },
        }
    }

    /// What to do with replica `x`, which `workd` lists as `s`; `None` without `workd`'s
    /// answer.
    #[allow(clippy::too_many_arguments)]
    fn replacement(&mut self, s: &Summary, x: &Wanted, image_here: bool, now_ms: u64, peers: &mut dyn Peers, w: &mut dyn Workd, log: &mut dyn FnMut(String)) -> Option<Replace> {
        let want = &x.spec;
        let known = self.specs.get(&s.name).is_some_and(|c| c.id == s.id && c.want == *want);
        if !known {
            let have = w.spec(s.id)?;
            let differs = replace::differences(&have, want);
            if !differs.is_empty() {
                log(format!("orchd: {} runs an outdated spec ({} differ from the desired state's)", s.name, differs.join(", ")));
            }
            self.specs.insert(s.name.clone(), SpecCheck { id: s.id, want: want.clone(), have, no_room: false });
        }
        let c = self.specs.get_mut(&s.name)?;
        // admission's free room, asked only when the new spec needs more memory than the old
        let free = if c.want.memory_mib > c.have.memory_mib { w.free_mib() } else { None };
        let down_ms = self.runs.get(&s.id).and_then(|r| r.unhealthy_since).map_or(0, |t| now_ms.saturating_sub(t));
        // the roll's rule (replace.rs): the lower replicas healthy on the new spec, the higher
        // ones healthy on any
        let mut hold = || {
            let (wl, r) = (x.workload.as_str(), x.replica);
            let h = (0..r).find(|j| !peers.healthy(wl, *j, true)).map(Hold::Lower).or_else(|| (r.saturating_add(1)..peers.replicas(wl)).find(|j| !peers.healthy(wl, *j, false)).map(Hold::Higher));
            match h {
                Some(Hold::Lower(j) | Hold::Higher(j)) if !peers.placed(wl, j) => Some(Hold::Unplaced(j)),
                h => h,
            }
        };
        let d = replace::decide(&c.have, &c.want, s.state, image_here, free, down_ms, &mut hold);
        if let Replace::NoRoom { need_mib, free_mib } = d {
            if !c.no_room {
                c.no_room = true;
                log(format!("orchd: {} keeps its old spec: the new one needs {} MiB, {} MiB free here with the old one's back", s.name, need_mib, free_mib));
            }
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RestartPolicy;
    use alloc::collections::BTreeSet;
    use alloc::vec;
    use alloc::vec::Vec;

    /// A `workd` that holds workloads (id, spec, state) and records each call.
    #[derive(Default)]
    struct Fake {
        w: Vec<(WorkloadId, WorkloadSpec, State)>,
        next: WorkloadId,
        calls: Vec<String>,
        free: u64,
        /// `Spec` goes unanswered.
        mute: bool,
        /// Restarts by id (0 when absent).
        restarts: BTreeMap<WorkloadId, u32>,
        /// Stopped by a request (workd's `stopped`), by id.
        stopped: BTreeSet<WorkloadId>,
        /// What each one's health check says, by id (`Unchecked` when absent).
        health: BTreeMap<WorkloadId, Health>,
    }

    impl Fake {
        fn list(&self) -> Vec<Summary> {
            self.w.iter().map(|(id, s, st)| Summary { health: self.health.get(id).copied().unwrap_or(Health::Unchecked), id: *id, name: s.name.clone(), state: *st, exit: None, restarts: self.restarts.get(id).copied().unwrap_or(0), memory_mib: s.memory_mib, address: None, spec: s.digest(), stopped: self.stopped.contains(id) }).collect()
        }
        fn set(&mut self, name: &str, st: State) {
            self.w.iter_mut().filter(|x| x.1.name == name).for_each(|x| x.2 = st);
        }
        fn spec_of(&self, name: &str) -> Option<&WorkloadSpec> {
            self.w.iter().find(|x| x.1.name == name).map(|x| &x.1)
        }
    }

    impl Workd for Fake {
        fn spec(&mut self, id: WorkloadId) -> Option<WorkloadSpec> {
            self.calls.push(format!("spec {id}"));
            if self.mute {
                return None;
            }
            self.w.iter().find(|x| x.0 == id).map(|x| x.1.clone())
        }
        fn free_mib(&mut self) -> Option<u64> {
            self.calls.push(String::from("free"));
            Some(self.free)
        }
        fn stop(&mut self, id: WorkloadId, grace_ms: Option<u32>) -> Option<bool> {
            self.calls.push(format!("stop {id} {grace_ms:?}"));
            self.w.iter_mut().filter(|x| x.0 == id).for_each(|x| x.2 = State::Stopping);
            self.stopped.insert(id);
            Some(true)
        }
        fn destroy(&mut self, id: WorkloadId) -> Option<bool> {
            self.calls.push(format!("destroy {id}"));
            self.w.retain(|x| x.0 != id);
            Some(true)
        }
        fn start(&mut self, id: WorkloadId) -> Option<bool> {
            self.calls.push(format!("start {id}"));
            self.w.iter_mut().filter(|x| x.0 == id).for_each(|x| x.2 = State::Running);
            self.stopped.remove(&id);
            Some(true)
        }
        fn create_and_start(&mut self, spec: &WorkloadSpec) -> Result<Option<bool>, String> {
            if u64::from(spec.memory_mib) > self.free {
                return Err(String::from("NoMemory"));
            }
            self.next += 1;
            self.calls.push(format!("create {} {}", self.next, spec.name));
            self.w.push((self.next, spec.clone(), State::Running));
            Ok(Some(true))
        }
    }

    fn spec(name: &str, image: u8, args: &str) -> WorkloadSpec {
        WorkloadSpec { health: None, name: name.into(), image: Digest([image; 32]), vcpus: 1, memory_mib: 64, env: vec![], args: Some(vec![args.into()]), restart: RestartPolicy::Always, net: true }
    }

    fn want(specs: &[WorkloadSpec]) -> BTreeMap<String, Wanted> {
        specs.iter().map(|s| (s.name.clone(), Wanted { workload: "web".into(), replica: s.name.rsplit('-').next().unwrap().parse().unwrap(), spec: s.clone() })).collect()
    }

    /// The nodes' reports as a test gives them: replicas here are healthy as this node's last
    /// turn found them; `new`/`any` list replicas elsewhere healthy on their desired spec or on
    /// any; `count` replicas in all.
    struct Reports<'a> {
        here: Vec<(String, Digest)>,
        want: &'a BTreeMap<String, Wanted>,
        new: &'a [u32],
        any: &'a [u32],
        count: u32,
        /// Replicas placed nowhere.
        unplaced: &'a [u32],
    }

    impl Peers for Reports<'_> {
        fn replicas(&mut self, _: &str) -> u32 {
            self.count
        }
        fn placed(&mut self, _: &str, j: u32) -> bool {
            !self.unplaced.contains(&j)
        }
        fn healthy(&mut self, wl: &str, j: u32, new: bool) -> bool {
            let name = format!("cl-{wl}-{j}");
            let here = self.here.iter().any(|(n, d)| *n == name && (!new || self.want.get(&name).is_some_and(|x| x.spec.digest() == *d)));
            here || self.new.contains(&j) || (!new && self.any.contains(&j))
        }
    }

    /// One turn, every replica of `web` here; the lines logged.
    fn turn(r: &mut Replicas, f: &mut Fake, w: &BTreeMap<String, Wanted>, images: &[u8], now: u64) -> Vec<String> {
        turn_with(r, f, w, images, now, &[], &[], w.len() as u32)
    }

    /// [`turn`] with replicas elsewhere reported healthy on their desired spec (`new`) or on
    /// any (`any`), `count` replicas in all.
    #[allow(clippy::too_many_arguments)]
    fn turn_with(r: &mut Replicas, f: &mut Fake, w: &BTreeMap<String, Wanted>, images: &[u8], now: u64, new: &[u32], any: &[u32], count: u32) -> Vec<String> {
        let mut lines = Vec::new();
        let imgs: Vec<Digest> = images.iter().map(|i| Digest([*i; 32])).collect();
        let list = f.list();
        let mut peers = Reports { here: r.healthy().to_vec(), want: w, new, any, count, unplaced: &[] };
        r.turn(&list, w, Some(&imgs), true, now, &mut peers, f, &mut |l| lines.push(l));
        lines
    }

    /// v1 of `names` created at 0 and listed running from 100: healthy from `HEALTHY_T`.
    const HEALTHY_T: u64 = 100 + HEALTHY_MS;

    fn running_v1(names: &[&str]) -> (Replicas, Fake, BTreeMap<String, Wanted>) {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        let v1 = want(&names.iter().map(|n| spec(n, 1, "v1")).collect::<Vec<_>>());
        turn(&mut r, &mut f, &v1, &[1], 0);
        turn(&mut r, &mut f, &v1, &[1], 100);
        turn(&mut r, &mut f, &v1, &[1], HEALTHY_T);
        assert_eq!(r.healthy().len(), names.len());
        f.calls.clear();
        (r, f, v1)
    }

    /// A replica whose spec has a health check counts as healthy only once the check passed
    /// in this run, however long it has been running.
    #[test]
    fn a_checked_replica_is_healthy_only_once_its_check_passed() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        let v1 = want(&[spec("cl-web-0", 1, "v1")]);
        turn(&mut r, &mut f, &v1, &[1], 0);
        f.health.insert(1, Health::Starting);
        turn(&mut r, &mut f, &v1, &[1], 100);
        turn(&mut r, &mut f, &v1, &[1], HEALTHY_T);
        turn(&mut r, &mut f, &v1, &[1], HEALTHY_T + 60_000);
        assert!(r.healthy().is_empty(), "running for a minute, its check not passed: not healthy");
        f.health.insert(1, Health::Healthy);
        turn(&mut r, &mut f, &v1, &[1], HEALTHY_T + 61_000);
        assert_eq!(r.healthy().len(), 1, "the check passed: healthy");
        // a check that passes does not shorten the HEALTHY_MS run
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        turn(&mut r, &mut f, &v1, &[1], 0);
        f.health.insert(1, Health::Healthy);
        turn(&mut r, &mut f, &v1, &[1], 100);
        turn(&mut r, &mut f, &v1, &[1], HEALTHY_T - 1);
        assert!(r.healthy().is_empty());
        turn(&mut r, &mut f, &v1, &[1], HEALTHY_T);
        assert_eq!(r.healthy().len(), 1);
    }

    #[test]
    fn an_update_replaces_replica_1_only_once_replica_0_ran_the_new_spec_healthily() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        let v1 = want(&[spec("cl-web-0", 1, "v1"), spec("cl-web-1", 1, "v1")]);
        turn(&mut r, &mut f, &v1, &[1], 0);
        assert_eq!(f.calls, ["create 1 cl-web-0", "create 2 cl-web-1"]);
        f.calls.clear();
        turn(&mut r, &mut f, &v1, &[1], 100);
        assert!(f.calls.iter().all(|c| c.starts_with("spec ")), "the same spec: only asked, once each: {:?}", f.calls);
        f.calls.clear();
        turn(&mut r, &mut f, &v1, &[1], 200);
        assert!(f.calls.is_empty(), "known specs are not asked again: {:?}", f.calls);
        let v2 = want(&[spec("cl-web-0", 1, "v2"), spec("cl-web-1", 1, "v2")]);
        // v1 not healthy yet (listed running at 100): replica 0 waits for replica 1
        let l = turn(&mut r, &mut f, &v2, &[1], 1000);
        assert_eq!(f.calls, ["spec 1", "spec 2"], "nothing stopped while replica 1 is not healthy");
        assert!(l.iter().any(|x| x.contains("cl-web-0 (web replica 0) runs on until replica 1 is healthy again")), "{l:?}");
        assert!(l.iter().any(|x| x.contains("cl-web-1 (web replica 1) runs on until replica 0 runs the new spec healthily (10 s running)")), "{l:?}");
        f.calls.clear();
        // healthy from HEALTHY_T, as this turn finds; reported, it lets replica 0 go next turn
        turn(&mut r, &mut f, &v2, &[1], HEALTHY_T);
        assert!(f.calls.is_empty(), "{:?}", f.calls);
        let t = HEALTHY_T + 50;
        let l = turn(&mut r, &mut f, &v2, &[1], t);
        assert_eq!(f.calls, ["stop 1 None"], "replica 0 once replica 1 is healthy; replica 1 waits for it");
        assert_eq!(l.len(), 1, "replica 1's wait is not logged again: {l:?}");
        assert!(l[0].contains("replacing cl-web-0 (web replica 0): its spec changed (args)"), "{l:?}");
        f.calls.clear();
        let l = turn(&mut r, &mut f, &v2, &[1], t + 100);
        assert!(f.calls.is_empty() && l.is_empty(), "stopping, waiting (logged once): nothing to do: {:?} {l:?}", f.calls);
        f.set("cl-web-0", State::Exited);
        turn(&mut r, &mut f, &v2, &[1], t + 200);
        assert_eq!(f.calls, ["destroy 1"]);
        f.calls.clear();
        turn(&mut r, &mut f, &v2, &[1], t + 300);
        assert_eq!(f.calls, ["create 3 cl-web-0"]);
        assert_eq!(f.spec_of("cl-web-0").unwrap().args, Some(vec![String::from("v2")]));
        // the new instance is first listed running at t + 400: healthy from t + 400 + HEALTHY_MS
        f.calls.clear();
        for at in [t + 400, t + 400 + HEALTHY_MS - 1] {
            turn(&mut r, &mut f, &v2, &[1], at);
        }
        assert_eq!(f.calls, ["spec 3"], "replica 1 not before replica 0 ran v2 for HEALTHY_MS");
        assert_eq!(r.healthy(), [(String::from("cl-web-1"), f.w[0].1.digest())], "only the old replica 1 is healthy");
        f.calls.clear();
        turn(&mut r, &mut f, &v2, &[1], t + 400 + HEALTHY_MS);
        assert!(f.calls.is_empty(), "noted healthy this turn, reported after it: {:?}", f.calls);
        turn(&mut r, &mut f, &v2, &[1], t + 450 + HEALTHY_MS);
        assert_eq!(f.calls, ["stop 2 None"]);
        assert!(r.healthy().iter().all(|(n, _)| n != "cl-web-1"), "a replica stopped for the update is not reported healthy: {:?}", r.healthy());
    }

    #[test]
    fn a_new_spec_that_keeps_failing_leaves_the_other_replicas_on_the_old_one() {
        let (mut r, mut f, _) = running_v1(&["cl-web-0", "cl-web-1"]);
        let bad = want(&[spec("cl-web-0", 1, "bad"), spec("cl-web-1", 1, "bad")]);
        let t = HEALTHY_T;
        turn(&mut r, &mut f, &bad, &[1], t + 100);
        f.set("cl-web-0", State::Exited);
        turn(&mut r, &mut f, &bad, &[1], t + 200);
        turn(&mut r, &mut f, &bad, &[1], t + 300);
        assert_eq!(f.spec_of("cl-web-0").unwrap().args, Some(vec![String::from("bad")]));
        // the new instance runs a moment, fails, is restarted by its policy, again and again
        f.calls.clear();
        let mut t = t + 400;
        for run in 1..=5u32 {
            for st in [State::Running, State::Starting] {
                f.set("cl-web-0", st);
                for _ in 0..10 {
                    turn(&mut r, &mut f, &bad, &[1], t);
                    t += HEALTHY_MS / 20;
                }
            }
            f.restarts.insert(3, run);
        }
        assert!(!f.calls.iter().any(|c| c.contains(" 2")), "replica 1 keeps the old spec: {:?}", f.calls);
        assert_eq!(f.spec_of("cl-web-1").unwrap().args, Some(vec![String::from("v1")]));
        // replica 1's old instance fails once meanwhile (down 5 s: backoff and boot) and runs
        // again, healthy 10 s later: not switched to the failing spec (never down DOWN_MS)
        f.set("cl-web-1", State::Starting);
        f.restarts.insert(2, 1);
        for _ in 0..5 {
            turn(&mut r, &mut f, &bad, &[1], t);
            t += 1_000;
        }
        f.set("cl-web-1", State::Running);
        for _ in 0..=(HEALTHY_MS / 1_000 + 1) {
            turn(&mut r, &mut f, &bad, &[1], t);
            t += 1_000;
        }
        assert!(r.healthy().iter().any(|(n, _)| n == "cl-web-1"), "healthy again");
        assert!(!f.calls.iter().any(|c| c.contains(" 2")), "a restart of the held replica is not taken as its end: {:?}", f.calls);
        // a restart between two lists starts the run over: still running, another restart
        // count, it is healthy only HEALTHY_MS after the list that showed the new count
        f.set("cl-web-0", State::Running);
        turn(&mut r, &mut f, &bad, &[1], t);
        f.restarts.insert(3, 9);
        turn(&mut r, &mut f, &bad, &[1], t + HEALTHY_MS / 2);
        turn(&mut r, &mut f, &bad, &[1], t + HEALTHY_MS);
        assert!(!f.calls.iter().any(|c| c.contains(" 2")), "{:?}", f.calls);
        turn(&mut r, &mut f, &bad, &[1], t + HEALTHY_MS / 2 + HEALTHY_MS);
        turn(&mut r, &mut f, &bad, &[1], t + HEALTHY_MS / 2 + HEALTHY_MS + 50);
        assert_eq!(f.calls.last().map(String::as_str), Some("stop 2 None"), "replica 0 ran it for HEALTHY_MS: replica 1's turn");
    }

    #[test]
    fn a_lower_replica_elsewhere_is_waited_for_and_one_down_long_is_replaced_at_once() {
        // replicas 1 and 2 here; replica 0 elsewhere, healthy on v1
        let (mut r, mut f, _) = running_v1(&["cl-web-1", "cl-web-2"]);
        let v2 = want(&[spec("cl-web-1", 1, "v2"), spec("cl-web-2", 1, "v2")]);
        let t = HEALTHY_T;
        let l = turn_with(&mut r, &mut f, &v2, &[1], t + 100, &[], &[0], 3);
        assert_eq!(f.calls, ["spec 1", "spec 2"], "both wait for replica 0");
        assert!(l.iter().any(|x| x.contains("cl-web-2 (web replica 2) runs on until replica 0 runs the new spec")), "{l:?}");
        // replica 0's node reports it healthy on v2: replica 1's turn; 2 waits for 1 now
        f.calls.clear();
        let l = turn_with(&mut r, &mut f, &v2, &[1], t + 200, &[0], &[], 3);
        assert_eq!(f.calls, ["stop 1 None"]);
        assert!(l.iter().any(|x| x.contains("cl-web-2 (web replica 2) runs on until replica 1 runs the new spec")), "{l:?}");
        // replica 2's old instance fails and keeps failing: held while down less than
        // DOWN_MS, then replaced at once, whatever replica 1 does
        f.set("cl-web-2", State::Starting);
        f.restarts.insert(2, 1);
        f.calls.clear();
        turn_with(&mut r, &mut f, &v2, &[1], t + 300, &[0], &[], 3);
        turn_with(&mut r, &mut f, &v2, &[1], t + 300 + replace::DOWN_MS - 1, &[0], &[], 3);
        assert!(f.calls.is_empty(), "{:?}", f.calls);
        turn_with(&mut r, &mut f, &v2, &[1], t + 300 + replace::DOWN_MS, &[0], &[], 3);
        assert_eq!(f.calls, ["stop 2 None"]);
    }

    #[test]
    fn a_higher_replica_elsewhere_must_be_healthy_and_one_placed_nowhere_is_named() {
        // replica 0 here; replica 1 on another node
        let (mut r, mut f, _) = running_v1(&["cl-web-0"]);
        let v2 = want(&[spec("cl-web-0", 1, "v2")]);
        let t = HEALTHY_T;
        let l = turn_with(&mut r, &mut f, &v2, &[1], t + 100, &[], &[], 2);
        assert_eq!(f.calls, ["spec 1"], "replica 1 not reported: replica 0 waits");
        assert!(l.iter().any(|x| x.contains("cl-web-0 (web replica 0) runs on until replica 1 is healthy again")), "{l:?}");
        // placed nowhere (say the count was raised past the eligible nodes): said so
        let mut lines = Vec::new();
        let list = f.list();
        let mut peers = Reports { here: r.healthy().to_vec(), want: &v2, new: &[], any: &[], count: 2, unplaced: &[1] };
        r.turn(&list, &v2, Some(&[Digest([1; 32])]), true, t + 200, &mut peers, &mut f, &mut |x| lines.push(x));
        assert!(lines.iter().any(|x| x.contains("runs on until replica 1 is placed on a node and runs")), "{lines:?}");
        // replica 1 reported healthy on its old spec by its node: replica 0 goes
        f.calls.clear();
        turn_with(&mut r, &mut f, &v2, &[1], t + 300, &[], &[1], 2);
        assert_eq!(f.calls, ["stop 1 None"]);
    }

    #[test]
    fn a_spec_changed_mid_roll_never_takes_a_second_replica_down() {
        let (mut r, mut f, _) = running_v1(&["cl-web-0", "cl-web-1"]);
        let t = HEALTHY_T;
        let v2 = want(&[spec("cl-web-0", 1, "v2"), spec("cl-web-1", 1, "v2")]);
        // replica 0 goes to v2 and runs it healthily; replica 1's turn begins
        turn(&mut r, &mut f, &v2, &[1], t + 100);
        f.set("cl-web-0", State::Exited);
        turn(&mut r, &mut f, &v2, &[1], t + 200);
        turn(&mut r, &mut f, &v2, &[1], t + 300);
        turn(&mut r, &mut f, &v2, &[1], t + 400);
        turn(&mut r, &mut f, &v2, &[1], t + 400 + HEALTHY_MS);
        f.calls.clear();
        turn(&mut r, &mut f, &v2, &[1], t + 450 + HEALTHY_MS);
        assert_eq!(f.calls, ["stop 2 None"]);
        // v3 while replica 1 stops: replica 0 (healthy on v2) must wait for replica 1
        let v3 = want(&[spec("cl-web-0", 1, "v3"), spec("cl-web-1", 1, "v3")]);
        let t = t + 500 + HEALTHY_MS;
        f.calls.clear();
        let l = turn(&mut r, &mut f, &v3, &[1], t);
        assert!(!f.calls.iter().any(|c| c.starts_with("stop") || c.starts_with("destroy")), "{:?}", f.calls);
        assert!(l.iter().any(|x| x.contains("cl-web-0 (web replica 0) runs on until replica 1 is healthy again")), "{l:?}");
        // replica 1 ends, is created from v3 and runs: replica 0 goes only once replica 1 is
        // healthy, so at most one is ever down
        f.set("cl-web-1", State::Exited);
        f.calls.clear();
        turn(&mut r, &mut f, &v3, &[1], t + 100);
        turn(&mut r, &mut f, &v3, &[1], t + 200);
        assert_eq!(f.calls, ["destroy 2", "create 4 cl-web-1"]);
        f.calls.clear();
        turn(&mut r, &mut f, &v3, &[1], t + 300);
        turn(&mut r, &mut f, &v3, &[1], t + 300 + HEALTHY_MS - 1);
        assert!(!f.calls.iter().any(|c| c.starts_with("stop")), "{:?}", f.calls);
        turn(&mut r, &mut f, &v3, &[1], t + 300 + HEALTHY_MS);
        assert!(!f.calls.iter().any(|c| c.starts_with("stop")), "{:?}", f.calls);
        turn(&mut r, &mut f, &v3, &[1], t + 350 + HEALTHY_MS);
        assert_eq!(f.calls.last().map(String::as_str), Some("stop 3 None"));
    }

    #[test]
    fn a_replica_runs_on_while_its_new_image_is_fetched_and_the_fetch_follows_a_second_change() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        turn(&mut r, &mut f, &want(&[spec("cl-web-0", 1, "v1")]), &[1], 0);
        f.calls.clear();
        let l = turn(&mut r, &mut f, &want(&[spec("cl-web-0", 2, "v1")]), &[1], 10);
        assert_eq!(f.calls, ["spec 1"], "not stopped before its image is here");
        assert!(l.iter().any(|x| x.contains("runs on while image")), "{l:?}");
        assert_eq!(r.wanted_image(), Some(Digest([2; 32])));
        // the spec changes again, to a third image: the fetch follows it
        let l = turn(&mut r, &mut f, &want(&[spec("cl-web-0", 3, "v1")]), &[1], 20);
        assert_eq!(r.wanted_image(), Some(Digest([3; 32])), "{l:?}");
        assert!(f.w[0].2 == State::Running);
        // back to the image it runs: nothing waits, nothing is replaced
        f.calls.clear();
        let l = turn(&mut r, &mut f, &want(&[spec("cl-web-0", 1, "v1")]), &[1], 30);
        assert_eq!(r.wanted_image(), None);
        assert!(l.iter().any(|x| x.contains("no longer waits for image")), "{l:?}");
        assert!(!f.calls.iter().any(|c| c.starts_with("stop") || c.starts_with("destroy")), "{:?}", f.calls);
        // the third image arrives (spec 3 again): replaced at once (replica 0)
        turn(&mut r, &mut f, &want(&[spec("cl-web-0", 3, "v1")]), &[1, 3], 40);
        assert_eq!(f.w[0].2, State::Stopping);
    }

    /// What the replicas assigned here hold is their spec as created (an old, smaller spec
    /// while the desired one grew), plus the overhead; others' and unassigned ones' count not.
    #[test]
    fn held_counts_the_assigned_replicas_as_created() {
        let mut f = Fake { free: 1000, ..Default::default() };
        f.create_and_start(&spec("cl-web-0", 1, "v1")).unwrap();
        f.create_and_start(&WorkloadSpec { memory_mib: 200, ..spec("cl-db-0", 1, "v1") }).unwrap();
        f.create_and_start(&spec("cl-old-0", 1, "v1")).unwrap();
        let assigned: BTreeSet<String> = ["cl-web-0", "cl-db-0", "cl-new-0"].into_iter().map(String::from).collect();
        let o = crate::admission::VM_OVERHEAD_MIB;
        assert_eq!(held_mib(&f.list(), &assigned), 64 + o + 200 + o);
    }

    #[test]
    fn a_spec_changed_back_while_it_stops_starts_the_old_instance_again() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        let v1 = want(&[spec("cl-web-0", 1, "v1")]);
        turn(&mut r, &mut f, &v1, &[1], 0);
        turn(&mut r, &mut f, &want(&[spec("cl-web-0", 1, "v2")]), &[1], 10);
        assert_eq!(f.w[0].2, State::Stopping);
        f.set("cl-web-0", State::Exited);
        f.calls.clear();
        turn(&mut r, &mut f, &v1, &[1], 20);
        assert_eq!(f.calls, ["spec 1", "start 1"], "the one it runs is the desired one again (asked anew: the desired spec changed): run it");
        assert_eq!(f.w[0].2, State::Running);
    }

    /// The same with `orchd` restarted between the stop and the change back: what was stopped
    /// is `workd`'s to say (`Summary::stopped`), so the new `orchd` starts it too; a replica
    /// that ended by itself is still left to its restart policy.
    #[test]
    fn a_restarted_orchd_starts_a_replica_stopped_for_a_spec_that_went_back() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        let v1 = want(&[spec("cl-web-0", 1, "v1")]);
        turn(&mut r, &mut f, &v1, &[1], 0);
        turn(&mut r, &mut f, &want(&[spec("cl-web-0", 1, "v2")]), &[1], 10);
        assert_eq!(f.w[0].2, State::Stopping);
        f.set("cl-web-0", State::Exited);
        let mut r = Replicas::default(); // orchd restarted
        f.calls.clear();
        let lines = turn(&mut r, &mut f, &v1, &[1], 20);
        assert_eq!(f.calls, ["spec 1", "start 1"], "the stopped replica, desired again after the restart: {lines:?}");
        assert_eq!(f.w[0].2, State::Running);
        // ended by itself (no stop asked): not started, restarted orchd or not
        f.set("cl-web-0", State::Exited);
        let mut r = Replicas::default();
        f.calls.clear();
        turn(&mut r, &mut f, &v1, &[1], 30);
        assert_eq!(f.calls, ["spec 1"], "started against its restart policy");
    }

    #[test]
    fn no_answer_from_workd_touches_nothing_and_a_refused_create_is_logged_once() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        turn(&mut r, &mut f, &want(&[spec("cl-web-0", 1, "v1")]), &[1], 0);
        f.mute = true;
        f.calls.clear();
        let l = turn(&mut r, &mut f, &want(&[spec("cl-web-0", 2, "v2")]), &[1], 10);
        assert_eq!(f.calls, ["spec 1"]);
        assert!(l.is_empty() && r.wanted_image().is_none(), "{l:?}");
        // a create workd refuses: tried every turn, logged once
        let (mut r, mut f) = (Replicas::default(), Fake { free: 10, ..Default::default() });
        let mut lines = Vec::new();
        for t in 0..5 {
            lines.extend(turn(&mut r, &mut f, &want(&[spec("cl-web-0", 1, "v1")]), &[1], t));
        }
        assert_eq!(lines.iter().filter(|x| x.contains("cannot create cl-web-0")).count(), 1, "{lines:?}");
    }

    #[test]
    fn without_the_store_listed_only_unassigned_replicas_are_stopped() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        turn(&mut r, &mut f, &want(&[spec("cl-web-0", 1, "v1")]), &[1], 0);
        f.calls.clear();
        let list = f.list();
        let w = want(&[spec("cl-db-0", 1, "v1"), spec("cl-web-1", 2, "v1")]);
        let mut peers = Reports { here: Vec::new(), want: &w, new: &[], any: &[], count: 2, unplaced: &[] };
        r.turn(&list, &w, None, true, 10, &mut peers, &mut f, &mut |_| {});
        assert_eq!(f.calls, ["stop 1 Some(0)"], "nothing created, nothing waits");
        assert_eq!(r.wanted_image(), None);
    }

    #[test]
    fn a_grown_spec_without_room_keeps_the_old_instance_logged_once_and_room_is_asked_only_then() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        turn(&mut r, &mut f, &want(&[spec("cl-web-0", 1, "v1")]), &[1], 0);
        f.free = 100;
        let mut big = spec("cl-web-0", 1, "v1");
        big.memory_mib = 512;
        let mut lines = Vec::new();
        f.calls.clear();
        for t in 1..4 {
            lines.extend(turn(&mut r, &mut f, &want(&[big.clone()]), &[1], t));
        }
        assert_eq!(lines.iter().filter(|l| l.contains("cl-web-0 keeps its old spec: the new one needs 516 MiB, 168 MiB free")).count(), 1, "{lines:?}");
        assert_eq!(f.calls, ["spec 1", "free", "free", "free"], "kept, never stopped");
        // a smaller spec does not ask for room
        let mut small = spec("cl-web-0", 1, "v1");
        small.memory_mib = 32;
        f.calls.clear();
        turn(&mut r, &mut f, &want(&[small]), &[1], 10);
        assert_eq!(f.calls, ["spec 1", "stop 1 None"]);
    }

    #[test]
    fn a_created_replica_is_started_and_one_that_ended_by_itself_is_left_to_its_policy() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        let sp = spec("cl-web-0", 1, "v1");
        f.w.push((7, sp.clone(), State::Created));
        turn(&mut r, &mut f, &want(core::slice::from_ref(&sp)), &[1], 0);
        assert_eq!(f.calls, ["spec 7", "start 7"]);
        f.set("cl-web-0", State::Exited);
        f.calls.clear();
        for t in 1..4 {
            turn(&mut r, &mut f, &want(core::slice::from_ref(&sp)), &[1], t);
        }
        assert!(f.calls.is_empty(), "not started against its restart policy: {:?}", f.calls);
    }

    #[test]
    fn a_replica_not_assigned_here_is_stopped_then_destroyed_and_one_assigned_again_restarted() {
        let (mut r, mut f) = (Replicas::default(), Fake { free: 1000, ..Default::default() });
        let v1 = want(&[spec("cl-web-0", 1, "v1")]);
        turn(&mut r, &mut f, &v1, &[1], 0);
        f.calls.clear();
        turn(&mut r, &mut f, &BTreeMap::new(), &[1], 10);
        assert_eq!(f.calls, ["stop 1 Some(0)"]);
        f.set("cl-web-0", State::Exited);
        f.calls.clear();
        turn(&mut r, &mut f, &v1, &[1], 20);
        assert_eq!(f.calls, ["spec 1", "start 1"], "assigned here again before it was destroyed");
        f.calls.clear();
        turn(&mut r, &mut f, &BTreeMap::new(), &[1], 30);
        f.set("cl-web-0", State::Exited);
        turn(&mut r, &mut f, &BTreeMap::new(), &[1], 40);
        assert_eq!(f.calls, ["stop 1 Some(0)", "destroy 1"]);
        assert!(f.w.is_empty());
    }
}
