//! What the other nodes add to a node's answer (issue 12 item 3, docs/api.md "Requests reach
//! the right node"). The node asked answers from its own service first; then, for an
//! operator's request:
//!
//! - lists are gathered from every other node that is up: `GET /v1/workloads` and
//!   `GET /v1/images` (each entry's `node` names its node), `GET /v1/nodes` (each node's row
//!   takes that node's own CPU and memory figures);
//! - a workload this node does not have (404 `no_such_workload`), an image it does not have
//!   (`GET /v1/images/{digest}`: 404 `no_such_image`) and a run of an image it does not have
//!   (`POST /v1/workloads`: 404 `no_such_image`) go to the other nodes (a read to all at
//!   once, a run or another change one after another): the first answer in order that is not
//!   404 is the answer (a `Workload` or `Image` in it names its
//!   `node`), so a run lands on the node that holds the image;
//! - `DELETE /v1/images/{digest}` removes the image from every node that holds it.
//! - `POST /v1/cluster/nodes/{node}/leave` for another node (404 [`NOT_THIS_NODE`]) goes to
//!   that node alone: only a node can leave for itself.
//!
//! Pure: `ask(i)` sends the same request to `others[i]` (for the same operator) and returns its
//! (status, body), or `None` when that node did not answer in time; the service supplies the
//! fabric connection (`apid/forward.rs`). A service that must not wait for another node (`apid`
//! serves every connection from one loop) uses [`Gather`]: it says which nodes' answers are
//! needed (all at once for a read), takes each answer as it comes, and gives the answer
//! [`elsewhere`] would; [`Forwards`] keeps the parked requests and shares the sockets.

use crate::http::{Method, Request, Response};
use crate::cluster_state;
use crate::types::{ClusterWorkloadList, ClusterWorkloadStatus, ErrorBody, Image, ImageList, NodeList, NodeState, Workload, WorkloadList};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// Entries taken from one other node's list (the workload service holds at most 32 workloads;
/// a store holds fewer images than that).
pub const LIST_MAX: usize = catenary_workload::proto::WORKLOADS_MAX;

/// The error code of a leave asked of a node for another member.
pub const NOT_THIS_NODE: &str = "not_this_node";

/// `/v1/cluster/nodes/{node}/leave`: the node.
fn leave_target(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/cluster/nodes/")?.strip_suffix("/leave").filter(|n| !n.is_empty() && !n.contains('/'))
}

/// The error code of an answer, if it is an error body.
fn code(r: &Response) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(&r.body).ok().map(|e| e.error.code)
}

/// `/v1/images/{digest}` (not an upload path).
fn is_image_path(path: &str) -> bool {
    path.strip_prefix("/v1/images/").is_some_and(|d| !d.is_empty() && !d.contains('/') && d != "uploads")
}

fn json<T: serde::Serialize>(status: u16, v: &T, fallback: Response) -> Response {
    serde_json::to_vec(v).map(|b| Response::json(status, b)).unwrap_or(fallback)
}

/// Name the node in a forwarded answer that is a `Workload` or an `Image` (others pass as
/// they are: logs, removals, errors).
fn named(status: u16, body: Vec<u8>, node: &str) -> Response {
    let raw = Response::json(status, body);
    if !(200..300).contains(&status) {
        return raw;
    }
    if let Ok(mut w) = serde_json::from_slice::<Workload>(&raw.body) {
        w.node = Some(node.into());
        return json(status, &w, raw);
    }
    if let Ok(mut i) = serde_json::from_slice::<Image>(&raw.body) {
        i.node = Some(node.into());
        return json(status, &i, raw);
    }
    raw
}

/// A node the membership declared `dead` is not `up`, whatever else says so (its fabric
/// session outlives it; an answer from it is from a member the cluster has written off:
/// its replicas moved, and it comes back only as a new generation).
pub fn not_up_when_dead(row: &mut crate::types::Node) {
    if NodeState::Up.is(&row.state) && row.membership.as_deref() == Some("dead") {
        row.state = NodeState::Unreachable.name().into();
    }
}

/// Whether the other nodes may have a say in `req`'s answer (else [`elsewhere`] returns the
/// node's own answer as it is, and the service need not look for the nodes that are up).
pub fn concerns_others(req: &Request) -> bool {
    match req.method {
        Method::Get => {
            matches!(req.path.as_str(), "/v1/workloads" | "/v1/images" | "/v1/nodes" | "/v1/cluster/workloads")
                || req.path.starts_with("/v1/workloads/")
                || req.path.starts_with("/v1/cluster/workloads/")
                || is_image_path(&req.path)
        }
        Method::Delete => req.path.starts_with("/v1/workloads/") || is_image_path(&req.path),
        Method::Post => req.path == "/v1/workloads" || req.path.starts_with("/v1/workloads/") || leave_target(&req.path).is_some(),
        Method::Put => false,
    }
}

/// The answer to `req` once the other nodes had their say. `own`: this node's name; `others`:
/// the other nodes that are up, by name.
pub fn elsewhere(req: &Request, resp: Response, own: Option<&str>, others: &[String], ask: &mut dyn FnMut(usize) -> Option<(u16, Vec<u8>)>) -> Response {
    let get = req.method == Method::Get;
    match (req.method, req.path.as_str(), resp.status) {
        (Method::Get, "/v1/workloads", 200) => {
            let Ok(mut list) = serde_json::from_slice::<WorkloadList>(&resp.body) else { return resp };
            for w in &mut list.workloads {
                w.node = own.map(String::from);
            }
            for (i, name) in others.iter().enumerate() {
                if let Some((200, body)) = ask(i) {
                    if let Ok(l) = serde_json::from_slice::<WorkloadList>(&body) {
                        list.workloads.extend(l.workloads.into_iter().take(LIST_MAX).map(|mut w| {
                            w.node = Some(name.clone());
                            w
                        }));
                    }
                }
            }
            json(200, &list, resp)
        }
        (Method::Get, "/v1/images", 200) => {
            let Ok(mut list) = serde_json::from_slice::<ImageList>(&resp.body) else { return resp };
            for im in &mut list.images {
                im.node = own.map(String::from);
            }
            for (i, name) in others.iter().enumerate() {
                if let Some((200, body)) = ask(i) {
                    if let Ok(l) = serde_json::from_slice::<ImageList>(&body) {
                        list.images.extend(l.images.into_iter().take(LIST_MAX).map(|mut im| {
                            im.node = Some(name.clone());
                            im
                        }));
                    }
                }
            }
            json(200, &list, resp)
        }
        (Method::Get, "/v1/nodes", 200) => {
            let Ok(mut list) = serde_json::from_slice::<NodeList>(&resp.body) else { return resp };
            for (i, name) in others.iter().enumerate() {
                let Some(row) = list.nodes.iter_mut().find(|n| &n.name == name) else { continue };
                // STATE is what this request saw (docs/api.md): `up` only if the node answered
                // it now, whatever its fabric session says (a killed node's session outlives it)
                let theirs = match ask(i) {
                    Some((200, body)) => serde_json::from_slice::<NodeList>(&body).ok(),
                    _ => None,
                };
                // only the node's figures about itself
                let t = theirs.as_ref().and_then(|l| l.nodes.iter().find(|n| &n.name == name));
                if NodeState::Up.is(&row.state) || NodeState::Unreachable.is(&row.state) {
                    row.state = if t.is_some() { NodeState::Up } else { NodeState::Unreachable }.name().into();
                }
                if let Some(t) = t {
                    row.cpus = t.cpus;
                    row.memory_total_mib = t.memory_total_mib;
                    row.memory_free_mib = t.memory_free_mib;
                    row.memory_committed_mib = t.memory_committed_mib;
                    row.workloads = t.workloads;
                    row.store_free_mib = t.store_free_mib;
                    row.images = t.images;
                }
            }
            for row in &mut list.nodes {
                if Some(row.name.as_str()) != own {
                    not_up_when_dead(row);
                }
            }
            json(200, &list, resp)
        }
        (Method::Delete, p, 200 | 404 | 409) if is_image_path(p) => remove_image(resp, own, others, ask),
        // The desired state: every node lists the same committed workloads and knows the
        // state of the replicas assigned to it; each other node's answer fills in its own.
        (Method::Get, "/v1/cluster/workloads", 200) => {
            let Ok(mut list) = serde_json::from_slice::<ClusterWorkloadList>(&resp.body) else { return resp };
            for (i, from) in others.iter().enumerate() {
                let Some((200, body)) = ask(i) else { continue };
                let Ok(theirs) = serde_json::from_slice::<ClusterWorkloadList>(&body) else { continue };
                for w in &mut list.workloads {
                    if let Some(t) = theirs.workloads.iter().find(|t| t.name == w.name) {
                        cluster_state::merge(w, t, from);
                    }
                }
            }
            json(200, &list, resp)
        }
        (Method::Get, p, 200) if p.starts_with("/v1/cluster/workloads/") => {
            let Ok(mut w) = serde_json::from_slice::<ClusterWorkloadStatus>(&resp.body) else { return resp };
            for (i, from) in others.iter().enumerate() {
                if let Some((200, body)) = ask(i) {
                    if let Ok(t) = serde_json::from_slice::<ClusterWorkloadStatus>(&body) {
                        cluster_state::merge(&mut w, &t, from);
                    }
                }
            }
            json(200, &w, resp)
        }
        (Method::Post, p, 404) if leave_target(p).is_some() && code(&resp).as_deref() == Some(NOT_THIS_NODE) => {
            let node = leave_target(p).unwrap_or_default();
            match others.iter().position(|n| n == node).map(&mut *ask) {
                Some(Some((status, body))) => Response::json(status, body),
                Some(None) => crate::error::ApiError::new(503, "node_unavailable", "that node did not answer").to_response(),
                None => resp,
            }
        }
        _ => {
            let c = if resp.status == 404 { code(&resp) } else { None };
            let workload = req.path.starts_with("/v1/workloads/") && c.as_deref() == Some("no_such_workload");
            let image = get && is_image_path(&req.path) && c.as_deref() == Some("no_such_image");
            let run = req.method == Method::Post && req.path == "/v1/workloads" && c.as_deref() == Some("no_such_image");
            if workload || image || run {
                let mut silent: Vec<&str> = Vec::new();
                for (i, name) in others.iter().enumerate() {
                    match ask(i) {
                        Some((404, _)) => {}
                        Some((status, body)) => return named(status, body, name),
                        None => silent.push(name),
                    }
                }
                // "no such workload" is only true if every node said so: one that did not
                // answer may hold it (a follower such as `logs -f` must not take it as gone)
                if !silent.is_empty() {
                    let what = if workload { "workload" } else { "image" };
                    let msg = alloc::format!("not on this node, and {} did not answer: the {what} may be there", silent.join(", "));
                    return crate::error::ApiError::new(503, "node_unavailable", &msg).to_response();
                }
            }
            resp
        }
    }
}

/// `DELETE /v1/images/{digest}`: out of every node's store that holds it. 200 naming the nodes
/// it left (joined by `,`) when no node refused; else the first refusal (409 `image_in_use`:
/// a workload there uses it), its message naming that node and where the image did go; 404
/// when no node had it.
fn remove_image(resp: Response, own: Option<&str>, others: &[String], ask: &mut dyn FnMut(usize) -> Option<(u16, Vec<u8>)>) -> Response {
    let mut removed: Vec<String> = Vec::new();
    let mut image: Option<Image> = None;
    let mut refused: Option<(Response, String)> = None;
    let mut note = |status: u16, body: Vec<u8>, node: &str, removed: &mut Vec<String>| match status {
        200 => {
            if let Ok(i) = serde_json::from_slice::<Image>(&body) {
                image.get_or_insert(i);
            }
            removed.push(node.into());
        }
        404 => {}
        _ if refused.is_none() => refused = Some((Response::json(status, body), node.into())),
        _ => {}
    };
    note(resp.status, resp.body.clone(), own.unwrap_or("this node"), &mut removed);
    for (i, name) in others.iter().enumerate() {
        if let Some((status, body)) = ask(i) {
            note(status, body, name, &mut removed);
        }
    }
    if let Some((r, node)) = refused {
        let Ok(mut e) = serde_json::from_slice::<ErrorBody>(&r.body) else { return r };
        e.error.message = alloc::format!("{node}: {}", e.error.message);
        if !removed.is_empty() {
            e.error.message.push_str(&alloc::format!(" (removed from {})", removed.join(", ")));
        }
        return json(r.status, &e, r);
    }
    match image {
        Some(mut i) => {
            i.node = Some(removed.join(","));
            json(200, &i, resp)
        }
        None => resp,
    }
}

/// How another node can be reached as its service gathers, which decides whether it is asked
/// at all and how long its ask may take (`apid` makes it from the fabric's sessions and
/// `memberd`'s table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// A fabric session with it is up: asked with the longer timeout.
    Session,
    /// No session now (an idle one lapses; a new one takes a handshake): the shorter timeout.
    Idle,
    /// The membership shows it `left` (`catenary node leave`, or its power button): out of the
    /// cluster until it restarts as a new generation, and often switched off. Asked only for
    /// the node listing, whose STATE says whether it answers, and for its own leave (asked
    /// again: it answers that it left); the shorter timeout. Any other gather takes it as
    /// holding nothing ([`LEFT_CLUSTER`]: a `404`, so a lookup of a name no member has is a
    /// `404`, not "a node did not answer"), so a node switched off after its leave does not
    /// cost every `ps` an ask's timeout. What a node that left and still runs holds of its
    /// own (node-level workloads, images) is shown by asking that node itself.
    Left,
    /// The membership declared it `dead`: never asked; its answer is missing at once, as a
    /// timeout's would be.
    Dead,
}

impl Reach {
    /// Whether a node reached so is asked for `req`'s answer.
    pub fn asked_for(self, req: &Request) -> bool {
        match self {
            Reach::Session | Reach::Idle => true,
            Reach::Left => (req.method == Method::Get && req.path == "/v1/nodes") || (req.method == Method::Post && leave_target(&req.path).is_some()),
            Reach::Dead => false,
        }
    }
}

/// The error code of the answer [`Gather::leave_out`] gives for a node that left the
/// cluster (never sent by a node: a gather's stand-in for an answer it did not ask for).
pub const LEFT_CLUSTER: &str = "left_cluster";

/// One node's answer to a forwarded request: (status, body), or `None` (no answer in time).
pub type Answer = Option<(u16, Vec<u8>)>;

/// [`elsewhere`], sans I/O, with the other nodes asked **together**: [`Gather::to_ask`] names
/// the nodes to ask now, [`Gather::answer`] takes an answer as it comes, [`Gather::done`] is the
/// answer once `elsewhere` needs no answer still missing (a node that did not answer in time
/// is an answer: `None`). A read (`GET`) and an image's removal from every node ask every
/// node they need at once, so a gather costs the slowest node's time (a silent node: one
/// timeout), not the sum of them all; a request that acts on the first node that has its
/// workload or image (run, start, stop, remove a workload) asks one node at a time in
/// `elsewhere`'s order, so it never acts on two. Each node is asked at most once; the answer
/// is `elsewhere`'s on the same answers.
pub struct Gather {
    req: Request,
    resp: Response,
    own: Option<String>,
    others: Vec<String>,
    answers: BTreeMap<usize, Answer>,
    /// Asked (in flight or answered).
    asked: Vec<usize>,
    /// `next()`'s missing nodes since the last answer: `apid` asks on every wake-up of its
    /// loop, and running `elsewhere` again parses and copies every answer so far (30 ms for
    /// 11 answers of 280 KB on the host), so it runs only when an answer came.
    need: core::cell::RefCell<Option<Vec<usize>>>,
}

impl Gather {
    /// `resp`: this node's own answer to `req`; `others`: the other nodes that may be asked.
    pub fn new(req: Request, resp: Response, own: Option<String>, others: Vec<String>) -> Gather {
        Gather { req, resp, own, others, answers: BTreeMap::new(), asked: Vec::new(), need: core::cell::RefCell::new(None) }
    }

    /// Answers at once for every node `reach` (in `others`' order) says is not asked for this
    /// request ([`Reach::asked_for`]), so a read completes on the others' answers and a
    /// request that acts on one node goes on to the next: a dead node's answer is missing
    /// (`None`, exactly as after a timeout: it may hold what is looked for), a left node's is
    /// [`LEFT_CLUSTER`]'s `404` (it is out of the cluster: it holds nothing of it).
    pub fn leave_out(&mut self, reach: &[Reach]) {
        for (i, r) in reach.iter().enumerate() {
            if !r.asked_for(&self.req) {
                let a = (*r == Reach::Left).then(|| (404, crate::error::ApiError::new(404, LEFT_CLUSTER, "the node left the cluster").to_response().body));
                self.answer(i, a);
            }
        }
    }

    /// The request being answered.
    pub fn request(&self) -> &Request {
        &self.req
    }

    /// Whether its asks may go out together: reads, and an image's removal (every node that
    /// has it removes it); not a request that must act on one node only.
    pub fn parallel(&self) -> bool {
        self.req.method == Method::Get || (self.req.method == Method::Delete && is_image_path(&self.req.path))
    }

    /// The answer, or `Err`: the nodes whose answers it still needs, in `elsewhere`'s order.
    /// `elsewhere` is run again on the answers so far (it is pure).
    pub fn next(&self) -> Result<Response, Vec<usize>> {
        if let Some(need) = self.need.borrow().as_ref() {
            return Err(need.clone());
        }
        let mut need = Vec::new();
        let mut ask = |i: usize| match self.answers.get(&i) {
            Some(a) => a.clone(),
            None => {
                if !need.contains(&i) {
                    need.push(i);
                }
                None
            }
        };
        let r = elsewhere(&self.req, self.resp.clone(), self.own.as_deref(), &self.others, &mut ask);
        if need.is_empty() {
            Ok(r)
        } else {
            *self.need.borrow_mut() = Some(need.clone());
            Err(need)
        }
    }

    /// The answer once no missing answer is needed.
    pub fn done(&self) -> Option<Response> {
        self.next().ok()
    }

    /// The nodes to ask now, at most `free` (sockets the caller has for it): every needed node
    /// not asked yet for a [`parallel`](Gather::parallel) request, else the next one once
    /// nothing is in flight. They count as asked from here on.
    pub fn to_ask(&mut self, free: usize) -> Vec<usize> {
        let Err(need) = self.next() else { return Vec::new() };
        let n = if self.parallel() {
            free
        } else if self.in_flight().is_empty() {
            free.min(1)
        } else {
            0
        };
        let v: Vec<usize> = need.into_iter().filter(|i| !self.asked.contains(i)).take(n).collect();
        self.asked.extend_from_slice(&v);
        v
    }

    /// How many nodes [`to_ask`](Gather::to_ask) would name now, given sockets enough.
    pub fn askable(&self) -> usize {
        let Err(need) = self.next() else { return 0 };
        let n = need.iter().filter(|i| !self.asked.contains(i)).count();
        if self.parallel() {
            n
        } else if self.in_flight().is_empty() {
            n.min(1)
        } else {
            0
        }
    }

    /// Asked and not answered yet.
    pub fn in_flight(&self) -> Vec<usize> {
        self.asked.iter().copied().filter(|i| !self.answers.contains_key(i)).collect()
    }

    /// The answer taken from `others[i]` (tests: `elsewhere` run on them directly).
    #[cfg(test)]
    pub(crate) fn answers_for_tests(&self, i: usize) -> Answer {
        self.answers.get(&i).cloned().flatten()
    }

    /// `others[i]`'s answer (one for a node not among them is ignored; so is a second one).
    pub fn answer(&mut self, i: usize, a: Answer) {
        if i < self.others.len() {
            if !self.asked.contains(&i) {
                self.asked.push(i);
            }
            if let alloc::collections::btree_map::Entry::Vacant(e) = self.answers.entry(i) {
                e.insert(a);
                self.need.borrow_mut().take();
            }
        }
    }
}

/// What a node's service does with the requests parked waiting for other nodes (sans I/O;
/// `apid` owns the sockets): at most `parked_max` requests parked at once, each a [`Gather`]
/// keyed by its connection; at most `asks_max` asks (outbound exchanges, one socket each) in
/// flight across them all ([`Forwards::to_ask`] shares them out). An
/// operator who hangs up frees the request's place and its asks at once ([`Forwards::gone`]).
pub struct Forwards<K> {
    parked: Vec<(K, Gather)>,
    parked_max: usize,
    asks_max: usize,
}

impl<K: Copy + PartialEq> Forwards<K> {
    pub fn new(parked_max: usize, asks_max: usize) -> Forwards<K> {
        Forwards { parked: Vec::new(), parked_max, asks_max }
    }

    /// Requests parked now.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Whether another request may be parked (else the caller answers 503 `busy`).
    pub fn has_room(&self) -> bool {
        self.parked.len() < self.parked_max
    }

    /// Asks in flight across every parked request.
    pub fn in_flight(&self) -> usize {
        self.parked.iter().map(|(_, g)| g.in_flight().len()).sum()
    }

    /// Park `g` for connection `k`; `Err(g)` when `parked_max` are parked already.
    #[allow(clippy::result_large_err)] // hands the caller's own value back
    pub fn park(&mut self, k: K, g: Gather) -> Result<(), Gather> {
        if !self.has_room() || self.parked.iter().any(|(p, _)| *p == k) {
            return Err(g);
        }
        self.parked.push((k, g));
        Ok(())
    }

    /// The asks to start now, `(connection, node)`, until `asks_max` are in flight or no
    /// request needs another: each free socket goes to the request with the fewest asks in
    /// flight (the oldest of those), so a request parked beside one that waits for silent
    /// nodes gets the next socket that frees.
    pub fn to_ask(&mut self) -> Vec<(K, usize)> {
        let mut free = self.asks_max.saturating_sub(self.in_flight());
        let mut out = Vec::new();
        while free > 0 {
            let pick = self.parked.iter().enumerate().filter(|(_, (_, g))| g.askable() > 0).min_by_key(|(j, (_, g))| (g.in_flight().len(), *j)).map(|(j, _)| j);
            let Some(j) = pick else { break };
            let (k, g) = &mut self.parked[j];
            match g.to_ask(1).first() {
                Some(&i) => out.push((*k, i)),
                None => break,
            }
            free -= 1;
        }
        out
    }

    /// The request of connection `k`.
    pub fn request(&self, k: K) -> Option<&Request> {
        self.parked.iter().find(|(p, _)| *p == k).map(|(_, g)| g.request())
    }

    /// Node `i`'s answer to connection `k`'s request (ignored if that request is gone).
    pub fn answer(&mut self, k: K, i: usize, a: Answer) {
        if let Some((_, g)) = self.parked.iter_mut().find(|(p, _)| *p == k) {
            g.answer(i, a);
        }
    }

    /// The requests whose answer is ready, taken out: (connection, answer, the asks still in
    /// flight for it, which the caller closes).
    pub fn finished(&mut self) -> Vec<(K, Response, Vec<usize>)> {
        let mut out = Vec::new();
        let mut j = 0;
        while j < self.parked.len() {
            if let Some(r) = self.parked[j].1.done() {
                let (k, g) = self.parked.remove(j);
                out.push((k, r, g.in_flight()));
            } else {
                j += 1;
            }
        }
        out
    }

    /// Connection `k` is gone (the operator hung up, or its life ran out): its request is
    /// forgotten, its place freed; the asks it had in flight are returned for the caller to
    /// close (their sockets go back to the pool).
    pub fn gone(&mut self, k: K) -> Vec<usize> {
        match self.parked.iter().position(|(p, _)| *p == k) {
            Some(j) => self.parked.remove(j).1.in_flight(),
            None => Vec::new(),
        }
    }
}
