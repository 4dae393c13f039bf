//! A simulated node (the real workload service state machine over
//! `catenary_workload::fuzzing::SimKernel`) and the fuzz entry point (target `http_requests` in
//! `hypervisor/api/fuzz`, and the host test `fuzzing_inputs_never_panic`): arbitrary bytes
//! cut into pieces and fed to the request reader as a connection delivers them, or turned into
//! well-formed requests on the route table with fuzzed parameters and bodies, from callers of
//! every kind; every answer must be a JSON body with a valid status, and every bound must hold.

use crate::auth::{Operator, Operators, Role};
use crate::http::{Limits, Request, RequestReader};
use crate::router::{Api, Backend};
use crate::routes::ROUTES;
use crate::types::{Node, NodeState};
use crate::upload::UploadLimits;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use catenary_workload::fuzzing::{service, SimKernel};
use catenary_workload::proto;
use catenary_workload::service::Service;
use catenary_workload::Digest;

pub const ADMIN: [u8; 32] = [0xad; 32];
pub const VIEWER: [u8; 32] = [0x1e; 32];
pub const NODE: [u8; 32] = [0x0d; 32];
pub const STRANGER: [u8; 32] = [0x57; 32];

/// A node: the workload service as `workd` runs it, over a simulated kernel.
pub struct SimNode {
    pub service: Service,
    pub kernel: SimKernel,
    pub now_ms: u64,
    /// Its name, and the cluster's nodes (its `nodes()` rows; figures only for itself).
    pub name: String,
    pub members: Vec<String>,
    /// Members it has no session with now (`unreachable` in its own rows).
    pub unreachable: Vec<String>,
    /// Members its membership service declared dead (`membership: dead` in its own rows).
    pub dead: Vec<String>,
    /// Keys `POST /v1/nodes` admitted.
    pub admitted: Vec<[u8; 32]>,
    /// Whether `POST /v1/cluster/nodes/{its name}/leave` made it leave (as `apid` asks
    /// `memberd`).
    pub left: bool,
}

impl SimNode {
    pub fn new(free_mib: u64) -> SimNode {
        SimNode { service: service(free_mib), kernel: SimKernel::default(), now_ms: 0, name: "node1".into(), members: alloc::vec!["node1".into()], unreachable: Vec::new(), dead: Vec::new(), admitted: Vec::new(), left: false }
    }
}

impl Backend for SimNode {
    fn workd(&mut self, req: proto::Request) -> proto::Response {
        // the request crosses IPC as bytes, as it does to `workd`
        let bytes = proto::encode_request(&req).ok_or(proto::Error::Malformed)?;
        let req = proto::decode_request(&bytes)?;
        self.service.handle(req, self.now_ms, &mut self.kernel)
    }
    /// As `apid`: this node's figures from the workload service's `Node` request.
    fn nodes(&mut self) -> Vec<Node> {
        let res = match self.workd(proto::Request::Node) {
            Ok(proto::Reply::Node(r)) => Some(r),
            _ => None,
        };
        let count = self.service.len() as u32;
        let store = match (self.workd(proto::Request::Store), self.workd(proto::Request::Images)) {
            (Ok(proto::Reply::Store(s)), Ok(proto::Reply::Images(l))) => Some((s, l.len())),
            _ => None,
        };
        let me = self.name.clone();
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let this = *m == me;
                let res = res.filter(|_| this);
                let mut row = Node {
                    name: m.clone(),
                    public_key: crate::auth::hex(&NODE),
                    address: alloc::format!("fd00::{}", i + 1),
                    state: if self.unreachable.contains(m) { NodeState::Unreachable } else { NodeState::Up }.name().to_string(),
                    cpus: res.map(|r| r.cpus),
                    memory_total_mib: res.map(|r| r.memory_total_mib),
                    memory_free_mib: res.map(|r| r.memory_free_mib),
                    memory_committed_mib: res.map(|r| r.memory_committed_mib),
                    workloads: this.then_some(count),
                    store_free_mib: store.as_ref().filter(|_| this).map(|(s, n)| s.room_mib(*n)),
                    images: store.as_ref().filter(|_| this).map(|(_, n)| *n as u32),
                    membership: Some(if self.dead.contains(m) { "dead" } else { "alive" }.to_string()),
                    incarnation: Some(0),
                    mac: None,
                    labels: None,
                };
                if !this {
                    crate::cluster::not_up_when_dead(&mut row);
                }
                row
            })
            .collect()
    }
    fn admit_node(&mut self, key: [u8; 32]) -> Result<(), crate::ApiError> {
        if !self.admitted.contains(&key) {
            self.admitted.push(key);
        }
        Ok(())
    }
    /// As `apid`: itself leaves; another member is asked; anything else is no node.
    fn leave(&mut self, node: &str) -> Result<bool, crate::ApiError> {
        if node == self.name {
            self.left = true;
            Ok(true)
        } else if self.members.iter().any(|m| m == node) {
            Ok(false)
        } else {
            Err(crate::ApiError::new(404, "no_such_node", "no node of the cluster file has that name"))
        }
    }
    fn workd_chunk(&mut self, req: proto::Request, bytes: &[u8]) -> proto::Response {
        // as `workd` reads the chunk from the grant
        self.kernel.chunk = bytes.to_vec();
        let r = self.workd(req);
        self.kernel.chunk.clear();
        r
    }
    fn workd_read(&mut self, req: proto::Request) -> Result<Vec<u8>, proto::Error> {
        // as `workd` writes the bytes into the grant
        self.kernel.chunk.clear();
        let r = self.workd(req);
        let bytes = core::mem::take(&mut self.kernel.chunk);
        match r? {
            proto::Reply::Read { len } if len as usize <= bytes.len() => Ok(bytes[..len as usize].to_vec()),
            _ => Err(proto::Error::Malformed),
        }
    }
}

/// The operators of the simulated cluster: an admin, a viewer; a node key.
pub fn operators() -> Operators {
    Operators {
        operators: alloc::vec![
            Operator { name: "admin".into(), key: ADMIN, role: Role::Admin },
            Operator { name: "viewer".into(), key: VIEWER, role: Role::Viewer },
        ],
        node_keys: alloc::vec![NODE],
    }
}

pub fn api() -> Api {
    api_with(1 << 20)
}

/// The API over [`operators`], taking images of at most `image_max` bytes.
pub fn api_with(image_max: u64) -> Api {
    Api::new(operators(), UploadLimits { image_max, uploads_max: 2, idle_ms: 60_000 })
}

fn check(resp: &crate::http::Response) {
    assert!((200..600).contains(&resp.status));
    // (a node-to-node image read answers the image's bytes)
    assert!(resp.content_type != "application/json" || serde_json::from_slice::<serde_json::Value>(&resp.body).is_ok(), "every JSON answer is JSON");
}

fn word(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = d.len().min(8);
    b[..n].copy_from_slice(&d[..n]);
    u64::from_le_bytes(b)
}

/// Run one input. Panics only when an answer is not JSON or a bound is broken.
pub fn run(data: &[u8]) {
    let mut api = api();
    let mut node = SimNode::new(1024);
    let limits = Limits { max_headers: 8, max_head: 512, max_body: 4096, timeout_ms: 1000 };
    let mut reader = RequestReader::new(limits, 0);
    let mut rest = data;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], rest[1] as usize);
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let caller = [ADMIN, VIEWER, NODE, STRANGER][(kind >> 4) as usize % 4];
        match kind % 4 {
            0 => {
                // raw bytes from a connection
                match reader.feed(body, node.now_ms) {
                    Ok(None) => {}
                    Ok(Some(req)) => {
                        let now = node.now_ms;
                        check(&api.handle(&caller, &req, &mut node, now));
                        reader = RequestReader::new(limits, node.now_ms);
                    }
                    Err(e) => {
                        check(&e.to_response());
                        reader = RequestReader::new(limits, node.now_ms);
                    }
                }
            }
            1 => {
                // a well-formed request on a route, with fuzzed parameters, query and body
                let w = word(body);
                let r = &ROUTES[w as usize % ROUTES.len()];
                let params = ["1", "2", "web", "sha256:1111111111111111111111111111111111111111111111111111111111111111", "-x", "0"];
                let mut path = String::new();
                for (i, seg) in r.path.split('/').enumerate().skip(1) {
                    path.push('/');
                    path.push_str(if seg.starts_with('{') { params[(w >> (8 + 3 * i)) as usize % params.len()] } else { seg });
                }
                let tail = body.get(8..).unwrap_or(&[]);
                let query = ["", "cursor=5", "since=1", "max=99999999999", "cursor=1&cursor=2", "x=1"][(w >> 40) as usize % 6];
                let req = Request { method: r.method, path, query: query.into(), chunk_digest: Some(Digest::of(tail).to_string()), on_behalf_of: None, body: tail.to_vec() };
                let now = node.now_ms;
                check(&api.handle(&caller, &req, &mut node, now));
            }
            2 => {
                node.now_ms = node.now_ms.saturating_add(word(body) % 100_000);
                if let Err(e) = reader.check_deadline(node.now_ms) {
                    check(&e.to_response());
                    reader = RequestReader::new(limits, node.now_ms);
                }
                let now = node.now_ms;
                api.tick(&mut node, now);
            }
            _ => {
                // the kernel's side moves on
                node.service.tick(node.now_ms, &mut node.kernel);
            }
        }
        assert!(api.uploads.len() <= 2);
        assert!(api.uploads.bytes() <= 2 << 20);
    }
}

/// The fuzz target `image_fetch` (and the host test `fetch_inputs_never_panic`): a node fetches
/// an image from three holders whose every answer the bytes choose (none, 404, the true bytes,
/// the true bytes with a byte flipped or cut short, or the input's own bytes). Whatever they
/// say: no panic, a `Done` leaves exactly the image's bytes in the store, and no upload is left
/// once the fetch is over.
pub fn fetch(data: &[u8]) -> bool {
    use crate::fetch::{Event, Fetch};
    use crate::upload::CHUNK_SIZE;
    let config = b"{\"version\":1}".to_vec();
    let rootfs: Vec<u8> = (0..CHUNK_SIZE + 300).map(|i| (i * 7 % 251) as u8).collect();
    // an image that lists its chunks (a holder takes over at a failed chunk), or one packed
    // before the list (the next holder starts over)
    let manifest = if data.len().is_multiple_of(2) { catenary_workload::store::manifest_for(&rootfs, &config) } else { catenary_workload::store::manifest_without_pieces(&rootfs, &config) };
    let d = Digest::of(&manifest);
    let mut stream = config;
    stream.extend_from_slice(&rootfs);
    let mut node = SimNode::new(1024);
    let mut f = Fetch::new(d, alloc::vec![0, 1, 2]);
    let mut rest = data;
    let mut get = |_h: usize, path: &str| {
        let (kind, arg) = match rest {
            [k, a, r @ ..] => {
                rest = r;
                (*k, *a as usize)
            }
            _ => (2, 0),
        };
        let truth = if path.ends_with("/manifest") {
            manifest.clone()
        } else {
            let n: usize = path.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            stream.get(n * CHUNK_SIZE..).map(|s| s[..s.len().min(CHUNK_SIZE)].to_vec()).unwrap_or_default()
        };
        let answer = match kind % 7 {
            0 => None,
            1 => Some((404, Vec::new())),
            2 => Some((200, truth)),
            // not in yet: the same request is asked for again
            6 => return core::task::Poll::Pending,
            3 => {
                let mut b = truth;
                if !b.is_empty() {
                    let i = arg * 997 % b.len();
                    b[i] ^= 1 << (arg % 8);
                }
                Some((200, b))
            }
            4 => Some((200, truth[..truth.len().min(arg * 1024)].to_vec())),
            _ => {
                let n = arg.min(rest.len());
                let b = rest[..n].to_vec();
                rest = &rest[n..];
                Some((200, b))
            }
        };
        core::task::Poll::Ready(answer)
    };
    let mut done = false;
    for _ in 0..64 {
        let e = f.step(&mut node, &mut get);
        if let Event::Done { .. } = e {
            done = true;
            let stored = node.kernel.stored.iter().find(|s| s.0.digest == d).map(|s| &s.1);
            assert_eq!(stored, Some(&stream), "a finished fetch stored exactly the image's bytes");
        }
        if f.finished() {
            break;
        }
    }
    if f.finished() {
        assert!(node.kernel.uploads.is_empty(), "no upload is left once the fetch is over");
    }
    done
}
