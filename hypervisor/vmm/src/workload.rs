//! The node's side of the workload channel (docs/guest-init.md): bytes the guest wrote on its
//! channel console (hostile input) become the workload's log lines, per stream, and its exit
//! status. Fixed-size state (the wire decoder and one [`LineSplitter`] per stream); nothing the
//! guest sends allocates or panics.

use crate::console::LineSplitter;
use alloc::collections::TryReserveError;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_guest_proto::wire::{Decoder, Event, Stream, WorkloadExit};

pub use catenary_guest_proto::wire::DecodeStats;

#[derive(Debug, Clone, Default)]
pub struct WorkloadLog {
    dec: Decoder,
    out: LineSplitter,
    err: LineSplitter,
    init: LineSplitter,
    /// Log bytes received, per stream (stdout, stderr, init).
    pub bytes: [u64; 3],
}

impl WorkloadLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode `bytes`; `line` gets every complete log line (at most
    /// [`crate::console::MAX_OUT_LINE`] bytes, without its newline).
    pub fn feed(&mut self, bytes: &[u8], line: &mut dyn FnMut(Stream, &[u8])) {
        let (dec, out, err, init, counts) = (&mut self.dec, &mut self.out, &mut self.err, &mut self.init, &mut self.bytes);
        dec.feed(bytes, &mut |ev| {
            if let Event::Data(s, b) = ev {
                let (split, i) = match s {
                    Stream::Stdout => (&mut *out, 0),
                    Stream::Stderr => (&mut *err, 1),
                    Stream::Init => (&mut *init, 2),
                };
                counts[i] += b.len() as u64;
                split.feed(b, |l| line(s, l));
            }
        });
    }

    /// The VM is gone: emit every unterminated line.
    pub fn flush(&mut self, line: &mut dyn FnMut(Stream, &[u8])) {
        self.out.flush(|l| line(Stream::Stdout, l));
        self.err.flush(|l| line(Stream::Stderr, l));
        self.init.flush(|l| line(Stream::Init, l));
    }

    /// The workload's exit, once the init reported it.
    pub fn exit(&self) -> Option<WorkloadExit> {
        self.dec.exit_seen
    }

    /// Whether the init reported that it is about to run the entrypoint.
    pub fn ready(&self) -> bool {
        self.dec.ready_seen
    }

    /// Whether the init reported that the workload's health check passed.
    pub fn healthy(&self) -> bool {
        self.dec.healthy_seen
    }

    pub fn stats(&self) -> DecodeStats {
        self.dec.stats
    }
}

/// The per-VM piece of a Catenary image's initrd: an uncompressed newc cpio holding the
/// directory `catenary` and `catenary/config.json`, `catenary/node.json`. It follows the
/// bundle's gzip'd initramfs in guest memory as [`crate::boot::Initrd`]'s `tail` (Linux unpacks
/// concatenated archives in order; docs/guest-init.md), so the node never copies the
/// initramfs per VM. Fails only when memory runs out.
pub fn workload_initrd_tail(config: &[u8], node: &[u8]) -> Result<Vec<u8>, TryReserveError> {
    let mut out = Vec::new();
    out.try_reserve(config.len() + node.len() + 4 * 128)?;
    cpio_entry(&mut out, 1, "catenary", 0o040755, &[]);
    cpio_entry(&mut out, 2, "catenary/config.json", 0o100644, config);
    cpio_entry(&mut out, 3, "catenary/node.json", 0o100644, node);
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    Ok(out)
}

/// The whole initrd as one file (direct QEMU, `cargo xtask bench workload`): `base`, zero
/// padding to a 4-byte boundary, then [`workload_initrd_tail`] — the same bytes the node's
/// loader lays out in guest memory from the two pieces.
pub fn workload_initrd(base: &[u8], config: &[u8], node: &[u8]) -> Result<Vec<u8>, TryReserveError> {
    let tail = workload_initrd_tail(config, node)?;
    let mut out = Vec::new();
    out.try_reserve(base.len() + 3 + tail.len())?;
    out.extend_from_slice(base);
    pad4(&mut out);
    out.extend_from_slice(&tail);
    Ok(out)
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
    let hdr = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        ino, mode, 0, 0, nlink, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
    );
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// `node.json` (docs/guest-init.md) for a VM: its hostname (left out unless it is a valid
/// hostname) and its /128.
pub fn node_json(hostname: &str, address: Option<core::net::Ipv6Addr>) -> String {
    let mut s = String::from("{\"version\":1");
    if catenary_guest_proto::valid_hostname(hostname) {
        s.push_str(&format!(",\"hostname\":\"{hostname}\""));
    }
    if let Some(a) = address {
        s.push_str(&format!(",\"address\":\"{a}\""));
    }
    s.push('}');
    s
}

/// The short name of a stream in the node's log (`[vm:NAME stdout] …`).
pub fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::Init => "init",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::MAX_OUT_LINE;
    use catenary_guest_proto::wire::{encode_data, encode_exit, encode_ready};
    use std::string::String;
    use std::vec::Vec;

    #[test]
    fn lines_per_stream_and_exit() {
        let mut v = Vec::new();
        v.extend_from_slice(&encode_ready());
        encode_data(Stream::Stdout, b"hello ", &mut |b| v.extend_from_slice(b));
        encode_data(Stream::Stderr, b"warn\n", &mut |b| v.extend_from_slice(b));
        encode_data(Stream::Stdout, b"world\nno newline", &mut |b| v.extend_from_slice(b));
        v.extend_from_slice(&encode_exit(WorkloadExit::Code(3)));
        let mut log = WorkloadLog::new();
        let mut lines: Vec<(Stream, String)> = Vec::new();
        for c in v.chunks(3) {
            log.feed(c, &mut |s, l| lines.push((s, String::from_utf8_lossy(l).into())));
        }
        assert_eq!(lines, [(Stream::Stderr, "warn".into()), (Stream::Stdout, "hello world".into())]);
        log.flush(&mut |s, l| lines.push((s, String::from_utf8_lossy(l).into())));
        assert_eq!(lines[2], (Stream::Stdout, "no newline".into()));
        assert!(log.ready());
        assert_eq!(log.exit(), Some(WorkloadExit::Code(3)));
        assert_eq!(log.bytes, [6 + 16, 5, 0]);
    }

    #[test]
    fn initrd_appends_a_cpio() {
        let base = [0x1fu8, 0x8b, 8, 0, 0, 0, 0]; // 7 bytes: padded to 8
        let v = workload_initrd(&base, b"{}", b"{\"version\":1}").unwrap();
        assert_eq!(&v[..7], &base);
        assert_eq!(v[7], 0);
        assert_eq!(&v[8..14], b"070701");
        let text = String::from_utf8_lossy(&v[8..]);
        assert!(text.contains("catenary\0"));
        assert!(text.contains("catenary/config.json\0"));
        assert!(text.contains("{\"version\":1}"));
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(v.len() % 4, 0);
        assert_eq!(node_json("demo", Some("fd00::1".parse().unwrap())), "{\"version\":1,\"hostname\":\"demo\",\"address\":\"fd00::1\"}");
        assert_eq!(node_json("bad\"name", None), "{\"version\":1}");
    }

    #[test]
    fn hostile_bytes_give_bounded_lines() {
        crate::fuzzing::workload_channel(&[0xC7, 1, 0xff, 0x0f, b'x']);
        let mut log = WorkloadLog::new();
        let mut v = Vec::new();
        encode_data(Stream::Stdout, &[b'a'; 10_000], &mut |b| v.extend_from_slice(b));
        v.extend_from_slice(&[0xC7, 4, 5, 0, 9, 9, 9, 9, 9]); // bad exit kind
        let mut n = 0;
        log.feed(&v, &mut |_, l| {
            assert!(l.len() <= MAX_OUT_LINE);
            n += 1;
        });
        assert_eq!(n, 10_000 / MAX_OUT_LINE);
        assert_eq!(log.exit(), None);
        assert_eq!(log.stats().bad_frames, 1);
    }
}
