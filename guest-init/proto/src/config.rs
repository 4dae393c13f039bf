//! The run configuration `catenary-init` reads (docs/guest-init.md).
//!
//! Two JSON documents, which the node appends to the guest's initramfs as a second cpio
//! archive:
//!
//! - `/catenary/config.json`: the Catenary image's run configuration, byte for byte as
//!   `catenary image pack` wrote it (docs/images.md, [`ImageConfig`]);
//! - `/catenary/node.json`: what the node decides for this VM ([`NodeConfig`]): hostname,
//!   address, name servers, argument and environment overrides, devices.
//!
//! [`RunSpec::resolve`] merges them into what the init runs. User names are resolved later,
//! inside the image's root (`catenary-init`'s `user` module).

use serde::Deserialize;
use std::net::Ipv6Addr;

/// Largest config document the init reads.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Limits on what a config may ask for (each a clear error, never a truncation).
pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV: usize = 4096;
pub const MAX_STRING: usize = 128 * 1024;

/// PATH when neither the image nor the node sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `config.json` of a Catenary image (version 1, docs/images.md).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageConfig {
    pub version: u32,
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    pub stop_signal: String,
}

/// `node.json`: the node's settings and overrides for this VM (version 1). Every field but
/// `version` may be left out.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    pub version: u32,
    /// The guest's hostname (default `catenary`).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The VM's /128, configured on `eth0` with an on-link default route.
    #[serde(default)]
    pub address: Option<Ipv6Addr>,
    /// Name servers for `/etc/resolv.conf` (none: the file says so in a comment).
    #[serde(default)]
    pub nameservers: Vec<Ipv6Addr>,
    /// Replaces the image's `cmd` (as `docker run IMAGE ARGS` does).
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// `NAME=value` entries added to the image's (a NAME the image sets is replaced).
    #[serde(default)]
    pub env: Vec<String>,
    /// Replaces the image's `user`.
    #[serde(default)]
    pub user: Option<String>,
    /// Replaces the image's `workingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The block device holding the image's squashfs root (default `/dev/vda`).
    #[serde(default)]
    pub rootfs_device: Option<String>,
    /// The workload channel's tty (default `/dev/hvc1`).
    #[serde(default)]
    pub channel: Option<String>,
    /// The workload's health check (none: the workload is not checked).
    #[serde(default)]
    pub health: Option<HealthConfig>,
}

/// A health check (docs/guest-init.md "Health check"): the init runs `cmd` as the workload's
/// user, in its environment and working directory, every `intervalSecs` once the workload
/// started; a run that exits 0 within `timeoutSecs` passes. The first pass is reported to the
/// node (the HEALTHY frame); `retries` failures in a row (failures in the first
/// `startPeriodSecs` do not count) kill the workload, which ends as unhealthy.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthConfig {
    pub cmd: Vec<String>,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    pub retries: u32,
    #[serde(default)]
    pub start_period_secs: u32,
}

/// Bounds of a health check (the node's spec check, `catenary_workload::spec::HealthCheck`,
/// has the same).
pub const HEALTH_CMD_MAX: usize = 64;
pub const HEALTH_SECS_MAX: u32 = 3600;
pub const HEALTH_RETRIES_MAX: u32 = 100;

impl HealthConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.cmd.is_empty() || self.cmd.len() > HEALTH_CMD_MAX || self.cmd[0].is_empty() {
            return err(format!("health: cmd must have 1-{HEALTH_CMD_MAX} arguments, the first not empty"));
        }
        for a in &self.cmd {
            check_string("health cmd", a)?;
        }
        if self.interval_secs == 0 || self.interval_secs > HEALTH_SECS_MAX {
            return err(format!("health: intervalSecs {} is not 1-{HEALTH_SECS_MAX}", self.interval_secs));
        }
        if self.timeout_secs == 0 || self.timeout_secs > self.interval_secs {
            return err(format!("health: timeoutSecs {} is not 1-intervalSecs", self.timeout_secs));
        }
        if self.retries == 0 || self.retries > HEALTH_RETRIES_MAX {
            return err(format!("health: retries {} is not 1-{HEALTH_RETRIES_MAX}", self.retries));
        }
        if self.start_period_secs > HEALTH_SECS_MAX {
            return err(format!("health: startPeriodSecs {} is more than {HEALTH_SECS_MAX}", self.start_period_secs));
        }
        Ok(())
    }
}

/// What the init runs, after merging the two documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// `entrypoint ++ cmd` (or `++ args` when the node overrides them); never empty.
    pub argv: Vec<String>,
    /// `NAME=value`, image order, node entries replacing or appended; PATH always present.
    /// HOME is added by the init from the resolved user when absent.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub address: Option<Ipv6Addr>,
    pub nameservers: Vec<Ipv6Addr>,
    pub rootfs_device: String,
    pub channel: String,
    /// The image's StopSignal as a number (what a STOP request from the node delivers).
    pub stop_signal: u8,
    /// The node's health check, checked against its bounds.
    pub health: Option<HealthConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(s: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(s.into()))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ConfigError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return err(format!("{what}: {} bytes, more than {MAX_CONFIG_BYTES}", bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| ConfigError(format!("{what}: {e}")))
}

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let c: ImageConfig = parse("config.json", bytes)?;
        if c.version != 1 {
            return err(format!("config.json: version {} is not supported (only 1)", c.version));
        }
        if c.os != "linux" || c.architecture != "amd64" {
            return err(format!("config.json: {}/{} image, this guest is linux/amd64", c.os, c.architecture));
        }
        Ok(c)
    }
}

impl NodeConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let c: NodeConfig = parse("node.json", bytes)?;
        if c.version != 1 {
            return err(format!("node.json: version {} is not supported (only 1)", c.version));
        }
        Ok(c)
    }
}

fn check_string(what: &str, s: &str) -> Result<(), ConfigError> {
    if s.contains('\0') {
        return err(format!("{what}: contains a NUL byte"));
    }
    if s.len() > MAX_STRING {
        return err(format!("{what}: longer than {MAX_STRING} bytes"));
    }
    Ok(())
}

fn check_env(what: &str, e: &str) -> Result<(), ConfigError> {
    check_string(what, e)?;
    match e.split_once('=') {
        Some((name, _)) if !name.is_empty() => Ok(()),
        _ => err(format!("{what}: {e:?} is not NAME=value")),
    }
}

fn check_path(what: &str, p: &str) -> Result<(), ConfigError> {
    check_string(what, p)?;
    if !p.starts_with('/') {
        return err(format!("{what}: {p:?} is not an absolute path"));
    }
    Ok(())
}

pub use crate::valid_hostname;

impl RunSpec {
    /// Merge the image's config with the node's overrides; every problem is an error.
    pub fn resolve(image: &ImageConfig, node: &NodeConfig) -> Result<Self, ConfigError> {
        let cmd = node.args.as_ref().unwrap_or(&image.cmd);
        let argv: Vec<String> = image.entrypoint.iter().chain(cmd.iter()).cloned().collect();
        if argv.is_empty() {
            return err("nothing to run: the image has no Entrypoint or Cmd and the node gave no arguments");
        }
        if argv.len() > MAX_ARGS {
            return err(format!("{} arguments, more than {MAX_ARGS}", argv.len()));
        }
        for a in &argv {
            check_string("argument", a)?;
        }
        if argv[0].is_empty() {
            return err("the program name (first argument) is empty");
        }
        let mut env: Vec<String> = Vec::new();
        for (what, e) in image.env.iter().map(|e| ("image env", e)).chain(node.env.iter().map(|e| ("node env", e))) {
            check_env(what, e)?;
            let name = e.split_once('=').map(|(n, _)| n).unwrap_or(e);
            match env.iter_mut().find(|x| x.split_once('=').map(|(n, _)| n) == Some(name)) {
                Some(x) => *x = e.clone(),
                None => env.push(e.clone()),
            }
        }
        if env.len() > MAX_ENV {
            return err(format!("{} environment entries, more than {MAX_ENV}", env.len()));
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let working_dir = node.working_dir.clone().unwrap_or_else(|| image.working_dir.clone());
        let working_dir = if working_dir.is_empty() { "/".to_string() } else { working_dir };
        check_path("working directory", &working_dir)?;
        let user = node.user.clone().unwrap_or_else(|| image.user.clone());
        check_string("user", &user)?;
        let hostname = node.hostname.clone().unwrap_or_else(|| "catenary".into());
        if !valid_hostname(&hostname) {
            return err(format!("hostname {hostname:?}: 1-64 letters, digits, '-' and '.'"));
        }
        let rootfs_device = node.rootfs_device.clone().unwrap_or_else(|| "/dev/vda".into());
        check_path("rootfsDevice", &rootfs_device)?;
        let channel = node.channel.clone().unwrap_or_else(|| "/dev/hvc1".into());
        check_path("channel", &channel)?;
        let Some(stop_signal) = crate::signal::parse(&image.stop_signal) else {
            return err(format!("stopSignal {:?} is not a signal", image.stop_signal));
        };
        if let Some(h) = &node.health {
            h.check()?;
        }
        Ok(RunSpec {
            argv,
            env,
            working_dir,
            user,
            hostname,
            address: node.address,
            nameservers: node.nameservers.clone(),
            rootfs_device,
            channel,
            stop_signal,
            health: node.health.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = r#"{"version":1,"os":"linux","architecture":"amd64","entrypoint":["/bin/sh","-c"],"cmd":["echo hi"],"env":["PATH=/bin","GREETING=hello"],"workingDir":"/srv","user":"app","exposedPorts":["80/tcp"],"stopSignal":"SIGTERM"}"#;

    #[test]
    fn image_config_as_pack_writes_it() {
        let c = ImageConfig::parse(IMAGE.as_bytes()).unwrap();
        assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.user, "app");
        let spec = RunSpec::resolve(&c, &NodeConfig { version: 1, ..Default::default() }).unwrap();
        assert_eq!(spec.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(spec.env, ["PATH=/bin", "GREETING=hello"]);
        assert_eq!(spec.hostname, "catenary");
        assert_eq!(spec.rootfs_device, "/dev/vda");
        assert_eq!(spec.channel, "/dev/hvc1");
        assert_eq!(spec.stop_signal, 15);
        let mut c = c;
        c.stop_signal = "SIGUSR1".into();
        assert_eq!(RunSpec::resolve(&c, &NodeConfig { version: 1, ..Default::default() }).unwrap().stop_signal, 10);
    }

    #[test]
    fn node_overrides() {
        let c = ImageConfig::parse(IMAGE.as_bytes()).unwrap();
        let n = NodeConfig::parse(br#"{"version":1,"hostname":"web-1","address":"fd00::100:1","nameservers":["fd00::53"],"args":["echo bye"],"env":["GREETING=bye","EXTRA=1"],"user":"1000:1000","workingDir":"/tmp"}"#).unwrap();
        let s = RunSpec::resolve(&c, &n).unwrap();
        assert_eq!(s.argv, ["/bin/sh", "-c", "echo bye"]);
        assert_eq!(s.env, ["PATH=/bin", "GREETING=bye", "EXTRA=1"]);
        assert_eq!(s.user, "1000:1000");
        assert_eq!(s.working_dir, "/tmp");
        assert_eq!(s.hostname, "web-1");
        assert_eq!(s.address, Some("fd00::100:1".parse().unwrap()));
        assert_eq!(s.nameservers, ["fd00::53".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(s.health, None);
    }

    #[test]
    fn health_check_and_its_bounds() {
        let c = ImageConfig::parse(IMAGE.as_bytes()).unwrap();
        let n = NodeConfig::parse(br#"{"version":1,"health":{"cmd":["test","-f","/tmp/up"],"intervalSecs":2,"timeoutSecs":1,"retries":3}}"#).unwrap();
        let h = RunSpec::resolve(&c, &n).unwrap().health.unwrap();
        assert_eq!((h.cmd.len(), h.interval_secs, h.timeout_secs, h.retries, h.start_period_secs), (3, 2, 1, 3, 0));
        for bad in [
            r#"{"cmd":[],"intervalSecs":2,"timeoutSecs":1,"retries":3}"#,
            r#"{"cmd":[""],"intervalSecs":2,"timeoutSecs":1,"retries":3}"#,
            r#"{"cmd":["x"],"intervalSecs":0,"timeoutSecs":1,"retries":3}"#,
            r#"{"cmd":["x"],"intervalSecs":3601,"timeoutSecs":1,"retries":3}"#,
            r#"{"cmd":["x"],"intervalSecs":2,"timeoutSecs":3,"retries":3}"#,
            r#"{"cmd":["x"],"intervalSecs":2,"timeoutSecs":0,"retries":3}"#,
            r#"{"cmd":["x"],"intervalSecs":2,"timeoutSecs":1,"retries":0}"#,
            r#"{"cmd":["x"],"intervalSecs":2,"timeoutSecs":1,"retries":101}"#,
            r#"{"cmd":["x"],"intervalSecs":2,"timeoutSecs":1,"retries":1,"startPeriodSecs":3601}"#,
            r#"{"cmd":["a\u0000b"],"intervalSecs":2,"timeoutSecs":1,"retries":1}"#,
        ] {
            let n = NodeConfig::parse(format!(r#"{{"version":1,"health":{bad}}}"#).as_bytes()).unwrap();
            assert!(RunSpec::resolve(&c, &n).unwrap_err().0.contains("health"), "{bad}");
        }
        assert!(NodeConfig::parse(br#"{"version":1,"health":{"cmd":["x"],"intervalSecs":2,"timeoutSecs":1,"retries":1,"extra":1}}"#).is_err());
    }

    #[test]
    fn default_path_and_dir() {
        let c = ImageConfig::parse(br#"{"version":1,"os":"linux","architecture":"amd64","entrypoint":[],"cmd":["/app"],"env":[],"workingDir":"","user":"","exposedPorts":[],"stopSignal":"SIGTERM"}"#).unwrap();
        let s = RunSpec::resolve(&c, &NodeConfig { version: 1, ..Default::default() }).unwrap();
        assert_eq!(s.env, [format!("PATH={DEFAULT_PATH}")]);
        assert_eq!(s.working_dir, "/");
    }

    #[test]
    fn refusals() {
        let base = ImageConfig::parse(IMAGE.as_bytes()).unwrap();
        let node = NodeConfig { version: 1, ..Default::default() };
        assert!(ImageConfig::parse(IMAGE.replace("\"version\":1", "\"version\":2").as_bytes()).unwrap_err().0.contains("version 2"));
        assert!(ImageConfig::parse(IMAGE.replace("amd64", "arm64").as_bytes()).unwrap_err().0.contains("arm64"));
        assert!(ImageConfig::parse(IMAGE.replace("\"user\"", "\"usr\"").as_bytes()).is_err());
        assert!(ImageConfig::parse(b"{not json").is_err());
        assert!(ImageConfig::parse(&vec![b' '; MAX_CONFIG_BYTES + 1]).unwrap_err().0.contains("more than"));
        assert!(NodeConfig::parse(br#"{"version":1,"address":"10.0.0.1"}"#).is_err());
        assert!(NodeConfig::parse(br#"{"version":1,"bogus":1}"#).is_err());
        let mut c = base.clone();
        c.entrypoint.clear();
        c.cmd.clear();
        assert!(RunSpec::resolve(&c, &node).unwrap_err().0.contains("nothing to run"));
        let mut c = base.clone();
        c.env.push("NOEQUALS".into());
        assert!(RunSpec::resolve(&c, &node).unwrap_err().0.contains("NAME=value"));
        let mut c = base.clone();
        c.working_dir = "relative".into();
        assert!(RunSpec::resolve(&c, &node).unwrap_err().0.contains("absolute"));
        let mut c = base.clone();
        c.cmd = vec!["a\0b".into()];
        assert!(RunSpec::resolve(&c, &node).unwrap_err().0.contains("NUL"));
        let mut c = base.clone();
        c.stop_signal = "SIGNOPE".into();
        assert!(RunSpec::resolve(&c, &node).unwrap_err().0.contains("stopSignal"));
        let n = NodeConfig { version: 1, hostname: Some("bad host".into()), ..Default::default() };
        assert!(RunSpec::resolve(&base, &n).unwrap_err().0.contains("hostname"));
        let n = NodeConfig { version: 1, args: Some(vec!["x".into(); MAX_ARGS]), ..Default::default() };
        assert!(RunSpec::resolve(&base, &n).unwrap_err().0.contains("arguments"));
    }
}
