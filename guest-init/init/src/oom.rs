//! Seeing the kernel's OOM killer at work. The guest kernel has no cgroups (so no
//! `memory.events`) and no VM event counters (so no `oom_kill` in /proc/vmstat): the init reads
//! the kernel log (`/dev/kmsg`) from where it stood when the workload started, and every
//! `Killed process PID (COMM)` record is an OOM kill in the workload's VM. As Docker's
//! `OOMKilled`, any OOM kill during the run counts (the VM is the container).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// One OOM kill: the victim's pid and command name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKill {
    pub pid: i32,
    pub comm: String,
}

/// The kill a `/dev/kmsg` record reports, if it is an OOM kill. A record is
/// `PRIO,SEQ,USEC,FLAGS;MESSAGE` (continuation lines follow, indented).
pub fn parse_record(record: &[u8]) -> Option<OomKill> {
    let text = std::str::from_utf8(record).ok()?;
    let msg = text.split_once(';')?.1.lines().next()?;
    let rest = &msg[msg.find("Killed process ")? + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(' ')?;
    let pid = pid.parse::<i32>().ok()?;
    let comm = rest.strip_prefix('(')?;
    let comm = &comm[..comm.rfind(')')?];
    Some(OomKill { pid, comm: comm.chars().take(64).collect() })
}

/// The kernel log, read from the point where it was opened.
pub struct OomWatch {
    kmsg: File,
}

impl OomWatch {
    pub fn open() -> std::io::Result<OomWatch> {
        let mut kmsg = File::options().read(true).custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits()).open("/dev/kmsg")?;
        // /dev/kmsg: SEEK_END moves past the last record (only what comes later is read).
        kmsg.seek(SeekFrom::End(0))?;
        Ok(OomWatch { kmsg })
    }

    /// The OOM kills logged since the last call (at most `limit` reported), and whether any of
    /// them, reported or not, killed process `pid`.
    pub fn kills(&mut self, limit: usize, pid: i32) -> (Vec<OomKill>, bool) {
        let mut out = Vec::new();
        let mut killed_pid = false;
        // One read returns one record (the kernel caps a record at 8 KiB with its dictionary).
        let mut buf = vec![0u8; 8192];
        // Bounded: the log is finite, but a flood must not keep the init here.
        for _ in 0..100_000 {
            match self.kmsg.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(k) = parse_record(&buf[..n]) {
                        killed_pid |= k.pid == pid;
                        if out.len() < limit {
                            out.push(k);
                        }
                    }
                }
                // EPIPE: records were overwritten before we read them; reading goes on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EAGAIN: nothing more
            }
        }
        (out, killed_pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_records() {
        let r = b"3,812,5123456,-;Out of memory: Killed process 117 (sh) total-vm:98312kB, anon-rss:90112kB, file-rss:4kB, shmem-rss:0kB, UID:1000 pgtables:220kB oom_score_adj:0\n";
        assert_eq!(parse_record(r), Some(OomKill { pid: 117, comm: "sh".into() }));
        let r = b"3,9,1,-;Memory cgroup out of memory: Killed process 42 (my prog) total-vm:1kB\n SUBSYSTEM=x\n";
        assert_eq!(parse_record(r), Some(OomKill { pid: 42, comm: "my prog".into() }));
        // (older kernels) and not OOM kills
        assert_eq!(parse_record(b"3,1,1,-;Killed process 9 (x) total-vm:1kB\n").map(|k| k.pid), Some(9));
        for r in [&b"6,10,1,-;oom_reaper: reaped process 117 (sh), now anon-rss:0kB\n"[..], b"6,1,1,-;Killed process x (y)", b"no semicolon Killed process 1 (a)",
            b"6,1,1,-;Killed process 1 a", b"\xff;Killed process 1 (a)", b""]
        {
            assert_eq!(parse_record(r), None, "{}", String::from_utf8_lossy(r));
        }
    }
}
