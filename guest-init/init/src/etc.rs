//! The files the init writes into the guest's `/etc` (in the writable overlay; the image's own
//! copies, symlinks included, are replaced).

use std::net::Ipv6Addr;

/// `/etc/hosts`: loopback names, and the VM's own address under its hostname.
pub fn hosts(hostname: &str, address: Option<Ipv6Addr>) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match address {
        Some(a) => s.push_str(&format!("{a}\t{hostname}\n")),
        None => s.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    s
}

/// `/etc/hostname`.
pub fn hostname(hostname: &str) -> String {
    format!("{hostname}\n")
}

/// `/etc/resolv.conf`.
pub fn resolv_conf(nameservers: &[Ipv6Addr]) -> String {
    if nameservers.is_empty() {
        return "# catenary-init: the node gave no name servers\n".into();
    }
    nameservers.iter().map(|n| format!("nameserver {n}\n")).collect()
}

/// Env with HOME added from the user's entry when the config does not set it, and HOSTNAME
/// (as Docker does).
pub fn final_env(env: &[String], home: &str, hostname: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if !out.iter().any(|(k, _)| k == "HOME") {
        out.push(("HOME".into(), home.into()));
    }
    if !out.iter().any(|(k, _)| k == "HOSTNAME") {
        out.push(("HOSTNAME".into(), hostname.into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files() {
        let a: Ipv6Addr = "fd00::100:1".parse().unwrap();
        assert_eq!(hosts("web", Some(a)), "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfd00::100:1\tweb\n");
        assert!(hosts("web", None).ends_with("127.0.1.1\tweb\n"));
        assert_eq!(hostname("web"), "web\n");
        assert_eq!(resolv_conf(&[a]), "nameserver fd00::100:1\n");
        assert!(resolv_conf(&[]).starts_with('#'));
    }

    #[test]
    fn env_gets_home_and_hostname() {
        let e = final_env(&["PATH=/bin".into(), "A=b=c".into()], "/home/app", "web");
        assert_eq!(e, [("PATH".into(), "/bin".into()), ("A".into(), "b=c".into()), ("HOME".into(), "/home/app".into()), ("HOSTNAME".into(), "web".into())]);
        let e = final_env(&["HOME=/x".into()], "/home/app", "web");
        assert_eq!(e[0], ("HOME".into(), "/x".into()));
        assert_eq!(e.len(), 2);
    }
}
