//! The NAT64 gateway's protocol with `netd` (docs/nat64.md): `natd` (the only caller
//! `netd` serves it for: the badge of the manifest's `natd` send capability) moves IPv6
//! packets for `64:ff9b::/96` between the fabric and its translator in one call, through a
//! writable memory grant holding length-prefixed records.

/// Open: `netd` copies the node's command line words that start with `nat64.` into the
/// grant (space-separated). Reply label 0 with words [bytes, 0, 0, 0], or an error label.
pub const LABEL_OPEN: u64 = 0x4e36_0001;
/// Exchange: the grant's first `words[0]` bytes are records of IPv6 packets for `netd` to
/// route (answers from the IPv4 side); `netd` overwrites the grant with records of packets
/// for `natd` (to the prefix). With nothing to give either way, `netd` holds the call up to
/// `words[1]` ms (≤ [`WAIT_MAX_MS`]) for a packet to arrive. Reply label 0 with words
/// [bytes written, packets written, packets refused, packets dropped for `natd`'s queue so far].
pub const LABEL_XFER: u64 = 0x4e36_0002;

/// Not `natd` (the capability's badge is not its service's).
pub const ERR_NOT_NATD: u64 = 1;
/// This node is not the cluster's gateway (`net.nat64gw` names another node, or none).
pub const ERR_NOT_GATEWAY: u64 = 2;
/// No writable grant, or one over [`BUF_MAX`] or under [`BUF_MIN`].
pub const ERR_BAD_GRANT: u64 = 3;
/// `words[0]` is over the grant's length, or the records do not parse.
pub const ERR_BAD_RECORDS: u64 = 4;
/// `netd` is not up yet: ask again.
pub const ERR_NOT_READY: u64 = 5;
/// Another exchange is already held (one at a time).
pub const ERR_BUSY: u64 = 6;

pub const WAIT_MAX_MS: u64 = 1000;
/// A packet in a record is at most this long (the IPv6 MTU of the links).
pub const PACKET_MAX: usize = 1500;
pub const BUF_MIN: usize = 2 + PACKET_MAX;
pub const BUF_MAX: usize = 64 * 1024;

/// Append `packet` as a record at `off` (2-byte big-endian length, then the bytes); the new
/// offset, or None when it does not fit (or is empty or over [`PACKET_MAX`]).
pub fn put_record(buf: &mut [u8], off: usize, packet: &[u8]) -> Option<usize> {
    if packet.is_empty() || packet.len() > PACKET_MAX {
        return None;
    }
    let end = off.checked_add(2 + packet.len())?;
    let dst = buf.get_mut(off..end)?;
    dst[..2].copy_from_slice(&(packet.len() as u16).to_be_bytes());
    dst[2..].copy_from_slice(packet);
    Some(end)
}

/// The records of `buf` in order; an `Err` (and the end) at a record that runs past the
/// buffer, is empty or is over [`PACKET_MAX`].
pub fn records(buf: &[u8]) -> Records<'_> {
    Records { buf, off: 0, bad: false }
}

pub struct Records<'a> {
    buf: &'a [u8],
    off: usize,
    bad: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<&'a [u8], ()>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.bad || self.off >= self.buf.len() {
            return None;
        }
        let r = (|| {
            let h = self.buf.get(self.off..self.off + 2)?;
            let n = usize::from(u16::from_be_bytes([h[0], h[1]]));
            if n == 0 || n > PACKET_MAX {
                return None;
            }
            let p = self.buf.get(self.off + 2..self.off + 2 + n)?;
            Some((p, self.off + 2 + n))
        })();
        match r {
            Some((p, next)) => {
                self.off = next;
                Some(Ok(p))
            }
            None => {
                self.bad = true;
                Some(Err(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_hostile_buffers_end_in_an_error() {
        let mut b = [0u8; 64];
        let mut off = 0;
        for p in [&b"abc"[..], &[7u8; 20][..], b"z"] {
            off = put_record(&mut b, off, p).unwrap();
        }
        let got: alloc::vec::Vec<_> = records(&b[..off]).collect();
        assert_eq!(got, [Ok(&b"abc"[..]), Ok(&[7u8; 20][..]), Ok(&b"z"[..])]);
        assert_eq!(put_record(&mut b, 60, b"toolong"), None);
        assert_eq!(put_record(&mut b, 0, b""), None);
        assert_eq!(put_record(&mut [0u8; 2000], 0, &[0u8; PACKET_MAX + 1]), None);
        // truncated, zero length, over the maximum: an error, then nothing
        for bad in [&[0u8, 5, 1, 2][..], &[0, 0, 1][..], &[0xff, 0xff, 0][..], &[3][..]] {
            let mut it = records(bad);
            assert_eq!(it.next(), Some(Err(())));
            assert_eq!(it.next(), None);
        }
        // a record over PACKET_MAX is refused even when the bytes are there
        let mut big = alloc::vec![0u8; 2 + PACKET_MAX + 1];
        big[..2].copy_from_slice(&((PACKET_MAX + 1) as u16).to_be_bytes());
        assert_eq!(records(&big).next(), Some(Err(())));
        // random buffers never panic and never yield a record past the buffer
        let mut x = 99u32;
        for _ in 0..5000 {
            let mut buf = [0u8; 40];
            for v in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = if x.is_multiple_of(3) { 0 } else { x as u8 };
            }
            let n = (x as usize) % 41;
            let total: usize = records(&buf[..n]).filter_map(|r| r.ok()).map(|p| p.len() + 2).sum();
            assert!(total <= n);
        }
    }
}
