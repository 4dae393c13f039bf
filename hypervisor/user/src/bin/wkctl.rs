//! wkctl: a client of the workload protocol (`catenary_workload::proto`) that the kernel's
//! `workload_*` tests start with one capability, send + grant to `workd`'s endpoint (slot 1).
//! The start argument picks a scenario; it logs `wkctl: RESULT <name> ok|FAILED: …` per check
//! and exits 0 when every check passed. Everything it learns comes from `workd`'s answers.
//!
//! 1 hostile: malformed and hostile requests (no grant, read-only grant, bad lengths, an unknown
//!   label, garbage, truncated and oversized encodings, invalid specs) each get their error, and
//!   `SYS_VM` without the VM-control capability is refused; `workd` answers a valid request
//!   after all of them.
//! 2 restart: a workload with `restart=on-failure` whose script fails on attempts 1 and 2
//!   (it reads `CATENARY_ATTEMPT`, which `workd` sets per run) and succeeds on 3: status
//!   `exited`, exit code 0, 2 restarts, 3 attempts, the three attempts' lines in its log.
//! 3 eight: eight workloads at once (64 MiB each), each logging `hello from wN` and then
//!   sleeping; all eight `running` at the same time, each log holding only its own line; then
//!   an admission refusal (a request for more memory than is left: `NoMemory`, and nothing
//!   created); then all stopped (StopSignal, SIGKILL after 1 s, power-off) and destroyed.
//! 4 bench (`cargo xtask bench workload`, figures, not checks): five workloads one after
//!   another (256 MiB), then eight at once (64 MiB), from the image in the store; it logs
//!   `wkctl: bench create NAME at node time T us` just before each Create request (the node
//!   logs when it decodes each workload's first log line).
//! 5 web (`net_workload_server_stop`, an ordinary node of a cluster booted with
//!   `workload.client=5`): the workload `web` from the image in the store, with network: its
//!   status names its /128 (logged as `wkctl: web address A`); once its log shows the request
//!   for `/done.html` (from a microVM on another node), a `Stop` request: it must end `exited`
//!   with exit code 0 (its shell traps SIGTERM). Destroyed, its /128 goes to the next workload
//!   created with network.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use catenary_user::*;
use catenary_workload::logring::Stream;
use catenary_workload::proto::*;
use catenary_workload::spec::{RestartPolicy, WorkloadSpec};
use catenary_workload::status::{ExitStatus, State};
use catenary_workload::{Digest, Request, Target};

const WORKD: u64 = 1;
const HEAP_PAGES: u64 = 128;

entry!(run);

/// Where the request buffer is mapped (fresh pages, lent to workd for each call).
const BUF_VA: u64 = 0x2000_0000;

struct Client {
    buf: Pages,
    failed: u32,
}

enum Raw {
    /// A transport refusal (the reply's label), or the kernel's error.
    Label(u64),
    Answer(Option<Response>),
}

impl Client {
    /// Send `bytes` as a request with word 0 = `w0`, through a grant of the buffer.
    fn raw(&mut self, bytes: &[u8], w0: u64, writable: bool, label: u64) -> Raw {
        self.buf.write(0, &bytes[..bytes.len().min(BUFFER_MIN)]);
        match call_grant(WORKD, label, w0, 0, &self.buf, BUFFER_MIN as u64, writable) {
            Ok(m) if m.label == TRANSPORT_OK => {
                let mut back = vec![0u8; (m.words[0] as usize).min(BUFFER_MIN)];
                self.buf.read(0, &mut back);
                Raw::Answer(decode_response(&back))
            }
            Ok(m) => Raw::Label(m.label),
            Err(e) => Raw::Label(0x1000 + e),
        }
    }

    fn req(&mut self, r: &Request) -> Response {
        let b = encode_request(r).unwrap_or_default();
        match self.raw(&b, b.len() as u64, true, LABEL_REQUEST) {
            Raw::Answer(Some(r)) => r,
            Raw::Answer(None) => {
                log("wkctl: an answer that does not decode");
                Err(Error::Malformed)
            }
            Raw::Label(l) => {
                logf!("wkctl: transport refusal {:#x}", l);
                Err(Error::Malformed)
            }
        }
    }

    fn result(&mut self, name: &str, ok: bool, detail: &str) {
        if ok {
            logf!("wkctl: RESULT {} ok: {}", name, detail);
        } else {
            self.failed += 1;
            logf!("wkctl: RESULT {} FAILED: {}", name, detail);
        }
    }

    fn image(&mut self) -> Option<Digest> {
        match self.req(&Request::Images) {
            Ok(Reply::Images(v)) => v.first().map(|i| i.digest),
            _ => None,
        }
    }

    fn status(&mut self, name: &str) -> Option<catenary_workload::Status> {
        match self.req(&Request::Status(Target::Name(name.into()))) {
            Ok(Reply::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// Every byte of a workload's log from `cursor` on, following `next`.
    fn log_text(&mut self, name: &str, stream: Stream) -> String {
        let mut out = String::new();
        let mut cursor = 0;
        for _ in 0..64 {
            match self.req(&Request::Logs { target: Target::Name(name.into()), cursor, max: LOG_READ_MAX }) {
                Ok(Reply::Logs(c)) => {
                    for r in c.records.iter().filter(|r| r.stream == stream) {
                        out.push_str(&String::from_utf8_lossy(&r.data));
                    }
                    if c.next == cursor || c.next >= c.end {
                        break;
                    }
                    cursor = c.next;
                }
                _ => break,
            }
        }
        out
    }
}

fn spec(name: &str, image: Digest, args: &[&str], restart: RestartPolicy, mib: u32) -> WorkloadSpec {
    // the test node of scenarios 1-4 has no network: their workloads run without
    WorkloadSpec { name: name.into(), image, vcpus: 1, memory_mib: mib, env: vec![], args: Some(args.iter().map(|s| String::from(*s)).collect()), restart, net: false }
}

fn run(scenario: u64) -> u64 {
    if !dma::init_mapped(HEAP_PAGES) {
        log("wkctl: no heap");
        return 99;
    }
    let Ok(buf) = Pages::map(BUF_VA, (BUFFER_MIN as u64).div_ceil(4096)) else {
        log("wkctl: no memory for the request buffer");
        return 1;
    };
    let mut c = Client { buf, failed: 0 };
    match scenario {
        1 => hostile(&mut c),
        2 => restart(&mut c),
        3 => eight(&mut c),
        4 => bench(&mut c),
        5 => web(&mut c),
        _ => c.result("scenario", false, "unknown scenario"),
    }
    c.failed as u64
}

fn hostile(c: &mut Client) {
    let list = encode_request(&Request::List).unwrap_or_default();
    // transport: no grant at all, a read-only grant, lengths that lie, an unknown label
    let r = call(WORKD, LABEL_REQUEST, [4, 0, 0, 0]).map(|m| m.label);
    c.result("hostile_no_grant", r == Ok(Transport::NoBuffer as u64), &format!("{r:?}"));
    let r = match c.raw(&list, list.len() as u64, false, LABEL_REQUEST) { Raw::Label(l) => l, _ => 0 };
    c.result("hostile_read_only_grant", r == Transport::NoBuffer as u64, &format!("{r}"));
    for (what, w0) in [("zero", 0u64), ("beyond_grant", BUFFER_MIN as u64 + 1), ("huge", 1 << 40), ("max", u64::MAX)] {
        let r = match c.raw(&list, w0, true, LABEL_REQUEST) { Raw::Label(l) => l, _ => 0 };
        c.result(&format!("hostile_length_{what}"), r == Transport::BadLength as u64, &format!("{r}"));
    }
    let r = match c.raw(&list, list.len() as u64, true, 0x574b_9999) { Raw::Label(l) => l, _ => 0 };
    c.result("hostile_unknown_label", r == Transport::UnknownLabel as u64, &format!("{r}"));
    // encodings: garbage, truncated, an enormous length prefix, trailing bytes
    let create = encode_request(&Request::Create(spec("x", Digest([1; 32]), &["a"], RestartPolicy::No, 64))).unwrap_or_default();
    let mut huge = vec![0u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
    huge.extend_from_slice(&[b'a'; 64]);
    let mut trailing = list.clone();
    trailing.push(7);
    let cases: [(&str, Vec<u8>); 5] = [
        ("garbage", vec![0xff; 300]),
        ("truncated", create[..create.len() / 2].to_vec()),
        ("length_prefix", huge),
        ("trailing", trailing),
        ("bad_utf8", vec![5, 1, 3, 0xff, 0xfe, 0xfd]),
    ];
    for (what, bytes) in cases {
        let r = c.raw(&bytes, bytes.len() as u64, true, LABEL_REQUEST);
        let ok = matches!(r, Raw::Answer(Some(Err(Error::Malformed))));
        c.result(&format!("hostile_{what}"), ok, "");
    }
    // valid encodings of invalid requests
    let Some(img) = c.image() else { return c.result("hostile_images", false, "no image in the store") };
    let bad: [(&str, WorkloadSpec, Error); 6] = [
        ("name", spec("../etc", img, &[], RestartPolicy::No, 64), Error::BadSpec(catenary_workload::spec::SpecError::Name)),
        ("vcpus", WorkloadSpec { vcpus: 0, ..spec("v", img, &[], RestartPolicy::No, 64) }, Error::BadSpec(catenary_workload::spec::SpecError::Vcpus)),
        ("memory", spec("m", img, &[], RestartPolicy::No, 1), Error::BadSpec(catenary_workload::spec::SpecError::Memory)),
        ("env", WorkloadSpec { env: vec!["NOEQUALS".into()], ..spec("e", img, &[], RestartPolicy::No, 64) }, Error::BadSpec(catenary_workload::spec::SpecError::Env)),
        ("image", spec("i", Digest([0xab; 32]), &[], RestartPolicy::No, 64), Error::NoSuchImage),
        ("two_vcpus", WorkloadSpec { vcpus: 2, ..spec("t", img, &[], RestartPolicy::No, 64) }, Error::Unsupported),
    ];
    for (what, s, want) in bad {
        let r = c.req(&Request::Create(s));
        c.result(&format!("hostile_spec_{what}"), r == Err(want), &format!("{r:?}"));
    }
    let r = c.req(&Request::Logs { target: Target::Id(u32::MAX), cursor: u64::MAX, max: u32::MAX });
    c.result("hostile_unknown_workload", r == Err(Error::NoSuchWorkload), &format!("{r:?}"));
    // the kernel's VM control without the capability
    let mut b = [0u8; 64];
    let r0 = vm(0, catenary_workload::vmctl::OP_INFO, &mut b, 0);
    let r1 = vm(WORKD, catenary_workload::vmctl::OP_CREATE, &mut b, 0);
    let r2 = vm_value(WORKD, catenary_workload::vmctl::OP_KILL, 0, 1);
    c.result("hostile_sys_vm_without_capability", r0.is_err() && r1.is_err() && r2.is_err(), &format!("{r0:?} {r1:?} {r2:?}"));
    // and workd still answers
    let r = c.req(&Request::List);
    c.result("hostile_workd_answers", matches!(r, Ok(Reply::List(ref v)) if v.is_empty()), &format!("{r:?}"));
}

/// Wait (polling every 200 ms, at most `secs`) until `done` says so for the workload's status.
fn wait(c: &mut Client, name: &str, secs: u64, done: impl Fn(&catenary_workload::Status) -> bool) -> Option<catenary_workload::Status> {
    let end = now_ns() + secs * 1_000_000_000;
    loop {
        let s = c.status(name);
        if s.as_ref().is_some_and(&done) || now_ns() > end {
            return s;
        }
        sleep_ns(200_000_000);
    }
}

fn restart(c: &mut Client) {
    let Some(img) = c.image() else { return c.result("restart", false, "no image in the store") };
    let r = c.req(&Request::Create(spec("flaky", img, &["flaky"], RestartPolicy::OnFailure { limit: 5 }, 64)));
    if !matches!(r, Ok(Reply::Created(_))) {
        return c.result("restart", false, &format!("create: {r:?}"));
    }
    let r = c.req(&Request::Start(Target::Name("flaky".into())));
    if r != Ok(Reply::Done) {
        return c.result("restart", false, &format!("start: {r:?}"));
    }
    let s = wait(c, "flaky", 400, |s| matches!(s.state, State::Exited | State::Failed));
    let out = c.log_text("flaky", Stream::Stdout);
    let Some(s) = s else { return c.result("restart", false, "no status") };
    let lines = ["flaky attempt 1: failing", "flaky attempt 2: failing", "flaky attempt 3: succeeding"];
    let mut at = 0;
    let in_order = lines.iter().all(|l| match out[at..].find(l) {
        Some(i) => {
            at += i + l.len();
            true
        }
        None => false,
    });
    let ok = s.state == State::Exited && s.exit == Some(ExitStatus::Code(0)) && s.restarts == 2 && s.attempts == 3 && in_order;
    c.result("restart", ok, &format!("state {} exit {:?} restarts {} attempts {} uptime {} ms touched {} KiB; log in order: {}",
        s.state.name(), s.exit, s.restarts, s.attempts, s.uptime_ms, s.memory_touched >> 10, in_order));
    if !in_order {
        for l in out.lines().take(10) {
            logf!("wkctl: flaky stdout: {:.120}", l);
        }
    }
    let _ = c.req(&Request::Destroy(Target::Name("flaky".into())));
}

fn eight(c: &mut Client) {
    const N: usize = 8;
    let Some(img) = c.image() else { return c.result("eight", false, "no image in the store") };
    let names: Vec<String> = (1..=N).map(|i| format!("w{i}")).collect();
    for n in &names {
        let r = c.req(&Request::Create(spec(n, img, &["hello", n], RestartPolicy::No, 64)));
        let s = c.req(&Request::Start(Target::Name(n.clone())));
        if !matches!(r, Ok(Reply::Created(_))) || s != Ok(Reply::Done) {
            return c.result("eight", false, &format!("{n}: create {r:?}, start {s:?}"));
        }
    }
    // all eight running at once, each with its own greeting in its log
    let end = now_ns() + 600 * 1_000_000_000;
    let mut seen_all_running = false;
    let mut greeted = [false; N];
    while now_ns() < end && !(seen_all_running && greeted.iter().all(|g| *g)) {
        if let Ok(Reply::List(l)) = c.req(&Request::List) {
            let running = l.iter().filter(|s| s.state == State::Running).count();
            seen_all_running |= running == N;
            if l.iter().any(|s| matches!(s.state, State::Exited | State::Failed)) {
                break;
            }
        }
        for (i, n) in names.iter().enumerate() {
            if !greeted[i] {
                greeted[i] = c.log_text(n, Stream::Stdout).contains(&format!("hello from {n}"));
            }
        }
        sleep_ns(500_000_000);
    }
    // each log holds its own line and nobody else's
    let mut own = 0;
    for n in &names {
        let t = c.log_text(n, Stream::Stdout);
        let others = names.iter().filter(|m| *m != n && t.contains(&format!("hello from {m}\n"))).count();
        if t.contains(&format!("hello from {n}\n")) && others == 0 {
            own += 1;
        }
    }
    let statuses: Vec<String> = names.iter().filter_map(|n| c.status(n)).map(|s| format!("{}:{}", s.name, s.state.name())).collect();
    c.result("eight", seen_all_running && own == N, &format!("all {N} running at once: {seen_all_running}; {own}/{N} logs hold exactly their own greeting; {statuses:?}"));
    // admission: more than what is left is refused, and nothing is created
    let before = match c.req(&Request::List) {
        Ok(Reply::List(l)) => l.len(),
        _ => 0,
    };
    let r = c.req(&Request::Create(spec("too-big", img, &[], RestartPolicy::No, 1024)));
    let after = match c.req(&Request::List) {
        Ok(Reply::List(l)) => l.len(),
        _ => 0,
    };
    let gone = c.status("too-big").is_none();
    c.result("admission", matches!(r, Err(Error::NoMemory { .. })) && before == N && after == N && gone,
        &format!("create too-big (1024 MiB) with {N} running: {r:?}; workloads before {before}, after {after}; too-big absent: {gone}"));
    // stop and destroy all: stop ends each run, destroy gives the memory back
    for n in &names {
        let _ = c.req(&Request::Stop { target: Target::Name(n.clone()), grace_ms: Some(1000) });
    }
    // The image's StopSignal is SIGTERM: the guest init delivers it to the workload's process
    // group and `busybox sleep` ends by signal 15. A power-off (the kernel's last resort after
    // the grace period and the SIGKILL grace) means the stop path did not work, and fails.
    let mut stopped = 0;
    let mut exits = Vec::new();
    for n in &names {
        let s = wait(c, n, 120, |s| s.state == State::Exited);
        if s.as_ref().is_some_and(|s| s.state == State::Exited && matches!(s.exit, Some(ExitStatus::Signal(15)))) {
            stopped += 1;
        }
        exits.push(s.and_then(|s| s.exit));
        let _ = c.req(&Request::Destroy(Target::Name(n.clone())));
    }
    let left = match c.req(&Request::List) {
        Ok(Reply::List(l)) => l.len(),
        _ => usize::MAX,
    };
    c.result("stop_destroy", stopped == N && left == 0, &format!("{stopped}/{N} stopped, {left} left after destroy; exits {exits:?}"));
}

/// Scenario 4: create and start `name`, logging the node time of the request.
fn bench_start(c: &mut Client, img: Digest, name: &str, mib: u32) -> bool {
    logf!("wkctl: bench create {} at node time {} us", name, now_ns() / 1000);
    let r = c.req(&Request::Create(spec(name, img, &[], RestartPolicy::No, mib)));
    let s = c.req(&Request::Start(Target::Name(name.into())));
    matches!(r, Ok(Reply::Created(_))) && s == Ok(Reply::Done)
}

fn bench(c: &mut Client) {
    let Some(img) = c.image() else { return c.result("bench", false, "no image in the store") };
    let ended = |s: &catenary_workload::Status| matches!(s.state, State::Exited | State::Failed);
    let mut ok = 0;
    for i in 1..=5 {
        let name = format!("lat{i}");
        if bench_start(c, img, &name, 256) && wait(c, &name, 300, ended).is_some_and(|s| ended(&s)) {
            ok += 1;
        }
        let _ = c.req(&Request::Destroy(Target::Name(name)));
    }
    let names: Vec<String> = (1..=8).map(|i| format!("w{i}")).collect();
    for n in &names {
        if bench_start(c, img, n, 64) {
            ok += 1;
        }
    }
    for n in &names {
        let _ = wait(c, n, 900, ended);
        let _ = c.req(&Request::Destroy(Target::Name(n.clone())));
    }
    c.result("bench", ok == 13, &format!("{ok}/13 workloads created and started"));
}

/// Scenario 5: the web server workload with network, stopped by a `Stop` request.
fn web(c: &mut Client) {
    let Some(img) = c.image() else { return c.result("web", false, "no image in the store") };
    let s = WorkloadSpec { args: None, net: true, ..spec("web", img, &[], RestartPolicy::No, 64) };
    let r = c.req(&Request::Create(s.clone()));
    let st = c.req(&Request::Start(Target::Name("web".into())));
    if !matches!(r, Ok(Reply::Created(_))) || st != Ok(Reply::Done) {
        return c.result("web", false, &format!("create {r:?}, start {st:?}"));
    }
    let s1 = wait(c, "web", 600, |s| s.state != State::Starting);
    let addr = s1.as_ref().and_then(|s| s.address);
    logf!("wkctl: web address {}", addr.map(|a| format!("{a}")).unwrap_or_default());
    c.result("web_running", s1.as_ref().is_some_and(|s| s.state == State::Running) && addr.is_some(), &format!("{:?}", s1.map(|s| (s.state, s.exit, s.address))));
    // the client on the other node asks for /done.html once it has the page
    let end = now_ns() + 900 * 1_000_000_000;
    let mut asked = false;
    while now_ns() < end && !asked {
        asked = c.log_text("web", Stream::Stderr).contains("url:/done.html");
        if c.status("web").is_some_and(|s| s.state != State::Running) {
            break;
        }
        sleep_ns(1_000_000_000);
    }
    let r = c.req(&Request::Stop { target: Target::Name("web".into()), grace_ms: Some(20_000) });
    let s2 = wait(c, "web", 120, |s| matches!(s.state, State::Exited | State::Failed));
    let ok = asked && r == Ok(Reply::Done) && s2.as_ref().is_some_and(|s| s.state == State::Exited && s.exit == Some(ExitStatus::Code(0)) && s.address == addr);
    c.result("web_stop", ok, &format!("/done.html asked: {asked}; stop {r:?}; then {:?}", s2.map(|s| (s.state, s.exit, s.address))));
    // destroy frees the link slot: the next workload with network gets the same /128
    let d = c.req(&Request::Destroy(Target::Name("web".into())));
    let r = c.req(&Request::Create(WorkloadSpec { name: "web2".into(), ..s }));
    let a2 = c.status("web2").and_then(|s| s.address);
    c.result("web_address_reused", d == Ok(Reply::Done) && matches!(r, Ok(Reply::Created(_))) && a2.is_some() && a2 == addr, &format!("destroy {d:?}; create web2 {r:?}: address {a2:?}"));
    let _ = c.req(&Request::Destroy(Target::Name("web2".into())));
    logf!("wkctl: web scenario done, {} checks failed", c.failed);
}
