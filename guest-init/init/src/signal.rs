//! Delivering a signal to the workload's process group, real-time signals included: nix's
//! `Signal` enum has only the 31 named ones, so `kill` goes through rustix, whose `Signal`
//! for a number in libc's real-time range comes from the `rustix-libc-wrappers` check
//! (glibc's SIGRTMIN is 34, Docker's too).

use rustix::process::{kill_process_group, Pid, Signal};
use rustix_libc_wrappers::process::SignalExt;

/// Send signal `signo` (1-64) to process group `pgid`.
pub fn deliver_to_group(pgid: i32, signo: i32) -> Result<(), String> {
    let sig = Signal::from_raw(signo).ok_or_else(|| format!("signal {signo} is not one a program may send"))?;
    // (rustix's `Pid::from_raw` asserts on a negative number.)
    let pid = if pgid > 0 { Pid::from_raw(pgid) } else { None }.ok_or_else(|| format!("bad process group {pgid}"))?;
    kill_process_group(pid, sig).map_err(|e| format!("kill(-{pgid}, {signo}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, Stdio};

    /// A shell that traps `signo` (by number) and exits 7 when it arrives.
    fn trapper(signo: i32) -> std::process::Child {
        let script = format!("trap 'exit 7' {signo}; echo ready; while :; do sleep 0.05; done");
        let mut c = Command::new("/bin/sh").args(["-c", &script]).process_group(0).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        c
    }

    #[test]
    fn real_time_signals_reach_the_group() {
        // SIGRTMIN+3 (a systemd image's StopSignal), SIGRTMAX, and a named one.
        for signo in [37, 64, 15] {
            let mut c = trapper(signo);
            let sent = deliver_to_group(c.id() as i32, signo);
            if sent.is_err() {
                let _ = c.kill(); // no shell left looping
                let _ = c.wait();
            }
            sent.unwrap();
            let st = c.wait().unwrap();
            assert_eq!(st.code(), Some(7), "signal {signo}: {st:?} (signal {:?})", st.signal());
        }
    }

    #[test]
    fn refusals() {
        for signo in [0, 65, -1, 32, 33] {
            assert!(deliver_to_group(1, signo).is_err(), "{signo}");
        }
        assert!(deliver_to_group(0, 15).is_err());
        assert!(deliver_to_group(-5, 15).is_err());
    }
}
