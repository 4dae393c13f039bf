//! The operator's identity and settings: `catenary init` makes them, every other command reads
//! them.
//!
//! The directory is `$CATENARY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/catenary`, else
//! `$HOME/.config/catenary` (the XDG rule, written out here rather than pulled in as a crate).
//! It holds `operator.key` (the x25519 secret, 64 hex, mode 0600: never printed or logged) and
//! `config.json` (the public key, the operator's fabric address, the API endpoint; mode 0600
//! too, as it says which cluster the operator reaches).

use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const KEY_FILE: &str = "operator.key";
pub const CONFIG_FILE: &str = "config.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The operator's fabric public key (64 hex): the line for the cluster file.
    pub public_key: String,
    /// The operator's fabric address (its /64's ::1).
    pub address: String,
    /// The node's API endpoint, `[fabric /128]:port`, when one is set.
    #[serde(default)]
    pub api: Option<String>,
    /// The node the CLI's embedded fabric reaches, `NODEKEY@HOST:PORT` (its public key and
    /// underlay UDP endpoint): with it, requests go through the CLI's own fabric session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric: Option<String>,
    /// `"host"`: use the host's TCP stack (a WireGuard interface) even with `fabric` set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
}

pub fn config_dir() -> Result<PathBuf, String> {
    let env = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = env("CATENARY_CONFIG_DIR") {
        return Ok(d);
    }
    if let Some(d) = env("XDG_CONFIG_HOME") {
        return Ok(d.join("catenary"));
    }
    env("HOME").map(|h| h.join(".config").join("catenary")).ok_or_else(|| "no config directory: set HOME or CATENARY_CONFIG_DIR".into())
}

/// A new operator key from the OS entropy source, and the config for it, in `dir`. Refuses to
/// replace an existing key unless `force`. The secret goes only into the 0600 key file.
pub fn init(dir: &Path, api: Option<String>, force: bool) -> Result<Config, String> {
    let key_path = dir.join(KEY_FILE);
    if key_path.exists() && !force {
        return Err(format!("{} exists (an operator key is already set up; --force makes a new one)", key_path.display()));
    }
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("the OS entropy source failed: {e}"))?;
    let id = netfabric::Identity::from_secret_bytes(secret);
    let secret_hex = catenary_api::auth::hex(&id.secret_bytes());
    secret.fill(0);
    let cfg = Config { public_key: catenary_api::auth::hex(&id.public_key()), address: id.node_address().to_string(), api, fabric: None, transport: None };
    write_private(&key_path, format!("{secret_hex}\n").as_bytes())?;
    write_private(&dir.join(CONFIG_FILE), format!("{}\n", serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?).as_bytes())?;
    Ok(cfg)
}

/// Write a file only its owner can read (created with 0600, and set so if it existed).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(err)?;
    f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// The operator's x25519 secret from the key file (never printed).
pub fn secret(dir: &Path) -> Result<[u8; 32], String> {
    let p = dir.join(KEY_FILE);
    let key = fs::read_to_string(&p).map_err(|e| format!("{}: {e} (run `catenary init` first)", p.display()))?;
    catenary_api::auth::hex32(key.trim()).ok_or_else(|| format!("{}: not 64 hex digits", p.display()))
}

pub fn load(dir: &Path) -> Result<Config, String> {
    let p = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e} (run `catenary init` first)", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

/// Set the API endpoint and/or the fabric node in an existing config.
pub fn set(dir: &Path, api: Option<&str>, fabric: Option<&str>) -> Result<(), String> {
    let mut cfg = load(dir)?;
    if let Some(a) = api {
        cfg.api = Some(a.to_string());
    }
    if let Some(f) = fabric {
        cfg.fabric = Some(f.to_string());
    }
    write_private(&dir.join(CONFIG_FILE), format!("{}\n", serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?).as_bytes())
}
