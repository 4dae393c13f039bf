//! The cluster lease (`proto`, "The cluster lease"): `workd` itself stops the cluster's
//! replicas once the deadline `orchd` set passes, whatever `orchd` does meanwhile.

use crate::fuzzing::{image, service, SimKernel};
use crate::proto::*;
use crate::service::{Client, LeaseEnd, LeaseNotice, Service};
use crate::spec::*;
use crate::status::*;
use crate::vmctl::{self, Event, VmEvent};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

const MS: u64 = 1_000_000;

fn spec(name: &str) -> WorkloadSpec {
    WorkloadSpec { health: None, name: name.into(), image: image(), vcpus: 1, memory_mib: 64, env: vec![], args: None, restart: RestartPolicy::Always, net: false }
}

fn lease(s: &mut Service, k: &mut SimKernel, from: Client, until_ms: u64, now: u64) -> Result<Reply, Error> {
    s.handle_from(from, Request::ClusterLease { until_ns: until_ms * MS }, now, k)
}

/// Create and start `name`; its microVM reports ready. Returns the VM.
fn run(s: &mut Service, k: &mut SimKernel, name: &str, now: u64) -> u64 {
    s.handle(Request::Create(spec(name)), now, k).unwrap();
    s.handle(Request::Start(Target::Name(name.into())), now, k).unwrap();
    s.on_event(VmEvent { vm: k.next, event: Event::Ready }, now, k);
    k.next
}

fn states(s: &mut Service, k: &mut SimKernel, now: u64) -> Vec<(String, State)> {
    match s.handle(Request::List, now, k) {
        Ok(Reply::List(l)) => l.into_iter().map(|w| (w.name, w.state)).collect(),
        r => panic!("{r:?}"),
    }
}

fn st(name: &str, state: State) -> (String, State) {
    (name.into(), state)
}

/// The VM's end as the kernel reports it after a stop.
fn ended(s: &mut Service, k: &mut SimKernel, vm: u64, now: u64) {
    k.alive.retain(|v| *v != vm);
    s.on_event(VmEvent { vm, event: Event::Ended { how: vmctl::Ended::Killed, touched_bytes: 1 << 20, wall_ms: 1 } }, now, k);
}

#[test]
fn past_the_deadline_cluster_replicas_stop_and_node_level_ones_stay() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..SimKernel::default() });
    let free = s.admission.free_mib();
    assert_eq!(lease(&mut s, &mut k, Client::Orchestrator, 2_000, 0), Ok(Reply::Done));
    let db = run(&mut s, &mut k, "cl-db-0", 0);
    run(&mut s, &mut k, "web", 0);
    s.handle(Request::Create(spec("cl-idle-0")), 0, &mut k).unwrap(); // created, never started
    // the loop wakes at the deadline while cluster replicas are here
    assert_eq!(s.tick(1_000, &mut k), Some(2_000));
    assert_eq!(s.take_lease_notices(), vec![LeaseNotice::Held { ms_left: 1_000 }]);
    assert_eq!(s.tick(1_999, &mut k), Some(2_000));
    assert_eq!(states(&mut s, &mut k, 1_999), vec![st("cl-db-0", State::Running), st("web", State::Running), st("cl-idle-0", State::Created)]);
    // the deadline passes without renewal (orchd says nothing more)
    s.tick(2_000, &mut k);
    assert_eq!(states(&mut s, &mut k, 2_000), vec![st("cl-db-0", State::Stopping), st("web", State::Running)]);
    assert_eq!(k.killed, vec![db], "powered off at once, not asked to stop through the guest");
    assert_eq!(s.take_lease_notices(), vec![LeaseNotice::Stopping { why: LeaseEnd::RanOut, names: vec!["cl-db-0".into()] }, LeaseNotice::Destroyed("cl-idle-0".into())]);
    // once its microVM ended it is destroyed too (its memory goes back), and never restarted
    ended(&mut s, &mut k, db, 2_100);
    assert_eq!(s.tick(2_100, &mut k), None);
    assert_eq!(s.take_lease_notices(), vec![LeaseNotice::Destroyed("cl-db-0".into())]);
    assert_eq!(states(&mut s, &mut k, 2_100), vec![st("web", State::Running)]);
    assert_eq!(s.admission.free_mib(), free - 68);
    // said once: nothing more while the lease stays out; no replica starts without it
    for t in [2_200, 10_000, 100_000] {
        s.tick(t, &mut k);
    }
    assert!(s.take_lease_notices().is_empty());
    assert_eq!(s.handle(Request::Create(spec("cl-db-0")), 100_000, &mut k), Err(Error::NoLease));
    assert_eq!(k.alive.len(), 1, "only web's microVM runs");
}

/// A replica that orchd asked to stop (grace period through the guest) before the lease ran
/// out is powered off at the deadline, not when its grace period ends (review: a guest that
/// ignores the stop ran up to `KILL_GRACE_MS` past the lease).
#[test]
fn a_replica_already_stopping_is_powered_off_at_the_deadline() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..SimKernel::default() });
    lease(&mut s, &mut k, Client::Orchestrator, 2_000, 0).unwrap();
    let db = run(&mut s, &mut k, "cl-db-0", 0);
    s.handle_from(Client::Orchestrator, Request::Stop { target: Target::Name("cl-db-0".into()), grace_ms: Some(10_000) }, 1_500, &mut k).unwrap();
    s.tick(1_999, &mut k);
    assert_eq!(states(&mut s, &mut k, 1_999), vec![st("cl-db-0", State::Stopping)]);
    assert!(k.killed.is_empty(), "before the deadline the guest's stop runs");
    s.tick(2_000, &mut k);
    assert_eq!(k.killed, vec![db], "powered off at the deadline, its grace period cut short");
    ended(&mut s, &mut k, db, 2_050);
    s.tick(2_050, &mut k);
    assert!(states(&mut s, &mut k, 2_050).is_empty());
}

#[test]
fn a_renewal_keeps_them_running() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..SimKernel::default() });
    lease(&mut s, &mut k, Client::Orchestrator, 2_000, 0).unwrap();
    run(&mut s, &mut k, "cl-db-0", 0);
    // orchd renews every 100 ms or so, its deadline moving on
    let mut t = 0;
    while t < 60_000 {
        t += 100;
        lease(&mut s, &mut k, Client::Orchestrator, t + 2_000, t).unwrap();
        assert_eq!(s.tick(t, &mut k), Some(t + 2_000));
    }
    assert_eq!(states(&mut s, &mut k, t), vec![st("cl-db-0", State::Running)]);
    // the renewals stop: it runs until the last deadline, not one ms longer
    s.tick(t + 1_999, &mut k);
    assert_eq!(states(&mut s, &mut k, t + 1_999), vec![st("cl-db-0", State::Running)]);
    s.tick(t + 2_000, &mut k);
    assert_eq!(states(&mut s, &mut k, t + 2_000), vec![st("cl-db-0", State::Stopping)]);
    // a deadline far ahead is cut to LEASE_MAX_MS from now; a nanosecond deadline is rounded
    // down (while workd's ms clock is before it, the ns clock is too)
    lease(&mut s, &mut k, Client::Orchestrator, u64::MAX / MS, 100_000).unwrap();
    assert!(s.lease_holds(100_000 + LEASE_MAX_MS - 1) && !s.lease_holds(100_000 + LEASE_MAX_MS));
    s.handle_from(Client::Orchestrator, Request::ClusterLease { until_ns: 200_000 * MS + 999_999 }, 199_000, &mut k).unwrap();
    assert!(s.lease_holds(199_999) && !s.lease_holds(200_000));
}

#[test]
fn a_renewal_after_expiry_lets_orchd_start_them_again() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..SimKernel::default() });
    lease(&mut s, &mut k, Client::Orchestrator, 2_000, 0).unwrap();
    let db = run(&mut s, &mut k, "cl-db-0", 0);
    s.tick(2_500, &mut k);
    ended(&mut s, &mut k, db, 2_600);
    s.tick(2_600, &mut k);
    assert_eq!(states(&mut s, &mut k, 2_600), vec![]);
    assert_eq!(s.handle(Request::Create(spec("cl-db-0")), 3_000, &mut k), Err(Error::NoLease));
    // a restarted orchd with no lease yet says so (deadline 0): nothing starts
    lease(&mut s, &mut k, Client::Orchestrator, 0, 3_000).unwrap();
    assert_eq!(s.handle(Request::Create(spec("cl-db-0")), 3_000, &mut k), Err(Error::NoLease));
    // its lease: it creates and starts the replica again, as it does today
    lease(&mut s, &mut k, Client::Orchestrator, 6_000, 4_000).unwrap();
    let db2 = run(&mut s, &mut k, "cl-db-0", 4_000);
    assert!(db2 != db && k.alive == [db2]);
    s.tick(4_000, &mut k);
    assert_eq!(states(&mut s, &mut k, 4_000), vec![st("cl-db-0", State::Running)]);
    let notices = s.take_lease_notices();
    assert_eq!(notices.last(), Some(&LeaseNotice::Held { ms_left: 2_000 }), "{notices:?}");
    // orchd withdraws it (its lease lapsed before the deadline it gave): stopped at once
    lease(&mut s, &mut k, Client::Orchestrator, 0, 4_100).unwrap();
    s.tick(4_100, &mut k);
    assert_eq!(states(&mut s, &mut k, 4_100), vec![st("cl-db-0", State::Stopping)]);
    assert_eq!(s.take_lease_notices(), vec![LeaseNotice::Stopping { why: LeaseEnd::Withdrawn, names: vec!["cl-db-0".into()] }]);
}

#[test]
fn a_client_other_than_orchd_cannot_set_or_extend_the_lease() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..SimKernel::default() });
    // no lease yet: another client's is refused and changes nothing
    assert_eq!(lease(&mut s, &mut k, Client::Other, 60_000, 0), Err(Error::NotOrchestrator));
    assert!(!s.lease_holds(0));
    assert_eq!(s.handle(Request::Create(spec("cl-db-0")), 0, &mut k), Err(Error::NoLease));
    // the same through `handle` (every client that is not orchd) and as raw bytes
    let raw = encode_request(&Request::ClusterLease { until_ns: u64::MAX }).unwrap();
    assert_eq!(s.handle(decode_request(&raw).unwrap(), 0, &mut k), Err(Error::NotOrchestrator));
    assert!(!s.lease_holds(0));
    // orchd's lease holds to 2 s: another client can neither extend it nor end it
    lease(&mut s, &mut k, Client::Orchestrator, 2_000, 0).unwrap();
    run(&mut s, &mut k, "cl-db-0", 0);
    assert_eq!(lease(&mut s, &mut k, Client::Other, 0, 1_000), Err(Error::NotOrchestrator));
    s.tick(1_000, &mut k);
    assert_eq!(states(&mut s, &mut k, 1_000), vec![st("cl-db-0", State::Running)]);
    assert_eq!(lease(&mut s, &mut k, Client::Other, 60_000, 1_500), Err(Error::NotOrchestrator));
    s.tick(2_000, &mut k);
    assert_eq!(states(&mut s, &mut k, 2_000), vec![st("cl-db-0", State::Stopping)]);
    // a stopped replica cannot be started again without the lease, by anyone
    ended(&mut s, &mut k, 1, 2_001);
    assert_eq!(s.handle(Request::Start(Target::Name("cl-db-0".into())), 2_001, &mut k).err().map(|e| e == Error::NoLease || e == Error::NoSuchWorkload), Some(true));
}

#[test]
fn a_restarted_workd_stops_the_cluster_replicas_it_adopts() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..SimKernel::default() });
    lease(&mut s, &mut k, Client::Orchestrator, 2_000, 0).unwrap();
    run(&mut s, &mut k, "cl-db-0", 0);
    run(&mut s, &mut k, "web", 0);
    let live: Vec<vmctl::LiveVm> = k.alive.iter().map(|vm| {
        let tag = k.tags.iter().find(|(v, _)| v == vm).map(|(_, t)| t.clone()).unwrap();
        vmctl::LiveVm { healthy: false, vm: *vm, tag, ready: true, age_ms: 50, touched_bytes: 1 << 20 }
    }).collect();
    // the new incarnation knows no lease (a dead orchd may have set the last one)
    let mut s2 = service(1024);
    assert_eq!(s2.adopt(live, 500, &mut k), 2);
    s2.tick(500, &mut k);
    assert_eq!(states(&mut s2, &mut k, 500), vec![st("cl-db-0", State::Stopping), st("web", State::Running)]);
    assert_eq!(s2.take_lease_notices(), vec![LeaseNotice::Stopping { why: LeaseEnd::NeverSet, names: vec!["cl-db-0".into()] }]);
}

/// The kernel's fence (`OP_DEADLINE`): every cluster replica's microVM carries the lease's
/// deadline from its creation and is moved with every renewal, so the kernel powers it off
/// on time even if `workd` is dead or hung then; node-level workloads get none.
#[test]
fn the_kernel_keeps_each_cluster_replicas_deadline() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..SimKernel::default() });
    lease(&mut s, &mut k, Client::Orchestrator, 2_000, 0).unwrap();
    let db = run(&mut s, &mut k, "cl-db-0", 0);
    let web = run(&mut s, &mut k, "web", 0);
    // set at creation (no instant without it), to the lease's end; none for node-level ones
    let created = |k: &SimKernel, name: &str| k.created.iter().rev().find(|c| c.name == name).map(|c| c.deadline_ns);
    assert_eq!(created(&k, "cl-db-0"), Some(2_000 * MS));
    assert_eq!(created(&k, "web"), Some(0));
    assert!(k.deadlines.is_empty());
    // each renewal moves it: one call per cluster replica's VM, none for web
    let mut t = 0;
    while t < 10_000 {
        t += 100;
        lease(&mut s, &mut k, Client::Orchestrator, t + 2_000, t).unwrap();
        assert_eq!(k.deadlines.last(), Some(&(db, (t + 2_000) * MS)));
        s.tick(t, &mut k);
    }
    assert_eq!(k.deadlines.len(), 100, "one OP_DEADLINE per renewal");
    assert!(k.deadlines.iter().all(|(vm, _)| *vm == db && *vm != web));
    // the same deadline again changes nothing in the kernel
    lease(&mut s, &mut k, Client::Orchestrator, t + 2_000, t).unwrap();
    assert_eq!(k.deadlines.len(), 100);
    // a deadline far ahead is cut as the service's own (never later than LEASE_MAX_MS)
    lease(&mut s, &mut k, Client::Orchestrator, u64::MAX / MS, t).unwrap();
    assert_eq!(k.deadlines.last(), Some(&(db, (t + LEASE_MAX_MS) * MS)));
    // a client that is not orchd moves nothing
    let n = k.deadlines.len();
    assert_eq!(lease(&mut s, &mut k, Client::Other, u64::MAX / MS, t), Err(Error::NotOrchestrator));
    assert_eq!(k.deadlines.len(), n);
    // a restart under the lease carries the current deadline
    ended(&mut s, &mut k, db, t + 1);
    let at = s.tick(t + 1, &mut k).unwrap();
    lease(&mut s, &mut k, Client::Orchestrator, at + 2_000, at).unwrap();
    s.tick(at, &mut k);
    assert_eq!(created(&k, "cl-db-0"), Some((at + 2_000) * MS));
    let db2 = k.next;
    assert!(db2 != db);
    // withdrawn (orchd's deadline 0): a deadline in the past, never 0 ("none" to the kernel)
    lease(&mut s, &mut k, Client::Orchestrator, 0, at + 10).unwrap();
    assert_eq!(k.deadlines.last(), Some(&(db2, MS)));
}
