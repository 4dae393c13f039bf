//! `config.json` of a Catenary image: what the guest init (`catenary-init`) and the workload
//! service need from the OCI config, in a small versioned form of our own (docs/images.md).

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

pub const MEDIA_TYPE: &str = "application/vnd.catenary.runconfig.v1+json";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunConfig {
    /// Format version (1). A reader refuses a version it does not know.
    pub version: u32,
    /// Always "linux" / "amd64" (the packer refuses other images).
    pub os: String,
    pub architecture: String,
    /// OCI `Entrypoint` and `Cmd` as given; the process is `entrypoint ++ cmd` (an override of
    /// the arguments replaces `cmd` only, as `docker run IMAGE ARGS` does).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value`, in the image's order.
    pub env: Vec<String>,
    /// Absolute; "/" when the image sets none.
    pub working_dir: String,
    /// As the image gives it: "", "name", "uid", "name:group", "uid:gid"; "" means root.
    /// Resolved by the guest init against the image's /etc/passwd and /etc/group.
    pub user: String,
    /// `PORT/PROTO` (e.g. "80/tcp"), sorted.
    pub exposed_ports: Vec<String>,
    /// Signal name or number for a graceful stop; "SIGTERM" when the image sets none.
    pub stop_signal: String,
}

impl RunConfig {
    pub fn from_oci(c: &ImageConfiguration) -> RunConfig {
        let cfg = c.config().as_ref();
        let list = |v: Option<&Vec<String>>| v.cloned().unwrap_or_default();
        let mut ports: Vec<String> = list(cfg.and_then(|c| c.exposed_ports().as_ref()));
        ports.sort();
        ports.dedup();
        let wd = cfg.and_then(|c| c.working_dir().clone()).unwrap_or_default();
        RunConfig {
            version: VERSION,
            os: c.os().to_string(),
            architecture: c.architecture().to_string(),
            entrypoint: list(cfg.and_then(|c| c.entrypoint().as_ref())),
            cmd: list(cfg.and_then(|c| c.cmd().as_ref())),
            env: list(cfg.and_then(|c| c.env().as_ref())),
            working_dir: if wd.is_empty() { "/".into() } else { wd },
            user: cfg.and_then(|c| c.user().clone()).unwrap_or_default(),
            exposed_ports: ports,
            stop_signal: cfg.and_then(|c| c.stop_signal().clone()).filter(|s| !s.is_empty()).unwrap_or_else(|| "SIGTERM".into()),
        }
    }

    /// The process to run: entrypoint followed by cmd.
    pub fn args(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }

    /// The canonical bytes: compact JSON, fields in declaration order.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct serialises")
    }

    /// Parse `config.json`, refusing unknown versions.
    pub fn parse(bytes: &[u8]) -> Result<RunConfig, String> {
        let c: RunConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if c.version != VERSION {
            return Err(format!("run config version {} (this build knows {VERSION})", c.version));
        }
        Ok(c)
    }
}
