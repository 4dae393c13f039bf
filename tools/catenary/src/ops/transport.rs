//! How a request reaches a node: plain TCP to the node's fabric /128 (port
//! [`catenary_api::PORT`]), one request per connection. The workstation must be a fabric peer
//! for that address to route (docs/api.md "Reaching a node": a WireGuard interface — kernel or
//! `wireguard-go` — with the operator key; the fabric is WireGuard-compatible). Tests point it
//! at any address (`--api 127.0.0.1:PORT`).

use catenary_api::client::{self, ClientError, ClientRequest};
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

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

pub struct Transport {
    pub endpoint: String,
    pub timeout: Duration,
}

impl Transport {
    pub fn new(endpoint: &str) -> Transport {
        Transport { endpoint: endpoint.to_string(), timeout: Duration::from_secs(15) }
    }

    /// Send one request; the answer's status and body.
    pub fn send(&self, req: &ClientRequest) -> Result<(u16, Vec<u8>), CallError> {
        let un = |e: std::io::Error| CallError::Unreachable(format!("{}: {e}", self.endpoint));
        let addr = self.endpoint.to_socket_addrs().map_err(un)?.next().ok_or_else(|| CallError::Unreachable(format!("{}: no address", self.endpoint)))?;
        let mut s = TcpStream::connect_timeout(&addr, self.timeout).map_err(un)?;
        s.set_read_timeout(Some(self.timeout)).map_err(un)?;
        s.set_write_timeout(Some(self.timeout)).map_err(un)?;
        s.write_all(&req.to_bytes(&self.endpoint)).map_err(un)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(r) = client::parse_response(&buf).map_err(CallError::Api)? {
                return Ok(r);
            }
            let n = s.read(&mut chunk).map_err(un)?;
            if n == 0 {
                return Err(CallError::Unreachable(format!("{}: the connection closed before the answer was complete", self.endpoint)));
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
