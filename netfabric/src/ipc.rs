//! The IPC wire format between nodes: [`FabricFrame`].
//!
//! All integers big-endian. Header is 56 bytes:
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! | 0      | 4    | magic `"CFAB"`                                              |
//! | 4      | 1    | version (currently [`VERSION`] = 1)                         |
//! | 5      | 1    | frame kind ([`FrameKind`]: 1 message, 2 reply, 3 ack, 4 error) |
//! | 6      | 2    | flags ([`FLAG_ACK_REQUESTED`], [`FLAG_END_OF_STREAM`]; other bits must be 0) |
//! | 8      | 16   | source /128                                                 |
//! | 24     | 16   | destination /128                                            |
//! | 40     | 8    | endpoint id (the destination IPC endpoint on that address)  |
//! | 48     | 4    | message kind (application-defined)                          |
//! | 52     | 4    | payload length (≤ [`MAX_PAYLOAD`])                          |
//! | 56     | n    | payload                                                     |
//!
//! A frame must be exactly `56 + payload length` bytes. Frames travel as the payload of an
//! IPv6/UDP datagram from and to port [`FABRIC_IPC_PORT`] inside the encrypted tunnel
//! ([`crate::ipv6::frame_to_packet`] / [`crate::ipv6::packet_to_frame`]); the frame's addresses
//! must equal the IPv6 header's. The decoder returns [`FrameError`] and never panics.

use alloc::vec::Vec;
use core::net::Ipv6Addr;

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"CFAB";
/// Current version.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 56;
/// UDP port of fabric IPC (source and destination), inside the tunnel.
pub const FABRIC_IPC_PORT: u16 = 51900;
/// Largest payload: what fits in one UDP datagram (65535 - 8) after the header.
pub const MAX_PAYLOAD: usize = 65535 - 8 - HEADER_LEN;
/// Flag: the sender wants an ack.
pub const FLAG_ACK_REQUESTED: u16 = 0x0001;
/// Flag: last frame of a stream.
pub const FLAG_END_OF_STREAM: u16 = 0x0002;
const KNOWN_FLAGS: u16 = FLAG_ACK_REQUESTED | FLAG_END_OF_STREAM;

/// Kind of frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// An IPC message.
    Message = 1,
    /// A reply to a message.
    Reply = 2,
    /// An acknowledgement.
    Ack = 3,
    /// An error report.
    Error = 4,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => FrameKind::Message,
            2 => FrameKind::Reply,
            3 => FrameKind::Ack,
            4 => FrameKind::Error,
            _ => return None,
        })
    }
}

/// Why bytes are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the header.
    Truncated,
    /// Wrong magic.
    BadMagic,
    /// Unsupported version.
    UnsupportedVersion(u8),
    /// Unknown frame kind.
    UnknownKind(u8),
    /// Undefined flag bits set.
    ReservedFlags(u16),
    /// Payload length above [`MAX_PAYLOAD`].
    PayloadTooLarge,
    /// Payload length field disagrees with the bytes present.
    LengthMismatch,
}

/// An IPC frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabricFrame {
    /// Frame kind.
    pub kind: FrameKind,
    /// Flags.
    pub flags: u16,
    /// Source /128.
    pub src: Ipv6Addr,
    /// Destination /128.
    pub dst: Ipv6Addr,
    /// Destination endpoint id.
    pub endpoint: u64,
    /// Application message kind.
    pub message_kind: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl FabricFrame {
    /// A message frame.
    pub fn message(src: Ipv6Addr, dst: Ipv6Addr, endpoint: u64, message_kind: u32, payload: Vec<u8>) -> Self {
        FabricFrame { kind: FrameKind::Message, flags: 0, src, dst, endpoint, message_kind, payload }
    }

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Encode. Fails only if the payload exceeds [`MAX_PAYLOAD`] or flags are undefined.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge);
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::ReservedFlags(self.flags));
        }
        let mut b = Vec::with_capacity(self.encoded_len());
        b.extend_from_slice(&MAGIC);
        b.push(VERSION);
        b.push(self.kind as u8);
        b.extend_from_slice(&self.flags.to_be_bytes());
        b.extend_from_slice(&self.src.octets());
        b.extend_from_slice(&self.dst.octets());
        b.extend_from_slice(&self.endpoint.to_be_bytes());
        b.extend_from_slice(&self.message_kind.to_be_bytes());
        b.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.payload);
        Ok(b)
    }

    /// Decode exactly one frame.
    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        let h = b.get(..HEADER_LEN).ok_or(FrameError::Truncated)?;
        let f = |a: usize, n: usize| h.get(a..a + n).ok_or(FrameError::Truncated);
        if f(0, 4)? != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let version = *h.get(4).ok_or(FrameError::Truncated)?;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kb = *h.get(5).ok_or(FrameError::Truncated)?;
        let kind = FrameKind::from_u8(kb).ok_or(FrameError::UnknownKind(kb))?;
        let flags = u16::from_be_bytes(to_arr(f(6, 2)?)?);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::ReservedFlags(flags));
        }
        let src = Ipv6Addr::from(to_arr::<16>(f(8, 16)?)?);
        let dst = Ipv6Addr::from(to_arr::<16>(f(24, 16)?)?);
        let endpoint = u64::from_be_bytes(to_arr(f(40, 8)?)?);
        let message_kind = u32::from_be_bytes(to_arr(f(48, 4)?)?);
        let len = u32::from_be_bytes(to_arr(f(52, 4)?)?) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge);
        }
        let payload = b.get(HEADER_LEN..).ok_or(FrameError::Truncated)?;
        if payload.len() != len {
            return Err(FrameError::LengthMismatch);
        }
        Ok(FabricFrame { kind, flags, src, dst, endpoint, message_kind, payload: payload.to_vec() })
    }
}

fn to_arr<const N: usize>(s: &[u8]) -> Result<[u8; N], FrameError> {
    s.try_into().map_err(|_| FrameError::Truncated)
}
