//! WireGuard message layouts (all little-endian; one-byte type followed by three zero bytes).
//!
//! | type | message            | layout                                                                 | size |
//! |------|--------------------|------------------------------------------------------------------------|------|
//! | 1    | handshake initiation | sender u32, ephemeral 32, static 32+16, timestamp 12+16, mac1 16, mac2 16 | 148 |
//! | 2    | handshake response | sender u32, receiver u32, ephemeral 32, empty 0+16, mac1 16, mac2 16     | 92   |
//! | 3    | cookie reply       | receiver u32, nonce 24, cookie 16+16                                     | 64   |
//! | 4    | transport data     | receiver u32, counter u64, encrypted packet (≥ 16)                       | ≥ 32 |
//!
//! Parsers borrow nothing, check the exact length and the reserved bytes, and return
//! [`ParseError`] on anything else; they never panic.

/// Message type of a handshake initiation.
pub const TYPE_INITIATION: u8 = 1;
/// Message type of a handshake response.
pub const TYPE_RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub const TYPE_COOKIE_REPLY: u8 = 3;
/// Message type of transport data.
pub const TYPE_TRANSPORT: u8 = 4;
/// Size of an initiation.
pub const INITIATION_LEN: usize = 148;
/// Size of a response.
pub const RESPONSE_LEN: usize = 92;
/// Size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Header of a transport message (type, reserved, receiver, counter).
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Smallest transport message (a keepalive: header + tag).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + 16;
/// Offset of mac1 in an initiation (mac1 covers bytes before it).
pub const INITIATION_MAC1_OFFSET: usize = 116;
/// Offset of mac2 in an initiation.
pub const INITIATION_MAC2_OFFSET: usize = 132;
/// Offset of mac1 in a response.
pub const RESPONSE_MAC1_OFFSET: usize = 60;
/// Offset of mac2 in a response.
pub const RESPONSE_MAC2_OFFSET: usize = 76;

/// Why bytes are not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Empty or shorter than the type needs.
    Truncated,
    /// Not the exact size of the type.
    BadLength,
    /// Unknown message type.
    UnknownType,
    /// Reserved bytes not zero.
    BadReserved,
}

/// A parsed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Type 1.
    Initiation(Initiation),
    /// Type 2.
    Response(Response),
    /// Type 3.
    CookieReply(CookieReply),
    /// Type 4.
    Transport(Transport<'a>),
}

fn arr<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], ParseError> {
    let s = b.get(at..at.checked_add(N).ok_or(ParseError::Truncated)?).ok_or(ParseError::Truncated)?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Ok(a)
}
fn le32(b: &[u8], at: usize) -> Result<u32, ParseError> {
    arr::<4>(b, at).map(u32::from_le_bytes)
}

/// A handshake initiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Initiation {
    /// Initiator's index.
    pub sender: u32,
    /// Unencrypted ephemeral public key.
    pub ephemeral: [u8; 32],
    /// Encrypted static public key + tag.
    pub encrypted_static: [u8; 48],
    /// Encrypted TAI64N timestamp + tag.
    pub encrypted_timestamp: [u8; 28],
    /// mac1.
    pub mac1: [u8; 16],
    /// mac2.
    pub mac2: [u8; 16],
}

impl Initiation {
    /// Parse exactly 148 bytes.
    pub fn parse(b: &[u8]) -> Result<Self, ParseError> {
        check_header(b, TYPE_INITIATION, INITIATION_LEN)?;
        Ok(Initiation {
            sender: le32(b, 4)?,
            ephemeral: arr(b, 8)?,
            encrypted_static: arr(b, 40)?,
            encrypted_timestamp: arr(b, 88)?,
            mac1: arr(b, 116)?,
            mac2: arr(b, 132)?,
        })
    }
    /// Encode to 148 bytes.
    pub fn encode(&self) -> [u8; INITIATION_LEN] {
        let mut b = [0u8; INITIATION_LEN];
        b[0] = TYPE_INITIATION;
        b[4..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..40].copy_from_slice(&self.ephemeral);
        b[40..88].copy_from_slice(&self.encrypted_static);
        b[88..116].copy_from_slice(&self.encrypted_timestamp);
        b[116..132].copy_from_slice(&self.mac1);
        b[132..148].copy_from_slice(&self.mac2);
        b
    }
}

/// A handshake response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Responder's index.
    pub sender: u32,
    /// Initiator's index.
    pub receiver: u32,
    /// Unencrypted ephemeral public key.
    pub ephemeral: [u8; 32],
    /// Encrypted empty payload (tag only).
    pub encrypted_nothing: [u8; 16],
    /// mac1.
    pub mac1: [u8; 16],
    /// mac2.
    pub mac2: [u8; 16],
}

impl Response {
    /// Parse exactly 92 bytes.
    pub fn parse(b: &[u8]) -> Result<Self, ParseError> {
        check_header(b, TYPE_RESPONSE, RESPONSE_LEN)?;
        Ok(Response {
            sender: le32(b, 4)?,
            receiver: le32(b, 8)?,
            ephemeral: arr(b, 12)?,
            encrypted_nothing: arr(b, 44)?,
            mac1: arr(b, 60)?,
            mac2: arr(b, 76)?,
        })
    }
    /// Encode to 92 bytes.
    pub fn encode(&self) -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        b[0] = TYPE_RESPONSE;
        b[4..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..12].copy_from_slice(&self.receiver.to_le_bytes());
        b[12..44].copy_from_slice(&self.ephemeral);
        b[44..60].copy_from_slice(&self.encrypted_nothing);
        b[60..76].copy_from_slice(&self.mac1);
        b[76..92].copy_from_slice(&self.mac2);
        b
    }
}

/// A cookie reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieReply {
    /// Index of the handshake message this answers.
    pub receiver: u32,
    /// Random XChaCha20 nonce.
    pub nonce: [u8; 24],
    /// Encrypted cookie + tag.
    pub encrypted_cookie: [u8; 32],
}

impl CookieReply {
    /// Parse exactly 64 bytes.
    pub fn parse(b: &[u8]) -> Result<Self, ParseError> {
        check_header(b, TYPE_COOKIE_REPLY, COOKIE_REPLY_LEN)?;
        Ok(CookieReply { receiver: le32(b, 4)?, nonce: arr(b, 8)?, encrypted_cookie: arr(b, 32)? })
    }
    /// Encode to 64 bytes.
    pub fn encode(&self) -> [u8; COOKIE_REPLY_LEN] {
        let mut b = [0u8; COOKIE_REPLY_LEN];
        b[0] = TYPE_COOKIE_REPLY;
        b[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        b[8..32].copy_from_slice(&self.nonce);
        b[32..64].copy_from_slice(&self.encrypted_cookie);
        b
    }
}

/// A transport data message (borrowing its ciphertext).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transport<'a> {
    /// Receiver's index.
    pub receiver: u32,
    /// Nonce counter.
    pub counter: u64,
    /// Encrypted, padded packet followed by the 16-byte tag.
    pub ciphertext: &'a [u8],
}

impl<'a> Transport<'a> {
    /// Parse a transport message (at least 32 bytes).
    pub fn parse(b: &'a [u8]) -> Result<Self, ParseError> {
        if b.len() < TRANSPORT_MIN_LEN {
            return Err(ParseError::Truncated);
        }
        check_type(b, TYPE_TRANSPORT)?;
        Ok(Transport {
            receiver: le32(b, 4)?,
            counter: arr::<8>(b, 8).map(u64::from_le_bytes)?,
            ciphertext: b.get(TRANSPORT_HEADER_LEN..).ok_or(ParseError::Truncated)?,
        })
    }
    /// Write the 16-byte header.
    pub fn header(receiver: u32, counter: u64) -> [u8; TRANSPORT_HEADER_LEN] {
        let mut b = [0u8; TRANSPORT_HEADER_LEN];
        b[0] = TYPE_TRANSPORT;
        b[4..8].copy_from_slice(&receiver.to_le_bytes());
        b[8..16].copy_from_slice(&counter.to_le_bytes());
        b
    }
}

fn check_type(b: &[u8], ty: u8) -> Result<(), ParseError> {
    match b.get(0..4) {
        Some([t, 0, 0, 0]) if *t == ty => Ok(()),
        Some([t, _, _, _]) if *t == ty => Err(ParseError::BadReserved),
        Some(_) => Err(ParseError::UnknownType),
        None => Err(ParseError::Truncated),
    }
}

fn check_header(b: &[u8], ty: u8, len: usize) -> Result<(), ParseError> {
    check_type(b, ty)?;
    if b.len() != len {
        return Err(ParseError::BadLength);
    }
    Ok(())
}

/// Parse any message by its type byte.
pub fn parse(b: &[u8]) -> Result<Message<'_>, ParseError> {
    match b.first() {
        None => Err(ParseError::Truncated),
        Some(&TYPE_INITIATION) => Initiation::parse(b).map(Message::Initiation),
        Some(&TYPE_RESPONSE) => Response::parse(b).map(Message::Response),
        Some(&TYPE_COOKIE_REPLY) => CookieReply::parse(b).map(Message::CookieReply),
        Some(&TYPE_TRANSPORT) => Transport::parse(b).map(Message::Transport),
        Some(_) => Err(ParseError::UnknownType),
    }
}
