//! The workload channel's wire format (version 1).
//!
//! The guest init is the only writer of a dedicated virtio-console device (the node attaches it
//! second, so it is the guest's `/dev/hvc1`). It carries frames:
//!
//! ```text
//! frame   := MAGIC:u8 (0xC7)  type:u8  len:u16 (little endian)  payload[len]
//! type 1  STDOUT  payload = bytes the workload wrote on its stdout   (len <= MAX_PAYLOAD)
//! type 2  STDERR  payload = bytes the workload wrote on its stderr   (len <= MAX_PAYLOAD)
//! type 3  READY   len = 0: the init is about to exec the entrypoint
//! type 4  EXIT    len = 5: kind:u8, value:i32 (little endian)
//!                 kind 0 = exited with status `value`, 1 = killed by signal `value`,
//!                 2 = the init failed before or while starting the workload (`value` is the
//!                     status it reports: 126 not executable, 127 not found, 1 otherwise),
//!                 3 = killed by signal `value` while the kernel's OOM killer was killing in
//!                     the VM (docs/guest-init.md "Out of memory"),
//!                 4 = killed by signal `value` by the init itself because the VM was thrashing
//!                     (out of memory in all but name; docs/guest-init.md "Out of memory");
//!                     this wins over 3 unless the OOM killer's victim was the entrypoint
//!                 5 = killed by signal `value` by the init itself because the workload's
//!                     health check failed `retries` times in a row (docs/guest-init.md
//!                     "Health check")
//! type 5  INIT    payload = UTF-8 text: the init's own error messages (len <= MAX_PAYLOAD)
//! type 6  HEALTHY len = 0: the workload's health check passed (sent at every pass, in case one
//!                 is lost; the node takes the first of a run)
//! ```
//!
//! The other direction, node → guest, uses the same framing on the device's receive queue; the
//! node is its only writer and the init its only reader:
//!
//! ```text
//! type 16 STOP    len = 0: deliver the image's StopSignal (the run config's; SIGTERM by
//!                 default) to the workload's process group
//! type 17 SIGNAL  len = 1: signo:u8 (1..=MAX_SIGNAL): deliver this signal to the workload's
//!                 process group (the node's stop sends SIGKILL this way after its grace period)
//! ```
//!
//! The init decodes it with [`CommandDecoder`], which is just as defensive (the node is trusted
//! more than the guest, but a parser never assumes its input is well formed).
//! The node decodes the stream with [`Decoder`]: bytes before a valid header are skipped and
//! counted, a frame with an unknown type is skipped whole, a known type with an impossible
//! length is counted as bad and skipped; nothing panics, nothing allocates, and the state is a
//! few bytes whatever the input. Data frames are streamed to the caller as their bytes
//! arrive (never buffered whole). Only the first EXIT counts.

/// First byte of every frame.
pub const MAGIC: u8 = 0xC7;
/// Largest payload of a data frame.
pub const MAX_PAYLOAD: usize = 4096;
/// Header bytes before the payload.
pub const HEADER: usize = 4;

pub const T_STDOUT: u8 = 1;
pub const T_STDERR: u8 = 2;
pub const T_READY: u8 = 3;
pub const T_EXIT: u8 = 4;
pub const T_INIT: u8 = 5;
pub const T_HEALTHY: u8 = 6;
/// Node → guest: deliver the image's StopSignal.
pub const T_STOP: u8 = 16;
/// Node → guest: deliver the signal in the 1-byte payload.
pub const T_SIGNAL: u8 = 17;
/// Largest signal number a SIGNAL frame carries (Linux's SIGRTMAX on x86-64).
pub const MAX_SIGNAL: u8 = 64;
/// SIGKILL's number on Linux (the node's last word before it powers a VM off).
pub const SIGKILL: u8 = 9;

/// Which stream a data frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The init's own messages.
    Init,
}

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadExit {
    /// It exited with this status (0..=255 from a real process).
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// The init could not run it; the status it reports (126, 127 or 1).
    InitFailed(i32),
    /// A signal killed it (SIGKILL, in practice) and the kernel's OOM killer killed a process
    /// in the VM during the run.
    OomKilled(i32),
    /// The init killed it with this signal because the VM thrashed: memory nearly gone and
    /// the kernel reading back the file pages it had just dropped (`catenary_init::thrash`).
    ThrashKilled(i32),
    /// The init killed it with this signal because its health check failed `retries` times
    /// in a row.
    Unhealthy(i32),
}

impl WorkloadExit {
    /// The 5-byte EXIT payload.
    pub fn to_payload(self) -> [u8; 5] {
        let (k, v) = match self {
            WorkloadExit::Code(v) => (0u8, v),
            WorkloadExit::Signal(v) => (1, v),
            WorkloadExit::InitFailed(v) => (2, v),
            WorkloadExit::OomKilled(v) => (3, v),
            WorkloadExit::ThrashKilled(v) => (4, v),
            WorkloadExit::Unhealthy(v) => (5, v),
        };
        let b = v.to_le_bytes();
        [k, b[0], b[1], b[2], b[3]]
    }

    pub fn from_payload(p: &[u8]) -> Option<Self> {
        if p.len() != 5 {
            return None;
        }
        let v = i32::from_le_bytes([p[1], p[2], p[3], p[4]]);
        match p[0] {
            0 => Some(WorkloadExit::Code(v)),
            1 => Some(WorkloadExit::Signal(v)),
            2 => Some(WorkloadExit::InitFailed(v)),
            3 => Some(WorkloadExit::OomKilled(v)),
            4 => Some(WorkloadExit::ThrashKilled(v)),
            5 => Some(WorkloadExit::Unhealthy(v)),
            _ => None,
        }
    }
}

impl core::fmt::Display for WorkloadExit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WorkloadExit::Code(c) => write!(f, "exit code {c}"),
            WorkloadExit::Signal(s) => write!(f, "killed by signal {s}"),
            WorkloadExit::InitFailed(c) => write!(f, "init failed (status {c})"),
            WorkloadExit::OomKilled(s) => write!(f, "killed by the kernel's OOM killer (signal {s})"),
            WorkloadExit::ThrashKilled(s) => write!(f, "killed by the init: out of memory, thrashing (signal {s})"),
            WorkloadExit::Unhealthy(s) => write!(f, "killed by the init: its health check failed (signal {s})"),
        }
    }
}

/// The header of a frame with `len` payload bytes. `len` must not exceed [`MAX_PAYLOAD`]
/// (callers split data; [`encode_data`] does).
pub fn header(typ: u8, len: usize) -> [u8; HEADER] {
    let l = (len.min(MAX_PAYLOAD) as u16).to_le_bytes();
    [MAGIC, typ, l[0], l[1]]
}

/// Frames for `data` on `stream`, split at [`MAX_PAYLOAD`], passed to `out` piece by piece.
pub fn encode_data(stream: Stream, data: &[u8], out: &mut dyn FnMut(&[u8])) {
    let typ = match stream {
        Stream::Stdout => T_STDOUT,
        Stream::Stderr => T_STDERR,
        Stream::Init => T_INIT,
    };
    for chunk in data.chunks(MAX_PAYLOAD) {
        out(&header(typ, chunk.len()));
        out(chunk);
    }
}

/// The READY frame.
pub fn encode_ready() -> [u8; HEADER] {
    header(T_READY, 0)
}

/// The HEALTHY frame.
pub fn encode_healthy() -> [u8; HEADER] {
    header(T_HEALTHY, 0)
}

/// The EXIT frame.
pub fn encode_exit(e: WorkloadExit) -> [u8; HEADER + 5] {
    let h = header(T_EXIT, 5);
    let p = e.to_payload();
    [h[0], h[1], h[2], h[3], p[0], p[1], p[2], p[3], p[4]]
}

/// The STOP frame (node → guest).
pub fn encode_stop() -> [u8; HEADER] {
    header(T_STOP, 0)
}

/// The SIGNAL frame (node → guest); `None` for a number outside 1..=[`MAX_SIGNAL`].
pub fn encode_signal(signo: u8) -> Option<[u8; HEADER + 1]> {
    if signo == 0 || signo > MAX_SIGNAL {
        return None;
    }
    let h = header(T_SIGNAL, 1);
    Some([h[0], h[1], h[2], h[3], signo])
}

/// A request from the node (node → guest direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Deliver the image's StopSignal.
    Stop,
    /// Deliver this signal (1..=[`MAX_SIGNAL`]).
    Signal(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmdState {
    Sync,
    Header(usize),
    /// The 1-byte payload of a SIGNAL frame.
    Signal,
    Skip(usize),
}

/// Counters of what the [`CommandDecoder`] refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStats {
    pub garbage_bytes: u64,
    /// STOP with a payload, SIGNAL of another length or with a number outside 1..=64.
    pub bad_frames: u64,
    pub unknown_frames: u64,
    pub frames: u64,
}

/// Streaming decoder of the node → guest direction (the init's side). Fixed-size state; bytes
/// before a header are skipped, unknown frames are skipped whole, bad ones are counted and
/// skipped; nothing panics or allocates.
#[derive(Debug, Clone)]
pub struct CommandDecoder {
    state: CmdState,
    hdr: [u8; HEADER],
    pub stats: CommandStats,
}

impl Default for CommandDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandDecoder {
    pub const fn new() -> Self {
        CommandDecoder { state: CmdState::Sync, hdr: [0; HEADER], stats: CommandStats { garbage_bytes: 0, bad_frames: 0, unknown_frames: 0, frames: 0 } }
    }

    /// Feed bytes read from the channel; `cmd` is called for every valid request, in order.
    pub fn feed(&mut self, mut input: &[u8], cmd: &mut dyn FnMut(Command)) {
        while let Some((&b, rest)) = input.split_first() {
            match self.state {
                CmdState::Sync => {
                    let skip = input.iter().position(|&b| b == MAGIC).unwrap_or(input.len());
                    self.stats.garbage_bytes += skip as u64;
                    input = &input[skip..];
                    if let Some(r) = input.get(1..) {
                        self.hdr[0] = MAGIC;
                        self.state = CmdState::Header(1);
                        input = r;
                    }
                }
                CmdState::Header(n) => {
                    self.hdr[n] = b;
                    input = rest;
                    if n + 1 < HEADER {
                        self.state = CmdState::Header(n + 1);
                        continue;
                    }
                    let len = u16::from_le_bytes([self.hdr[2], self.hdr[3]]) as usize;
                    self.state = match (self.hdr[1], len) {
                        (T_STOP, 0) => {
                            self.stats.frames += 1;
                            cmd(Command::Stop);
                            CmdState::Sync
                        }
                        (T_SIGNAL, 1) => CmdState::Signal,
                        (T_STOP | T_SIGNAL, _) => {
                            self.stats.bad_frames += 1;
                            if len == 0 { CmdState::Sync } else { CmdState::Skip(len) }
                        }
                        (_, _) => {
                            self.stats.unknown_frames += 1;
                            if len == 0 { CmdState::Sync } else { CmdState::Skip(len) }
                        }
                    };
                }
                CmdState::Signal => {
                    input = rest;
                    self.state = CmdState::Sync;
                    if b == 0 || b > MAX_SIGNAL {
                        self.stats.bad_frames += 1;
                    } else {
                        self.stats.frames += 1;
                        cmd(Command::Signal(b));
                    }
                }
                CmdState::Skip(left) => {
                    let take = left.min(input.len());
                    input = &input[take..];
                    self.state = if left == take { CmdState::Sync } else { CmdState::Skip(left - take) };
                }
            }
        }
    }
}

/// What the decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Some bytes of a data frame (a frame may arrive in several pieces).
    Data(Stream, &'a [u8]),
    Ready,
    /// The health check passed (the first HEALTHY frame of the run; later ones are ignored).
    Healthy,
    Exit(WorkloadExit),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for MAGIC.
    Sync,
    /// Header bytes collected so far (`hdr[..n]`).
    Header(usize),
    /// Streaming `left` payload bytes of a data frame.
    Data(Stream, usize),
    /// Collecting the EXIT payload (`exit[..n]`).
    Exit(usize),
    /// Skipping `left` bytes of a frame we do not use.
    Skip(usize),
}

/// Counters of what the decoder refused (for the node's log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Bytes outside any frame (skipped while looking for MAGIC).
    pub garbage_bytes: u64,
    /// Frames of a known type with an impossible length (skipped).
    pub bad_frames: u64,
    /// Frames of an unknown type (skipped).
    pub unknown_frames: u64,
    /// EXIT frames after the first (ignored).
    pub extra_exits: u64,
    /// Well-formed frames.
    pub frames: u64,
}

/// Streaming decoder of the workload channel. Fixed-size state; see the module docs.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    hdr: [u8; HEADER],
    exit: [u8; 5],
    pub exit_seen: Option<WorkloadExit>,
    pub ready_seen: bool,
    pub healthy_seen: bool,
    pub stats: DecodeStats,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub const fn new() -> Self {
        Decoder { state: State::Sync, hdr: [0; HEADER], exit: [0; 5], exit_seen: None, ready_seen: false, healthy_seen: false, stats: DecodeStats { garbage_bytes: 0, bad_frames: 0, unknown_frames: 0, extra_exits: 0, frames: 0 } }
    }

    /// Feed bytes from the channel; `ev` is called for everything found, in order.
    pub fn feed(&mut self, mut input: &[u8], ev: &mut dyn FnMut(Event<'_>)) {
        while !input.is_empty() {
            match self.state {
                State::Sync => {
                    match input.iter().position(|&b| b == MAGIC) {
                        Some(i) => {
                            self.stats.garbage_bytes += i as u64;
                            self.hdr[0] = MAGIC;
                            self.state = State::Header(1);
                            input = &input[i + 1..];
                        }
                        None => {
                            self.stats.garbage_bytes += input.len() as u64;
                            input = &[];
                        }
                    }
                }
                State::Header(n) => {
                    let take = (HEADER - n).min(input.len());
                    self.hdr[n..n + take].copy_from_slice(&input[..take]);
                    input = &input[take..];
                    if n + take == HEADER {
                        self.start_frame(ev);
                    } else {
                        self.state = State::Header(n + take);
                    }
                }
                State::Data(stream, left) => {
                    let take = left.min(input.len());
                    ev(Event::Data(stream, &input[..take]));
                    input = &input[take..];
                    self.state = if left == take { State::Sync } else { State::Data(stream, left - take) };
                }
                State::Exit(n) => {
                    let take = (5 - n).min(input.len());
                    self.exit[n..n + take].copy_from_slice(&input[..take]);
                    input = &input[take..];
                    if n + take == 5 {
                        self.state = State::Sync;
                        match WorkloadExit::from_payload(&self.exit) {
                            Some(e) if self.exit_seen.is_none() => {
                                self.exit_seen = Some(e);
                                ev(Event::Exit(e));
                            }
                            Some(_) => self.stats.extra_exits += 1,
                            None => {
                                self.stats.frames -= 1;
                                self.stats.bad_frames += 1;
                            }
                        }
                    } else {
                        self.state = State::Exit(n + take);
                    }
                }
                State::Skip(left) => {
                    let take = left.min(input.len());
                    input = &input[take..];
                    self.state = if left == take { State::Sync } else { State::Skip(left - take) };
                }
            }
        }
    }

    /// A complete header is in `hdr`.
    fn start_frame(&mut self, ev: &mut dyn FnMut(Event<'_>)) {
        let typ = self.hdr[1];
        let len = u16::from_le_bytes([self.hdr[2], self.hdr[3]]) as usize;
        let data = |s| if len > MAX_PAYLOAD { None } else { Some(State::Data(s, len)) };
        let next = match typ {
            T_STDOUT => data(Stream::Stdout),
            T_STDERR => data(Stream::Stderr),
            T_INIT => data(Stream::Init),
            T_READY if len == 0 => {
                self.ready_seen = true;
                ev(Event::Ready);
                Some(State::Sync)
            }
            T_HEALTHY if len == 0 => {
                if !self.healthy_seen {
                    self.healthy_seen = true;
                    ev(Event::Healthy);
                }
                Some(State::Sync)
            }
            T_EXIT if len == 5 => Some(State::Exit(0)),
            T_READY | T_HEALTHY | T_EXIT => None,
            _ => {
                self.stats.unknown_frames += 1;
                self.state = if len == 0 { State::Sync } else { State::Skip(len) };
                return;
            }
        };
        match next {
            Some(State::Data(_, 0)) => {
                self.stats.frames += 1;
                self.state = State::Sync;
            }
            Some(s) => {
                self.stats.frames += 1;
                self.state = s;
            }
            None => {
                self.stats.bad_frames += 1;
                self.state = if len == 0 { State::Sync } else { State::Skip(len) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate alloc;
    extern crate std;
    use alloc::vec::Vec;

    #[derive(Debug, Default)]
    struct Seen {
        out: Vec<u8>,
        err: Vec<u8>,
        init: Vec<u8>,
        ready: usize,
        healthy: usize,
        exits: Vec<WorkloadExit>,
    }

    fn decode_in_pieces(bytes: &[u8], piece: usize) -> (Seen, Decoder) {
        let mut d = Decoder::new();
        let mut s = Seen::default();
        for c in bytes.chunks(piece.max(1)) {
            d.feed(c, &mut |e| match e {
                Event::Data(Stream::Stdout, b) => s.out.extend_from_slice(b),
                Event::Data(Stream::Stderr, b) => s.err.extend_from_slice(b),
                Event::Data(Stream::Init, b) => s.init.extend_from_slice(b),
                Event::Ready => s.ready += 1,
                Event::Healthy => s.healthy += 1,
                Event::Exit(x) => s.exits.push(x),
            });
        }
        (s, d)
    }

    fn stream() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&encode_ready());
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        encode_data(Stream::Stdout, &big, &mut |b| v.extend_from_slice(b));
        encode_data(Stream::Stderr, b"oops\n", &mut |b| v.extend_from_slice(b));
        encode_data(Stream::Init, b"no such file\n", &mut |b| v.extend_from_slice(b));
        v.extend_from_slice(&encode_healthy());
        v.extend_from_slice(&encode_healthy()); // only the first counts
        v.extend_from_slice(&encode_exit(WorkloadExit::Unhealthy(9)));
        v
    }

    #[test]
    fn round_trip_in_any_piece_size() {
        let bytes = stream();
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for piece in [1, 2, 3, 4, 5, 7, 64, 4099, bytes.len()] {
            let (s, d) = decode_in_pieces(&bytes, piece);
            assert_eq!(s.out, big, "piece {piece}");
            assert_eq!(s.err, b"oops\n");
            assert_eq!(s.init, b"no such file\n");
            assert_eq!(s.ready, 1);
            assert_eq!((s.healthy, d.healthy_seen), (1, true));
            assert_eq!(s.exits, [WorkloadExit::Unhealthy(9)]);
            assert_eq!(d.exit_seen, Some(WorkloadExit::Unhealthy(9)));
            assert_eq!(d.stats.garbage_bytes + d.stats.bad_frames + d.stats.unknown_frames, 0);
            assert_eq!(d.stats.frames, 1 + 3 + 1 + 1 + 2 + 1);
        }
    }

    #[test]
    fn exit_kinds_round_trip() {
        for e in [WorkloadExit::Code(0), WorkloadExit::Code(255), WorkloadExit::Signal(9), WorkloadExit::InitFailed(127), WorkloadExit::Code(-1), WorkloadExit::OomKilled(9), WorkloadExit::ThrashKilled(9), WorkloadExit::Unhealthy(9)] {
            assert_eq!(WorkloadExit::from_payload(&e.to_payload()), Some(e));
        }
        assert_eq!(WorkloadExit::from_payload(&[6, 0, 0, 0, 0]), None);
        assert_eq!(WorkloadExit::from_payload(&[0, 0, 0, 0]), None);
    }

    #[test]
    fn garbage_and_bad_frames_are_skipped() {
        let mut v = Vec::new();
        v.extend_from_slice(b"kernel noise");
        v.extend_from_slice(&[MAGIC, 0x77, 3, 0, 1, 2, 3]); // unknown type, skipped whole
        v.extend_from_slice(&[MAGIC, T_READY, 2, 0, 9, 9]); // READY with a payload: bad
        v.extend_from_slice(&[MAGIC, T_HEALTHY, 1, 0, 1]); // HEALTHY with a payload: bad
        v.extend_from_slice(&[MAGIC, T_EXIT, 4, 0, 0, 0, 0, 0]); // EXIT of 4 bytes: bad
        v.extend_from_slice(&[MAGIC, T_EXIT, 5, 0, 7, 0, 0, 0, 0]); // unknown exit kind: bad
        v.extend_from_slice(&[MAGIC, T_STDOUT, 0xff, 0xff]); // longer than MAX_PAYLOAD: bad, skipped
        v.extend(core::iter::repeat_n(0u8, 0xffff));
        encode_data(Stream::Stdout, b"after\n", &mut |b| v.extend_from_slice(b));
        v.extend_from_slice(&encode_exit(WorkloadExit::Signal(15)));
        v.extend_from_slice(&encode_exit(WorkloadExit::Code(0))); // a second EXIT is ignored
        let (s, d) = decode_in_pieces(&v, 13);
        assert_eq!(s.out, b"after\n");
        assert_eq!((s.ready, s.healthy), (0, 0));
        assert_eq!(s.exits, [WorkloadExit::Signal(15)]);
        assert_eq!(d.stats.garbage_bytes, 12);
        assert_eq!(d.stats.unknown_frames, 1);
        assert_eq!(d.stats.bad_frames, 5);
        assert_eq!(d.stats.extra_exits, 1);
    }

    fn commands_in_pieces(bytes: &[u8], piece: usize) -> (Vec<Command>, CommandDecoder) {
        let mut d = CommandDecoder::new();
        let mut got = Vec::new();
        for c in bytes.chunks(piece.max(1)) {
            d.feed(c, &mut |x| got.push(x));
        }
        (got, d)
    }

    #[test]
    fn commands_round_trip_in_any_piece_size() {
        let mut v = Vec::new();
        v.extend_from_slice(&encode_stop());
        v.extend_from_slice(&encode_signal(SIGKILL).unwrap());
        v.extend_from_slice(&encode_signal(MAX_SIGNAL).unwrap());
        v.extend_from_slice(&encode_stop());
        assert_eq!(v, [MAGIC, T_STOP, 0, 0, MAGIC, T_SIGNAL, 1, 0, 9, MAGIC, T_SIGNAL, 1, 0, 64, MAGIC, T_STOP, 0, 0]);
        for piece in 1..=v.len() {
            let (got, d) = commands_in_pieces(&v, piece);
            assert_eq!(got, [Command::Stop, Command::Signal(9), Command::Signal(64), Command::Stop], "piece {piece}");
            assert_eq!(d.stats, CommandStats { frames: 4, ..Default::default() });
        }
        assert_eq!(encode_signal(0), None);
        assert_eq!(encode_signal(65), None);
    }

    #[test]
    fn bad_commands_are_skipped() {
        let mut v = Vec::new();
        v.extend_from_slice(b"noise");
        v.extend_from_slice(&[MAGIC, T_STOP, 2, 0, MAGIC, MAGIC]); // STOP with a payload: bad, payload skipped
        v.extend_from_slice(&[MAGIC, T_SIGNAL, 1, 0, 0]); // signal 0: bad
        v.extend_from_slice(&[MAGIC, T_SIGNAL, 1, 0, 65]); // above SIGRTMAX: bad
        v.extend_from_slice(&[MAGIC, T_SIGNAL, 2, 0, 15, 15]); // two bytes: bad, skipped
        v.extend_from_slice(&[MAGIC, T_STDOUT, 3, 0, MAGIC, T_STOP, 0]); // a guest → node type: unknown, skipped whole
        v.extend_from_slice(&[MAGIC, 0x99, 0, 0]); // unknown, empty
        v.extend_from_slice(&encode_signal(15).unwrap());
        let (got, d) = commands_in_pieces(&v, 3);
        assert_eq!(got, [Command::Signal(15)]);
        assert_eq!(d.stats, CommandStats { garbage_bytes: 5, bad_frames: 4, unknown_frames: 2, frames: 1 });
        // The guest → node decoder never takes a command frame for its own.
        let (s, d) = decode_in_pieces(&v, 7);
        assert_eq!((s.exits.len(), s.ready), (0, 0));
        assert!(d.stats.unknown_frames >= 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap sweep beside the cargo-fuzz target (hypervisor/vmm/fuzz chan_decode).
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for round in 0..200 {
            let bytes: Vec<u8> = (0..2000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Bias towards MAGIC and small types so that frames start often.
                    match x % 8 {
                        0 => MAGIC,
                        1 => (x >> 8) as u8 % 7,
                        _ => (x >> 16) as u8,
                    }
                })
                .collect();
            let (_s, d) = decode_in_pieces(&bytes, 1 + round % 17);
            assert!(d.stats.garbage_bytes <= bytes.len() as u64);
            let (got, d) = commands_in_pieces(&bytes, 1 + round % 13);
            assert!(d.stats.garbage_bytes <= bytes.len() as u64);
            assert!(got.iter().all(|c| matches!(c, Command::Stop) || matches!(c, Command::Signal(1..=MAX_SIGNAL))));
        }
    }
}
