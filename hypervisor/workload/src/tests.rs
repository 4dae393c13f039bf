//! The service as a whole, over the simulated kernel of [`crate::fuzzing`].

use crate::fuzzing::{image, service, SimKernel};
use crate::logring::Stream;
use crate::proto::*;
use crate::service::{BACKSTOP_MS, KILL_GRACE_MS};
use crate::spec::*;
use crate::status::*;
use crate::vmctl::{self, Event, VmEvent};
use crate::Digest;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

fn spec(name: &str, mib: u32, restart: RestartPolicy) -> WorkloadSpec {
    WorkloadSpec { health: None, name: name.into(), image: image(), vcpus: 1, memory_mib: mib, env: vec!["A=1".into()], args: Some(vec!["flaky".into()]), restart, net: false }
}

fn status(s: &mut crate::service::Service, k: &mut SimKernel, name: &str, now: u64) -> Status {
    match s.handle(Request::Status(Target::Name(name.into())), now, k) {
        Ok(Reply::Status(st)) => st,
        r => panic!("{r:?}"),
    }
}

fn end(s: &mut crate::service::Service, k: &mut SimKernel, vm: u64, exit: Option<vmctl::Exit>, how: vmctl::Ended, now: u64) {
    if let Some(e) = exit {
        s.on_event(VmEvent { vm, event: Event::Exit(e) }, now, k);
    }
    k.alive.retain(|v| *v != vm);
    s.on_event(VmEvent { vm, event: Event::Ended { how, touched_bytes: 5 << 20, wall_ms: 10 } }, now, k);
}

#[test]
fn on_failure_fails_twice_then_succeeds_two_restarts() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    let id = match s.handle(Request::Create(spec("flaky", 64, RestartPolicy::OnFailure { limit: 5 })), 0, &mut k) {
        Ok(Reply::Created(id)) => id,
        r => panic!("{r:?}"),
    };
    assert_eq!(status(&mut s, &mut k, "flaky", 0).state, State::Created);
    s.handle(Request::Start(Target::Id(id)), 0, &mut k).unwrap();
    let mut now = 0;
    for attempt in 1..=3u32 {
        let vm = k.next;
        // the attempt number reaches the guest in its env (after the spec's own entries)
        let c = k.created.last().unwrap();
        assert_eq!(c.env, vec![String::from("A=1"), format!("CATENARY_ATTEMPT={attempt}"), String::from("CATENARY_WORKLOAD=flaky")]);
        assert_eq!(c.args.as_deref(), Some(&[String::from("flaky")][..]));
        assert_eq!(status(&mut s, &mut k, "flaky", now).state, State::Starting);
        s.on_event(VmEvent { vm, event: Event::Ready }, now, &mut k);
        assert_eq!(status(&mut s, &mut k, "flaky", now).state, State::Running);
        s.on_event(VmEvent { vm, event: Event::Log { stream: Stream::Stdout, line: format!("attempt {attempt}").into_bytes() } }, now, &mut k);
        now += 1000;
        let code = if attempt < 3 { 1 } else { 0 };
        end(&mut s, &mut k, vm, Some(vmctl::Exit::Code(code)), vmctl::Ended::PowerOff, now);
        let st = status(&mut s, &mut k, "flaky", now);
        if attempt < 3 {
            assert_eq!(st.state, State::Starting, "waiting for the backoff");
            assert_eq!(st.exit, Some(ExitStatus::Code(1)));
            let delay = crate::restart::backoff_ms(attempt);
            assert_eq!(st.restart_in_ms, Some(delay));
            // not before the delay
            assert_eq!(s.tick(now + delay - 1, &mut k), Some(now + delay));
            assert_eq!(k.created.len() as u32, attempt);
            now += delay;
            assert_eq!(s.tick(now, &mut k), None);
            assert_eq!(k.created.len() as u32, attempt + 1);
        } else {
            assert_eq!(st.state, State::Exited);
            assert_eq!(st.exit, Some(ExitStatus::Code(0)));
            assert_eq!(st.restarts, 2);
            assert_eq!(st.attempts, 3);
            assert_eq!(st.uptime_ms, 1000);
            assert_eq!(st.memory_touched, 5 << 20);
        }
    }
    let logs = match s.handle(Request::Logs { target: Target::Id(id), cursor: 0, max: 10_000 }, now, &mut k) {
        Ok(Reply::Logs(c)) => c,
        r => panic!("{r:?}"),
    };
    let out: Vec<&[u8]> = logs.records.iter().filter(|r| r.stream == Stream::Stdout).map(|r| &r.data[..]).collect();
    assert_eq!(out, [&b"attempt 1\n"[..], b"attempt 2\n", b"attempt 3\n"]);
    let list = match s.handle(Request::List, now, &mut k) {
        Ok(Reply::List(l)) => l,
        r => panic!("{r:?}"),
    };
    assert_eq!(list[0].restarts, 2);
}

#[test]
fn on_failure_limit_and_failed_state() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    s.handle(Request::Create(spec("f", 64, RestartPolicy::OnFailure { limit: 1 })), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("f".into())), 0, &mut k).unwrap();
    end(&mut s, &mut k, 1, None, vmctl::Ended::Crashed, 10);
    assert_eq!(status(&mut s, &mut k, "f", 10).state, State::Starting);
    s.tick(10_000, &mut k);
    end(&mut s, &mut k, 2, Some(vmctl::Exit::InitFailed(127)), vmctl::Ended::PowerOff, 10_010);
    let st = status(&mut s, &mut k, "f", 20_000);
    assert_eq!((st.state, st.exit, st.restarts), (State::Failed, Some(ExitStatus::InitFailed(127)), 1));
    // start again: restarts count from 0
    s.handle(Request::Start(Target::Name("f".into())), 20_000, &mut k).unwrap();
    assert_eq!(status(&mut s, &mut k, "f", 20_000).restarts, 0);
    assert_eq!(s.handle(Request::Start(Target::Name("f".into())), 20_000, &mut k), Err(Error::BadState(State::Starting)));
}

/// An OOM kill the init reported is its own exit status (not a plain signal 9): the run is
/// `exited` and counts as a failure for `on-failure`.
#[test]
fn oom_kill_is_reported_and_is_a_failure() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    s.handle(Request::Create(spec("m", 64, RestartPolicy::OnFailure { limit: 1 })), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("m".into())), 0, &mut k).unwrap();
    end(&mut s, &mut k, 1, Some(vmctl::Exit::OomKilled(9)), vmctl::Ended::PowerOff, 10);
    let st = status(&mut s, &mut k, "m", 10);
    assert_eq!((st.state, st.exit, st.restarts), (State::Starting, Some(ExitStatus::OomKilled(9)), 1));
    s.tick(10_000, &mut k);
    end(&mut s, &mut k, 2, Some(vmctl::Exit::OomKilled(9)), vmctl::Ended::PowerOff, 10_010);
    let st = status(&mut s, &mut k, "m", 20_000);
    assert_eq!((st.state, st.exit, st.restarts), (State::Exited, Some(ExitStatus::OomKilled(9)), 1));
    assert_eq!(format!("{}", ExitStatus::OomKilled(9)), "killed by the kernel's OOM killer (signal 9)");
}

fn check() -> HealthCheck {
    HealthCheck { cmd: vec!["test".into(), "-f".into(), "/tmp/up".into()], interval_secs: 2, timeout_secs: 1, retries: 3, start_period_secs: 0 }
}

/// A workload with a health check: the check reaches the guest with each run; its health is
/// `starting` until the init reports HEALTHY, `healthy` then, and `starting` again in the next
/// run; the init's kill of an unhealthy workload is a failure its policy restarts.
#[test]
fn health_is_reported_per_run_and_an_unhealthy_kill_is_a_failure() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    let mut sp = spec("h", 64, RestartPolicy::OnFailure { limit: 1 });
    sp.health = Some(check());
    s.handle(Request::Create(sp), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("h".into())), 0, &mut k).unwrap();
    assert_eq!(k.created.last().unwrap().health, Some(check()));
    assert_eq!(status(&mut s, &mut k, "h", 0).health, Health::Starting);
    s.on_event(VmEvent { vm: 1, event: Event::Ready }, 5, &mut k);
    assert_eq!(status(&mut s, &mut k, "h", 5).health, Health::Starting, "running, the check not passed yet");
    s.on_event(VmEvent { vm: 1, event: Event::Healthy }, 2000, &mut k);
    assert_eq!(status(&mut s, &mut k, "h", 2000).health, Health::Healthy);
    let listed = |s: &mut crate::service::Service, k: &mut SimKernel| match s.handle(Request::List, 2000, k) {
        Ok(Reply::List(l)) => l[0].health,
        r => panic!("{r:?}"),
    };
    assert_eq!(listed(&mut s, &mut k), Health::Healthy);
    end(&mut s, &mut k, 1, Some(vmctl::Exit::Unhealthy(9)), vmctl::Ended::PowerOff, 9000);
    let st = status(&mut s, &mut k, "h", 9000);
    assert_eq!((st.state, st.exit, st.restarts, st.health), (State::Starting, Some(ExitStatus::Unhealthy(9)), 1, Health::Starting));
    s.tick(20_000, &mut k);
    assert_eq!(k.created.len(), 2, "restarted");
    assert_eq!(k.created[1].health, Some(check()));
    s.on_event(VmEvent { vm: 2, event: Event::Ready }, 20_005, &mut k);
    assert_eq!(status(&mut s, &mut k, "h", 20_005).health, Health::Starting, "a new run starts unchecked");
    assert_eq!(format!("{}", ExitStatus::Unhealthy(9)), "killed by the guest init: unhealthy, its health check failed (signal 9)");
    // without a check there is nothing to say
    s.handle(Request::Create(spec("u", 64, RestartPolicy::No)), 0, &mut k).unwrap();
    assert_eq!(status(&mut s, &mut k, "u", 0).health, Health::Unchecked);
}

#[test]
fn health_check_bounds() {
    let mut sp = spec("h", 64, RestartPolicy::No);
    sp.health = Some(check());
    assert!(sp.check().is_ok());
    let bad: [fn(&mut HealthCheck); 9] = [
        |h| h.cmd.clear(),
        |h| h.cmd[0].clear(),
        |h| h.cmd = vec!["x".into(); HEALTH_CMD_MAX + 1],
        |h| h.cmd[1] = "a\0b".into(),
        |h| h.interval_secs = 0,
        |h| h.timeout_secs = h.interval_secs + 1,
        |h| h.retries = 0,
        |h| h.retries = HEALTH_RETRIES_MAX + 1,
        |h| h.start_period_secs = HEALTH_SECS_MAX + 1,
    ];
    for (i, f) in bad.iter().enumerate() {
        let mut h = check();
        f(&mut h);
        sp.health = Some(h);
        assert_eq!(sp.check(), Err(Error::BadSpec(SpecError::Health)), "case {i}");
    }
}

/// The init's kill of a thrashing VM is reported as such, and, as an OOM kill, is a failure.
#[test]
fn thrash_kill_is_reported_and_is_a_failure() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    s.handle(Request::Create(spec("t", 64, RestartPolicy::OnFailure { limit: 1 })), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("t".into())), 0, &mut k).unwrap();
    end(&mut s, &mut k, 1, Some(vmctl::Exit::ThrashKilled(9)), vmctl::Ended::PowerOff, 10);
    let st = status(&mut s, &mut k, "t", 10);
    assert_eq!((st.state, st.exit, st.restarts), (State::Starting, Some(ExitStatus::ThrashKilled(9)), 1));
    s.tick(10_000, &mut k);
    end(&mut s, &mut k, 2, Some(vmctl::Exit::ThrashKilled(9)), vmctl::Ended::PowerOff, 10_010);
    let st = status(&mut s, &mut k, "t", 20_000);
    assert_eq!((st.state, st.exit, st.restarts), (State::Exited, Some(ExitStatus::ThrashKilled(9)), 1));
    assert_eq!(format!("{}", ExitStatus::ThrashKilled(9)), "killed by the guest init: out of memory, thrashing (signal 9)");
}

#[test]
fn eight_workloads_each_with_its_own_log() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    for i in 0..8 {
        let mut sp = spec(&format!("w{i}"), 64, RestartPolicy::No);
        sp.args = Some(vec!["hello".into(), format!("w{i}")]);
        s.handle(Request::Create(sp), 0, &mut k).unwrap();
        s.handle(Request::Start(Target::Name(format!("w{i}"))), 0, &mut k).unwrap();
    }
    assert_eq!(s.vms(), 8);
    // interleaved lines
    for round in 0..3 {
        for vm in 1..=8u64 {
            s.on_event(VmEvent { vm, event: Event::Log { stream: Stream::Stdout, line: format!("vm{vm} line{round}").into_bytes() } }, 0, &mut k);
        }
    }
    for i in 0..8u64 {
        let c = match s.handle(Request::Logs { target: Target::Name(format!("w{i}")), cursor: 0, max: 4096 }, 0, &mut k) {
            Ok(Reply::Logs(c)) => c,
            r => panic!("{r:?}"),
        };
        let text: Vec<u8> = c.records.iter().filter(|r| r.stream == Stream::Stdout).flat_map(|r| r.data.clone()).collect();
        assert_eq!(text, format!("vm{0} line0\nvm{0} line1\nvm{0} line2\n", i + 1).into_bytes());
    }
}

#[test]
fn admission_refusal_creates_nothing() {
    let (mut s, mut k) = (service(1024), SimKernel::default()); // 960 MiB for workloads
    for i in 0..8 {
        s.handle(Request::Create(spec(&format!("w{i}"), 64, RestartPolicy::No)), 0, &mut k).unwrap();
    }
    let free = s.admission.free_mib();
    assert_eq!(free, 960 - 8 * 68);
    let r = s.handle(Request::Create(spec("big", 512, RestartPolicy::No)), 0, &mut k);
    assert_eq!(r, Err(Error::NoMemory { need_mib: 516, free_mib: free }));
    assert_eq!(s.admission.free_mib(), free);
    assert_eq!(s.len(), 8);
    assert_eq!(s.handle(Request::Status(Target::Name("big".into())), 0, &mut k), Err(Error::NoSuchWorkload));
    // checks before admission commit nothing either
    let mut bad = spec("w0", 64, RestartPolicy::No);
    assert_eq!(s.handle(Request::Create(bad.clone()), 0, &mut k), Err(Error::NameInUse));
    bad.name = "x".into();
    bad.image = Digest([9; 32]);
    assert_eq!(s.handle(Request::Create(bad.clone()), 0, &mut k), Err(Error::NoSuchImage));
    bad.image = image();
    bad.vcpus = 2;
    assert_eq!(s.handle(Request::Create(bad), 0, &mut k), Err(Error::Unsupported));
    assert_eq!(s.admission.free_mib(), free);
    // destroying gives memory back
    s.handle(Request::Destroy(Target::Name("w0".into())), 0, &mut k).unwrap();
    assert_eq!(s.admission.free_mib(), free + 68);
    assert!(k.created.is_empty(), "nothing was started");
}

/// Each workload with network holds a link slot (its /128) from create to destroy: the same
/// on every run, a ninth refused with nothing created, a destroyed one's slot reused.
#[test]
fn network_links_are_bounded_kept_across_restarts_and_freed_by_destroy() {
    let node = core::net::Ipv6Addr::new(0xfd12, 0x3456, 0x789a, 0xbcde, 0, 0, 0, 1);
    let (mut s, mut k) = (service(100_000), SimKernel { node: Some(node), ..Default::default() });
    let net = |name: &str| WorkloadSpec { net: true, ..spec(name, 64, RestartPolicy::Always) };
    for i in 1..=8 {
        s.handle(Request::Create(net(&format!("n{i}"))), 0, &mut k).unwrap();
    }
    let free = s.admission.free_mib();
    assert_eq!(s.handle(Request::Create(net("n9")), 0, &mut k), Err(Error::NoNetworkLink));
    assert_eq!((s.len(), s.admission.free_mib()), (8, free), "the refusal created and committed nothing");
    // without network it still fits
    s.handle(Request::Create(spec("plain", 64, RestartPolicy::No)), 0, &mut k).unwrap();
    let addr = |s: &mut crate::service::Service, k: &mut SimKernel, n: &str| status(s, k, n, 0).address;
    assert_eq!(addr(&mut s, &mut k, "plain"), None);
    let a3 = addr(&mut s, &mut k, "n3").unwrap();
    assert_eq!(a3, crate::net::address(node, 3));
    let all: Vec<_> = (1..=8).map(|i| addr(&mut s, &mut k, &format!("n{i}")).unwrap()).collect();
    assert!(all.iter().enumerate().all(|(i, a)| !all[..i].contains(a)), "distinct: {all:?}");
    match s.handle(Request::List, 0, &mut k) {
        Ok(Reply::List(l)) => assert_eq!(l.iter().find(|w| w.name == "n3").unwrap().address, Some(a3)),
        r => panic!("{r:?}"),
    }
    // the kernel is asked for the slot's device; a restart asks for the same slot again
    s.handle(Request::Start(Target::Name("n3".into())), 0, &mut k).unwrap();
    assert_eq!(k.created.last().unwrap().net, Some(3));
    let vm = k.next;
    end(&mut s, &mut k, vm, Some(vmctl::Exit::Code(1)), vmctl::Ended::PowerOff, 50);
    s.tick(10_000, &mut k);
    assert_eq!(k.created.len(), 2, "restarted by its policy");
    assert_eq!(k.created[1].net, Some(3));
    assert_eq!(addr(&mut s, &mut k, "n3"), Some(a3), "a restarted workload keeps its /128");
    assert_eq!(k.created.iter().filter(|c| c.name == "plain").count(), 0);
    // destroy frees the slot: the next networked workload gets it (and its /128)
    let vm = k.next;
    s.handle(Request::Stop { target: Target::Name("n3".into()), grace_ms: Some(0) }, 10_000, &mut k).unwrap();
    end(&mut s, &mut k, vm, None, vmctl::Ended::Killed, 10_001);
    s.handle(Request::Destroy(Target::Name("n3".into())), 10_002, &mut k).unwrap();
    s.handle(Request::Create(net("n9")), 10_003, &mut k).unwrap();
    assert_eq!(addr(&mut s, &mut k, "n9"), Some(a3));
    assert_eq!(s.net_links(), 8);
    // before the node's network is up the status has no address, and gets it once it is
    let (mut s2, mut k2) = (service(1024), SimKernel::default());
    s2.handle(Request::Create(net("early")), 0, &mut k2).unwrap();
    assert_eq!(addr(&mut s2, &mut k2, "early"), None);
    k2.node = Some(node);
    assert_eq!(addr(&mut s2, &mut k2, "early"), Some(crate::net::address(node, 1)));
}

#[test]
fn workloads_max() {
    let (mut s, mut k) = (service(100_000), SimKernel::default());
    for i in 0..WORKLOADS_MAX {
        s.handle(Request::Create(spec(&format!("w{i}"), 32, RestartPolicy::No)), 0, &mut k).unwrap();
    }
    assert_eq!(s.handle(Request::Create(spec("one-more", 32, RestartPolicy::No)), 0, &mut k), Err(Error::TooManyWorkloads));
    let r = s.handle(Request::List, 0, &mut k);
    assert!(encode_response(&r).unwrap().len() <= REPLY_MAX);
}

#[test]
fn stop_asks_the_kernel_then_backstop_power_off() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..Default::default() });
    s.handle(Request::Create(spec("srv", 64, RestartPolicy::Always)), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("srv".into())), 0, &mut k).unwrap();
    s.on_event(VmEvent { vm: 1, event: Event::Ready }, 0, &mut k);
    s.handle(Request::Stop { target: Target::Name("srv".into()), grace_ms: Some(500) }, 100, &mut k).unwrap();
    assert_eq!(status(&mut s, &mut k, "srv", 100).state, State::Stopping);
    // the kernel runs StopSignal -> SIGKILL -> power-off; workd only keeps a backstop
    let backstop = 100 + 500 + KILL_GRACE_MS + BACKSTOP_MS;
    assert_eq!(s.tick(backstop - 1, &mut k), Some(backstop));
    assert!(k.killed.is_empty());
    s.tick(backstop, &mut k);
    assert_eq!(k.killed, [1]);
    end(&mut s, &mut k, 1, None, vmctl::Ended::Killed, backstop + 10);
    let st = status(&mut s, &mut k, "srv", backstop + 10);
    assert_eq!((st.state, st.exit, st.restarts), (State::Exited, Some(ExitStatus::PoweredOff), 0), "a stopped workload is not restarted, even with `always`");
    assert_eq!(s.tick(1_000_000, &mut k), None);
    assert_eq!(k.created.len(), 1);
    // a workload that handles its StopSignal exits on its own, with its status
    s.handle(Request::Start(Target::Name("srv".into())), 1_000_000, &mut k).unwrap();
    s.handle(Request::Stop { target: Target::Name("srv".into()), grace_ms: None }, 1_000_000, &mut k).unwrap();
    end(&mut s, &mut k, 2, Some(vmctl::Exit::Code(0)), vmctl::Ended::PowerOff, 1_000_100);
    assert_eq!(status(&mut s, &mut k, "srv", 1_000_100).exit, Some(ExitStatus::Code(0)));
    assert_eq!(s.tick(u64::MAX / 2, &mut k), None);
    assert_eq!(k.killed, [1]);
}

/// The list says whether a run ended because a stop was asked (`Summary::stopped`, what a
/// restarted `orchd` goes by): not before, yes after a stop, no again after a start, and not
/// for a run that ended by itself, even when a stop is asked after its end.
#[test]
fn the_list_says_whether_a_stop_ended_the_run() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..Default::default() });
    let stopped = |s: &mut crate::service::Service, k: &mut SimKernel, now| match s.handle(Request::List, now, k) {
        Ok(Reply::List(l)) => l[0].stopped,
        r => panic!("{r:?}"),
    };
    s.handle(Request::Create(spec("srv", 64, RestartPolicy::No)), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("srv".into())), 0, &mut k).unwrap();
    assert!(!stopped(&mut s, &mut k, 0), "running");
    s.handle(Request::Stop { target: Target::Name("srv".into()), grace_ms: Some(0) }, 10, &mut k).unwrap();
    end(&mut s, &mut k, 1, Some(vmctl::Exit::Signal(15)), vmctl::Ended::PowerOff, 20);
    assert!(stopped(&mut s, &mut k, 20), "ended by the stop");
    s.handle(Request::Start(Target::Name("srv".into())), 30, &mut k).unwrap();
    assert!(!stopped(&mut s, &mut k, 30), "started again");
    end(&mut s, &mut k, 2, Some(vmctl::Exit::Code(0)), vmctl::Ended::PowerOff, 40);
    assert_eq!(status(&mut s, &mut k, "srv", 40).state, State::Exited);
    assert!(!stopped(&mut s, &mut k, 40), "ended by itself");
    // a stop asked of a run that already ended by itself ends nothing: it stays its policy's
    let _ = s.handle(Request::Stop { target: Target::Name("srv".into()), grace_ms: Some(0) }, 50, &mut k);
    assert!(!stopped(&mut s, &mut k, 50), "a stop of a run that had ended made it `stopped`");
}

#[test]
fn signals() {
    let (mut s, mut k) = (service(1024), SimKernel { signals: true, ..Default::default() });
    s.handle(Request::Create(spec("srv", 64, RestartPolicy::No)), 0, &mut k).unwrap();
    let sig = |signal| Request::Signal { target: Target::Name("srv".into()), signal };
    assert_eq!(s.handle(sig(1), 0, &mut k), Err(Error::BadState(State::Created)));
    s.handle(Request::Start(Target::Name("srv".into())), 0, &mut k).unwrap();
    assert_eq!(s.handle(sig(0), 0, &mut k), Err(Error::BadSignal));
    assert_eq!(s.handle(sig(65), 0, &mut k), Err(Error::BadSignal));
    assert_eq!(s.handle(sig(10), 0, &mut k), Ok(Reply::Done));
    k.signals = false;
    assert_eq!(s.handle(sig(10), 0, &mut k), Err(Error::Unsupported));
}

#[test]
fn stop_without_signals_powers_off_at_once() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    s.handle(Request::Create(spec("srv", 64, RestartPolicy::No)), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("srv".into())), 0, &mut k).unwrap();
    assert_eq!(s.handle(Request::Destroy(Target::Name("srv".into())), 0, &mut k), Err(Error::BadState(State::Starting)));
    s.handle(Request::Stop { target: Target::Name("srv".into()), grace_ms: Some(GRACE_MAX_MS * 2) }, 5, &mut k).unwrap();
    assert_eq!(k.killed, [1]);
    assert_eq!(s.handle(Request::Destroy(Target::Name("srv".into())), 5, &mut k), Err(Error::BadState(State::Stopping)));
    end(&mut s, &mut k, 1, None, vmctl::Ended::Killed, 50);
    s.handle(Request::Destroy(Target::Name("srv".into())), 50, &mut k).unwrap();
    assert!(s.is_empty());
    // events of a VM nobody owns any more are ignored
    s.on_event(VmEvent { vm: 1, event: Event::Ready }, 60, &mut k);
}

#[test]
fn stop_during_backoff_cancels_the_restart() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    s.handle(Request::Create(spec("f", 64, RestartPolicy::Always)), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("f".into())), 0, &mut k).unwrap();
    end(&mut s, &mut k, 1, Some(vmctl::Exit::Code(0)), vmctl::Ended::PowerOff, 10);
    s.handle(Request::Stop { target: Target::Name("f".into()), grace_ms: None }, 20, &mut k).unwrap();
    assert_eq!(s.tick(1_000_000, &mut k), None);
    assert_eq!(k.created.len(), 1);
    assert_eq!(status(&mut s, &mut k, "f", 30).state, State::Exited);
}

#[test]
fn create_failure_is_reported() {
    let (mut s, mut k) = (service(100_000), SimKernel::default());
    s.handle(Request::Create(spec("huge", 8000, RestartPolicy::OnFailure { limit: 3 })), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("huge".into())), 0, &mut k).unwrap();
    let st = status(&mut s, &mut k, "huge", 0);
    assert_eq!((st.state, st.exit), (State::Failed, Some(ExitStatus::CreateFailed)));
}

/// `Request::Node`: the kernel's CPUs and memory, and admission's commitments, which follow
/// the workloads (committed from create to destroy; free memory while one runs).
#[test]
fn node_resources_follow_the_workloads() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    let node = |s: &mut crate::service::Service, k: &mut SimKernel| match s.handle(Request::Node, 0, k) {
        Ok(Reply::Node(n)) => n,
        r => panic!("{r:?}"),
    };
    let idle = node(&mut s, &mut k);
    assert_eq!((idle.cpus, idle.memory_total_mib, idle.memory_free_mib, idle.memory_committed_mib), (2, 2048, 2048, 0));
    assert_eq!(idle.memory_capacity_mib, 1024 - crate::admission::NODE_RESERVE_MIB);
    s.handle(Request::Create(spec("w", 64, RestartPolicy::No)), 0, &mut k).unwrap();
    assert_eq!(node(&mut s, &mut k).memory_committed_mib, 64 + crate::admission::VM_OVERHEAD_MIB);
    s.handle(Request::Start(Target::Name("w".into())), 0, &mut k).unwrap();
    let running = node(&mut s, &mut k);
    assert_eq!((running.memory_free_mib, running.memory_committed_mib), (2048 - 64, 68));
    end(&mut s, &mut k, 1, Some(vmctl::Exit::Code(0)), vmctl::Ended::PowerOff, 10);
    s.handle(Request::Destroy(Target::Name("w".into())), 20, &mut k).unwrap();
    assert_eq!(node(&mut s, &mut k), idle);
}

#[test]
fn every_request_round_trips() {
    let t = Target::Name("w".into());
    let reqs = [
        Request::Create(spec("w", 64, RestartPolicy::OnFailure { limit: 3 })),
        Request::Start(Target::Id(7)),
        Request::Stop { target: t.clone(), grace_ms: None },
        Request::Destroy(t.clone()),
        Request::List,
        Request::Status(t.clone()),
        Request::Logs { target: t, cursor: u64::MAX, max: 5 },
        Request::Images,
        Request::Signal { target: Target::Id(1), signal: 15 },
        Request::ImageBegin { image: Digest([3; 32]), manifest: b"{}".to_vec() },
        Request::ImageChunk { upload: 2, offset: 1 << 20, len: 4096, digest: Digest([4; 32]) },
        Request::ImageCommit { upload: 2 },
        Request::ImageAbort { upload: 2 },
        Request::RemoveImage(Digest([5; 32])),
        Request::Store,
        Request::Node,
        Request::ClusterLease { until_ns: u64::MAX },
    ];
    for r in reqs {
        let b = encode_request(&r).unwrap();
        assert_eq!(decode_request(&b), Ok(r));
    }
    let resp: Response = Err(Error::NoMemory { need_mib: 1, free_mib: 2 });
    assert_eq!(decode_response(&encode_response(&resp).unwrap()), Some(resp));
}

#[test]
fn hostile_requests_are_errors() {
    let good = encode_request(&Request::Create(spec("w", 64, RestartPolicy::No))).unwrap();
    assert_eq!(decode_request(&[]), Err(Error::Malformed));
    assert_eq!(decode_request(&[200]), Err(Error::Malformed), "unknown variant");
    assert_eq!(decode_request(&good[..good.len() - 1]), Err(Error::Malformed), "truncated");
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(decode_request(&trailing), Err(Error::Malformed), "trailing bytes");
    // a Vec or string length prefix far beyond the input
    let mut huge = vec![0u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
    huge.extend_from_slice(&[b'a'; 32]);
    assert_eq!(decode_request(&huge), Err(Error::Malformed));
    // invalid UTF-8 in the name
    let mut bad_utf8 = vec![5u8, 1, 3];
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    assert_eq!(decode_request(&bad_utf8), Err(Error::Malformed));
    assert_eq!(decode_request(&vec![4u8; REQUEST_MAX + 1]), Err(Error::Malformed), "over the bound");
    // valid encodings of invalid specs
    let (mut s, mut k) = (service(1024), SimKernel::default());
    let mut bad = |f: &dyn Fn(&mut WorkloadSpec), e: SpecError| {
        let mut sp = spec("ok", 64, RestartPolicy::No);
        f(&mut sp);
        assert_eq!(s.handle(Request::Create(sp), 0, &mut k), Err(Error::BadSpec(e)));
    };
    bad(&|s| s.name = String::new(), SpecError::Name);
    bad(&|s| s.name = "Upper".into(), SpecError::Name);
    bad(&|s| s.name = "-x".into(), SpecError::Name);
    bad(&|s| s.name = "a".repeat(64), SpecError::Name);
    bad(&|s| s.vcpus = 0, SpecError::Vcpus);
    bad(&|s| s.vcpus = 9, SpecError::Vcpus);
    bad(&|s| s.memory_mib = 1, SpecError::Memory);
    bad(&|s| s.memory_mib = u32::MAX, SpecError::Memory);
    bad(&|s| s.env = vec!["NOEQUALS".into()], SpecError::Env);
    bad(&|s| s.env = vec!["=x".into()], SpecError::Env);
    bad(&|s| s.env = vec!["1X=x".into()], SpecError::Env);
    bad(&|s| s.env = vec!["CATENARY_ATTEMPT=9".into()], SpecError::Env);
    bad(&|s| s.env = vec!["X=a\0b".into()], SpecError::Env);
    bad(&|s| s.env = (0..65).map(|i| format!("X{i}=1")).collect(), SpecError::Env);
    bad(&|s| s.args = Some(vec!["a".repeat(1025)]), SpecError::Args);
    bad(&|s| s.args = Some((0..65).map(|_| String::new()).collect()), SpecError::Args);
    bad(&|s| s.restart = RestartPolicy::OnFailure { limit: 1001 }, SpecError::Restart);
    assert_eq!(s.len(), 0);
    assert_eq!(s.handle(Request::Stop { target: Target::Id(99), grace_ms: None }, 0, &mut k), Err(Error::NoSuchWorkload));
    assert_eq!(s.handle(Request::Destroy(Target::Name("nope".into())), 0, &mut k), Err(Error::NoSuchWorkload));
    assert_eq!(s.handle(Request::Logs { target: Target::Id(0), cursor: u64::MAX, max: u32::MAX }, 0, &mut k), Err(Error::NoSuchWorkload));
}

#[test]
fn log_reads_are_bounded_and_report_loss() {
    let (mut s, mut k) = (service(1024), SimKernel::default());
    s.handle(Request::Create(spec("chatty", 64, RestartPolicy::No)), 0, &mut k).unwrap();
    s.handle(Request::Start(Target::Name("chatty".into())), 0, &mut k).unwrap();
    for i in 0..1000 {
        s.on_event(VmEvent { vm: 1, event: Event::Log { stream: Stream::Stderr, line: vec![b'0' + (i % 10) as u8; 150] } }, 0, &mut k);
    }
    let c = match s.handle(Request::Logs { target: Target::Name("chatty".into()), cursor: 0, max: u32::MAX }, 0, &mut k) {
        Ok(Reply::Logs(c)) => c,
        r => panic!("{r:?}"),
    };
    assert!(c.lost > 140_000, "the 4 KiB ring kept only the newest lines ({} lost)", c.lost);
    let bytes: usize = c.records.iter().map(|r| r.data.len()).sum();
    assert!(bytes <= LOG_READ_MAX as usize && bytes > 3000);
    assert!(encode_response(&Ok(Reply::Logs(c))).unwrap().len() <= REPLY_MAX);
}

#[test]
fn fuzzing_inputs_never_panic() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..3000 {
        let len = (n % 300) + 1;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        crate::fuzzing::run(&data);
    }
    // a valid create + start + events sequence in fuzz-input form
    let create = encode_request(&Request::Create(spec("a", 64, RestartPolicy::Always))).unwrap();
    let start = encode_request(&Request::Start(Target::Name("a".into()))).unwrap();
    let mut input = vec![0u8, create.len() as u8];
    input.extend_from_slice(&create);
    input.extend_from_slice(&[0, start.len() as u8]);
    input.extend_from_slice(&start);
    input.extend_from_slice(&[2, 8, 0, 4, 0, 0, 0, 0, 0, 0, 3, 8, 0xff, 0xff, 0, 0, 0, 0, 0, 0]);
    crate::fuzzing::run(&input);
}

#[test]
fn a_restarted_service_adopts_running_vms() {
    let mut k = SimKernel::default();
    let mut s = service(1024);
    for n in ["a", "b", "c"] {
        s.handle(Request::Create(spec(n, 64, RestartPolicy::OnFailure { limit: 5 })), 0, &mut k).unwrap();
        s.handle(Request::Start(Target::Name(n.into())), 0, &mut k).unwrap();
    }
    // a fails once and is restarted: its new VM's tag carries the restart
    end(&mut s, &mut k, 1, Some(vmctl::Exit::Code(1)), vmctl::Ended::PowerOff, 100);
    let next = s.tick(100_000, &mut k);
    assert!(next.is_none() && k.alive.len() == 3, "{:?}", k.alive);
    s.on_event(VmEvent { vm: 4, event: Event::Ready }, 100_100, &mut k);
    // the service dies; the kernel lists the live VMs with their tags (c's tag is garbage)
    let live: Vec<vmctl::LiveVm> = k
        .alive
        .iter()
        .map(|vm| {
            let tag = k.tags.iter().find(|(v, _)| v == vm).map(|(_, t)| t.clone()).unwrap();
            let tag = if *vm == 3 { vec![0xff; 5] } else { tag };
            vmctl::LiveVm { healthy: false, vm: *vm, tag, ready: *vm == 4, age_ms: 50, touched_bytes: 1 << 20 }
        })
        .collect();
    let mut s2 = service(1024);
    assert_eq!(s2.adopt(live, 200_000, &mut k), 2);
    assert!(k.killed.contains(&3), "a VM whose tag does not decode is powered off");
    let a = status(&mut s2, &mut k, "a", 200_000);
    assert_eq!((a.id, a.state, a.restarts, a.attempts, a.uptime_ms), (1, State::Running, 1, 2, 50));
    let b = status(&mut s2, &mut k, "b", 200_000);
    assert_eq!((b.id, b.state, b.restarts, b.attempts), (2, State::Starting, 0, 1));
    // the spec, env and args included, is the one it was created from (orchd compares it)
    let a_spec = s2.handle_from(crate::service::Client::Orchestrator, Request::Spec(Target::Name("a".into())), 200_000, &mut k);
    assert_eq!(a_spec, Ok(Reply::Spec(spec("a", 64, RestartPolicy::OnFailure { limit: 5 }))));
    match s2.handle(Request::List, 200_000, &mut k) {
        Ok(Reply::List(l)) => assert_eq!(l.iter().find(|w| w.name == "a").map(|w| w.spec), Some(spec("a", 64, RestartPolicy::OnFailure { limit: 5 }).digest())),
        r => panic!("{r:?}"),
    }
    assert!(matches!(s2.handle(Request::Status(Target::Name("c".into())), 0, &mut k), Err(Error::NoSuchWorkload)));
    // adopted memory is admitted again; new workloads get new ids; events reach the adopted
    assert_eq!(s2.admission.free_mib(), service(1024).admission.free_mib() - 2 * 68);
    assert_eq!(s2.handle(Request::Create(spec("d", 64, RestartPolicy::No)), 0, &mut k), Ok(Reply::Created(3)));
    s2.on_event(VmEvent { vm: 2, event: Event::Ready }, 200_001, &mut k);
    assert_eq!(status(&mut s2, &mut k, "b", 200_001).state, State::Running);
    end(&mut s2, &mut k, 2, Some(vmctl::Exit::Code(0)), vmctl::Ended::PowerOff, 200_002);
    assert_eq!(status(&mut s2, &mut k, "b", 200_002).exit, Some(ExitStatus::Code(0)));
}

#[test]
fn an_image_a_workload_names_is_not_removed() {
    let mut k = SimKernel::default();
    let mut s = service(1024);
    s.handle(Request::Create(spec("w", 64, RestartPolicy::No)), 0, &mut k).unwrap();
    assert_eq!(s.handle(Request::RemoveImage(image()), 0, &mut k), Err(Error::ImageInUse));
    assert!(k.removed.is_empty());
    s.handle(Request::Destroy(Target::Name("w".into())), 0, &mut k).unwrap();
    assert_eq!(s.handle(Request::RemoveImage(image()), 0, &mut k), Ok(Reply::Done));
    assert_eq!(k.removed, vec![image()]);
    assert_eq!(s.handle(Request::RemoveImage(image()), 0, &mut k), Err(Error::NoSuchImage));
    assert_eq!(s.handle(Request::Images, 0, &mut k), Ok(Reply::Images(vec![])));
    // pushing an image the node has is answered at once; a manifest that is not the digest's is refused
    let mut s = service(1024);
    assert_eq!(s.handle(Request::ImageBegin { image: image(), manifest: vec![] }, 0, &mut k), Ok(Reply::Upload { upload: 0, size: 0, present: true }));
    assert_eq!(s.handle(Request::ImageBegin { image: Digest([9; 32]), manifest: b"{}".to_vec() }, 0, &mut k), Err(Error::ImageInvalid));
}

/// What a node reports of its store: the room for one more image (the quota's rest, at most
/// the node's free memory, none with a full index) and an image's room in it.
#[test]
fn store_room_and_image_size_as_reported_to_the_scheduler() {
    use crate::vmctl::StoreInfo;
    let st = |quota_pages, used_pages, free_pages| StoreInfo { quota_pages, used_pages, uploads: 0, images: 3, free_pages, uploading: vec![] };
    assert_eq!(st(1000 << 8, 100 << 8, 4000 << 8).room_mib(3), 900);
    assert_eq!(st(1000 << 8, 100 << 8, 50 << 8).room_mib(3), 50, "the node's free memory bounds it");
    assert_eq!(st(1000 << 8, 1001 << 8, 4000 << 8).room_mib(3), 0, "over the quota");
    assert_eq!(st(1000 << 8, 0, 4000 << 8).room_mib(crate::store::IMAGES_MAX), 0, "a full index");
    let info = |config_size, rootfs_size| crate::store::ImageInfo { digest: Digest([1; 32]), rootfs: Digest([2; 32]), rootfs_size, config: Digest([3; 32]), config_size };
    assert_eq!(info(1024, 1 << 20).store_mib(), 2, "two files and room for image.json, rounded up");
    assert_eq!(info(0, (1 << 20) - crate::store::MANIFEST_MAX as u64).store_mib(), 1);
    assert_eq!(info(u64::MAX, u64::MAX).store_mib(), u32::MAX);
    // An upload under way is reported with its room (reserved already, so no longer in the
    // room above); one of an image already held is not.
    let held = [info(1024, 1 << 20)];
    let mut s = st(1000 << 8, 100 << 8, 4000 << 8);
    s.uploading = vec![(Digest([7; 32]), 600 << 8), (Digest([1; 32]), 1)];
    assert_eq!(s.uploads_mib(&held), vec![(Digest([7; 32]), 601)]);
    assert_eq!(st(1000 << 8, 100 << 8, 4000 << 8).uploads_mib(&held), vec![]);
}

/// `Request::Spec` answers `orchd` only, with the spec as the client gave it (env and args
/// included; the attempt's env entries are the guest's, not the spec's): what `orchd` compares
/// with the desired spec (`crate::replace`). After a restart of the service the spec is
/// rebuilt from the microVM's tag: `a_restarted_service_adopts_running_vms` checks it there.
#[test]
fn spec_answers_orchd_only_with_the_spec_as_created() {
    use crate::service::Client;
    let (mut s, mut k) = (service(1024), SimKernel::default());
    let sp = spec("flaky", 64, RestartPolicy::Always);
    s.handle(Request::Create(sp.clone()), 0, &mut k).unwrap();
    let ask = |s: &mut crate::service::Service, k: &mut SimKernel, c: Client, n: &str| s.handle_from(c, Request::Spec(Target::Name(n.into())), 0, k);
    assert_eq!(ask(&mut s, &mut k, Client::Orchestrator, "flaky"), Ok(Reply::Spec(sp.clone())));
    assert_eq!(ask(&mut s, &mut k, Client::Other, "flaky"), Err(Error::NotOrchestrator));
    s.handle(Request::Start(Target::Name("flaky".into())), 0, &mut k).unwrap();
    assert!(k.created.last().unwrap().env.len() > sp.env.len(), "the guest's env has the attempt's entries");
    // a restart by the policy: the spec (and its digest in the list) stays the one created
    let vm = k.next;
    end(&mut s, &mut k, vm, Some(vmctl::Exit::Code(1)), vmctl::Ended::PowerOff, 1000);
    s.tick(1000 + crate::restart::backoff_ms(1), &mut k);
    assert_eq!(k.created.len(), 2, "restarted by its policy");
    assert_eq!(ask(&mut s, &mut k, Client::Orchestrator, "flaky"), Ok(Reply::Spec(sp.clone())));
    match s.handle(Request::List, 5000, &mut k) {
        Ok(Reply::List(l)) => assert_eq!(l[0].spec, sp.digest()),
        r => panic!("{r:?}"),
    }
    assert_eq!(ask(&mut s, &mut k, Client::Orchestrator, "nosuch"), Err(Error::NoSuchWorkload));
}
