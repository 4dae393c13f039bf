//! The echo service's loop: the `echod` program (the node's `echo` service, the fabric's
//! liveness target: `catenary_ipc` task index 1 of every node) and `uapp`'s test role
//! `ROLE_ECHO` both run it.

use crate::{logf, recv, reply_recv, sender, REMOTE_BADGE};

/// Serve capability slot 0 (the task's own endpoint) for ever: every call is answered with
/// label + 1 and each word + 1 (wrapping); sends are taken and dropped. The answer and the
/// wait for the next message are one system call (`reply_recv`); when the caller is gone (or
/// timed out) the answer is refused and the loop just receives. The first three messages from
/// the fabric are logged with their authenticated sender (the kernel names it), no more, so a
/// remote caller cannot fill the log.
pub fn serve() -> ! {
    let mut remote_seen = 0;
    let mut answer: Option<(u64, u64, [u64; 4])> = None;
    loop {
        let got = match answer.take() {
            Some((tok, label, w)) => reply_recv(tok, label, w, 0).or_else(|_| recv(0, 0)),
            None => recv(0, 0),
        };
        if let Ok(m) = got {
            if m.badge == REMOTE_BADGE && remote_seen < 3 {
                remote_seen += 1;
                logf!("echo: {} from fabric address {}", if m.reply != 0 { "call" } else { "send" }, sender());
            }
            if m.reply != 0 {
                answer = Some((m.reply, m.label.wrapping_add(1), m.words.map(|x| x.wrapping_add(1))));
            }
        }
    }
}
