//! Printing a microVM's console on the node's serial console, bounded (docs/vmm.md, "Console").
//!
//! The guest's UART and virtio-console bytes land in the VM's [`ConsoleRing`] (64 KiB, oldest
//! bytes overwritten when full). The vCPU task drains it between exits: at most
//! [`DRAIN_BUDGET`] bytes per call and only as many as the VM's token bucket allows
//! (`RATE_BYTES_PER_S`, `BURST_BYTES`), cut into lines of at most `MAX_OUT_LINE` bytes. Each
//! printed line is one short write under the console lock (see `catenary_arch::serial`), so a
//! guest never holds interrupts off for a line of its choosing, and printing costs the
//! flooding VM's own task the time, nobody else's. Bytes the ring lost are reported at most
//! once per [`DROP_REPORT_NS`] as `vm NAME: console dropped N bytes`.

use alloc::string::String;
use alloc::vec::Vec;
use catenary_vmm::console::{ConsoleCapture, ConsoleRing, LineSplitter, TokenBucket, BURST_BYTES, RATE_BYTES_PER_S};
use catenary_vmm::workload::{stream_name, WorkloadLog};
use catenary_vmm::MicroVm;
use catenary_vmm::guest_proto::wire::Stream;
use log::{info, warn};

/// Most bytes moved from the ring per drain call (one call per VM exit or halt wake-up).
pub const DRAIN_BUDGET: u64 = 1024;
/// At the VM's end, the newest bytes printed even when its bucket is empty (its last words).
pub const END_TAIL: usize = 4096;
/// Shortest interval between two "console dropped" lines of one VM.
pub const DROP_REPORT_NS: u64 = 1_000_000_000;

/// A boot-phase mark: the line's pattern, and when the node saw it (node time since creation)
/// with the line.
pub type BootMark = (&'static str, Option<(u64, String)>);

pub struct VmConsole<'a> {
    name: &'a str,
    t0: u64,
    /// Time from creation to the guest printing `catenary-init: ready`.
    pub ready: Option<u64>,
    bucket: TokenBucket,
    split: LineSplitter,
    pub capture: ConsoleCapture,
    reported_dropped: u64,
    last_report_ns: u64,
    /// Unprinted bytes discarded at the VM's end (beyond its rate and `END_TAIL`).
    pub discarded: u64,
    /// The workload channel's decoder (VMs started from a Catenary image): the workload's log
    /// is printed as `[vm:NAME stdout] …` / `[vm:NAME stderr] …`, apart from the console.
    pub workload: WorkloadLog,
    log_bucket: TokenBucket,
    /// Time from creation to the node printing the workload's first stdout/stderr line.
    pub first_log: Option<u64>,
    /// A workload VM of the workload service (`SYS_VM`): its log lines and READY also go to the
    /// service's event queue under this VM handle (`task::vmctl`).
    pub sink: Option<u64>,
    ready_sent: bool,
    healthy_sent: bool,
    /// `vm.timeline=1` (`cargo xtask bench vm`): when the node saw the guest lines that mark its
    /// boot phases ([`MARKS`]): node time since creation and the line itself.
    pub marks: Option<Vec<BootMark>>,
    /// TSC cycles spent printing guest lines on the node console (the boot timeline's figure).
    pub print_cycles: u64,
}

/// The guest lines whose arrival `marks` records (the first line of any kind first). The
/// bench maps the guest's printk times onto the node's clock with a line printed live (after
/// hvc0 is up: the earlier ones arrive together when hvc0 replays the log backlog).
pub const MARKS: [&str; 5] = ["", "console [hvc0] enabled", "Freeing unused kernel", "Run /init", "catenary-init: ready"];

impl<'a> VmConsole<'a> {
    /// `None` if the capture buffers cannot be allocated.
    pub fn try_new(name: &'a str, t0: u64) -> Option<Self> {
        Some(VmConsole {
            name,
            t0,
            ready: None,
            bucket: TokenBucket::new(RATE_BYTES_PER_S, BURST_BYTES, t0),
            split: LineSplitter::default(),
            capture: ConsoleCapture::try_new().ok()?,
            reported_dropped: 0,
            last_report_ns: t0,
            discarded: 0,
            workload: WorkloadLog::new(),
            log_bucket: TokenBucket::new(RATE_BYTES_PER_S, BURST_BYTES, t0),
            first_log: None,
            sink: None,
            ready_sent: false,
            healthy_sent: false,
            marks: None,
            print_cycles: 0,
        })
    }

    /// Print what the rate limit allows now; `end`: the VM is gone, print its tail.
    pub fn drain(&mut self, ring: &mut ConsoleRing, now: u64, end: bool) {
        let avail = ring.len() as u64;
        let grant = if end {
            let g = self.bucket.take(now, avail).max(avail.min(END_TAIL as u64));
            self.discarded += ring.keep_newest(g as usize);
            g
        } else if avail == 0 {
            0
        } else {
            self.bucket.take(now, avail.min(DRAIN_BUDGET))
        };
        let mut left = grant as usize;
        let mut buf = [0u8; 256];
        let (name, t0) = (self.name, self.t0);
        let (ready, capture, marks, print_cycles) = (&mut self.ready, &mut self.capture, &mut self.marks, &mut self.print_cycles);
        let mut emit = |l: &[u8]| {
            if ready.is_none() && contains(l, b"catenary-init: ready") {
                *ready = Some(catenary_arch::time::now_ns() - t0);
            }
            for (pat, seen) in marks.iter_mut().flatten() {
                if seen.is_none() && contains(l, pat.as_bytes()) {
                    *seen = Some((catenary_arch::time::now_ns() - t0, String::from_utf8_lossy(l).into_owned()));
                }
            }
            capture.line(l);
            let t = catenary_arch::cpu::rdtsc();
            catenary_arch::println!("[vm:{}] {}", name, String::from_utf8_lossy(l));
            *print_cycles += catenary_arch::cpu::rdtsc().wrapping_sub(t);
        };
        while left > 0 {
            let n = ring.pop(&mut buf[..left.min(256)]);
            if n == 0 {
                break;
            }
            self.split.feed(&buf[..n], &mut emit);
            left -= n;
        }
        if end {
            self.split.flush(&mut emit);
        }
        let dropped = ring.dropped + self.discarded;
        if dropped > self.reported_dropped && (end || now.saturating_sub(self.last_report_ns) >= DROP_REPORT_NS) {
            warn!(target: "vmm", "vm {}: console dropped {} bytes ({} of {} in all)", self.name,
                dropped - self.reported_dropped, dropped, ring.written);
            self.reported_dropped = dropped;
            self.last_report_ns = now;
        }
    }

    /// Drain the VM's console and, when it has one, its workload channel.
    pub fn drain_vm(&mut self, vm: &mut MicroVm, now: u64, end: bool) {
        self.drain(vm.console(), now, end);
        if let Some(ch) = vm.channel() {
            self.drain_channel(ch, now, end);
        }
    }

    /// Decode the workload channel at the VM's log rate (all of it at the end: the ring holds
    /// at most its 64 KiB, and the exit status is in its newest bytes).
    fn drain_channel(&mut self, ring: &mut ConsoleRing, now: u64, end: bool) {
        let avail = ring.len() as u64;
        let mut left = if end { avail } else if avail == 0 { 0 } else { self.log_bucket.take(now, avail.min(DRAIN_BUDGET)) } as usize;
        let mut buf = [0u8; 256];
        let (name, t0) = (self.name, self.t0);
        let (capture, first_log) = (&mut self.capture, &mut self.first_log);
        let sink = self.sink;
        let mut emit = |s, l: &[u8]| {
            capture.line(l);
            catenary_arch::println!("[vm:{} {}] {}", name, stream_name(s), String::from_utf8_lossy(l));
            // `cargo xtask bench workload` reads this line (time to the entrypoint's first line).
            if first_log.is_none() && s != Stream::Init {
                let now = catenary_arch::time::now_ns();
                *first_log = Some(now - t0);
                info!(target: "vmm", "microVM {}: first workload log line at node time {} us, {} us after creation", name, now / 1000, (now - t0) / 1000);
            }
            if let Some(h) = sink {
                crate::task::vmctl::log_line(h, s, l);
            }
        };
        while left > 0 {
            let n = ring.pop(&mut buf[..left.min(256)]);
            if n == 0 {
                break;
            }
            self.workload.feed(&buf[..n], &mut emit);
            left -= n;
        }
        if let (Some(h), false, true) = (sink, self.ready_sent, self.workload.ready()) {
            self.ready_sent = true;
            crate::task::vmctl::ready(h);
        }
        if let (Some(h), false, true) = (sink, self.healthy_sent, self.workload.healthy()) {
            self.healthy_sent = true;
            crate::task::vmctl::healthy(h);
        }
        if end {
            self.workload.flush(&mut emit);
            let st = self.workload.stats();
            if st.garbage_bytes + st.bad_frames + st.unknown_frames > 0 || ring.dropped > 0 {
                warn!(target: "vmm", "vm {}: workload channel: {} bytes outside frames, {} bad and {} unknown frames, {} bytes overwritten",
                    self.name, st.garbage_bytes, st.bad_frames, st.unknown_frames, ring.dropped);
            }
        }
    }

    /// The captured lines (first and last 8 KiB of what was printed).
    pub fn lines(&self) -> Vec<String> {
        self.capture.lines()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
