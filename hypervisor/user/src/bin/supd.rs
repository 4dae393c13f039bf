//! supd: the supervisor (after Hubris's `jefe`). Started by the kernel with the authority to
//! start exactly the services of the build-time manifest (`catenary_manifest::SERVICES`);
//! starts them all, and when the kernel reports one dead (which service, which task, exit code
//! or exception vector, faulting address) logs it and restarts it after an exponential
//! backoff (`catenary_manifest::backoff_ms`, bounded). Answers `LABEL_QUERY` calls with a
//! service's restart count, task and the deaths it was told of.
//!
//! If supd itself dies, the kernel restarts it on the same endpoint: it asks for every
//! service again and the spawner answers with the tasks that still run them (adopted, with
//! the kernel's restart counts); deaths reported meanwhile are queued on the endpoint.
//!
//! It beats (`SYS_ALIVE`, [`HEARTBEAT_MS`]) once a turn and waits at most a second: a supd
//! whose loop stopped going round is killed and restarted by the kernel like a dead one.
//!
//! Capability slots: 0 = its own endpoint (the kernel's answers and fault notices, queries),
//! 1 = send to the kernel's spawner (badge: the services it may start).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use catenary_ipc::supervisor::*;
use catenary_ipc::IpcError;
use catenary_manifest::{backoff_ms, SERVICES};
use catenary_user::*;

const SPAWNER: u64 = 1;
const N: usize = SERVICES.len();
/// Restarts that count as "in a row": a service that ran this long is considered healthy and
/// its backoff starts over.
const HEALTHY_NS: u64 = 60_000_000_000;
/// The heartbeat's period: a turn is one receive (at most `IDLE_WAKE_NS`) and a few sends.
const HEARTBEAT_MS: u64 = 5_000;
/// The longest wait for a message, so that an idle supervisor still beats.
const IDLE_WAKE_NS: u64 = 1_000_000_000;
/// Test only (`SUPD_TEST_HANG`): the first supd hangs at its first turn this long after its
/// start at which every service has been answered for (or `TEST_HANG_LATEST_NS` after it).
const TEST_HANG_AFTER_NS: u64 = 5_000_000_000;
const TEST_HANG_LATEST_NS: u64 = 30_000_000_000;

#[derive(Clone, Copy, Default)]
struct Svc {
    task: u64,
    restarts: u32,
    /// Crashes in a row (backoff exponent).
    streak: u32,
    started_at: u64,
    /// A restart is due at this time (0: none).
    due: u64,
    /// The spawner answered for it (started, adopted or not started).
    answered: bool,
    /// Deaths this supd was told of (`LABEL_QUERY` word 2).
    deaths: u32,
}

entry!(run);

fn describe(code: u64) -> (&'static str, u64) {
    match code {
        WATCHDOG_CODE => ("hung (the kernel's watchdog: CPU time without a system call), code", code),
        HEARTBEAT_CODE => ("hung (missed its heartbeat: its main loop stopped going round), code", code),
        _ if code & !0xff == 0xdead_0000 => ("exception", code & 0xff),
        _ => ("exit code", code),
    }
}

/// `arg`: the number of services, with `SUPD_TEST_HANG` set (test only, probes kernel, first
/// start) to hang in a sleeping loop once `TEST_HANG_AFTER_NS` have passed and every service
/// was answered for.
fn run(arg: u64) -> u64 {
    let start = now_ns();
    let test_hang = cfg!(feature = "probes") && arg & SUPD_TEST_HANG != 0;
    let mut s = [Svc::default(); N];
    for (i, svc) in SERVICES.iter().enumerate() {
        logf!("supd: starting {} (program {}, priority {})", svc.name, svc.program, svc.priority);
        let _ = send(SPAWNER, LABEL_SPAWN, [i as u64, 0, 0, 0]);
    }
    let _ = alive(HEARTBEAT_MS);
    loop {
        let now = now_ns();
        let since = now - start;
        if test_hang && since >= TEST_HANG_AFTER_NS && (s.iter().all(|x| x.answered) || since >= TEST_HANG_LATEST_NS) {
            logf!("supd: TEST ONLY: supd.test_hang=1: the supervisor hangs in a loop that sleeps");
            loop {
                sleep_ns(10_000_000);
            }
        }
        let next = s.iter().filter(|x| x.due != 0).map(|x| x.due).min();
        let timeout = match next {
            Some(d) if d <= now => 1,
            Some(d) => (d - now).min(IDLE_WAKE_NS),
            None => IDLE_WAKE_NS,
        };
        let got = recv(0, timeout);
        // one beat a turn, but none for a receive that fails: a loop on that is hung
        if got.is_ok() || got == Err(IpcError::Timeout.code()) {
            let _ = alive(HEARTBEAT_MS);
        }
        if let Ok(m) = got {
            let i = m.words[0] as usize;
            match m.label {
                LABEL_STARTED if i < N => {
                    s[i].answered = true;
                    if s[i].task == m.words[1] {
                        continue; // already known
                    }
                    s[i].task = m.words[1];
                    // running again (a restarted supervisor's request started it after a
                    // death reported while none ran): no restart is due any more
                    s[i].due = 0;
                    // the kernel's count (a restarted supervisor adopts running services)
                    s[i].restarts = s[i].restarts.max(m.words[2] as u32);
                    s[i].started_at = now_ns();
                    logf!("supd: {} running as task {} (restarts: {})", SERVICES[i].name, m.words[1], s[i].restarts);
                }
                LABEL_NOT_STARTED if i < N => {
                    s[i].answered = true;
                    logf!("supd: {} not started (reason {})", SERVICES[i].name, m.words[1]);
                }
                LABEL_FAULT if i < N => {
                    let (what, v) = describe(m.words[2]);
                    let healthy = now_ns().saturating_sub(s[i].started_at) > HEALTHY_NS;
                    s[i].streak = if healthy { 1 } else { s[i].streak.saturating_add(1) };
                    s[i].task = 0;
                    s[i].deaths = s[i].deaths.saturating_add(1);
                    if SERVICES[i].restart {
                        let ms = backoff_ms(s[i].streak);
                        s[i].due = now_ns() + ms * 1_000_000;
                        logf!("supd: {} (task {}) died: {} {:#x}, address {:#x}; restart {} in {} ms",
                            SERVICES[i].name, m.words[1], what, v, m.words[3], s[i].restarts + 1, ms);
                    } else {
                        logf!("supd: {} (task {}) died: {} {:#x}, address {:#x}; not restarted", SERVICES[i].name, m.words[1], what, v, m.words[3]);
                    }
                }
                LABEL_QUERY if m.reply != 0 => {
                    let r = if i < N { [s[i].restarts as u64, s[i].task, s[i].deaths as u64, 0] } else { [u64::MAX; 4] };
                    let _ = reply(m.reply, LABEL_QUERY, r);
                }
                _ => {}
            }
        }
        let now = now_ns();
        for (i, x) in s.iter_mut().enumerate() {
            if x.due != 0 && x.due <= now {
                x.due = 0;
                x.restarts += 1;
                logf!("supd: restarting {} (restart {})", SERVICES[i].name, x.restarts);
                let _ = send(SPAWNER, LABEL_SPAWN, [i as u64, 0, 0, 0]);
            }
        }
    }
}
