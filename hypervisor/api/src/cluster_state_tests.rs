//! `GET /v1/cluster/workloads` and the constraints of `POST /v1/cluster/workloads`, over the
//! real desired state (`catenary_cluster::desired`, the commands `apid` hands to `orchd`), the
//! real listing codec `orchd` answers with, and the real workload service of each node (whose
//! `cl-NAME-R` workloads say whether a replica runs): what `apid` does, without Raft between.

use crate::client::{self, decode, parse_response, ClientRequest};
use crate::fuzzing::{self, SimNode, ADMIN, VIEWER};
use crate::http::{Limits, RequestReader};
use crate::types::*;
use crate::{cluster, cluster_state, Api, ApiError, Backend, ClusterWrite};
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use catenary_cluster::desired::{Command, DesiredState, Limits as StateLimits};
use catenary_cluster::put_change::PutChange;
use catenary_cluster::listing::{decode_page, encode_page, PAGE_MAX};
use catenary_cluster::placement::Constraint;
use catenary_cluster::NodeKey;
use catenary_workload::fuzzing::image;
use catenary_workload::proto as wk;
use catenary_workload::spec::WorkloadSpec;
use catenary_workload::vmctl::{Event, VmEvent};

const KEYS: [[u8; 32]; 3] = [[0xa1; 32], [0xb2; 32], [0xc3; 32]];
const NAMES: [&str; 3] = ["node1", "node2", "node3"];

/// A node: its workload service, and the committed desired state its `orchd` holds.
struct Node {
    node: SimNode,
    me: usize,
    state: DesiredState,
    labels: BTreeMap<NodeKey, BTreeMap<String, String>>,
}

impl Backend for Node {
    fn workd(&mut self, req: wk::Request) -> wk::Response {
        self.node.workd(req)
    }
    fn nodes(&mut self) -> Vec<crate::types::Node> {
        self.node.nodes()
    }
    fn workd_chunk(&mut self, req: wk::Request, bytes: &[u8]) -> wk::Response {
        self.node.workd_chunk(req, bytes)
    }
    fn admit_node(&mut self, key: [u8; 32]) -> Result<(), ApiError> {
        self.node.admit_node(key)
    }
    /// As orchd answers: for a put, what it did to the state just before it.
    fn cluster(&mut self, w: ClusterWrite) -> Result<Option<PutChange>, ApiError> {
        let cmd = cluster_state::command(w, None);
        let change = match &cmd {
            catenary_cluster::desired::Command::PutWorkload(s) => Some(PutChange::of(self.state.workloads.get(&s.name), s)),
            _ => None,
        };
        self.state.apply(&cmd, &StateLimits::default()).map_err(|e| ApiError::new(422, "refused", &alloc::format!("{e:?}")))?;
        Ok(change)
    }
    fn cluster_workloads(&mut self) -> Result<(Vec<ClusterWorkloadStatus>, u32), ApiError> {
        let page = decode_page(&encode_page(&self.state, &self.labels, 0, PAGE_MAX)).map_err(|_| ApiError::new(500, "internal", "page"))?;
        let local = match self.node.workd(wk::Request::List) {
            Ok(wk::Reply::List(l)) => l,
            _ => Vec::new(),
        };
        let images: Vec<catenary_workload::Digest> = match self.node.workd(wk::Request::Images) {
            Ok(wk::Reply::Images(l)) => l.iter().map(|i| i.digest).collect(),
            _ => Vec::new(),
        };
        let name_of = |k: &[u8; 32]| KEYS.iter().position(|x| x == k).map_or("?".to_string(), |i| NAMES[i].to_string());
        Ok((cluster_state::statuses(page.entries, &name_of, Some(KEYS[self.me]), &local, &images), page.total))
    }
}

fn node(me: usize) -> Node {
    let mut n = SimNode::new(1024);
    n.name = NAMES[me].into();
    let mut state = DesiredState::default();
    for k in KEYS {
        state.apply(&Command::AdmitNode(NodeKey(k)), &StateLimits::default()).unwrap();
    }
    // node1 in zone a, node2 in zone b, node3 unlabelled
    let zone = |z: &str| -> BTreeMap<String, String> { [("zone".to_string(), z.to_string())].into() };
    let labels = [(NodeKey(KEYS[0]), zone("a")), (NodeKey(KEYS[1]), zone("b"))].into();
    Node { node: n, me, state, labels }
}

fn send(api: &mut Api, b: &mut Node, caller: [u8; 32], req: &ClientRequest) -> (u16, Vec<u8>) {
    let mut reader = RequestReader::new(Limits::default(), 0);
    let http = reader.feed(&req.to_bytes("[fd00::1]:8080"), 0).unwrap().unwrap();
    parse_response(&api.handle(&caller, &http, b, 0).to_bytes()).unwrap().unwrap()
}

fn cluster_run(name: &str, replicas: u32, constraints: &[&str]) -> RunRequest {
    RunRequest {
        health: None,
        name: Some(name.into()),
        image: image().to_string(),
        cpus: None,
        memory_mib: Some(64),
        env: vec!["A=1".into()],
        args: None,
        restart: None,
        net: None,
        replicas: Some(replicas),
        constraints: Some(constraints.iter().map(|c| c.to_string()).collect()),
    }
}

/// A replica running on `n`'s workload service, as `orchd` starts it.
/// Run replica `name` (`cl-W-R`) on `n` as orchd would: from the desired state's spec.
fn run_replica(n: &mut Node, name: &str) {
    let (w, r) = name.strip_prefix("cl-").and_then(|x| x.rsplit_once('-')).unwrap();
    let spec = crate::cluster_state::replica_spec(&n.state.workloads[w], r.parse().unwrap()).unwrap();
    run_spec(n, spec);
}

/// Run `spec` (a cluster replica's) on `n` under a lease, as orchd does.
fn run_spec(n: &mut Node, spec: WorkloadSpec) {
    let name = spec.name.clone();
    // as orchd does: a cluster replica runs in workd only under the lease it sets
    let now = n.node.now_ms;
    let lease = wk::Request::ClusterLease { until_ns: (now + 10_000) * 1_000_000 };
    assert_eq!(n.node.service.handle_from(catenary_workload::service::Client::Orchestrator, lease, now, &mut n.node.kernel), Ok(wk::Reply::Done));
    assert!(matches!(n.node.workd(wk::Request::Create(spec)), Ok(wk::Reply::Created(_))));
    assert!(n.node.workd(wk::Request::Start(wk::Target::Name(name))).is_ok());
    // its microVM says it is ready: the replica runs
    let vm = n.node.kernel.next;
    n.node.service.on_event(VmEvent { vm, event: Event::Ready }, 0, &mut n.node.kernel);
}

fn http_of(r: &ClientRequest) -> crate::http::Request {
    let mut reader = RequestReader::new(Limits::default(), 0);
    reader.feed(&r.to_bytes("[fd00::1]:8080"), 0).unwrap().unwrap()
}

fn state_of(n: &mut Node, name: &str) -> String {
    match n.node.workd(wk::Request::List) {
        Ok(wk::Reply::List(l)) => l.iter().find(|w| w.name == name).unwrap().state.name().to_string(),
        _ => panic!("no list"),
    }
}

#[test]
fn the_desired_state_is_listed_with_constraints_nodes_and_states() {
    let mut api = fuzzing::api();
    let mut n1 = node(0);
    // Constraints travel into the committed spec.
    assert_eq!(send(&mut api, &mut n1, ADMIN, &client::run_cluster(&cluster_run("db", 1, &["zone=a"]))).0, 201);
    assert_eq!(send(&mut api, &mut n1, ADMIN, &client::run_cluster(&cluster_run("web", 2, &["zone!=b"]))).0, 201);
    assert_eq!(send(&mut api, &mut n1, ADMIN, &client::run_cluster(&cluster_run("gpu", 1, &["gpu=yes"]))).0, 201);
    assert_eq!(n1.state.workloads["db"].constraints, vec![Constraint::LabelEquals { key: "zone".into(), value: "a".into() }]);
    assert_eq!(n1.state.workloads["web"].constraints, vec![Constraint::LabelNotEquals { key: "zone".into(), value: "b".into() }]);
    // Refused before reaching the cluster: bad constraints, too many.
    let many: Vec<String> = (0..17).map(|i| alloc::format!("k{i}=v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for bad in [&["zone"][..], &["Zone=a"], &["zone=a b"], &["=a"], &many] {
        assert_eq!(send(&mut api, &mut n1, ADMIN, &client::run_cluster(&cluster_run("x", 1, bad))).0, 400, "{bad:?}");
    }
    assert!(!n1.state.workloads.contains_key("x"));
    // A node-level workload may not take a replica's name, nor cluster fields.
    let mut plain = cluster_run("cl-db-0", 1, &[]);
    plain.replicas = None;
    plain.constraints = None;
    let (s, b) = send(&mut api, &mut n1, ADMIN, &client::run(&plain));
    assert_eq!(s, 400);
    assert!(String::from_utf8_lossy(&b).contains("cl-"), "{}", String::from_utf8_lossy(&b));
    plain.name = Some("ok".into());
    plain.constraints = Some(vec!["zone=a".into()]);
    assert_eq!(send(&mut api, &mut n1, ADMIN, &client::run(&plain)).0, 400);
    assert_eq!(n1.node.service.len(), 0, "nothing ran on the node");

    // The scheduler placed db on node1 and web on node1 and node3; node1 runs its replicas.
    let assign = |s: &mut DesiredState, w: &str, r: u32, k: usize| s.apply(&Command::Assign { workload: w.into(), replica: r, node: NodeKey(KEYS[k]) }, &StateLimits::default()).unwrap();
    assign(&mut n1.state, "db", 0, 0);
    assign(&mut n1.state, "web", 0, 2);
    assign(&mut n1.state, "web", 1, 0);
    run_replica(&mut n1, "cl-db-0");
    run_replica(&mut n1, "cl-web-1");
    let db_state = state_of(&mut n1, "cl-db-0");

    // A viewer may read it.
    let (s, b) = send(&mut api, &mut n1, VIEWER, &client::list_cluster());
    let l: ClusterWorkloadList = decode(s, &b).unwrap();
    assert_eq!((l.total, l.workloads.len()), (3, 3));
    let by = |n: &str| l.workloads.iter().find(|w| w.name == n).unwrap().clone();
    let db = by("db");
    assert_eq!((db.replicas, db.cpus, db.memory_mib, db.env.clone(), db.constraints.clone()), (1, 1, 64, vec!["A=1".to_string()], vec!["zone=a".to_string()]));
    assert_eq!(db.image, image().to_string());
    assert_eq!(db.assignments, vec![ReplicaStatus { replica: 0, node: Some("node1".into()), state: Some(db_state.clone()), outdated: false }]);
    assert_eq!((db.eligible_nodes, db.placeable), (1, true));
    let gpu = by("gpu");
    assert_eq!((gpu.eligible_nodes, gpu.placeable, gpu.running), (0, false, 0));
    assert_eq!(gpu.assignments, vec![ReplicaStatus { replica: 0, node: None, state: None, outdated: false }]);
    let web = by("web");
    assert_eq!((web.eligible_nodes, web.placeable), (2, true));
    // node1 knows its own replica's state, not node3's
    assert_eq!(web.assignments[0], ReplicaStatus { replica: 0, node: Some("node3".into()), state: None, outdated: false });
    assert_eq!(web.assignments[1].node.as_deref(), Some("node1"));
    assert!(web.assignments[1].state.is_some());

    // One workload; an unknown name 404.
    let (s, b) = send(&mut api, &mut n1, VIEWER, &client::inspect_cluster("db"));
    assert_eq!(decode::<ClusterWorkloadStatus>(s, &b).unwrap(), db);
    assert_eq!(send(&mut api, &mut n1, VIEWER, &client::inspect_cluster("nope")).0, 404);

    // Gathered: node3 (same committed state) knows its replica of web; node1's answer takes it.
    let mut n3 = node(2);
    n3.state = n1.state.clone();
    let mut api3 = fuzzing::api();
    run_replica(&mut n3, "cl-web-0");
    let web0 = state_of(&mut n3, "cl-web-0");
    for path in [client::list_cluster(), client::inspect_cluster("web")] {
        let mut reader = RequestReader::new(Limits::default(), 0);
        let http = reader.feed(&path.to_bytes("[fd00::1]:8080"), 0).unwrap().unwrap();
        let resp = api.handle(&ADMIN, &http, &mut n1, 0);
        assert!(cluster::concerns_others(&http));
        let mut ask = |_: usize| {
            let r = api3.handle(&ADMIN, &http, &mut n3, 0);
            Some((r.status, r.body))
        };
        let merged = cluster::elsewhere(&http, resp, Some("node1"), &["node3".to_string()], &mut ask);
        let web: ClusterWorkloadStatus = if path.path.ends_with("/web") {
            serde_json::from_slice(&merged.body).unwrap()
        } else {
            serde_json::from_slice::<ClusterWorkloadList>(&merged.body).unwrap().workloads.into_iter().find(|w| w.name == "web").unwrap()
        };
        assert_eq!(web.assignments[0].state.as_deref(), Some(web0.as_str()), "{}", path.path);
        assert!(web.assignments[1].state.is_some());
        assert_eq!((web0.as_str(), web.assignments[1].state.as_deref()), ("running", Some("running")));
        assert_eq!(web.running, 2, "both replicas run");
        assert!(!web.assignments[0].outdated && !web.assignments[1].outdated, "both run the desired spec");
    }

    // web updated (other args) in the state both applied: until orchd replaces them, node1's
    // replica and node3's (its own word, gathered) run the old spec: outdated, still running.
    let mut upd = n1.state.workloads["web"].clone();
    upd.args = vec!["v2".into()];
    for n in [&mut n1, &mut n3] {
        n.state.apply(&Command::PutWorkload(upd.clone()), &StateLimits::default()).unwrap();
    }
    let http = http_of(&client::inspect_cluster("web"));
    let resp = api.handle(&ADMIN, &http, &mut n1, 0);
    let mut ask = |_: usize| {
        let r = api3.handle(&ADMIN, &http, &mut n3, 0);
        Some((r.status, r.body))
    };
    let merged = cluster::elsewhere(&http, resp, Some("node1"), &["node3".to_string()], &mut ask);
    let web: ClusterWorkloadStatus = serde_json::from_slice(&merged.body).unwrap();
    assert!(web.assignments.iter().all(|a| a.outdated), "{:?}", web.assignments);
    assert_eq!(web.running, 2, "outdated replicas still run");
    let db: ClusterWorkloadStatus = decode(send(&mut api, &mut n1, VIEWER, &client::inspect_cluster("db")).0, &send(&mut api, &mut n1, VIEWER, &client::inspect_cluster("db")).1).unwrap();
    assert!(!db.assignments[0].outdated, "db was not updated");

    // A node's word counts for the replicas assigned to it only, and only a state's name: node2
    // (no replica of web) claims node3's; node3 answers a terminal escape for its own.
    let mut forged = |state: &str| {
        let mut l: ClusterWorkloadList = serde_json::from_slice(&api.handle(&ADMIN, &http_of(&client::list_cluster()), &mut n1, 0).body).unwrap();
        for w in &mut l.workloads {
            for a in &mut w.assignments {
                a.state = Some(state.into());
            }
        }
        serde_json::to_vec(&l).unwrap()
    };
    let answers = [forged("running"), forged("\u{1b}]0;pwned\u{7}\u{1b}[2J")];
    let http = http_of(&client::list_cluster());
    let resp = api.handle(&ADMIN, &http, &mut n1, 0);
    let mut ask = |i: usize| Some((200, answers[i].clone()));
    let merged = cluster::elsewhere(&http, resp, Some("node1"), &["node2".to_string(), "node3".to_string()], &mut ask);
    let l: ClusterWorkloadList = serde_json::from_slice(&merged.body).unwrap();
    let web = l.workloads.iter().find(|w| w.name == "web").unwrap();
    assert_eq!(web.assignments[0], ReplicaStatus { replica: 0, node: Some("node3".into()), state: Some("unknown".into()), outdated: false }, "node3's escape is not shown, node2's word not taken");
    assert_eq!(web.running, 1, "node1's replica only");

    // A node without an orchestration service: 503.
    let mut bare = SimNode::new(1024);
    let mut reader = RequestReader::new(Limits::default(), 0);
    let http = reader.feed(&client::list_cluster().to_bytes("[fd00::1]:8080"), 0).unwrap().unwrap();
    assert_eq!(api.handle(&ADMIN, &http, &mut bare, 0).status, 503);
}

/// A replica assigned to a node whose store lacks its image is `fetching-image` in that node's
/// answer and in the gathered one, and is not counted as running; one whose image is there but
/// that is not created yet has no state; once it runs it counts.
#[test]
fn a_replica_waiting_for_its_image_is_fetching_image_and_not_running() {
    let mut api = fuzzing::api();
    let mut n1 = node(0);
    let mut other = cluster_run("copy", 2, &[]);
    other.image = catenary_workload::Digest([0x22; 32]).to_string();
    // The API refuses a run of an image no node has only for node-level runs; a cluster put
    // goes to the desired state as is.
    assert_eq!(send(&mut api, &mut n1, ADMIN, &client::run_cluster(&other)).0, 201);
    assert_eq!(send(&mut api, &mut n1, ADMIN, &client::run_cluster(&cluster_run("here", 1, &[]))).0, 201);
    let assign = |s: &mut DesiredState, w: &str, r: u32, k: usize| s.apply(&Command::Assign { workload: w.into(), replica: r, node: NodeKey(KEYS[k]) }, &StateLimits::default()).unwrap();
    assign(&mut n1.state, "copy", 0, 0);
    assign(&mut n1.state, "copy", 1, 2);
    assign(&mut n1.state, "here", 0, 0);
    let mut n3 = node(2);
    n3.state = n1.state.clone();
    let mut api3 = fuzzing::api();
    let list = |api: &mut Api, n1: &mut Node, api3: &mut Api, n3: &mut Node| {
        let http = http_of(&client::list_cluster());
        let resp = api.handle(&ADMIN, &http, n1, 0);
        let mut ask = |_: usize| {
            let r = api3.handle(&ADMIN, &http, n3, 0);
            Some((r.status, r.body))
        };
        let merged = cluster::elsewhere(&http, resp, Some("node1"), &["node3".to_string()], &mut ask);
        serde_json::from_slice::<ClusterWorkloadList>(&merged.body).unwrap()
    };
    let l = list(&mut api, &mut n1, &mut api3, &mut n3);
    let by = |l: &ClusterWorkloadList, n: &str| l.workloads.iter().find(|w| w.name == n).unwrap().clone();
    let copy = by(&l, "copy");
    assert_eq!(copy.assignments[0].state.as_deref(), Some(cluster_state::FETCHING_IMAGE), "node1's own replica");
    assert_eq!(copy.assignments[1].state.as_deref(), Some(cluster_state::FETCHING_IMAGE), "node3's, from its answer");
    assert_eq!(copy.running, 0);
    // The image is in node1's store but the replica is not created yet: no state.
    assert_eq!((by(&l, "here").assignments[0].state.clone(), by(&l, "here").running), (None, 0));
    run_replica(&mut n1, "cl-here-0");
    let l = list(&mut api, &mut n1, &mut api3, &mut n3);
    assert_eq!((by(&l, "here").assignments[0].state.as_deref(), by(&l, "here").running), (Some("running"), 1));
    assert_eq!(by(&l, "copy").running, 0);
}

/// `POST /v1/cluster/workloads` says what the put did to the committed state (`catenary run`
/// prints it): created, unchanged, or updated with the fields that differ; not known (null)
/// when the node cannot read its state.
#[test]
fn a_put_says_whether_it_created_updated_or_changed_nothing() {
    let mut api = fuzzing::api();
    let mut n = node(0);
    let mut put = |n: &mut Node, req: &RunRequest| -> ClusterWorkload {
        let (s, b) = send(&mut api, n, ADMIN, &client::run_cluster(req));
        decode(s, &b).unwrap()
    };
    let web = cluster_run("web", 2, &[]);
    let w = put(&mut n, &web);
    assert_eq!((w.change.as_deref(), w.changed.len()), (Some("created"), 0));
    let w = put(&mut n, &web);
    assert_eq!((w.change.as_deref(), w.changed.len()), (Some("unchanged"), 0));
    let mut v2 = web.clone();
    v2.args = Some(vec!["hello".into(), "v2".into()]);
    v2.memory_mib = Some(128);
    let w = put(&mut n, &v2);
    assert_eq!((w.change.as_deref(), w.changed.clone()), (Some("updated"), vec!["memory_mib".to_string(), "args".to_string()]));
    assert_eq!(n.state.workloads["web"].args, ["hello", "v2"], "the update was committed");
    let mut more = v2.clone();
    more.replicas = Some(3);
    more.constraints = Some(vec!["zone=a".into()]);
    more.env = vec![];
    more.restart = Some("always".into());
    let w = put(&mut n, &more);
    assert_eq!(w.changed, ["replicas", "env", "restart", "constraints"]);
    // another workload is created, whatever the first holds
    assert_eq!(put(&mut n, &cluster_run("db", 1, &[])).change.as_deref(), Some("created"));
    // a node whose orchd does not say what the put did does not guess
    struct Blind(Node);
    impl Backend for Blind {
        fn workd(&mut self, req: wk::Request) -> wk::Response {
            self.0.workd(req)
        }
        fn nodes(&mut self) -> Vec<crate::types::Node> {
            self.0.nodes()
        }
        fn workd_chunk(&mut self, req: wk::Request, bytes: &[u8]) -> wk::Response {
            self.0.workd_chunk(req, bytes)
        }
        fn admit_node(&mut self, key: [u8; 32]) -> Result<(), ApiError> {
            self.0.admit_node(key)
        }
        // an orchd that does not say what the put did
        fn cluster(&mut self, w: ClusterWrite) -> Result<Option<PutChange>, ApiError> {
            self.0.cluster(w).map(|_| None)
        }
    }
    let mut blind = Blind(node(1));
    let (s, b) = send_any(&mut api, &mut blind, ADMIN, &client::run_cluster(&web));
    let w: ClusterWorkload = decode(s, &b).unwrap();
    assert_eq!((w.change, w.changed.len()), (None, 0));
    assert!(blind.0.state.workloads.contains_key("web"), "written all the same");
}

fn send_any(api: &mut Api, b: &mut dyn Backend, caller: [u8; 32], req: &ClientRequest) -> (u16, Vec<u8>) {
    let mut reader = RequestReader::new(Limits::default(), 0);
    let http = reader.feed(&req.to_bytes("[fd00::1]:8080"), 0).unwrap().unwrap();
    parse_response(&api.handle(&caller, &http, b, 0).to_bytes()).unwrap().unwrap()
}

/// `net: false` on a cluster put is refused (400) and nothing is written: the desired state has
/// no such field and every replica gets its network device, so it is never silently dropped.
/// `net: true` and no `net` are the same put.
#[test]
fn a_cluster_workload_without_a_network_is_refused_not_dropped() {
    let mut api = fuzzing::api();
    let mut n = node(0);
    let mut req = cluster_run("quiet", 1, &[]);
    req.net = Some(false);
    let (s, b) = send(&mut api, &mut n, ADMIN, &client::run_cluster(&req));
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));
    assert!(String::from_utf8_lossy(&b).contains("net: a cluster workload's replicas always have a network device"), "{}", String::from_utf8_lossy(&b));
    assert!(!n.state.workloads.contains_key("quiet"), "nothing written");
    req.net = Some(true);
    let (s, b) = send(&mut api, &mut n, ADMIN, &client::run_cluster(&req));
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&b));
    req.net = None;
    let (s, b) = send(&mut api, &mut n, ADMIN, &client::run_cluster(&req));
    let w: ClusterWorkload = decode(s, &b).unwrap();
    assert_eq!(w.change.as_deref(), Some("unchanged"));
}

/// `orchd` names a replica with `catenary_cluster`'s prefix and `workd` recognises one by its
/// own: a difference would make every replica look like a node-level workload.
#[test]
fn the_scheduler_and_workd_agree_on_a_replica() {
    assert_eq!(cluster_state::REPLICA_PREFIX, catenary_cluster::desired::REPLICA_PREFIX);
    let name = cluster_state::replica_name("web", 1);
    assert!(name.starts_with(catenary_workload::proto::CLUSTER_PREFIX), "{name}");
}

/// The cluster's bounds of a health check's argument count and numbers are `workd`'s (the
/// constants are asserted equal at compile time): each edge of each bound and one past it,
/// with the answer both must give. (Each argument's size and NUL bytes are `spec.check()`'s,
/// which the API runs before a put.)
#[test]
fn the_cluster_and_workd_bound_a_health_check_alike() {
    use catenary_cluster::desired::HealthCheck as Kept;
    use catenary_workload::spec::{HealthCheck, HEALTH_CMD_MAX, HEALTH_RETRIES_MAX, HEALTH_SECS_MAX};
    let base = HealthCheck { cmd: vec!["true".into()], interval_secs: 10, timeout_secs: 5, retries: 3, start_period_secs: 0 };
    let with = |f: &dyn Fn(&mut HealthCheck)| {
        let mut h = base.clone();
        f(&mut h);
        h
    };
    let cases = [
        (base.clone(), true),
        (with(&|h| h.cmd.clear()), false),
        (with(&|h| h.cmd[0].clear()), false),
        (with(&|h| h.cmd.push(String::new())), true),
        (with(&|h| h.cmd = vec!["a".into(); HEALTH_CMD_MAX]), true),
        (with(&|h| h.cmd = vec!["a".into(); HEALTH_CMD_MAX + 1]), false),
        (with(&|h| h.interval_secs = 0), false),
        (with(&|h| (h.interval_secs, h.timeout_secs) = (1, 1)), true),
        (with(&|h| h.interval_secs = HEALTH_SECS_MAX), true),
        (with(&|h| h.interval_secs = HEALTH_SECS_MAX + 1), false),
        (with(&|h| h.timeout_secs = 0), false),
        (with(&|h| h.timeout_secs = 1), true),
        (with(&|h| h.timeout_secs = h.interval_secs), true),
        (with(&|h| h.timeout_secs = h.interval_secs + 1), false),
        (with(&|h| h.retries = 0), false),
        (with(&|h| h.retries = 1), true),
        (with(&|h| h.retries = HEALTH_RETRIES_MAX), true),
        (with(&|h| h.retries = HEALTH_RETRIES_MAX + 1), false),
        (with(&|h| h.start_period_secs = HEALTH_SECS_MAX), true),
        (with(&|h| h.start_period_secs = HEALTH_SECS_MAX + 1), false),
    ];
    for (h, taken) in cases {
        let workd = h.check().is_ok();
        let HealthCheck { cmd, interval_secs, timeout_secs, retries, start_period_secs } = h.clone();
        let cluster = Kept { cmd, interval_secs, timeout_secs, retries, start_period_secs }.in_bounds();
        assert_eq!((workd, cluster), (taken, taken), "{h:?}: (workd, cluster) take it");
    }
}
