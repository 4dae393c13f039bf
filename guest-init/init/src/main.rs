//! `catenary-init`: the guest's PID 1 for a Catenary image (docs/guest-init.md).
//!
//! 1. mounts /proc, /sys, /dev (devtmpfs); lowers the console log level;
//! 2. reads `/catenary/config.json` + `/catenary/node.json` (appended to the initramfs by the
//!    node) and merges them; opens the workload channel (raw mode);
//! 3. mounts the image's squashfs read-only from the virtio-blk disk under a tmpfs overlay;
//! 4. brings up `lo` and, with an address, `eth0` (/128 + on-link default route);
//! 5. writes /etc/hosts, /etc/hostname, /etc/resolv.conf; sets the hostname;
//! 6. moves /dev, /proc, /sys into the new root and switches to it; mounts /dev/pts,
//!    /dev/shm, /tmp;
//! 7. resolves User, sets Env, HOME, WorkingDir; prints `catenary-init: ready`; runs
//!    Entrypoint + Cmd with stdout/stderr on pipes it forwards to the channel;
//! 8. forwards signals (those PID 1 gets, and the node's STOP and SIGNAL requests on the
//!    channel) to the workload's process group, reaps every zombie, runs the health check
//!    (health.rs) when the node gave one; when the workload ends, sends its exit status on the
//!    channel and powers the VM off.
//!
//! PID 1 never exits: every failure is reported (console + channel) and ends in power-off.
#![forbid(unsafe_code)]

use catenary_guest_proto::config::{HealthConfig, ImageConfig, NodeConfig, RunSpec, MAX_CONFIG_BYTES};
use catenary_guest_proto::wire::{self, Command as NodeCommand, CommandDecoder, Stream, WorkloadExit};
use catenary_init::{etc, exec, health, oom, thrash, user};
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "/catenary/config.json";
const NODE: &str = "/catenary/node.json";
/// The initramfs busybox (used for `ip` before the root switch).
const BUSYBOX: &str = "/bin/busybox";
/// How long the workload's pipes are still read after it exited (a background child may
/// hold them open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How often the thrash guard samples memory (thrash.rs).
const THRASH_SAMPLE: Duration = Duration::from_secs(1);

/// An error before or while starting the workload: reported, then power-off.
struct Failure {
    status: i32,
    msg: String,
}

fn fail<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure { status: 1, msg: msg.into() })
}

trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure { status: 1, msg: format!("{what}: {e}") })
    }
}

/// The workload channel (docs/guest-init.md): the init is its only writer.
struct Channel {
    tty: File,
    broken: bool,
}

impl Channel {
    fn open(path: &str) -> Result<Channel, Failure> {
        let tty = OpenOptions::new().read(true).write(true).open(path).ctx(&format!("workload channel {path}"))?;
        // Raw: no newline translation, no echo; frames are binary.
        let mut t = nix::sys::termios::tcgetattr(tty.as_fd()).ctx("workload channel: tcgetattr")?;
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(tty.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t).ctx("workload channel: tcsetattr")?;
        Ok(Channel { tty, broken: false })
    }

    fn send(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        if let Err(e) = self.tty.write_all(bytes) {
            self.broken = true;
            println!("catenary-init: workload channel write failed: {e} (the log is lost from here)");
        }
    }

    fn data(&mut self, stream: Stream, data: &[u8]) {
        let mut frames = Vec::with_capacity(data.len() + 8);
        wire::encode_data(stream, data, &mut |b| frames.extend_from_slice(b));
        self.send(&frames);
    }

    fn finish(&mut self, exit: WorkloadExit) {
        self.send(&wire::encode_exit(exit));
        let _ = nix::sys::termios::tcdrain(self.tty.as_fd());
    }
}

fn mkdir_p(p: &str) -> Result<(), Failure> {
    fs::create_dir_all(p).ctx(&format!("mkdir {p}"))
}

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), Failure> {
    mkdir_p(target)?;
    mount(Some(src), target, Some(fstype), flags, data).ctx(&format!("mount {fstype} {src} on {target}"))
}

fn move_mount(from: &str, to: &str) -> Result<(), Failure> {
    mkdir_p(to)?;
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).ctx(&format!("move mount {from} to {to}"))
}

/// A file of at most `limit` bytes, None when absent.
fn read_bounded(path: &str, limit: usize) -> Result<Option<Vec<u8>>, Failure> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return fail(format!("{path}: {e}")),
    };
    let mut v = Vec::new();
    f.take(limit as u64 + 1).read_to_end(&mut v).ctx(path)?;
    if v.len() > limit {
        return fail(format!("{path}: more than {limit} bytes"));
    }
    Ok(Some(v))
}

/// Replace `path` (a file or a symlink the image has there) with `content`.
fn write_etc(path: &str, content: &str) -> Result<(), Failure> {
    if fs::symlink_metadata(path).is_ok() {
        fs::remove_file(path).ctx(&format!("replacing {path}"))?;
    }
    fs::write(path, content).ctx(path)
}

fn busybox(args: &[&str]) -> Result<(), Failure> {
    let out = Command::new(BUSYBOX).args(args).output().ctx(&format!("busybox {}", args.join(" ")))?;
    if !out.status.success() {
        return fail(format!("busybox {}: {} {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

fn early_mounts() -> Result<(), Failure> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid, None)?;
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    Ok(())
}

fn read_spec() -> Result<RunSpec, Failure> {
    let image = read_bounded(CONFIG, MAX_CONFIG_BYTES)?.ok_or_else(|| Failure { status: 1, msg: format!("{CONFIG} is missing: the node gave no image config") })?;
    let image = ImageConfig::parse(&image).ctx("image config")?;
    let node = match read_bounded(NODE, MAX_CONFIG_BYTES)? {
        Some(b) => NodeConfig::parse(&b).ctx("node config")?,
        None => NodeConfig { version: 1, ..Default::default() },
    };
    RunSpec::resolve(&image, &node).ctx("run config")
}

/// Steps 3-6: the new root, the network, /etc, the switch.
fn enter_root(spec: &RunSpec) -> Result<(), Failure> {
    mnt(&spec.rootfs_device, "/mnt/lower", "squashfs", MsFlags::MS_RDONLY, None)?;
    mnt("tmpfs", "/mnt/rw", "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
    mkdir_p("/mnt/rw/upper")?;
    mkdir_p("/mnt/rw/work")?;
    mnt("overlay", "/mnt/root", "overlay", MsFlags::empty(), Some("lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"))?;

    busybox(&["ip", "link", "set", "lo", "up"])?;
    if let Some(a) = spec.address {
        // The node routes exactly this /128; duplicate address detection only delays it. The
        // node's router advertisement (its MTU is wanted) must not install a default route via
        // the node's link-local address beside ours: the on-link route is the one (`replace`,
        // in case one came first).
        let _ = fs::write("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0");
        let _ = fs::write("/proc/sys/net/ipv6/conf/eth0/accept_ra_defrtr", "0");
        busybox(&["ip", "link", "set", "eth0", "up"])?;
        busybox(&["ip", "-6", "addr", "add", &format!("{a}/128"), "dev", "eth0"])?;
        busybox(&["ip", "-6", "route", "replace", "default", "dev", "eth0"])?;
    }

    mkdir_p("/mnt/root/etc")?;
    write_etc("/mnt/root/etc/hosts", &etc::hosts(&spec.hostname, spec.address))?;
    write_etc("/mnt/root/etc/hostname", &etc::hostname(&spec.hostname))?;
    write_etc("/mnt/root/etc/resolv.conf", &etc::resolv_conf(&spec.nameservers))?;
    nix::unistd::sethostname(&spec.hostname).ctx("sethostname")?;

    for m in ["/dev", "/proc", "/sys"] {
        move_mount(m, &format!("/mnt/root{m}"))?;
    }
    // switch_root: the overlay becomes / (the initramfs stays in memory; it is small).
    nix::unistd::chdir("/mnt/root").ctx("chdir /mnt/root")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).ctx("move the new root onto /")?;
    nix::unistd::chroot(".").ctx("chroot")?;
    nix::unistd::chdir("/").ctx("chdir /")?;

    mnt("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("gid=5,mode=620,ptmxmode=666"))?;
    mnt("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    mnt("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    Ok(())
}

/// The signals PID 1 takes (through a signalfd) and forwards to the workload; SIGCHLD reaps.
fn signal_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGWINCH, Signal::SIGCONT] {
        s.add(sig);
    }
    s
}

/// Deliver `signo` to the workload's process group (it leads its own group: `process_group(0)`
/// at spawn), so that a shell's foreground children get it too, as `docker stop` does for a
/// container's processes.
/// Returns whether the signal was delivered.
fn signal_workload(child: Pid, signo: i32, why: &str, chan: &mut Channel) -> bool {
    // Real-time signals (a StopSignal like SIGRTMIN+3) too: see signal.rs.
    match catenary_init::signal::deliver_to_group(child.as_raw(), signo) {
        Ok(()) => {
            match Signal::try_from(signo) {
                Ok(sig) => println!("catenary-init: {why}: {sig} to the workload's process group"),
                Err(_) => println!("catenary-init: {why}: signal {signo} to the workload's process group"),
            }
            true
        }
        Err(e) => {
            note(chan, &format!("{why}: {e}"));
            false
        }
    }
}

/// Write `catenary-init: MSG` to the console and to the workload's log (its INIT stream), for
/// what the operator must see next to the workload's own output.
fn note(chan: &mut Channel, msg: &str) {
    let line = format!("catenary-init: {msg}\n");
    print!("{line}");
    chan.data(Stream::Init, line.as_bytes());
}

/// The thrash guard's place in the workload loop (thrash.rs): the sampler, the guard's window,
/// when the next sample is due, and whether the guard's kill was delivered.
struct ThrashWatch {
    /// None when /proc could not be opened: no guard.
    sampler: Option<thrash::Sampler>,
    guard: thrash::Guard,
    started: Instant,
    next_sample: Instant,
    killed: bool,
}

impl ThrashWatch {
    fn open() -> ThrashWatch {
        let sampler = match thrash::Sampler::open() {
            Ok(s) => Some(s),
            Err(e) => {
                println!("catenary-init: /proc/meminfo, /proc/vmstat: {e} (no thrash guard)");
                None
            }
        };
        let now = Instant::now();
        ThrashWatch { sampler, guard: thrash::Guard::new(), started: now, next_sample: now, killed: false }
    }

    /// Takes a sample when one is due; the guard's verdict when the VM thrashes and the guard
    /// has not killed yet.
    fn verdict(&mut self) -> Option<thrash::Verdict> {
        let sampler = self.sampler.as_mut()?;
        let now = Instant::now();
        if now < self.next_sample {
            return None;
        }
        self.next_sample = now + THRASH_SAMPLE;
        let at_ms = now.duration_since(self.started).as_millis() as u64;
        let verdict = sampler.read().and_then(|m| self.guard.observe(at_ms, m));
        verdict.filter(|_| !self.killed)
    }

    /// How long the loop may wait for its next sample; None without a guard. Rounded up, so
    /// that the wake-up finds the sample due.
    fn wait(&self) -> Option<PollTimeout> {
        self.sampler.as_ref()?;
        let ms = self.next_sample.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000).clamp(1, 1000) as u16;
        Some(PollTimeout::from(ms))
    }
}

/// How the workload's health check is run (health.rs): the check's command line as the
/// workload's own, its schedule, and the run in progress.
struct HealthWatch {
    cfg: HealthConfig,
    checker: health::Checker,
    started: Instant,
    next_run: Instant,
    /// The run in progress: its pid, when it is killed if still going, whether it was.
    running: Option<(Pid, Instant, bool)>,
    /// How the last run ended, reaped and not yet judged: (exited 0, what to log).
    ended: Option<(bool, String)>,
    killed: bool,
}

/// What the workload loop does after a health run was judged.
enum HealthAction {
    None,
    /// Send the HEALTHY frame.
    Healthy,
    /// Kill the workload.
    Kill,
}

impl HealthWatch {
    fn new(cfg: HealthConfig) -> HealthWatch {
        let checker = health::Checker::new(&cfg);
        let now = Instant::now();
        let next_run = now + Duration::from_millis(checker.interval_ms());
        HealthWatch { cfg, checker, started: now, next_run, running: None, ended: None, killed: false }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Start a run (as the workload: `cmd` built by the caller) when one is due; kill one
    /// past its timeout.
    fn tick(&mut self, spawn: &mut dyn FnMut(&[String]) -> Result<Pid, String>) {
        let now = Instant::now();
        match self.running {
            Some((pid, deadline, false)) if now >= deadline => {
                let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                self.running = Some((pid, deadline, true));
            }
            Some(_) => {}
            None if self.ended.is_none() && now >= self.next_run => match spawn(&self.cfg.cmd) {
                Ok(pid) => self.running = Some((pid, now + Duration::from_millis(self.checker.timeout_ms()), false)),
                Err(why) => self.ended = Some((false, why)),
            },
            None => {}
        }
    }

    /// A reaped child: the run's end if it is the run's pid.
    fn reaped(&mut self, pid: Pid, status: WaitStatus) -> bool {
        let Some((run, _, timed_out)) = self.running else { return false };
        if pid != run {
            return false;
        }
        self.running = None;
        self.ended = Some(match status {
            // (one that exited just before the kill is judged by its exit)
            WaitStatus::Signaled(_, Signal::SIGKILL, _) if timed_out => (false, format!("still running after {} s: killed", self.cfg.timeout_secs)),
            WaitStatus::Exited(_, 0) => (true, String::new()),
            WaitStatus::Exited(_, c) => (false, format!("exit code {c}")),
            WaitStatus::Signaled(_, sig, _) => (false, format!("killed by {sig}")),
            _ => (false, "ended".into()),
        });
        true
    }

    /// Judge the run that ended, if one did; what it means is noted in the workload's log.
    fn judge(&mut self, chan: &mut Channel) -> HealthAction {
        let Some((ok, why)) = self.ended.take() else { return HealthAction::None };
        let now = Instant::now();
        self.next_run = now + Duration::from_millis(self.checker.interval_ms());
        let retries = self.checker.retries();
        match self.checker.ended(self.ms(now), ok) {
            // Every pass is sent: the channel drops bytes when the workload floods it, and a
            // lost first report would leave the run `starting` for good (the node keeps the
            // first one it gets).
            health::Outcome::Passed { first: true, .. } => {
                note(chan, "health check passed: the workload is healthy");
                HealthAction::Healthy
            }
            health::Outcome::Passed { after, .. } => {
                if after > 0 {
                    note(chan, &format!("health check passed again after {after} failures"));
                }
                HealthAction::Healthy
            }
            health::Outcome::Failed { in_a_row, counted: true } => {
                note(chan, &format!("health check failed ({why}): {in_a_row} of {retries} in a row"));
                HealthAction::None
            }
            health::Outcome::Failed { counted: false, .. } => {
                note(chan, &format!("health check failed ({why}): in the start period, not counted"));
                HealthAction::None
            }
            health::Outcome::Unhealthy { in_a_row } => {
                note(chan, &format!("health check failed ({why}): {in_a_row} of {retries} in a row: the workload is unhealthy; killing it"));
                HealthAction::Kill
            }
        }
    }

    /// How long the loop may wait for the next run or the run's deadline.
    fn wait(&self) -> PollTimeout {
        let at = match self.running {
            Some((_, deadline, false)) => deadline,
            Some(_) => return PollTimeout::from(100u16), // killed: its SIGCHLD wakes the loop; a look in 100 ms regardless
            None if self.ended.is_some() => return PollTimeout::ZERO,
            None => self.next_run,
        };
        let ms = at.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000).clamp(1, 1000) as u16;
        PollTimeout::from(ms)
    }
}

/// Reap every exited child; the workload's status when it was among them. A health run's
/// end goes to `health`.
fn reap(child: Pid, health: &mut Option<HealthWatch>) -> Option<WorkloadExit> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => found = Some(WorkloadExit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => found = Some(WorkloadExit::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(s) => {
                // a health run, or an orphan the workload left behind: reaped
                if let (Some(h), Some(pid)) = (health.as_mut(), s.pid()) {
                    h.reaped(pid, s);
                }
            }
        }
    }
}

/// `exit`; or the thrash guard's kill (or the health check's) when that SIGKILL ended it and
/// the OOM killer did not kill the entrypoint itself; or an OOM kill when the workload died of a signal while the
/// OOM killer killed (each kill is noted in the workload's log).
fn classify_exit(exit: WorkloadExit, child: Pid, watch: Option<&mut oom::OomWatch>, thrash_killed: bool, health_killed: bool, chan: &mut Channel) -> WorkloadExit {
    let (kills, entrypoint_killed) = watch.map(|w| w.kills(16, child.as_raw())).unwrap_or_default();
    for k in &kills {
        note(chan, &format!("the kernel's OOM killer killed process {} ({})", k.pid, k.comm));
    }
    match exit {
        // The guard's SIGKILL, unless the kernel's OOM killer got the entrypoint first.
        WorkloadExit::Signal(s) if thrash_killed && s == Signal::SIGKILL as i32 && !entrypoint_killed => WorkloadExit::ThrashKilled(s),
        WorkloadExit::Signal(s) if health_killed && s == Signal::SIGKILL as i32 && !entrypoint_killed => WorkloadExit::Unhealthy(s),
        WorkloadExit::Signal(s) if !kills.is_empty() => WorkloadExit::OomKilled(s),
        e => e,
    }
}

/// Step 7-8: run the workload, pump its output, wait for it.
fn run_workload(spec: &RunSpec, chan: &mut Channel) -> Result<WorkloadExit, Failure> {
    let passwd = read_bounded("/etc/passwd", MAX_CONFIG_BYTES)?.map(|b| String::from_utf8_lossy(&b).into_owned());
    let group = read_bounded("/etc/group", MAX_CONFIG_BYTES)?.map(|b| String::from_utf8_lossy(&b).into_owned());
    let id = user::resolve(&spec.user, passwd.as_deref(), group.as_deref()).map_err(|msg| Failure { status: 1, msg })?;
    // Docker creates a missing WorkingDir (owned by root).
    mkdir_p(&spec.working_dir)?;
    let env = etc::final_env(&spec.env, &id.home, &spec.hostname);

    let sigs = signal_set();
    sigs.thread_block().ctx("blocking signals")?;
    let sfd = SignalFd::with_flags(&sigs, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).ctx("signalfd")?;
    let (mut out_r, out_w) = std::io::pipe().ctx("pipe")?;
    let (mut err_r, err_w) = std::io::pipe().ctx("pipe")?;

    // Found here, as execvp would (the helper's exec then only fails for the user's lack of
    // permission or a bad format): a missing program is the init's failure (127), not an exit.
    let path_env = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| std::ffi::OsStr::new(v.as_str()));
    let program = exec::find_program(std::ffi::OsStr::new(&spec.argv[0]), path_env)
        .map_err(|(status, why)| Failure { status, msg: format!("cannot run {:?}: {why}", spec.argv[0]) })?;
    // The helper (exec.rs) sets the user, its groups and execs the entrypoint; std would drop
    // supplementary groups when it changes the uid. It inherits our signal mask (measured:
    // SigBlk in the child's /proc/self/status), which it clears before the exec (a workload
    // with SIGTERM blocked would never see the stop); `pre_exec` would be unsafe.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(exec::helper_args(id.uid, id.gid, &id.groups, &program, &spec.argv))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.working_dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w);
    // The kernel log from here on: the OOM killer's records (oom.rs).
    let mut oom_watch = match oom::OomWatch::open() {
        Ok(w) => Some(w),
        Err(e) => {
            println!("catenary-init: /dev/kmsg: {e} (OOM kills are not reported)");
            None
        }
    };
    // Memory, sampled once a second while the workload runs (thrash.rs).
    let mut thrash = ThrashWatch::open();
    // The health check, run as the workload is (health.rs).
    let mut health = spec.health.clone().map(HealthWatch::new);
    let mut spawn_check = |cmd: &[String]| -> Result<Pid, String> {
        let program = exec::find_program(std::ffi::OsStr::new(&cmd[0]), path_env).map_err(|(_, why)| format!("cannot run {:?}: {why}", cmd[0]))?;
        let mut c = Command::new("/proc/self/exe");
        c.args(exec::helper_args(id.uid, id.gid, &id.groups, &program, cmd))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.working_dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // The helper clears the signal mask it inherits (exec.rs), so PID 1 keeps its signals
        // blocked: one meant for the workload is never dropped while a check starts.
        c.spawn().map(|ch| Pid::from_raw(ch.id() as i32)).map_err(|e| format!("cannot run {:?}: {e}", cmd[0]))
    };
    println!("catenary-init: ready");
    chan.send(&wire::encode_ready());
    // Our signals stay blocked (the signalfd reads them): none is lost while it starts.
    let child = cmd.spawn();
    drop(cmd); // our copies of the pipes' write ends: EOF comes when the workload's close
    let child = match child {
        Ok(c) => Pid::from_raw(c.id() as i32),
        Err(e) => {
            let status = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 1,
            };
            return Err(Failure { status, msg: format!("cannot run {:?}: {e}", spec.argv[0]) });
        }
    };

    let mut open = [true, true];
    // (A workload that ended at once.)
    let mut status: Option<WorkloadExit> = reap(child, &mut health);
    let mut deadline: Option<Instant> = status.map(|_| Instant::now() + DRAIN_AFTER_EXIT);
    let mut buf = vec![0u8; wire::MAX_PAYLOAD];
    // The node's requests (STOP, SIGNAL) arrive on the channel's receive side.
    let mut node_cmds = CommandDecoder::new();
    let mut chan_open = true;
    let chan_in = chan.tty.try_clone().ctx("workload channel: dup")?;
    loop {
        if let Some(s) = status {
            let done = !open[0] && !open[1];
            if done || deadline.is_some_and(|d| Instant::now() >= d) {
                let health_killed = health.as_ref().is_some_and(|h| h.killed);
                return Ok(classify_exit(s, child, oom_watch.as_mut(), thrash.killed, health_killed, chan));
            }
        }
        // Sampled only while the workload runs.
        let verdict = if status.is_none() { thrash.verdict() } else { None };
        if let Some(v) = verdict {
            // An entrypoint that already ended (its SIGCHLD not read yet) is not killed: a
            // SIGKILL from elsewhere must not be taken for the guard's.
            if let Some(s) = reap(child, &mut health) {
                status = Some(s);
                deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
                continue;
            }
            note(chan, &format!(
                "out of memory: {} of {} KiB available, {} file pages/s read back in {} of {} s: the VM is thrashing; killing the workload",
                v.available_kib, v.total_kib, v.refaults_per_s, v.seconds, thrash::WINDOW
            ));
            thrash.killed = signal_workload(child, Signal::SIGKILL as i32, "thrashing", chan);
        }
        // The health check, only while the workload runs and until it killed it.
        if let Some(h) = health.as_mut().filter(|h| status.is_none() && !h.killed) {
            match h.judge(chan) {
                HealthAction::Healthy => chan.send(&wire::encode_healthy()),
                HealthAction::Kill => {
                    if let Some(s) = reap(child, &mut health) {
                        status = Some(s);
                        deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
                        continue;
                    }
                    let killed = signal_workload(child, Signal::SIGKILL as i32, "unhealthy", chan);
                    if let Some(h) = health.as_mut() {
                        h.killed = killed;
                    }
                    continue;
                }
                HealthAction::None => {}
            }
            // a check that ends (or is killed) raises SIGCHLD: reaped below, by the signalfd
            h.tick(&mut spawn_check);
        }
        let health_wait = health.as_ref().filter(|h| status.is_none() && !h.killed).map(|h| h.wait());
        let timeout = if status.is_some() {
            PollTimeout::from(100u16)
        } else {
            match (thrash.wait(), health_wait) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(PollTimeout::NONE),
            }
        };
        let (ready_out, ready_err, ready_sig, ready_chan) = {
            // Slots: the signalfd, then each source still open, in this order.
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            let mut slot = [None; 3];
            for (i, (on, fd)) in [(chan_open, chan_in.as_fd()), (open[0], out_r.as_fd()), (open[1], err_r.as_fd())].into_iter().enumerate() {
                if on {
                    slot[i] = Some(fds.len());
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return fail(format!("poll: {e}")),
            }
            let hit = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
            let at = |i: usize| slot[i].is_some_and(hit);
            (at(1), at(2), hit(0), at(0))
        };
        for (i, ready, stream) in [(0usize, ready_out, Stream::Stdout), (1, ready_err, Stream::Stderr)] {
            if !ready {
                continue;
            }
            let r = if i == 0 { out_r.read(&mut buf) } else { err_r.read(&mut buf) };
            match r {
                Ok(0) | Err(_) => open[i] = false,
                Ok(n) => chan.data(stream, &buf[..n]),
            }
        }
        if ready_chan {
            let mut cmds = Vec::new();
            match (&chan_in).read(&mut buf) {
                Ok(0) | Err(_) => chan_open = false,
                Ok(n) => node_cmds.feed(&buf[..n], &mut |c| cmds.push(c)),
            }
            for c in cmds.into_iter().filter(|_| status.is_none()) {
                match c {
                    NodeCommand::Stop => _ = signal_workload(child, spec.stop_signal.into(), "the node asked for a stop", chan),
                    NodeCommand::Signal(n) => _ = signal_workload(child, n.into(), "the node sent a signal", chan),
                }
            }
        }
        if ready_sig {
            while let Ok(Some(info)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
                if sig == Signal::SIGCHLD {
                    if let Some(s) = reap(child, &mut health) {
                        status = Some(s);
                        deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
                    }
                } else if status.is_none() {
                    let _ = kill(Pid::from_raw(-child.as_raw()), sig);
                }
            }
        }
    }
}

fn run(chan: &mut Option<Channel>) -> Result<WorkloadExit, Failure> {
    early_mounts()?;
    let debug = fs::read_to_string("/proc/cmdline").map(|c| c.split_whitespace().any(|w| w == "catenary.debug")).unwrap_or(false);
    if !debug {
        // Keep late kernel messages off the console (they go to the node's console anyway,
        // never into the workload's log).
        let _ = fs::write("/proc/sys/kernel/printk", "1");
    }
    let spec = read_spec()?;
    *chan = Some(Channel::open(&spec.channel)?);
    enter_root(&spec)?;
    let Some(ch) = chan.as_mut() else { return fail("workload channel lost") };
    run_workload(&spec, ch)
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == exec::HELPER_FLAG) {
        // The workload's first moments (exec.rs): returns only when the exec failed.
        let (status, msg) = exec::helper(&args[2..]);
        eprintln!("{msg}");
        std::process::exit(status);
    }
    if std::process::id() != 1 {
        eprintln!("catenary-init: not PID 1: this program is the guest's init (docs/guest-init.md)");
        std::process::exit(2);
    }
    let mut chan: Option<Channel> = None;
    let exit = match run(&mut chan) {
        Ok(e) => e,
        Err(f) => {
            println!("catenary-init: error: {}", f.msg);
            if let Some(c) = chan.as_mut() {
                c.data(Stream::Init, format!("catenary-init: {}\n", f.msg).as_bytes());
            }
            WorkloadExit::InitFailed(f.status)
        }
    };
    println!("catenary-init: workload {exit}");
    if let Some(c) = chan.as_mut() {
        c.finish(exit);
    }
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Not reached: PID 1 must never return (the kernel would panic).
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
