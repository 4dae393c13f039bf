//! Signal names and numbers as an image's `StopSignal` gives them (docs/images.md): Docker's
//! spellings: a number (`15`), a name with or without `SIG` in any case (`SIGTERM`, `term`),
//! or `SIGRTMIN+N` / `SIGRTMAX-N`. Linux x86-64 numbering; `no_std`.

/// Linux x86-64 signal names by number (1..=31).
const NAMES: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD",
    "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];
/// The real-time range user programs get (glibc keeps 32 and 33 for itself).
pub const SIGRTMIN: u8 = 34;
pub const SIGRTMAX: u8 = 64;
pub const SIGTERM: u8 = 15;

/// The signal `s` names; `None` when it names none. An empty string is SIGTERM (the default).
pub fn parse(s: &str) -> Option<u8> {
    let s = s.trim();
    if s.is_empty() {
        return Some(SIGTERM);
    }
    if let Ok(n) = s.parse::<u8>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let name = match s.get(..3) {
        Some(p) if p.eq_ignore_ascii_case("SIG") => &s[3..],
        _ => s,
    };
    let rt = |prefix: &str| name.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix)).map(|_| &name[prefix.len()..]);
    if let Some(rest) = rt("RTMIN") {
        let off = if rest.is_empty() { 0 } else { rest.strip_prefix('+')?.parse::<u8>().ok()? };
        return SIGRTMIN.checked_add(off).filter(|&n| n <= SIGRTMAX);
    }
    if let Some(rest) = rt("RTMAX") {
        let off = if rest.is_empty() { 0 } else { rest.strip_prefix('-')?.parse::<u8>().ok()? };
        return SIGRTMAX.checked_sub(off).filter(|&n| n >= SIGRTMIN);
    }
    // SIGIOT and SIGPOLL are aliases Linux keeps.
    let name = if name.eq_ignore_ascii_case("IOT") { "ABRT" } else if name.eq_ignore_ascii_case("POLL") { "IO" } else { name };
    NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)).map(|i| i as u8 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_spellings() {
        for (s, n) in [("SIGTERM", 15), ("TERM", 15), ("sigterm", 15), ("15", 15), ("", 15), ("SIGKILL", 9), ("SIGINT", 2), ("SIGQUIT", 3), ("USR1", 10),
            ("SIGUSR2", 12), ("SIGWINCH", 28), ("SIGSYS", 31), ("SIGHUP", 1), ("SIGIOT", 6), ("SIGPOLL", 29), ("SIGRTMIN", 34), ("SIGRTMIN+3", 37),
            ("SIGRTMAX", 64), ("RTMAX-2", 62), ("64", 64), ("1", 1), (" TERM ", 15)]
        {
            assert_eq!(parse(s), Some(n), "{s}");
        }
        for s in ["0", "65", "-1", "SIGFOO", "SIG", "SIGRTMIN+31", "SIGRTMAX-31", "SIGRTMIN-1", "SIGRTMIN+", "15x", "ΣIGTERM", "SIGTERMX"] {
            assert_eq!(parse(s), None, "{s}");
        }
    }
}
