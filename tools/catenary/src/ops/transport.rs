//! How a request reaches a node's API at its fabric /128, port [`catenary_api::PORT`], one
//! request per TCP connection, over one of two paths (docs/api.md "Reaching a node"):
//!
//! * **fabric** (the default when the node's fabric key and UDP endpoint are known, from the
//!   config's `fabric` or `--fabric-node`): the CLI is its own fabric peer in user space
//!   ([`super::fabric`]: netfabric over a UDP socket + smoltcp). No root, no WireGuard interface.
//! * **host**: the host's TCP stack. The workstation must be a fabric peer for the address to
//!   route (a WireGuard interface, kernel or `wireguard-go`, from `catenary wg-config`). Chosen
//!   with `--transport host` (or `"transport": "host"` in the config), and whenever no fabric
//!   node is known (tests point it at any address: `--api 127.0.0.1:PORT`).

use super::fabric::Link;
use catenary_api::client::{self, ClientError, ClientRequest};
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What went wrong, as the CLI reports it (each its own exit status).
#[derive(Debug)]
pub enum CallError {
    /// No connection, or it broke: the node is not reachable from here.
    Unreachable(String),
    /// The node answered with an error.
    Api(ClientError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) => write!(f, "node unreachable: {why}"),
            CallError::Api(ClientError::Api { status: 403, message, .. }) => write!(f, "permission denied: {message}"),
            CallError::Api(e) => write!(f, "{e}"),
        }
    }
}

/// The node's side of a fabric session: its public key and its underlay UDP endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabricNode {
    pub public_key: [u8; 32],
    pub endpoint: SocketAddr,
}

impl FabricNode {
    /// `KEY@HOST:PORT`: 64 hex, then an address and port (`[fe80::…%IFACE]:51820` takes an
    /// interface name or index as the zone; a host name is resolved).
    pub fn parse(s: &str) -> Result<FabricNode, String> {
        let (key, ep) = s.split_once('@').ok_or_else(|| format!("{s:?}: expected NODEKEY@HOST:PORT"))?;
        let public_key = catenary_api::auth::hex32(key.trim()).ok_or_else(|| format!("{key:?}: the node's key is not 64 hex digits"))?;
        Ok(FabricNode { public_key, endpoint: resolve(ep.trim())? })
    }

    /// The node's fabric /128 and API port.
    pub fn api_endpoint(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(netfabric::identity::Prefix64::from_public_key(&self.public_key).node_address()), catenary_api::PORT)
    }
}

/// A socket address; an IPv6 zone may name an interface (`%eth0`: its index from sysfs, as
/// std's parser takes only numbers).
fn resolve(ep: &str) -> Result<SocketAddr, String> {
    let mut text = ep.to_string();
    if let (Some(p), Some(q)) = (ep.find('%'), ep.find(']')) {
        let zone = &ep[p + 1..q];
        if !zone.is_empty() && !zone.bytes().all(|b| b.is_ascii_digit()) {
            let idx = std::fs::read_to_string(format!("/sys/class/net/{zone}/ifindex")).map_err(|_| format!("{ep}: no interface {zone:?}"))?;
            text = format!("{}{}{}", &ep[..p + 1], idx.trim(), &ep[q..]);
        }
    }
    text.to_socket_addrs().map_err(|e| format!("{ep}: {e}"))?.next().ok_or_else(|| format!("{ep}: no address"))
}

/// How long a request whose session another process took over waits before it takes it back.
const REPLACED_BACKOFF: Duration = Duration::from_millis(1500);

/// Times a request the API answered with 408 (not received whole in time) is sent again.
pub const TIMEOUT_RETRIES: u32 = 2;

/// The embedded fabric's session, made on first use and kept for the process.
type SharedLink = Mutex<Option<Box<Link>>>;

enum Via {
    Host,
    /// The operator's secret (never printed), the node, and the session once it is made.
    Fabric { secret: [u8; 32], node: FabricNode, link: SharedLink },
}

pub struct Transport {
    pub endpoint: String,
    pub timeout: Duration,
    via: Via,
}

impl Transport {
    /// Plain TCP through the host's stack to `endpoint`.
    pub fn new(endpoint: &str) -> Transport {
        Transport { endpoint: endpoint.to_string(), timeout: Duration::from_secs(15), via: Via::Host }
    }

    /// Through an embedded fabric session with `node`, as the operator whose x25519 secret is
    /// `secret`; `endpoint` is the API's `[fabric /128]:port`.
    pub fn fabric(endpoint: &str, secret: [u8; 32], node: FabricNode) -> Transport {
        Transport { endpoint: endpoint.to_string(), timeout: Duration::from_secs(15), via: Via::Fabric { secret, node, link: Mutex::new(None) } }
    }

    pub fn is_fabric(&self) -> bool {
        matches!(self.via, Via::Fabric { .. })
    }

    /// Send one request; the answer's status and body. A 408 answer means the API had not
    /// received the whole request by its deadline (`catenary_api::http::RequestReader`: a slow
    /// or lossy path), so it did nothing with it; as RFC 9110 §15.5.9 allows, the request is
    /// sent again on a new connection, at most [`TIMEOUT_RETRIES`] more times.
    pub fn send(&self, req: &ClientRequest) -> Result<(u16, Vec<u8>), CallError> {
        let mut tries = 0;
        loop {
            match self.send_once(req) {
                Ok((408, _)) if tries < TIMEOUT_RETRIES => tries += 1,
                r => return r,
            }
        }
    }

    fn send_once(&self, req: &ClientRequest) -> Result<(u16, Vec<u8>), CallError> {
        match &self.via {
            Via::Host => self.send_host(req),
            Via::Fabric { node, .. } => {
                let bytes = req.to_bytes(&self.endpoint);
                // a request that may be sent twice (GET, PUT) is sent again through a new
                // session when another process with this key took the session over
                let again = matches!(req.method, catenary_api::http::Method::Get | catenary_api::http::Method::Put);
                let mut tries = 0;
                loop {
                    let (l, ip, port) = self.link()?;
                    let mut g = l.lock().unwrap_or_else(|p| p.into_inner());
                    let link = g.as_mut().ok_or_else(|| CallError::Unreachable("no fabric link".into()))?;
                    let r = super::fabric_call::request(link, ip, port, &bytes, self.timeout, &self.describe(node));
                    match r {
                        Err(e) if super::fabric_call::replaced(&e) && again && tries < 3 => {
                            tries += 1;
                            // the next try makes a new session (a new handshake), which takes it
                            // from the other process in turn: first give that one time to finish
                            // (a command from a second terminal takes well under a second)
                            *g = None;
                            drop(g);
                            std::thread::sleep(REPLACED_BACKOFF);
                        }
                        r => return r,
                    }
                }
            }
        }
    }

    /// Through the embedded fabric only: send `bytes` to the endpoint (a TCP echo service) and
    /// return what came back once as many bytes have (`catenary fabric-probe`).
    pub fn echo(&self, bytes: &[u8]) -> Result<Vec<u8>, CallError> {
        self.echo_at(&self.endpoint, bytes)
    }

    /// [`Transport::echo`] to another `[addr]:port` through the same session.
    pub fn echo_at(&self, endpoint: &str, bytes: &[u8]) -> Result<Vec<u8>, CallError> {
        let Via::Fabric { node, .. } = &self.via else {
            return Err(CallError::Unreachable("fabric-probe needs the embedded fabric (a fabric node, not --transport host)".into()));
        };
        let (l, ip, port) = self.link_to(endpoint)?;
        let mut g = l.lock().unwrap_or_else(|p| p.into_inner());
        let link = g.as_mut().ok_or_else(|| CallError::Unreachable("no fabric link".into()))?;
        let n = bytes.len();
        let got = super::fabric_call::exchange_until(link, ip, port, bytes, self.timeout, &self.describe(node), &|b| Ok((b.len() >= n).then(|| (0, b.to_vec()))))?;
        Ok(got.1)
    }

    /// The fabric link (made on first use) and the endpoint's address and port.
    fn link(&self) -> Result<(&SharedLink, std::net::Ipv6Addr, u16), CallError> {
        self.link_to(&self.endpoint)
    }

    fn link_to(&self, endpoint: &str) -> Result<(&SharedLink, std::net::Ipv6Addr, u16), CallError> {
        let Via::Fabric { secret, node, link } = &self.via else {
            return Err(CallError::Unreachable("not the embedded fabric".into()));
        };
        let mut g = link.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let id = netfabric::Identity::from_secret_bytes(*secret);
            let any: SocketAddr = if node.endpoint.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().map_err(|_| CallError::Unreachable("bad bind address".into()))?;
            let peer = netfabric::PeerConfig::new(node.public_key).with_endpoint(node.endpoint);
            *g = Some(Box::new(Link::new(id, peer, any).map_err(CallError::Unreachable)?));
        }
        drop(g);
        let dst = endpoint.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| CallError::Unreachable(format!("{endpoint}: not an address")))?;
        let IpAddr::V6(ip) = dst.ip() else {
            return Err(CallError::Unreachable(format!("{endpoint}: the fabric carries IPv6 only")));
        };
        Ok((link, ip, dst.port()))
    }

    fn describe(&self, node: &FabricNode) -> String {
        format!("{} (node key {}… at {})", self.endpoint, &catenary_api::auth::hex(&node.public_key)[..8], node.endpoint)
    }

    fn send_host(&self, req: &ClientRequest) -> Result<(u16, Vec<u8>), CallError> {
        let un = |e: std::io::Error| CallError::Unreachable(format!("{}: {e}", self.endpoint));
        let addr = self.endpoint.to_socket_addrs().map_err(un)?.next().ok_or_else(|| CallError::Unreachable(format!("{}: no address", self.endpoint)))?;
        let mut s = TcpStream::connect_timeout(&addr, self.timeout).map_err(un)?;
        s.set_read_timeout(Some(self.timeout)).map_err(un)?;
        s.set_write_timeout(Some(self.timeout)).map_err(un)?;
        s.write_all(&req.to_bytes(&self.endpoint)).map_err(un)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let start = Instant::now();
        loop {
            if let Some(r) = client::parse_response(&buf).map_err(CallError::Api)? {
                return Ok(r);
            }
            let n = s.read(&mut chunk).map_err(un)?;
            if n == 0 {
                return Err(CallError::Unreachable(format!("{}: the connection closed before the answer was complete", self.endpoint)));
            }
            if start.elapsed() > self.timeout * 4 {
                return Err(CallError::Unreachable(format!("{}: the answer did not complete in time", self.endpoint)));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Send and decode a success answer as `T`.
    pub fn call<T: DeserializeOwned>(&self, req: &ClientRequest) -> Result<T, CallError> {
        let (status, body) = self.send(req)?;
        client::decode(status, &body).map_err(CallError::Api)
    }
}

/// What the command line and environment say about the path (each overrides the config).
#[derive(Default)]
pub struct Choice {
    /// `--api` / $CATENARY_API.
    pub api: Option<String>,
    /// `--transport fabric|host` / $CATENARY_TRANSPORT.
    pub via: Option<String>,
    /// `--fabric-node KEY@HOST:PORT` / $CATENARY_FABRIC_NODE.
    pub fabric_node: Option<String>,
    pub timeout: Duration,
}

/// The transport for `c` and the operator config in `dir`: the embedded fabric when a fabric
/// node is known (unless `host` is asked for), else the host's TCP stack. With the fabric, the
/// API endpoint defaults to the node's fabric /128, port 8080.
pub fn choose(c: Choice, dir: &std::path::Path) -> Result<Transport, String> {
    let cfg = super::config::load(dir);
    let cfg_field = |f: fn(&super::config::Config) -> Option<String>| cfg.as_ref().ok().and_then(f);
    let via = c.via.or_else(|| cfg_field(|k| k.transport.clone()));
    let node = c.fabric_node.or_else(|| cfg_field(|k| k.fabric.clone()));
    // a known fabric node names the API endpoint on either path: its /128, port 8080
    let api = c.api.or_else(|| cfg_field(|k| k.api.clone())).or_else(|| node.as_deref().and_then(|n| FabricNode::parse(n).ok()).map(|n| n.api_endpoint().to_string()));
    let fabric = match via.as_deref() {
        Some("host") => false,
        Some("fabric") if node.is_none() => return Err("--transport fabric needs the node: --fabric-node NODEKEY@HOST:PORT or `catenary init --set-fabric`".into()),
        Some("fabric") | None => node.is_some(),
        Some(o) => return Err(format!("transport {o:?}: expected fabric or host")),
    };
    let mut t = if fabric {
        let node = FabricNode::parse(node.as_deref().unwrap_or_default())?;
        Transport::fabric(&api.unwrap_or_else(|| node.api_endpoint().to_string()), super::config::secret(dir)?, node)
    } else {
        match api {
            Some(a) => Transport::new(&a),
            None => {
                cfg?;
                return Err(format!("no API endpoint: pass --api [ADDR]:{} or set one with `catenary init --set-api`, or a fabric node with `catenary init --set-fabric NODEKEY@HOST:PORT`", catenary_api::PORT));
            }
        }
    };
    t.timeout = c.timeout;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server on the host's TCP stack that answers its connections with `statuses` in turn;
    /// how many connections it took before it had answered them all or no new one came for 5 s.
    fn server(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            let mut n = 0;
            for status in statuses {
                let idle = Instant::now();
                let mut c = loop {
                    match l.accept() {
                        Ok((c, _)) => break c,
                        Err(_) if idle.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => return n,
                    }
                };
                n += 1;
                c.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let body = if status == 200 { "{}".to_string() } else { r#"{"error":"timeout","message":"the request was not complete in time"}"#.to_string() };
                let _ = write!(c, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
            n
        });
        (addr, h)
    }

    #[test]
    fn a_request_answered_408_is_sent_again_on_a_new_connection() {
        let (addr, h) = server(vec![408, 408, 200]);
        let t = Transport::new(&addr);
        let r = t.send(&client::get_upload(1)).unwrap();
        assert_eq!(r.0, 200);
        assert_eq!(h.join().unwrap(), 3);
    }

    #[test]
    fn the_408_retries_are_bounded() {
        let (addr, h) = server(vec![408; TIMEOUT_RETRIES as usize + 1]);
        let t = Transport::new(&addr);
        assert_eq!(t.send(&client::get_upload(1)).unwrap().0, 408);
        assert_eq!(h.join().unwrap(), TIMEOUT_RETRIES as usize + 1);
    }

    #[test]
    fn other_errors_are_not_sent_again() {
        let (addr, h) = server(vec![404, 200]);
        let t = Transport::new(&addr);
        assert_eq!(t.send(&client::get_upload(1)).unwrap().0, 404);
        assert_eq!(h.join().unwrap(), 1);
    }
}
