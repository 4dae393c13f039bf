//! Secrets on a command line must never reach a log: [`redact_secrets`] gives the command line
//! to print, with the value of every `*.key=` word (and `key=`) replaced. The node's private
//! key travels in a boot module (`node.key`), not on the command line; this is the guard for
//! anyone who still puts one there, in the kernel's boot log and in xtask's printed QEMU
//! command lines.

use alloc::string::String;

/// What a secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Whether the value of `key` is a secret.
pub fn is_secret_key(key: &str) -> bool {
    key == "key" || key.ends_with(".key") || key.ends_with("-key") || key.ends_with("_key")
}

/// `cmdline` with the value of every secret `key=value` word replaced by [`REDACTED`];
/// everything else (including the whitespace between words) is kept as it was.
pub fn redact_secrets(cmdline: &str) -> String {
    let mut out = String::with_capacity(cmdline.len());
    let mut rest = cmdline;
    while !rest.is_empty() {
        let ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        match word.split_once('=') {
            Some((k, _)) if is_secret_key(k.trim_start_matches('-')) => {
                out.push_str(k);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(word),
        }
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_replaced() {
        let k = "a".repeat(64);
        let c = alloc::format!("vm=none  net.key={k} net.time=5 key=abc\tfoo.key= x.keys=1 keyboard=us net.ping=node2");
        let r = redact_secrets(&c);
        assert!(!r.contains(&k) && !r.contains("abc"));
        assert_eq!(r, "vm=none  net.key=<redacted> net.time=5 key=<redacted>\tfoo.key=<redacted> x.keys=1 keyboard=us net.ping=node2");
        assert_eq!(redact_secrets(""), "");
        assert_eq!(redact_secrets("  a  "), "  a  ");
        // QEMU-style arguments: -append "…net.key=…"
        assert_eq!(redact_secrets("\"net.key=1234 x\""), "\"net.key=<redacted> x\"");
    }
}
