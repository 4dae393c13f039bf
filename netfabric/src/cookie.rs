//! mac1 / mac2 and the cookie mechanism.
//!
//! * `mac1 = MAC(HASH(LABEL_MAC1 ‖ S_receiver), msg[..mac1_offset])` — every handshake message
//!   carries it; a receiver drops messages with a bad mac1 without any reply, so a sender that
//!   does not know our public key gets no response at all.
//! * Under load, the receiver additionally requires
//!   `mac2 = MAC(cookie, msg[..mac2_offset])`, where `cookie = MAC(R_secret, src_ip ‖ src_port)`
//!   and `R_secret` is random, replaced every [`COOKIE_REFRESH_TIME`]. Without a valid mac2 it
//!   answers with a cookie reply: `XAEAD(HASH(LABEL_COOKIE ‖ S_responder), nonce, cookie, mac1)`.

use core::net::SocketAddr;
use core::time::Duration;

use crate::crypto::{ct_eq, hash, mac, xaead_open, xaead_seal};
use crate::messages::CookieReply;
use crate::noise::{LABEL_COOKIE, LABEL_MAC1};

/// Lifetime of the responder's cookie secret and of a received cookie.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);

/// `HASH(LABEL_MAC1 ‖ public)`.
pub fn mac1_key(public: &[u8; 32]) -> [u8; 32] {
    hash(&[LABEL_MAC1, public])
}

/// `HASH(LABEL_COOKIE ‖ public)`.
pub fn cookie_key(public: &[u8; 32]) -> [u8; 32] {
    hash(&[LABEL_COOKIE, public])
}

/// Bytes identifying a source address for the cookie: IP octets followed by the big-endian port.
pub fn source_bytes(src: &SocketAddr, out: &mut [u8; 18]) -> usize {
    match src {
        SocketAddr::V4(a) => {
            out[..4].copy_from_slice(&a.ip().octets());
            out[4..6].copy_from_slice(&a.port().to_be_bytes());
            6
        }
        SocketAddr::V6(a) => {
            out[..16].copy_from_slice(&a.ip().octets());
            out[16..18].copy_from_slice(&a.port().to_be_bytes());
            18
        }
    }
}

/// Compute the cookie for `src` under `secret`.
pub fn make_cookie(secret: &[u8; 32], src: &SocketAddr) -> [u8; 16] {
    let mut b = [0u8; 18];
    let n = source_bytes(src, &mut b);
    mac(secret, &[b.get(..n).unwrap_or(&[])])
}

/// Fill mac1 (and mac2 if a cookie is known) of an encoded handshake message in place.
/// Returns the mac1 written.
pub fn add_macs(
    msg: &mut [u8],
    mac1_offset: usize,
    receiver_mac1_key: &[u8; 32],
    cookie: Option<&[u8; 16]>,
) -> [u8; 16] {
    let mac2_offset = mac1_offset + 16;
    let m1 = mac(receiver_mac1_key, &[msg.get(..mac1_offset).unwrap_or(&[])]);
    if let Some(s) = msg.get_mut(mac1_offset..mac2_offset) {
        s.copy_from_slice(&m1);
    }
    let m2 = match cookie {
        Some(c) => mac(c, &[msg.get(..mac2_offset).unwrap_or(&[])]),
        None => [0u8; 16],
    };
    if let Some(s) = msg.get_mut(mac2_offset..mac2_offset + 16) {
        s.copy_from_slice(&m2);
    }
    m1
}

/// Check mac1 of a received handshake message against our own mac1 key.
pub fn check_mac1(msg: &[u8], mac1_offset: usize, own_mac1_key: &[u8; 32]) -> bool {
    match (msg.get(..mac1_offset), msg.get(mac1_offset..mac1_offset + 16)) {
        (Some(body), Some(m1)) => ct_eq(&mac(own_mac1_key, &[body]), m1),
        _ => false,
    }
}

/// Check mac2 of a received handshake message against the cookie for its source.
pub fn check_mac2(msg: &[u8], mac1_offset: usize, cookie: &[u8; 16]) -> bool {
    let mac2_offset = mac1_offset + 16;
    match (msg.get(..mac2_offset), msg.get(mac2_offset..mac2_offset + 16)) {
        (Some(body), Some(m2)) => ct_eq(&mac(cookie, &[body]), m2),
        _ => false,
    }
}

/// Build a cookie reply for a message whose mac1 was `mac1`, sent by `receiver` (its sender
/// index) from `src`.
pub fn create_reply(
    own_cookie_key: &[u8; 32],
    secret: &[u8; 32],
    src: &SocketAddr,
    receiver: u32,
    mac1: &[u8; 16],
    nonce: [u8; 24],
) -> CookieReply {
    let cookie = make_cookie(secret, src);
    let ct = xaead_seal(own_cookie_key, &nonce, &cookie, mac1);
    let mut encrypted_cookie = [0u8; 32];
    if ct.len() == 32 {
        encrypted_cookie.copy_from_slice(&ct);
    }
    CookieReply { receiver, nonce, encrypted_cookie }
}

/// Decrypt a cookie reply with the peer's cookie key and the mac1 we last sent it.
pub fn open_reply(peer_cookie_key: &[u8; 32], last_mac1: &[u8; 16], reply: &CookieReply) -> Option<[u8; 16]> {
    let pt = xaead_open(peer_cookie_key, &reply.nonce, &reply.encrypted_cookie, last_mac1)?;
    let mut c = [0u8; 16];
    if pt.len() != 16 {
        return None;
    }
    c.copy_from_slice(&pt);
    Some(c)
}
