//! `node.json` (docs/guest-init.md): what the node tells the guest init about one run — its
//! hostname, its /128, the workload's argument and environment overrides and its health check. The kernel builds
//! it from a [`crate::vmctl::CreateVm`] record, so every string is escaped here.

use alloc::string::String;
use core::fmt::Write;

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_list(out: &mut String, key: &str, items: &[String]) {
    let _ = write!(out, ",\"{key}\":[");
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, s);
    }
    out.push(']');
}

/// `node.json` version 1. `hostname` is left out unless it is a valid hostname.
pub fn node_json(hostname: &str, address: Option<core::net::Ipv6Addr>, args: Option<&[String]>, env: &[String]) -> String {
    node_json_with_dns(hostname, address, args, env, &[], None)
}

/// [`node_json`] with name servers for the guest's `/etc/resolv.conf` (the cluster's DNS64,
/// docs/nat64.md) and the workload's health check.
pub fn node_json_with_dns(hostname: &str, address: Option<core::net::Ipv6Addr>, args: Option<&[String]>, env: &[String], nameservers: &[core::net::Ipv6Addr], health: Option<&crate::spec::HealthCheck>) -> String {
    let mut s = String::from("{\"version\":1");
    let valid = !hostname.is_empty() && hostname.len() <= 64 && hostname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') && !hostname.starts_with(['-', '.']);
    if valid {
        let _ = write!(s, ",\"hostname\":\"{hostname}\"");
    }
    if let Some(a) = address {
        let _ = write!(s, ",\"address\":\"{a}\"");
    }
    if let Some(a) = args {
        push_list(&mut s, "args", a);
    }
    if !env.is_empty() {
        push_list(&mut s, "env", env);
    }
    if !nameservers.is_empty() {
        let ns: alloc::vec::Vec<String> = nameservers.iter().map(|a| alloc::format!("{a}")).collect();
        push_list(&mut s, "nameservers", &ns);
    }
    if let Some(h) = health {
        // `cmd` first: push_list writes `,"cmd":[…]`, so the object opens on the key
        s.push_str(",\"health\":{");
        let mut cmd = String::new();
        push_list(&mut cmd, "cmd", &h.cmd);
        s.push_str(&cmd[1..]);
        let _ = write!(s, ",\"intervalSecs\":{},\"timeoutSecs\":{},\"retries\":{},\"startPeriodSecs\":{}}}", h.interval_secs, h.timeout_secs, h.retries, h.start_period_secs);
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn escaped_and_parseable() {
        let args = vec![String::from("a\"b\\c"), String::from("line\nnext\u{1}"), String::from("ünï")];
        let env = vec![String::from("X=1"), String::from("Y=\u{2028}")];
        let j = node_json("w1", Some("fd00::5".parse().unwrap()), Some(&args), &env);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["hostname"], "w1");
        assert_eq!(v["address"], "fd00::5");
        assert_eq!(v["args"][0], "a\"b\\c");
        assert_eq!(v["args"][1], "line\nnext\u{1}");
        assert_eq!(v["args"][2], "ünï");
        assert_eq!(v["env"][1], "Y=\u{2028}");
        assert_eq!(node_json("bad\"name", None, None, &[]), "{\"version\":1}");
        assert_eq!(node_json("w", None, Some(&[]), &[]), "{\"version\":1,\"hostname\":\"w\",\"args\":[]}");
        let dns = node_json_with_dns("w", None, None, &[], &["64:ff9b::35".parse().unwrap()], None);
        let v: serde_json::Value = serde_json::from_str(&dns).unwrap();
        assert_eq!(v["nameservers"][0], "64:ff9b::35");
        assert!(v.get("health").is_none());
        let h = crate::spec::HealthCheck { cmd: vec![String::from("sh"), String::from("-c"), String::from("test \"$X\" = 1")], interval_secs: 5, timeout_secs: 2, retries: 4, start_period_secs: 30 };
        let v: serde_json::Value = serde_json::from_str(&node_json_with_dns("w", None, None, &[], &[], Some(&h))).unwrap();
        assert_eq!(v["health"], serde_json::json!({"cmd": ["sh", "-c", "test \"$X\" = 1"], "intervalSecs": 5, "timeoutSecs": 2, "retries": 4, "startPeriodSecs": 30}));
    }

    /// The guest init takes the health check as the node writes it, with the same bounds.
    #[test]
    fn the_guest_init_takes_the_health_check() {
        use catenary_guest_proto::config::{self as guest, ImageConfig, NodeConfig, RunSpec};
        let image = ImageConfig::parse(br#"{"version":1,"os":"linux","architecture":"amd64","cmd":["/app"],"workingDir":"/","stopSignal":"SIGTERM"}"#).unwrap();
        let h = crate::spec::HealthCheck { cmd: vec![String::from("wget"), String::from("-q"), String::from("http://[::1]/")], interval_secs: 3600, timeout_secs: 3600, retries: 100, start_period_secs: 3600 };
        let j = node_json_with_dns("w", None, None, &[], &[], Some(&h));
        let run = RunSpec::resolve(&image, &NodeConfig::parse(j.as_bytes()).unwrap()).unwrap();
        let g = run.health.unwrap();
        assert_eq!((g.cmd, g.interval_secs, g.timeout_secs, g.retries, g.start_period_secs), (h.cmd.clone(), 3600, 3600, 100, 3600));
        assert_eq!((guest::HEALTH_CMD_MAX, guest::HEALTH_SECS_MAX, guest::HEALTH_RETRIES_MAX), (crate::spec::HEALTH_CMD_MAX, crate::spec::HEALTH_SECS_MAX, crate::spec::HEALTH_RETRIES_MAX));
    }
}
