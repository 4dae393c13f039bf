//! Two simulated nodes, each the real `Api` over the real workload service, joined as `apid`
//! joins them (`cluster::elsewhere`; the other node answers the same request for the same
//! operator and never forwards it again): images and workloads reached from either node.

use crate::client::{self, decode, parse_response, ClientError, ClientRequest};
use crate::cluster;
use crate::fuzzing::{self, SimNode, ADMIN, VIEWER};
use crate::http::{Limits, RequestReader};
use crate::types::*;
use crate::Api;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use catenary_workload::fuzzing::image;
use catenary_workload::store::ImageInfo;
use catenary_workload::vmctl::{Ended, Event, VmEvent};
use catenary_workload::Digest;
use serde::de::DeserializeOwned;

struct Sim {
    api: Api,
    node: SimNode,
}

/// node1 and node2 both hold `image()`; node2 also holds `only2()`.
fn cluster() -> Vec<Sim> {
    let names: Vec<String> = vec!["node1".into(), "node2".into()];
    let mut v: Vec<Sim> = names
        .iter()
        .map(|n| {
            let mut node = SimNode::new(1024);
            node.name = n.clone();
            node.members = names.clone();
            Sim { api: fuzzing::api(), node }
        })
        .collect();
    let d = only2();
    v[1].node.service.images.insert(ImageInfo { digest: d, rootfs: d, rootfs_size: 8192, config: d, config_size: 10 }).unwrap();
    v
}

fn only2() -> Digest {
    Digest([0x22; 32])
}

/// `req` from `caller` to node `at`, as `apid` serves it.
fn call(c: &mut [Sim], at: usize, caller: [u8; 32], req: &ClientRequest) -> (u16, Vec<u8>) {
    call_with_mute(c, at, caller, req, &[])
}

/// As [`call`], but the nodes named in `mute` do not answer a forward (down, or too slow).
fn call_with_mute(c: &mut [Sim], at: usize, caller: [u8; 32], req: &ClientRequest, mute: &[&str]) -> (u16, Vec<u8>) {
    let mut reader = RequestReader::new(Limits::default(), 0);
    let http = reader.feed(&req.to_bytes("[fd00::1]:8080"), 0).unwrap().unwrap();
    let (before, rest) = c.split_at_mut(at);
    let (me, after) = rest.split_first_mut().unwrap();
    let mut others: Vec<&mut Sim> = before.iter_mut().chain(after.iter_mut()).collect();
    let names: Vec<String> = others.iter().map(|o| o.node.name.clone()).collect();
    let resp = me.api.handle(&caller, &http, &mut me.node, 0);
    let own = me.node.name.clone();
    let mut ask = |i: usize| {
        let o = &mut others[i];
        if mute.contains(&o.node.name.as_str()) {
            return None;
        }
        let r = o.api.handle(&caller, &http, &mut o.node, 0);
        Some((r.status, r.body))
    };
    if !cluster::concerns_others(&http) {
        return parse_response(&resp.to_bytes()).unwrap().unwrap();
    }
    // as apid gathers: one node's answer at a time; the same as elsewhere's with a blocking ask
    let mut g = cluster::Gather::new(http.clone(), resp.clone(), Some(own.clone()), names.clone());
    let mut asked = Vec::new();
    let gathered = loop {
        match g.next() {
            Ok(r) => break r,
            Err(i) => {
                assert!(!asked.contains(&i), "{} asked node {i} twice", http.path);
                asked.push(i);
                g.answer(i, ask(i));
            }
        }
    };
    let mut direct_asked = Vec::new();
    let mut replay = |i: usize| {
        direct_asked.push(i);
        g.answers_for_tests(i)
    };
    let direct = cluster::elsewhere(&http, resp, Some(&own), &names, &mut replay);
    assert_eq!((&gathered, &asked), (&direct, &direct_asked), "{}: Gather and elsewhere differ", http.path);
    parse_response(&gathered.to_bytes()).unwrap().unwrap()
}

fn ok<T: DeserializeOwned>(c: &mut [Sim], at: usize, req: &ClientRequest) -> T {
    let (status, body) = call(c, at, ADMIN, req);
    decode(status, &body).unwrap_or_else(|e| panic!("{:?} {}: {e}", req.method, req.path))
}

fn refused(c: &mut [Sim], at: usize, caller: [u8; 32], req: &ClientRequest) -> (u16, String, String) {
    let (status, body) = call(c, at, caller, req);
    match decode::<serde_json::Value>(status, &body) {
        Err(ClientError::Api { status, code, message }) => (status, code, message),
        r => panic!("{}: expected a refusal, got {status} {r:?}", req.path),
    }
}

fn run_req(name: &str, image: Digest) -> RunRequest {
    RunRequest { name: Some(name.into()), image: image.to_string(), cpus: None, memory_mib: Some(64), env: vec![], args: None, restart: None, net: None, replicas: None, constraints: None }
}

#[test]
fn images_and_runs_reach_the_node_that_holds_the_image() {
    let mut c = cluster();
    let (both, two) = (image().to_string(), only2().to_string());
    // list through node1: both stores, each entry naming its node
    let l: ImageList = ok(&mut c, 0, &client::list_images());
    let mut seen: Vec<(String, String)> = l.images.iter().map(|i| (i.digest.clone(), i.node.clone().unwrap_or_default())).collect();
    seen.sort();
    let mut want = vec![(both.clone(), "node1".to_string()), (both.clone(), "node2".into()), (two.clone(), "node2".into())];
    want.sort();
    assert_eq!(seen, want);
    // inspect through node1: found on node2; one no node has is 404
    let i: Image = ok(&mut c, 0, &client::inspect_image(&two));
    assert_eq!((i.digest.as_str(), i.node.as_deref()), (two.as_str(), Some("node2")));
    let none = Digest([0x33; 32]).to_string();
    assert_eq!(refused(&mut c, 0, ADMIN, &client::inspect_image(&none)).1, "no_such_image");
    // nodes through node1: node2's own CPU and memory figures, before and while it runs; node1
    // has no session with node2 now (an idle one lapsed), but node2 answered: up
    c[0].node.unreachable = vec!["node2".into()];
    let nodes: NodeList = ok(&mut c, 0, &client::list_nodes());
    let n2 = nodes.nodes.iter().find(|n| n.name == "node2").unwrap().clone();
    assert_eq!((n2.cpus, n2.memory_total_mib, n2.memory_free_mib, n2.memory_committed_mib, n2.workloads), (Some(2), Some(2048), Some(2048), Some(0), Some(0)));
    assert_eq!(n2.state, "up");
    // run through node1 of the image only node2 has: placed on node2
    let w: Workload = ok(&mut c, 0, &client::run(&run_req("web", only2())));
    assert_eq!((w.name.as_str(), w.node.as_deref()), ("web", Some("node2")));
    assert_eq!((c[0].node.service.len(), c[1].node.service.len()), (0, 1));
    let nodes: NodeList = ok(&mut c, 0, &client::list_nodes());
    let n2 = nodes.nodes.iter().find(|n| n.name == "node2").unwrap();
    assert_eq!((n2.memory_free_mib, n2.memory_committed_mib, n2.workloads), (Some(2048 - 64), Some(68), Some(1)));
    let n1 = nodes.nodes.iter().find(|n| n.name == "node1").unwrap();
    assert_eq!((n1.memory_committed_mib, n1.workloads), (Some(0), Some(0)));
    // an image no node has: 404 from every node, nothing created
    assert_eq!(refused(&mut c, 0, ADMIN, &client::run(&run_req("nope", Digest([0x33; 32])))).1, "no_such_image");
    // ps through node1 shows it on node2
    let l: WorkloadList = ok(&mut c, 0, &client::list_workloads());
    assert_eq!(l.workloads.iter().map(|w| (w.name.as_str(), w.node.as_deref())).collect::<Vec<_>>(), vec![("web", Some("node2"))]);
    // removing the image while node2's workload names it: node2's refusal, saying where
    let (st, code, msg) = refused(&mut c, 0, ADMIN, &client::remove_image(&two));
    assert_eq!((st, code.as_str()), (409, "image_in_use"));
    assert!(msg.starts_with("node2: "), "{msg}");
    // a viewer may not remove: refused by node1, not forwarded
    assert_eq!(refused(&mut c, 0, VIEWER, &client::remove_image(&two)).0, 403);
    // stop and remove through node1 (forwarded), then the image goes from node2
    let s: Workload = ok(&mut c, 0, &client::stop("web", None));
    assert_eq!(s.node.as_deref(), Some("node2"));
    c[1].node.kernel.alive.clear();
    let n2 = &mut c[1].node;
    n2.service.on_event(VmEvent { vm: 1, event: Event::Ended { how: Ended::PowerOff, touched_bytes: 0, wall_ms: 1 } }, 0, &mut n2.kernel);
    let _: Removed = ok(&mut c, 0, &client::remove("web"));
    let i: Image = ok(&mut c, 0, &client::remove_image(&two));
    assert_eq!(i.node.as_deref(), Some("node2"));
    assert!(c[1].node.kernel.removed.contains(&only2()));
    // an image both nodes hold leaves both
    let i: Image = ok(&mut c, 1, &client::remove_image(&both));
    assert_eq!(i.node.as_deref(), Some("node2,node1"));
    let l: ImageList = ok(&mut c, 0, &client::list_images());
    assert!(l.images.is_empty(), "{:?}", l.images);
    assert_eq!(refused(&mut c, 0, ADMIN, &client::remove_image(&both)).1, "no_such_image");
}

/// `POST /v1/cluster/nodes/{node}/leave`: asked of node1 for node2, it reaches node2 alone,
/// which leaves; asked for itself, node1 leaves; a viewer is refused and nobody leaves; an
/// unknown name is 404 on the node asked and goes nowhere.
#[test]
fn a_leave_reaches_the_named_node_alone() {
    let mut c = cluster();
    assert_eq!(refused(&mut c, 0, VIEWER, &client::leave_node("node2")).0, 403);
    assert!(!c[0].node.left && !c[1].node.left);
    let (status, code, _) = refused(&mut c, 0, ADMIN, &client::leave_node("node9"));
    assert_eq!((status, code.as_str()), (404, "no_such_node"));
    assert!(!c[0].node.left && !c[1].node.left);
    let n: ClusterNode = ok(&mut c, 0, &client::leave_node("node2"));
    assert_eq!(n.name, "node2");
    assert!(c[1].node.left && !c[0].node.left, "node2 must leave, node1 not");
    let _: ClusterNode = ok(&mut c, 0, &client::leave_node("node1"));
    assert!(c[0].node.left);
}

#[test]
fn a_workload_not_found_here_while_a_node_is_silent_is_unavailable_not_gone() {
    let mut c = cluster();
    let w: Workload = ok(&mut c, 0, &client::run(&run_req("web", only2())));
    assert_eq!(w.node.as_deref(), Some("node2"));
    // node2 answers: found there
    let (status, _) = call_with_mute(&mut c, 0, ADMIN, &client::inspect("web"), &[]);
    assert_eq!(status, 200);
    // node2 does not answer: not "no such workload" (a `logs -f` would stop following) but
    // 503 naming the silent node
    let (status, body) = call_with_mute(&mut c, 0, ADMIN, &client::logs("web", 0), &["node2"]);
    let e = decode::<serde_json::Value>(status, &body).unwrap_err();
    match e {
        ClientError::Api { status, code, message } => {
            assert_eq!((status, code.as_str()), (503, "node_unavailable"));
            assert!(message.contains("node2"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    // a workload no node has, every node answering: still 404
    assert_eq!(refused(&mut c, 0, ADMIN, &client::inspect("nope")).1, "no_such_workload");
    // the same image run through node1 with node2 silent: unavailable, nothing created here
    let (status, _) = call_with_mute(&mut c, 0, ADMIN, &client::run(&run_req("web2", only2())), &["node2"]);
    assert_eq!(status, 503);
    assert_eq!(c[0].node.service.len(), 0);
}

/// `Gather` asks one node at a time, each at most once: a list asks every other node in
/// order; a search for a workload this node lacks stops at the first answer that is not 404;
/// a node that gives no answer (`None`) is passed over.
#[test]
fn gather_asks_one_node_at_a_time_and_stops_where_elsewhere_stops() {
    let parse = |raw: &str| RequestReader::new(Limits::default(), 0).feed(raw.as_bytes(), 0).unwrap().unwrap();
    let names: Vec<String> = vec!["node2".into(), "node3".into(), "node4".into()];
    let run = |req: crate::http::Request, own: crate::http::Response, answers: &[Option<(u16, Vec<u8>)>]| {
        let mut g = cluster::Gather::new(req, own, Some("node1".into()), names.clone());
        let mut asked = Vec::new();
        loop {
            match g.next() {
                Ok(r) => return (r, asked),
                Err(i) => {
                    assert!(!asked.contains(&i) && asked.len() < 10, "asked {asked:?} then {i}");
                    asked.push(i);
                    g.answer(i, answers[i].clone());
                }
            }
        }
    };
    let missing = crate::ApiError::new(404, "no_such_workload", "no workload has that name").to_response();
    let found = br#"{"name":"w","state":"running"}"#.to_vec();
    let (r, asked) = run(parse("GET /v1/workloads/w HTTP/1.1\r\nHost: x\r\n\r\n"), missing.clone(), &[Some((404, missing.body.clone())), None, Some((200, found.clone())), Some((200, found.clone()))]);
    assert_eq!(asked, vec![0, 1, 2]);
    assert_eq!(r.status, 200);
    let (_, asked) = run(parse("GET /v1/workloads/w HTTP/1.1\r\nHost: x\r\n\r\n"), missing.clone(), &[Some((200, found.clone())), None, None]);
    assert_eq!(asked, vec![0], "the first answer that is not 404 ends the search");
    let list = |n: &str| serde_json::to_vec(&serde_json::json!({"workloads": [{"id": 1, "name": n, "state": "running", "exit": null, "restarts": 0, "memory_mib": 64, "address": null}]})).unwrap();
    let own = crate::http::Response::json(200, list("a"));
    let (r, asked) = run(parse("GET /v1/workloads HTTP/1.1\r\nHost: x\r\n\r\n"), own, &[Some((200, list("b"))), None, Some((200, list("d")))]);
    assert_eq!(asked, vec![0, 1, 2]);
    let names_in: Vec<(String, Option<String>)> = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap().to_string(), w["node"].as_str().map(String::from)))
        .collect();
    assert_eq!(names_in, vec![("a".into(), Some("node1".into())), ("b".into(), Some("node2".into())), ("d".into(), Some("node4".into()))]);
}

/// STATE is what the request saw (docs/api.md): a killed node whose fabric session node1 still
/// holds, and that the membership declared dead, is not `up`; nor is one that is alive in the
/// membership but did not answer the gather; one that answered is `up` unless the membership
/// declared it dead. The node asked is always `up`.
#[test]
fn a_node_is_up_only_if_it_answered_and_is_not_dead() {
    let mut c = cluster();
    let row = |c: &mut [Sim], mute: &[&str], name: &str| -> Node {
        let (status, body) = call_with_mute(c, 0, ADMIN, &client::list_nodes(), mute);
        let l: NodeList = decode(status, &body).unwrap();
        l.nodes.iter().find(|n| n.name == name).unwrap().clone()
    };
    // answered, alive: up, with its figures
    let n2 = row(&mut c, &[], "node2");
    assert_eq!((n2.state.as_str(), n2.cpus), ("up", Some(2)));
    // killed: node1's session with it is still established, the membership says dead, and it
    // does not answer
    c[0].node.dead = vec!["node2".into()];
    let n2 = row(&mut c, &["node2"], "node2");
    assert_eq!((n2.state.as_str(), n2.membership.as_deref(), n2.cpus), ("unreachable", Some("dead"), None));
    // alive in the membership, session up, but silent (hung, or too slow): not up either
    c[0].node.dead.clear();
    let n2 = row(&mut c, &["node2"], "node2");
    assert_eq!((n2.state.as_str(), n2.membership.as_deref()), ("unreachable", Some("alive")));
    // it answers while the membership has written it off: not up
    c[0].node.dead = vec!["node2".into()];
    let n2 = row(&mut c, &[], "node2");
    assert_eq!((n2.state.as_str(), n2.membership.as_deref()), ("unreachable", Some("dead")));
    // the node asked is up whatever the others do
    let n1 = row(&mut c, &["node2"], "node1");
    assert_eq!(n1.state, "up");
}
