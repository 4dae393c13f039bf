//! wkctl: a client of the workload protocol (`catenary_workload::proto`) that the kernel's
//! `workload_*` tests start with one capability, send + grant to `workd`'s endpoint (slot 1).
//! The start argument picks a scenario; it logs `wkctl: RESULT <name> ok|FAILED: …` per check
//! and exits 0 when every check passed. Everything it learns comes from `workd`'s answers.
//!
//! 1 hostile: malformed and hostile requests (no grant, read-only grant, bad lengths, an unknown
//!   label, garbage, truncated and oversized encodings, invalid specs) each get their error, and
//!   `SYS_VM` without the VM-control capability is refused; the cluster lease is refused
//!   (`NotOrchestrator`: only orchd's badge may set it) and a cluster replica is not created
//!   without it (`NoLease`); `workd` answers a valid request after all of them.
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
//! 6 push (`workload_image_push`, `workload_image_remove`): an image made here (a manifest
//!   and a patterned 3 MiB root filesystem: the store verifies digests and sizes, not the
//!   filesystem) pushed in 256 KiB chunks out of order; a corrupted chunk refused, then the
//!   push resumed (`ImageBegin` again answers the same upload) and committed; pushed again:
//!   `present` at once; a push whose bytes are not the image (chunks that match their own
//!   digests) refused on commit with its frames freed; removal refused while a workload names
//!   the image, then done, the store's frames back with the allocator; an abandoned upload
//!   dropped after the node's idle time (`store.upload_idle_s`).
//! 7 adopt, part 1 (`workload_adopted_after_restart`): two workloads that log a tick a second,
//!   running; the kernel test then kills `workd` and waits for its restart.
//! 8 adopt, part 2: both still running under the new `workd`, with their ids and restart
//!   counts; new ticks in their logs; stop works on them; destroyed.
//! 9 fetch (`net_nat64`, on a node that is not the NAT64 gateway): the image in the store run
//!   with network as `fetch` (its entrypoint resolves a name and fetches it over NAT64); it
//!   must exit with code 0.
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
const HEAP_PAGES: u64 = 320;

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
    WorkloadSpec { name: name.into(), image, vcpus: 1, memory_mib: mib, env: vec![], args: Some(args.iter().map(|s| String::from(*s)).collect()), restart, net: false, health: None }
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
        6 => push(&mut c),
        7 => adopt_before(&mut c),
        8 => adopt_after(&mut c),
        9 => fetch(&mut c),
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
    // (nor move a VM's power-off deadline: far ahead would undo the cluster lease's fence)
    let r3 = vm_value(WORKD, catenary_workload::vmctl::OP_DEADLINE, u64::MAX, 1);
    // the capability check refused it (workd's slot is a send capability, not VMCTL: NoRight),
    // not the op table: an op the kernel does not know is a bad argument before any check
    let no_right = Err(catenary_ipc::IpcError::NoRight.code());
    let unknown = vm_value(WORKD, 0xdead, 0, 1);
    c.result(
        "hostile_sys_vm_without_capability",
        r0.is_err() && r1 == no_right && r2 == no_right && r3 == no_right && unknown == Err(catenary_ipc::syscall::ERR_BAD_ARG),
        &format!("{r0:?} {r1:?} {r2:?} {r3:?}; an unknown op: {unknown:?}"),
    );
    // the cluster lease is orchd's alone (workd checks the kernel-set badge): this client can
    // neither set nor end it, and without it no cluster replica (`cl-…`) is created
    for until_ns in [u64::MAX, 0] {
        let r = c.req(&Request::ClusterLease { until_ns });
        c.result(&format!("hostile_cluster_lease_{}", if until_ns == 0 { "end" } else { "set" }), r == Err(Error::NotOrchestrator), &format!("{r:?}"));
    }
    let r = c.req(&Request::Create(spec("cl-x-0", img, &[], RestartPolicy::No, 64)));
    c.result("hostile_cluster_replica_without_lease", r == Err(Error::NoLease), &format!("{r:?}"));
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

/// Scenario 9 (`net_nat64`): the store's image run with network as `fetch` — its entrypoint
/// resolves a name through the `/etc/resolv.conf` catenary-init wrote and fetches over NAT64 —
/// until it exits; the check is its exit code (the test reads what it printed).
fn fetch(c: &mut Client) {
    let Some(img) = c.image() else { return c.result("fetch", false, "no image in the store") };
    let s = WorkloadSpec { args: None, net: true, ..spec("fetch", img, &[], RestartPolicy::No, 64) };
    let r = c.req(&Request::Create(s));
    let st = c.req(&Request::Start(Target::Name("fetch".into())));
    if !matches!(r, Ok(Reply::Created(_))) || st != Ok(Reply::Done) {
        return c.result("fetch", false, &format!("create {r:?}, start {st:?}"));
    }
    let end = wait(c, "fetch", 600, |s| matches!(s.state, State::Exited | State::Failed));
    let ok = end.as_ref().is_some_and(|s| s.state == State::Exited && s.exit == Some(ExitStatus::Code(0)));
    c.result("fetch", ok, &format!("{:?}", end.map(|s| (s.state, s.exit, s.address))));
    let _ = c.req(&Request::Destroy(Target::Name("fetch".into())));
}

/// The pushed image's chunk size, and a buffer for one chunk behind the request.
const CH: usize = 256 * 1024;

/// Where the push's buffer (a request, then a chunk at `CHUNK_OFFSET`) is mapped.
const CHUNK_VA: u64 = 0x2100_0000;

/// A made-up image: `config.json ‖ rootfs` generated from `seed`, and its manifest.
struct Synth {
    config: Vec<u8>,
    rootfs_len: usize,
    seed: u8,
    manifest: Vec<u8>,
    digest: Digest,
}

impl Synth {
    fn new(seed: u8, rootfs_len: usize) -> Synth {
        let config = format!("{{\"version\":1,\"seed\":{seed}}}").into_bytes();
        let mut s = Synth { config, rootfs_len, seed, manifest: Vec::new(), digest: Digest([0; 32]) };
        let mut h = catenary_workload::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut off = 0;
        while off < rootfs_len {
            let n = (rootfs_len - off).min(buf.len());
            s.rootfs_bytes(off, &mut buf[..n]);
            h.update(&buf[..n]);
            off += n;
        }
        let rd = h.finish();
        s.manifest = format!(
            "{{\"schemaVersion\":1,\"mediaType\":\"{}\",\"rootfs\":{{\"mediaType\":\"{}\",\"digest\":\"{}\",\"size\":{},\"file\":\"rootfs.squashfs\"}},\"config\":{{\"mediaType\":\"{}\",\"digest\":\"{}\",\"size\":{},\"file\":\"config.json\"}},\"source\":{{\"manifest\":null,\"config\":\"sha256:00\"}}}}",
            catenary_workload::store::IMAGE_MEDIA_TYPE, catenary_workload::store::ROOTFS_MEDIA_TYPE, rd, rootfs_len,
            catenary_workload::store::CONFIG_MEDIA_TYPE, Digest::of(&s.config), s.config.len()
        )
        .into_bytes();
        s.digest = Digest::of(&s.manifest);
        s
    }
    fn rootfs_bytes(&self, off: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            let x = off + i;
            *b = (x as u8).wrapping_mul(31) ^ (x >> 12) as u8 ^ self.seed;
        }
    }
    fn size(&self) -> usize {
        self.config.len() + self.rootfs_len
    }
    fn chunks(&self) -> usize {
        self.size().div_ceil(CH)
    }
    /// Stream bytes `[off, off + out.len())`.
    fn stream(&self, off: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            let x = off + i;
            if x < self.config.len() {
                *b = self.config[x];
            } else {
                let mut one = [0u8];
                self.rootfs_bytes(x - self.config.len(), &mut one);
                *b = one[0];
            }
        }
    }
}

struct Pusher {
    buf: Pages,
    data: Vec<u8>,
}

impl Pusher {
    /// Send chunk `k` of `img` to `upload`; `corrupt`: flip a byte after the digest was taken
    /// (a corrupted transfer), `lie`: flip it before (bytes that are not the image's but match
    /// their own digest).
    fn chunk(&mut self, img: &Synth, upload: u32, k: usize, corrupt: bool, lie: bool) -> Response {
        let off = k * CH;
        let len = CH.min(img.size() - off);
        let data = &mut self.data[..len];
        img.stream(off, data);
        if lie {
            data[len / 2] ^= 0x55;
        }
        let digest = Digest::of(data);
        if corrupt {
            data[len / 3] ^= 0x01;
        }
        self.buf.write(CHUNK_OFFSET as u64, data);
        let r = Request::ImageChunk { upload, offset: off as u64, len: len as u32, digest };
        let b = encode_request(&r).unwrap_or_default();
        self.buf.write(0, &b);
        match call_grant(WORKD, LABEL_REQUEST, b.len() as u64, 0, &self.buf, (CHUNK_OFFSET + CH) as u64, true) {
            Ok(m) if m.label == TRANSPORT_OK => {
                let mut back = vec![0u8; (m.words[0] as usize).min(BUFFER_MIN)];
                self.buf.read(0, &mut back);
                decode_response(&back).unwrap_or(Err(Error::Malformed))
            }
            _ => Err(Error::Malformed),
        }
    }
}

fn store(c: &mut Client) -> Option<catenary_workload::vmctl::StoreInfo> {
    match c.req(&Request::Store) {
        Ok(Reply::Store(s)) => Some(s),
        _ => None,
    }
}

fn has_image(c: &mut Client, d: Digest) -> bool {
    matches!(c.req(&Request::Images), Ok(Reply::Images(v)) if v.iter().any(|i| i.digest == d))
}

fn push(c: &mut Client) {
    let Ok(buf) = Pages::map(CHUNK_VA, ((CHUNK_OFFSET + CH) / 4096) as u64) else { return c.result("push_buffer", false, "no memory for the chunk buffer") };
    let mut p = Pusher { buf, data: vec![0u8; CH] };
    let img = Synth::new(1, 3 * 1024 * 1024 + 123);
    let pages = img.size().div_ceil(4096) as u64;
    let Some(s0) = store(c) else { return c.result("push_store_info", false, "no Store answer") };
    logf!("wkctl: store before: {:?}", s0);
    // begin: an upload for the whole stream
    let r = c.req(&Request::ImageBegin { image: img.digest, manifest: img.manifest.clone() });
    let Ok(Reply::Upload { upload, size, present: false }) = r else { return c.result("push_begin", false, &format!("{r:?}")) };
    c.result("push_begin", size == img.size() as u64 && upload != 0, &format!("upload {upload}, {size} bytes, {} chunks", img.chunks()));
    // the chunks out of order (odd ones first, backwards), all but the first
    let n = img.chunks();
    let order: Vec<usize> = (1..n).rev().filter(|k| k % 2 == 1).chain((1..n).filter(|k| k % 2 == 0)).collect();
    let mut ok = true;
    for &k in &order {
        let r = p.chunk(&img, upload, k, false, false);
        ok &= r == Ok(Reply::Done);
    }
    c.result("push_chunks_out_of_order", ok, &format!("{order:?}"));
    // a chunk corrupted on the way: refused, not kept
    let r = p.chunk(&img, upload, 0, true, false);
    c.result("push_corrupted_chunk_refused", r == Err(Error::ChunkDigest), &format!("{r:?}"));
    // the client reconnects: the same upload, resumed
    let r = c.req(&Request::ImageBegin { image: img.digest, manifest: img.manifest.clone() });
    c.result("push_resumed", r == Ok(Reply::Upload { upload, size, present: false }), &format!("{r:?}"));
    let r = p.chunk(&img, upload, 0, false, false);
    c.result("push_chunk_resent", r == Ok(Reply::Done), &format!("{r:?}"));
    let r = c.req(&Request::ImageCommit { upload });
    let committed = matches!(&r, Ok(Reply::Image(i)) if i.digest == img.digest);
    let there = has_image(c, img.digest);
    c.result("push_committed", committed && there, &format!("{r:?}"));
    let s1 = store(c).unwrap_or(s0.clone());
    logf!("wkctl: store after the push: {:?}", s1);
    c.result("push_store_frames", s1.used_pages >= s0.used_pages + pages && s1.free_pages + pages <= s0.free_pages, &format!("{pages} pages: used {} -> {}, free {} -> {}", s0.used_pages, s1.used_pages, s0.free_pages, s1.free_pages));
    // pushed again: present, nothing to send
    let t0 = now_ns();
    let r = c.req(&Request::ImageBegin { image: img.digest, manifest: img.manifest.clone() });
    c.result("push_already_present", r == Ok(Reply::Upload { upload: 0, size: 0, present: true }), &format!("{r:?} in {} us", (now_ns() - t0) / 1000));
    // bytes that are not the image: every chunk matches its digest, the commit refuses them
    let bad = Synth::new(2, 600 * 1024);
    match c.req(&Request::ImageBegin { image: bad.digest, manifest: bad.manifest.clone() }) {
        Ok(Reply::Upload { upload: u2, present: false, .. }) => {
            let mut ok = true;
            for k in 0..bad.chunks() {
                ok &= p.chunk(&bad, u2, k, false, k == 1) == Ok(Reply::Done);
            }
            let r = c.req(&Request::ImageCommit { upload: u2 });
            let s2 = store(c).unwrap_or(s0.clone());
            let again = c.req(&Request::ImageCommit { upload: u2 });
            let there = has_image(c, bad.digest);
            c.result("push_mismatch_refused", ok && r == Err(Error::ImageInvalid) && !there && s2.used_pages == s1.used_pages && s2.uploads == 0 && again == Err(Error::NoSuchUpload),
                &format!("{r:?}; then {again:?}; used {} (was {}), uploads {}", s2.used_pages, s1.used_pages, s2.uploads));
        }
        r => c.result("push_mismatch_refused", false, &format!("begin: {r:?}")),
    }
    // removal: refused while a workload names the image, then done; the frames go back
    let r = c.req(&Request::Create(spec("uses-pushed", img.digest, &["x"], RestartPolicy::No, 64)));
    c.result("remove_workload_created", matches!(r, Ok(Reply::Created(_))), &format!("{r:?}"));
    let r = c.req(&Request::RemoveImage(img.digest));
    let there = has_image(c, img.digest);
    c.result("remove_refused_while_used", r == Err(Error::ImageInUse) && there, &format!("{r:?}"));
    let _ = c.req(&Request::Destroy(Target::Name("uses-pushed".into())));
    let r = c.req(&Request::RemoveImage(img.digest));
    let s3 = store(c).unwrap_or(s0.clone());
    logf!("wkctl: store after the removal: {:?}", s3);
    let there = has_image(c, img.digest);
    c.result("remove_done", r == Ok(Reply::Done) && !there, &format!("{r:?}"));
    // the image's frames are free again (give or take a few pages of heap the node allocated)
    c.result("remove_frames_returned", s3.used_pages == s0.used_pages && s3.free_pages + 64 >= s0.free_pages && s3.free_pages >= s1.free_pages + pages,
        &format!("used {} (before the push {}), free {} (before the push {}, after it {})", s3.used_pages, s0.used_pages, s3.free_pages, s0.free_pages, s1.free_pages));
    let r = c.req(&Request::RemoveImage(img.digest));
    c.result("remove_unknown", r == Err(Error::NoSuchImage), &format!("{r:?}"));
    // an upload abandoned halfway: dropped after the node's idle time, its frames freed
    let ab = Synth::new(3, 500 * 1024);
    if let Ok(Reply::Upload { upload: u3, present: false, .. }) = c.req(&Request::ImageBegin { image: ab.digest, manifest: ab.manifest.clone() }) {
        let _ = p.chunk(&ab, u3, 0, false, false);
        let held = store(c).map(|s| s.uploads == 1 && s.used_pages > s0.used_pages).unwrap_or(false);
        let end = now_ns() + 120 * 1_000_000_000;
        let mut s4 = store(c);
        while now_ns() < end && s4.as_ref().is_none_or(|s| s.uploads != 0) {
            sleep_ns(1_000_000_000);
            s4 = store(c);
        }
        let s4 = s4.unwrap_or(s0.clone());
        c.result("push_abandoned_expires", held && s4.uploads == 0 && s4.used_pages == s0.used_pages, &format!("held {held}; {s4:?}"));
    } else {
        c.result("push_abandoned_expires", false, "begin refused");
    }
}

const TICKER: &str = "tick";

fn adopt_before(c: &mut Client) {
    let Some(img) = c.image() else { return c.result("adopt_image", false, "no image in the store") };
    for name in ["adopt-a", "adopt-b"] {
        let s = WorkloadSpec {
            name: name.into(), image: img, vcpus: 1, memory_mib: 64, env: vec![], restart: RestartPolicy::No,
            args: Some(vec![String::from(TICKER)]), net: false, health: None,
        };
        let r = c.req(&Request::Create(s)).and_then(|_| c.req(&Request::Start(Target::Name(name.into()))));
        c.result(&format!("adopt_started_{name}"), r == Ok(Reply::Done), &format!("{r:?}"));
    }
    for name in ["adopt-a", "adopt-b"] {
        let s = wait(c, name, 300, |s| s.state == State::Running);
        let end = now_ns() + 120 * 1_000_000_000;
        let mut ticks = c.log_text(name, Stream::Stdout);
        while !ticks.contains("tick ") && now_ns() < end {
            sleep_ns(200_000_000);
            ticks = c.log_text(name, Stream::Stdout);
        }
        c.result(&format!("adopt_running_{name}"), s.as_ref().is_some_and(|s| s.state == State::Running) && ticks.contains("tick "), &format!("{:?}; log {:?}", s.map(|s| s.state), ticks.lines().last()));
    }
}

fn adopt_after(c: &mut Client) {
    let ids: Vec<Option<catenary_workload::Status>> = ["adopt-a", "adopt-b"].iter().map(|n| c.status(n)).collect();
    for (name, s) in ["adopt-a", "adopt-b"].iter().zip(&ids) {
        c.result(&format!("adopted_{name}"), s.as_ref().is_some_and(|s| s.state == State::Running && s.attempts == 1 && s.restarts == 0),
            &format!("{:?}", s.as_ref().map(|s| (s.id, s.state, s.attempts, s.restarts))));
    }
    // their logs go on under the new workd: a tick logged after the adoption
    for name in ["adopt-a", "adopt-b"] {
        let first = c.log_text(name, Stream::Stdout);
        let end = now_ns() + 60 * 1_000_000_000;
        let mut later = first.clone();
        while now_ns() < end && later.matches("tick ").count() < first.matches("tick ").count() + 2 {
            sleep_ns(1_000_000_000);
            later = c.log_text(name, Stream::Stdout);
        }
        c.result(&format!("adopted_logs_{name}"), later.matches("tick ").count() >= first.matches("tick ").count() + 2, &format!("{:?}", later.lines().last()));
    }
    for name in ["adopt-a", "adopt-b"] {
        let r = c.req(&Request::Stop { target: Target::Name(name.into()), grace_ms: Some(1000) });
        let s = wait(c, name, 120, |s| s.state == State::Exited);
        let d = c.req(&Request::Destroy(Target::Name(name.into())));
        c.result(&format!("adopted_stop_{name}"), r == Ok(Reply::Done) && s.as_ref().is_some_and(|s| s.state == State::Exited) && d == Ok(Reply::Done),
            &format!("{r:?}, {:?}, {d:?}", s.map(|s| (s.state, s.exit))));
    }
}
