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
    // as apid gathers: every node a read needs asked at once, a mutation's one at a time;
    // the answer is elsewhere's with a blocking ask on the same answers
    let mut g = cluster::Gather::new(http.clone(), resp.clone(), Some(own.clone()), names.clone());
    let parallel = g.parallel();
    let mut asked = Vec::new();
    let gathered = loop {
        if let Some(r) = g.done() {
            break r;
        }
        let v = g.to_ask(usize::MAX);
        assert!(!v.is_empty() || !g.in_flight().is_empty(), "{}: no answer and nothing to ask", http.path);
        assert!(parallel || v.len() <= 1, "{}: a mutation asked {v:?} at once", http.path);
        for i in v {
            assert!(!asked.contains(&i), "{} asked node {i} twice", http.path);
            asked.push(i);
        }
        for i in g.in_flight() {
            g.answer(i, ask(i));
        }
    };
    let mut direct_asked = Vec::new();
    let mut replay = |i: usize| {
        direct_asked.push(i);
        g.answers_for_tests(i)
    };
    let direct = cluster::elsewhere(&http, resp, Some(&own), &names, &mut replay);
    assert_eq!(gathered, direct, "{}: Gather and elsewhere differ", http.path);
    // a read may have asked more nodes than it needed in the end; a mutation never did
    assert!(direct_asked.iter().all(|i| asked.contains(i)), "{}: {asked:?} / {direct_asked:?}", http.path);
    if !parallel {
        assert_eq!(asked, direct_asked, "{}: a mutation must reach the nodes elsewhere asks, no more", http.path);
    }
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
    RunRequest { health: None, name: Some(name.into()), image: image.to_string(), cpus: None, memory_mib: Some(64), env: vec![], args: None, restart: None, net: None, replicas: None, constraints: None }
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
    // and its store as it reports it to the scheduler: the 512 MiB quota untouched (these
    // images were put in the index, not pushed) and two images (node1's own row: one)
    assert_eq!((n2.store_free_mib, n2.images), (Some(512), Some(2)));
    let n1 = nodes.nodes.iter().find(|n| n.name == "node1").unwrap();
    assert_eq!((n1.store_free_mib, n1.images), (Some(512), Some(1)));
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

/// `Gather` asks a read's nodes together and a mutation's one at a time, each at most once:
/// a list asks every other node at once; a search for a workload this node lacks asks every
/// node at once but answers with the first in order that is not 404 (waiting for the nodes
/// before it, not after); a stop, which must act on one node only, asks the next node only
/// once the one before said 404, and stops at the first answer that is not 404; a node that
/// gives no answer (`None`) is passed over.
#[test]
fn gather_asks_reads_together_and_mutations_one_at_a_time() {
    let parse = |raw: &str| RequestReader::new(Limits::default(), 0).feed(raw.as_bytes(), 0).unwrap().unwrap();
    let names: Vec<String> = vec!["node2".into(), "node3".into(), "node4".into()];
    // rounds: what to_ask gave each time; every node in flight answers between rounds
    let run = |req: crate::http::Request, own: crate::http::Response, answers: &[Option<(u16, Vec<u8>)>]| {
        let mut g = cluster::Gather::new(req, own, Some("node1".into()), names.clone());
        let mut rounds: Vec<Vec<usize>> = Vec::new();
        loop {
            if let Some(r) = g.done() {
                return (r, rounds);
            }
            let v = g.to_ask(usize::MAX);
            assert!(!v.is_empty() && rounds.len() < 10, "asked {rounds:?} then {v:?}");
            rounds.push(v);
            for i in g.in_flight() {
                g.answer(i, answers[i].clone());
            }
        }
    };
    let missing = crate::ApiError::new(404, "no_such_workload", "no workload has that name").to_response();
    let found = br#"{"name":"w","state":"running"}"#.to_vec();
    let get = || parse("GET /v1/workloads/w HTTP/1.1\r\nHost: x\r\n\r\n");
    let (r, rounds) = run(get(), missing.clone(), &[Some((404, missing.body.clone())), None, Some((200, found.clone())), Some((200, found.clone()))]);
    assert_eq!(rounds, vec![vec![0, 1, 2]], "a read asks every node at once");
    assert_eq!(r.status, 200);
    // the first node that is not 404 in order is the answer, even if a later one came first
    let mut g = cluster::Gather::new(get(), missing.clone(), Some("node1".into()), names.clone());
    assert_eq!(g.to_ask(usize::MAX), vec![0, 1, 2]);
    g.answer(2, Some((200, br#"{"name":"w","state":"exited"}"#.to_vec())));
    assert!(g.done().is_none(), "node2 and node3 may have it first");
    g.answer(0, Some((200, found.clone())));
    let r = g.done().expect("node2 has it: node3's answer is not needed");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["state"], "running");
    assert_eq!(g.in_flight(), vec![1], "node3 is still in flight: the caller closes it");
    // at most `free` at once
    let mut g = cluster::Gather::new(get(), missing.clone(), Some("node1".into()), names.clone());
    assert_eq!((g.to_ask(2), g.to_ask(2), g.to_ask(2)), (vec![0, 1], vec![2], vec![]));
    // a stop acts on one node only: asked in order, one at a time
    let stop = || parse("POST /v1/workloads/w/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    let (r, rounds) = run(stop(), missing.clone(), &[Some((404, missing.body.clone())), None, Some((200, found.clone()))]);
    assert_eq!(rounds, vec![vec![0], vec![1], vec![2]]);
    assert_eq!(r.status, 200);
    let (_, rounds) = run(stop(), missing.clone(), &[Some((200, found.clone())), None, None]);
    assert_eq!(rounds, vec![vec![0]], "the first answer that is not 404 ends the search");
    let list = |n: &str| serde_json::to_vec(&serde_json::json!({"workloads": [{"id": 1, "name": n, "state": "running", "exit": null, "restarts": 0, "memory_mib": 64, "address": null}]})).unwrap();
    let own = crate::http::Response::json(200, list("a"));
    let (r, rounds) = run(parse("GET /v1/workloads HTTP/1.1\r\nHost: x\r\n\r\n"), own, &[Some((200, list("b"))), None, Some((200, list("d")))]);
    assert_eq!(rounds, vec![vec![0, 1, 2]]);
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

/// How another node answers an ask in [`Loop`]: after `ms`, or never (killed, hung).
#[derive(Clone, Copy)]
enum Net {
    After(u64),
    Silent,
}

/// (connection, node, exchange, when its answer arrives and its bytes)
type InFlight = (u64, usize, crate::exchange::Exchange, Option<(u64, Vec<u8>)>);

/// `apid`'s loop over [`cluster::Forwards`], with a clock: the node asked is `c[0]`; each
/// ask is a real `Exchange` (its deadline `budget` ms, as apid's `Outbound`) that gets the
/// other node's real answer (its `Api` on the same request) `Net::After` ms after it went
/// out, or nothing; events are taken in time order.
struct Loop {
    c: Vec<Sim>,
    f: cluster::Forwards<u64>,
    net: Vec<Net>,
    budget: u64,
    now: u64,
    flight: Vec<InFlight>,
    /// (time, connection, node) of every ask that went out
    started: Vec<(u64, u64, usize)>,
    /// connection → (time, answer)
    answered: alloc::collections::BTreeMap<u64, (u64, crate::http::Response)>,
}

impl Loop {
    fn new(nodes: usize, net: Vec<Net>, parked_max: usize, asks_max: usize, budget: u64) -> Loop {
        let names: Vec<String> = (1..=nodes).map(|i| alloc::format!("node{i}")).collect();
        let c = names
            .iter()
            .map(|n| {
                let mut node = SimNode::new(1024);
                node.name = n.clone();
                node.members = names.clone();
                Sim { api: fuzzing::api(), node }
            })
            .collect();
        Loop { c, f: cluster::Forwards::new(parked_max, asks_max), net, budget, now: 0, flight: Vec::new(), started: Vec::new(), answered: Default::default() }
    }

    /// An operator's request to node1 on connection `conn`: parked (or `Err`: busy).
    fn park(&mut self, conn: u64, req: &ClientRequest) -> Result<(), ()> {
        let http = RequestReader::new(Limits::default(), 0).feed(&req.to_bytes("[fd00::1]:8080"), 0).unwrap().unwrap();
        let me = &mut self.c[0];
        let resp = me.api.handle(&ADMIN, &http, &mut me.node, self.now);
        let names = self.c[1..].iter().map(|s| s.node.name.clone()).collect();
        self.f.park(conn, cluster::Gather::new(http, resp, Some("node1".into()), names)).map_err(|_| ())?;
        self.pump();
        Ok(())
    }

    /// Answers that are ready go out, their leftover asks are closed; free sockets get asks.
    fn pump(&mut self) {
        for (k, r, left) in self.f.finished() {
            self.answered.insert(k, (self.now, r));
            self.flight.retain(|(fk, i, ..)| !(*fk == k && left.contains(i)));
        }
        for (k, i) in self.f.to_ask() {
            let req = self.f.request(k).unwrap().clone();
            let o = &mut self.c[i + 1];
            let r = o.api.handle(&ADMIN, &req, &mut o.node, self.now);
            let due = match self.net[i] {
                Net::After(ms) => Some((self.now + ms, r.to_bytes())),
                Net::Silent => None,
            };
            self.started.push((self.now, k, i));
            self.flight.push((k, i, crate::exchange::Exchange::new(alloc::vec![0u8; 1], self.now, self.budget, 320 * 1024), due));
        }
    }

    /// The operator of `conn` hung up.
    fn hang_up(&mut self, conn: u64) {
        let left = self.f.gone(conn);
        self.flight.retain(|(k, i, ..)| !(*k == conn && left.contains(i)));
        self.pump();
    }

    /// Until `until` or nothing is in flight.
    fn run(&mut self, until: u64) {
        while !self.flight.is_empty() {
            let next = self.flight.iter().map(|(_, _, x, due)| due.as_ref().map_or(x.deadline_ms() + 1, |d| d.0)).min().unwrap();
            if next > until {
                self.now = until;
                return;
            }
            self.now = next;
            let now = self.now;
            let mut j = 0;
            while j < self.flight.len() {
                let (k, i, x, due) = &mut self.flight[j];
                let a = match due {
                    Some((t, b)) if *t <= now => match x.received(b) {
                        crate::exchange::Outcome::Done(st, body) => Some(Some((st, body))),
                        o => panic!("{o:?}"),
                    },
                    _ if x.expired(now) => Some(None),
                    _ => None,
                };
                match a {
                    Some(a) => {
                        let (k, i) = (*k, *i);
                        self.flight.swap_remove(j);
                        self.f.answer(k, i, a);
                    }
                    None => j += 1,
                }
            }
            self.pump();
        }
    }
}

/// A gather asks the other nodes together and ends when all answered or timed out: through
/// node1 of five, with node2 and node3 silent (killed with their sessions up) and node4 and
/// node5 answering in 100 and 300 ms, `nodes` takes one timeout (10 s), not one per silent
/// node; every ask went out at once; the rows of the nodes that answered have their figures.
/// With fewer sockets than nodes (2), the two that answer go through the other socket while
/// the silent ones hold theirs: still one timeout.
#[test]
fn a_gather_asks_together_and_a_silent_node_costs_one_timeout() {
    const T: u64 = 10_000;
    let net = vec![Net::Silent, Net::Silent, Net::After(100), Net::After(300)];
    let mut l = Loop::new(5, net.clone(), 2, 6, T);
    l.park(1, &client::list_nodes()).unwrap();
    let at0: Vec<usize> = l.started.iter().filter(|s| s.0 == 0).map(|s| s.2).collect();
    assert_eq!(at0, vec![0, 1, 2, 3], "every node is asked at once");
    l.run(u64::MAX);
    let (t, r) = l.answered.get(&1).cloned().expect("answered");
    assert!(t <= T + 1, "one timeout: answered at {t} ms");
    let nodes: NodeList = decode(r.status, &r.body).unwrap();
    let st: Vec<(String, String, Option<u32>)> = nodes.nodes.iter().map(|n| (n.name.clone(), n.state.clone(), n.cpus)).collect();
    assert_eq!(st[1..], [("node2".into(), "unreachable".into(), None), ("node3".into(), "unreachable".into(), None), ("node4".into(), "up".into(), Some(2)), ("node5".into(), "up".into(), Some(2))]);
    // two sockets for four nodes: the silent two hold both for a timeout, then the others
    // answer: still about one timeout (asked one after another: two timeouts and more)
    let mut l = Loop::new(5, net, 2, 2, T);
    l.park(1, &client::list_nodes()).unwrap();
    assert_eq!(l.started.iter().filter(|s| s.0 == 0).count(), 2);
    l.run(u64::MAX);
    let t = l.answered[&1].0;
    assert!(t <= T + 1 + 300, "two sockets: answered at {t} ms");
}

/// The sockets are shared: a request parked while another holds every socket for silent
/// nodes gets the next one that frees; a mutation (stop) through the same loop still asks one
/// node at a time.
#[test]
fn parked_requests_share_the_sockets() {
    const T: u64 = 10_000;
    let mut l = Loop::new(4, vec![Net::Silent, Net::After(100), Net::After(100)], 2, 3, T);
    l.park(1, &client::list_workloads()).unwrap();
    assert_eq!(l.started.len(), 3, "{:?}", l.started);
    l.park(2, &client::list_images()).unwrap();
    l.run(150);
    // node3's and node4's sockets freed at 100 ms: request 2 took them
    let two: Vec<(u64, usize)> = l.started.iter().filter(|s| s.1 == 2).map(|s| (s.0, s.2)).collect();
    assert_eq!(two, vec![(100, 0), (100, 1)]);
    l.run(u64::MAX);
    assert_eq!((l.answered[&1].0, l.answered[&2].0), (T + 1, T + 101), "{:?}", l.started);
    let started = l.started.len();
    l.park(3, &client::stop("w", None)).unwrap();
    assert_eq!(l.started.len(), started + 1, "a stop asks one node at a time");
}

/// An operator who hangs up while its request is parked frees its place and its sockets at
/// once, not when the gather ends: with both places taken (one by a request waiting for a
/// silent node), a third request is busy; once the first operator hangs up, the third is
/// parked and asks at once, and the first's asks are gone.
#[test]
fn a_parked_request_whose_operator_hangs_up_frees_its_place_and_sockets() {
    const T: u64 = 10_000;
    let mut l = Loop::new(3, vec![Net::Silent, Net::Silent], 2, 2, T);
    l.park(1, &client::list_nodes()).unwrap();
    l.park(2, &client::list_workloads()).unwrap();
    assert_eq!((l.f.parked(), l.f.in_flight()), (2, 2));
    assert!(l.park(3, &client::list_nodes()).is_err(), "both places taken: busy");
    l.run(1000);
    l.hang_up(1);
    assert_eq!(l.f.parked(), 1);
    assert!(l.flight.iter().all(|(k, ..)| *k != 1), "request 1's asks are closed");
    // request 2 took the socket request 1 held
    assert!(l.started.iter().any(|s| *s == (1000, 2, 1) || *s == (1000, 2, 0)), "{:?}", l.started);
    l.park(3, &client::list_nodes()).unwrap();
    l.run(u64::MAX);
    assert!(!l.answered.contains_key(&1));
    assert_eq!(l.answered.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    // request 2 took both sockets at the hang-up (1000 ms); request 3 asks as they free
    assert_eq!(l.started.iter().find(|s| s.1 == 3).map(|s| s.0), Some(1000 + T + 1), "{:?}", l.started);
}

/// `apid` answers a node the membership declared dead with `None` before it asks anyone
/// (`cluster::Reach::Dead`): that node is never asked, a read completes on the others' answers
/// alone, and a request that acts on one node goes on to the next node at once.
#[test]
fn a_node_answered_missing_before_asking_is_never_asked() {
    let parse = |raw: &str| RequestReader::new(Limits::default(), 0).feed(raw.as_bytes(), 0).unwrap().unwrap();
    let names: Vec<String> = vec!["node2".into(), "node3".into(), "node4".into()];
    let missing = crate::ApiError::new(404, "no_such_workload", "no workload has that name").to_response();
    let found = br#"{"name":"w","state":"running"}"#.to_vec();
    // a read: node3 (index 1) is dead
    let mut g = cluster::Gather::new(parse("GET /v1/workloads/w HTTP/1.1\r\nHost: x\r\n\r\n"), missing.clone(), Some("node1".into()), names.clone());
    g.answer(1, None);
    assert_eq!(g.to_ask(usize::MAX), vec![0, 2], "the dead node was asked");
    assert!(g.in_flight() == vec![0, 2] && g.done().is_none());
    g.answer(0, Some((404, missing.body.clone())));
    g.answer(2, Some((200, found.clone())));
    assert_eq!(g.done().map(|r| r.status), Some(200));
    assert!(g.to_ask(usize::MAX).is_empty());
    // a stop, one node at a time: node2 dead, so node3 is the first asked
    let mut g = cluster::Gather::new(parse("POST /v1/workloads/w/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), missing.clone(), Some("node1".into()), names.clone());
    g.answer(0, None);
    assert_eq!(g.to_ask(usize::MAX), vec![1], "not the dead node first");
    g.answer(1, Some((200, found.clone())));
    assert_eq!(g.done().map(|r| r.status), Some(200));
    // every other node dead: the answer needs no ask at all
    let mut g = cluster::Gather::new(parse("GET /v1/workloads HTTP/1.1\r\nHost: x\r\n\r\n"), crate::http::Response::json(200, br#"{"workloads":[]}"#.to_vec()), Some("node1".into()), names.clone());
    for i in 0..3 {
        g.answer(i, None);
    }
    assert!(g.done().is_some() && g.to_ask(usize::MAX).is_empty());
}

/// `apid` leaves out a `left` node from every gather but the node listing, and a `dead` one
/// from all ([`cluster::Gather::leave_out`]): a `ps` after a node's power button asks only the
/// nodes still in the cluster.
#[test]
fn a_left_node_is_asked_for_the_node_listing_only() {
    use cluster::Reach;
    let parse = |raw: &str| RequestReader::new(Limits::default(), 0).feed(raw.as_bytes(), 0).unwrap().unwrap();
    let names: Vec<String> = vec!["node2".into(), "node3".into(), "node4".into(), "node5".into()];
    let reach = [Reach::Session, Reach::Left, Reach::Dead, Reach::Idle];
    for (path, empty) in [("/v1/workloads", r#"{"workloads":[]}"#), ("/v1/images", r#"{"images":[]}"#), ("/v1/cluster/workloads", r#"{"workloads":[],"total":0}"#)] {
        let mut g = cluster::Gather::new(parse(&alloc::format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")), crate::http::Response::json(200, empty.as_bytes().to_vec()), Some("node1".into()), names.clone());
        g.leave_out(&reach);
        assert_eq!(g.to_ask(usize::MAX), vec![0, 3], "{path}: the left and dead nodes are not asked");
        g.answer(0, None);
        g.answer(3, None);
        assert!(g.done().is_some(), "{path}: complete without them");
    }
    // the node listing: the left node is asked (its STATE says whether it answers), the dead
    // one is not
    let row = |n: &str| alloc::format!(r#"{{"name":"{n}","public_key":"","address":"","state":"up","cpus":null,"memory_total_mib":null,"memory_free_mib":null,"memory_committed_mib":null,"workloads":null}}"#);
    let nodes = alloc::format!(r#"{{"nodes":[{}]}}"#, ["node1", "node2", "node3", "node4", "node5"].map(row).join(",")).into_bytes();
    let mut g = cluster::Gather::new(parse("GET /v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n"), crate::http::Response::json(200, nodes), Some("node1".into()), names.clone());
    g.leave_out(&reach);
    assert_eq!(g.to_ask(usize::MAX), vec![0, 1, 3]);
    // its own leave, asked again: forwarded to it (it answers that it left)
    let not_here = crate::ApiError::new(404, cluster::NOT_THIS_NODE, "not this node").to_response();
    let mut g = cluster::Gather::new(parse("POST /v1/cluster/nodes/node3/leave HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), not_here, Some("node1".into()), names.clone());
    g.leave_out(&reach);
    assert_eq!(g.to_ask(usize::MAX), vec![1]);
    // a stop, one node at a time: the first node left, so the second is asked first; the
    // left node is never asked; node2 and node4 answer no
    let missing = crate::ApiError::new(404, "no_such_workload", "no workload has that name").to_response();
    let stop = |third: Reach| {
        let mut g = cluster::Gather::new(parse("POST /v1/workloads/w/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), missing.clone(), Some("node1".into()), names.clone());
        g.leave_out(&[Reach::Left, Reach::Idle, third, Reach::Session]);
        assert_eq!(g.to_ask(usize::MAX), vec![1]);
        g.answer(1, Some((404, missing.body.clone())));
        assert_eq!(g.to_ask(usize::MAX), vec![3]);
        g.answer(3, Some((404, missing.body.clone())));
        let r = g.done().unwrap();
        (r.status, String::from_utf8_lossy(&r.body).to_string())
    };
    // the dead node may hold it (it may come back): not a sure 404; the left one holds
    // nothing of the cluster's
    let (status, body) = stop(Reach::Dead);
    assert!(status == 503 && body.contains("node4 did not answer") && !body.contains("node2"), "{status} {body}");
    // with no node dead: every member said no, so no such workload (404), the left nodes
    // counted as holding nothing
    let (status, body) = stop(Reach::Left);
    assert!(status == 404 && body.contains("no_such_workload"), "{status} {body}");
}

/// `apid` takes a request it would otherwise refuse `busy` (no room to park) when none of the
/// other nodes is asked for it ([`cluster::Reach::asked_for`]): such a request must then be
/// complete on this node's own answer, whatever that answer and the request are.
#[test]
fn a_request_no_node_is_asked_for_is_complete_at_once() {
    use cluster::Reach;
    let parse = |raw: &str| RequestReader::new(Limits::default(), 0).feed(raw.as_bytes(), 0).unwrap().unwrap();
    let names: Vec<String> = vec!["node2".into(), "node3".into()];
    let requests = [
        "GET /v1/workloads HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1/workloads/w HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1/workloads/w/logs HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1/images HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1/cluster/workloads HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1/cluster/workloads/w HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /v1/workloads/w/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "POST /v1/workloads/w/start HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "DELETE /v1/workloads/w HTTP/1.1\r\nHost: x\r\n\r\n",
        "DELETE /v1/images/sha256:0000000000000000000000000000000000000000000000000000000000000000 HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /v1/cluster/nodes/node3/leave HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "GET /v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let answers = [
        crate::ApiError::new(404, "no_such_workload", "no workload has that name").to_response(),
        crate::ApiError::new(404, "no_such_image", "no image has that digest").to_response(),
        crate::ApiError::new(404, cluster::NOT_THIS_NODE, "not this node").to_response(),
        crate::http::Response::json(200, br#"{"workloads":[],"total":0}"#.to_vec()),
        crate::http::Response::json(200, br#"{"images":[]}"#.to_vec()),
        crate::http::Response::json(200, br#"{"nodes":[{"name":"node2","public_key":"","address":"","state":"up","cpus":null,"memory_total_mib":null,"memory_free_mib":null,"memory_committed_mib":null,"workloads":null}]}"#.to_vec()),
    ];
    let reaches = [Reach::Session, Reach::Idle, Reach::Left, Reach::Dead];
    let mut checked = 0;
    for raw in requests {
        let req = parse(raw);
        for a in &reaches {
            for b in &reaches {
                let reach = [*a, *b];
                if reach.iter().any(|r| r.asked_for(&req)) {
                    continue;
                }
                for resp in &answers {
                    let mut g = cluster::Gather::new(req.clone(), resp.clone(), Some("node1".into()), names.clone());
                    g.leave_out(&reach);
                    assert!(g.done().is_some() && g.to_ask(usize::MAX).is_empty(), "{raw:?} {reach:?} {}", resp.status);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "{checked}");
}
