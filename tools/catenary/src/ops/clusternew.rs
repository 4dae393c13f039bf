//! `catenary cluster new --nodes N [--dir D]`: everything a new cluster needs, in `D`:
//!
//! - `nodeK.key` (K = 1..N, mode 0600): each node's x25519 secret in hex, the `node.key` entry
//!   of its boot module (`catenary_net::nodekey`). Made from the OS entropy source
//!   (`getrandom`); never printed.
//! - `cluster.txt`: the cluster file: one `node` line per node (its public key; underlay
//!   link-local address from the MAC `52:54:00:ca:00:K`, which `cargo xtask run --nodes N`
//!   and `nix run .#qemu-cluster` give node K; port 51820) and the operator as `admin`.
//! - `operator/`: the operator's key and config (`catenary init`), the API endpoint set to
//!   node1's fabric /128; `CATENARY_CONFIG_DIR=D/operator catenary nodes` uses it.
//!
//! An existing cluster in `D` is refused (its keys would be replaced) unless `--force`.

use super::config;
use catenary_net::cluster::{hex_encode, link_local_from_mac, Cluster, Member, Operator, FABRIC_PORT};
use std::path::Path;

/// The MAC of node `k` (1-based): the underlay address in the cluster file is derived from it.
pub fn node_mac(k: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0xca, (k >> 8) as u8, k as u8]
}

pub const MAX_NODES: usize = 200;

/// Make the cluster in `dir`; returns the cluster file's text.
pub fn create(dir: &Path, n: usize, force: bool) -> Result<Cluster, String> {
    if n == 0 || n > MAX_NODES {
        return Err(format!("--nodes must be 1..={MAX_NODES}"));
    }
    let cluster_path = dir.join("cluster.txt");
    if cluster_path.exists() && !force {
        return Err(format!("{} exists (a cluster is already there; --force replaces its keys)", cluster_path.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut members = Vec::new();
    for k in 1..=n {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| format!("the OS entropy source failed: {e}"))?;
        let id = netfabric::Identity::from_secret_bytes(secret);
        secret.fill(0);
        config::write_private(&dir.join(format!("node{k}.key")), format!("{}\n", hex_encode(&id.secret_bytes())).as_bytes())?;
        members.push(Member { name: format!("node{k}"), public_key: id.public_key(), underlay: link_local_from_mac(node_mac(k)), port: FABRIC_PORT });
    }
    let node1 = netfabric::identity::Prefix64::from_public_key(&members[0].public_key).node_address();
    let api = format!("[{node1}]:{}", catenary_api::PORT);
    let op_dir = dir.join("operator");
    let cfg = config::init(&op_dir, Some(api), true)?;
    let key = catenary_net::cluster::hex_decode32(&cfg.public_key).ok_or("the operator key is not 64 hex")?;
    let cluster = Cluster { members, operators: vec![Operator { name: "operator".into(), public_key: key, role: "admin".into() }] };
    // what the nodes will parse: refuse here what they would refuse
    Cluster::parse(&cluster.render()).map_err(|e| format!("the new cluster file does not parse: {e}"))?;
    std::fs::write(&cluster_path, cluster.render()).map_err(|e| format!("{}: {e}", cluster_path.display()))?;
    Ok(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_cluster_has_distinct_keys_private_files_and_a_parseable_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let c = create(d.path(), 3, false).unwrap();
        assert_eq!(c.members.len(), 3);
        let text = std::fs::read_to_string(d.path().join("cluster.txt")).unwrap();
        assert_eq!(Cluster::parse(&text).unwrap(), c);
        let mut secrets = Vec::new();
        for k in 1..=3 {
            let p = d.path().join(format!("node{k}.key"));
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
            let s = catenary_net::cluster::hex_decode32(std::fs::read_to_string(&p).unwrap().trim()).unwrap();
            // the file's key is the node's, and its secret is in no public file
            assert_eq!(netfabric::Identity::from_secret_bytes(s).public_key(), c.members[k - 1].public_key);
            assert!(!text.contains(&hex_encode(&s)));
            secrets.push(s);
        }
        secrets.dedup();
        assert_eq!(secrets.len(), 3);
        assert_eq!(c.operators[0].role, "admin");
        assert!(d.path().join("operator").join(config::KEY_FILE).exists());
        // a second run would replace the keys: refused without --force
        assert!(create(d.path(), 3, false).is_err());
        assert!(create(d.path(), 0, true).is_err());
        let again = create(d.path(), 2, true).unwrap();
        assert_ne!(again.members[0].public_key, c.members[0].public_key);
    }
}
