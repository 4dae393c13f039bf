//! `catenary wg-config`: a WireGuard configuration that makes this workstation a fabric peer of
//! the cluster with the operator key, for the stock-tools path (kernel WireGuard or
//! `wireguard-go`, then `catenary --api '[NODE]:8080'` or `curl`). The fabric is
//! WireGuard-compatible (docs/netfabric.md), so this is an ordinary `wg-quick` file: the
//! operator's key and fabric address, and per node its public key, its /64 as allowed IPs and its
//! underlay endpoint. It holds the private key: it is written 0600 and never printed.

use super::config;
use base64::Engine;
use catenary_net::Cluster;
use std::fmt::Write;
use std::net::Ipv6Addr;
use std::path::Path;

fn b64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// The configuration text for `secret` and the nodes of `cluster_text`. `iface` is the
/// workstation's interface on the nodes' link, for link-local underlay endpoints (`fe80::…%IFACE`).
pub fn render(secret: [u8; 32], cluster_text: &str, iface: Option<&str>) -> Result<String, String> {
    let cluster = Cluster::parse(cluster_text).map_err(|e| format!("cluster file: {e}"))?;
    let id = netfabric::Identity::from_secret_bytes(secret);
    let mut s = String::new();
    let _ = writeln!(s, "# catenary wg-config: the operator {} as a fabric peer. Holds the private key (keep it 0600).", catenary_api::auth::hex(&id.public_key()));
    let _ = writeln!(s, "[Interface]\nPrivateKey = {}\nAddress = {}/64", b64(&id.secret_bytes()), id.node_address());
    for m in &cluster.members {
        let prefix = netfabric::identity::Prefix64::from_public_key(&m.public_key);
        let host = match (is_link_local(&m.underlay), iface) {
            (true, Some(i)) => format!("{}%{i}", m.underlay),
            (true, None) => return Err(format!("node {}: its underlay address {} is link-local: name the interface with --iface", m.name, m.underlay)),
            (false, _) => m.underlay.to_string(),
        };
        let _ = writeln!(s, "\n# node {} (fabric address {})\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/64\nEndpoint = [{host}]:{}\nPersistentKeepalive = 25", m.name, prefix.node_address(), b64(&m.public_key), prefix.network(), m.port);
    }
    Ok(s)
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Read the operator key from the config directory, render, and write `out` with mode 0600.
pub fn write(dir: &Path, cluster: &Path, iface: Option<&str>, out: &Path) -> Result<(), String> {
    let key = std::fs::read_to_string(dir.join(config::KEY_FILE)).map_err(|e| format!("{}: {e} (run `catenary init` first)", dir.join(config::KEY_FILE).display()))?;
    let secret = catenary_api::auth::hex32(key.trim()).ok_or_else(|| format!("{}: not 64 hex digits", dir.join(config::KEY_FILE).display()))?;
    let text = std::fs::read_to_string(cluster).map_err(|e| format!("{}: {e}", cluster.display()))?;
    config::write_private(out, render(secret, &text, iface)?.as_bytes())
}
