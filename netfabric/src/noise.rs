//! The `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` handshake exactly as WireGuard uses it.
//!
//! Written in this crate from the protocol description (no Noise crate implements WireGuard's
//! exact construction — its identifier mixing, the TAI64N payload, the psk position — in
//! `no_std`). The functions here are pure: the caller supplies ephemeral key bytes and
//! indices from its RNG and the timestamp from its clock, and fills in mac1/mac2
//! ([`crate::cookie`]).
//!
//! Initiator → responder (`msg` = [`Initiation`]):
//! ```text
//! C = HASH(CONSTRUCTION); H = HASH(C ‖ IDENTIFIER); H = HASH(H ‖ S_r)
//! C = KDF1(C, E_i);  H = HASH(H ‖ E_i)
//! (C, k) = KDF2(C, DH(e_i, S_r)); static = AEAD(k, 0, S_i, H);  H = HASH(H ‖ static)
//! (C, k) = KDF2(C, DH(s_i, S_r)); timestamp = AEAD(k, 0, TAI64N, H); H = HASH(H ‖ timestamp)
//! ```
//! Responder → initiator (`msg` = [`Response`]):
//! ```text
//! C = KDF1(C, E_r); H = HASH(H ‖ E_r); C = KDF1(C, DH(e_r, E_i)); C = KDF1(C, DH(e_r, S_i))
//! (C, t, k) = KDF3(C, psk); H = HASH(H ‖ t); empty = AEAD(k, 0, ε, H); H = HASH(H ‖ empty)
//! ```
//! Transport keys: `(T_i→r, T_r→i) = KDF2(C, ε)`.

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

use crate::crypto::{aead_open, aead_seal, hash, kdf1, kdf2, kdf3};
use crate::identity::Identity;
use crate::messages::{Initiation, Response};
use crate::tai64n::Tai64n;

/// The Noise protocol name.
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's identifier mixed into the initial hash.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label of the mac1 key (`HASH(LABEL_MAC1 ‖ receiver's static public)`).
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// Label of the cookie key (`HASH(LABEL_COOKIE ‖ cookie sender's static public)`).
pub const LABEL_COOKIE: &[u8] = b"cookie--";

/// A handshake that cannot proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseError {
    /// An AEAD tag did not verify (wrong key, forged or corrupted message).
    Decrypt,
    /// A Diffie-Hellman result was all zero (low-order point).
    WeakKey,
    /// The static key decrypted from an initiation belongs to no known peer.
    UnknownPeer,
}

fn initial() -> ([u8; 32], [u8; 32]) {
    let ck = hash(&[CONSTRUCTION]);
    let h = hash(&[&ck, IDENTIFIER]);
    (ck, h)
}

fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<[u8; 32], NoiseError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(NoiseError::WeakKey);
    }
    Ok(*shared.as_bytes())
}

/// Precompute `DH(s_local, S_remote)` (used by both sides of every handshake with a peer).
pub fn static_static(local: &Identity, remote: &[u8; 32]) -> Result<[u8; 32], NoiseError> {
    dh(local.secret(), remote)
}

/// A pair of transport keys.
#[derive(Clone)]
pub struct TransportKeys {
    /// Key for packets we send.
    pub send: [u8; 32],
    /// Key for packets we receive.
    pub recv: [u8; 32],
}

impl Drop for TransportKeys {
    fn drop(&mut self) {
        self.send.zeroize();
        self.recv.zeroize();
    }
}

/// The initiator's state between sending the initiation and receiving the response.
#[derive(Clone)]
pub struct InitiatorState {
    ck: [u8; 32],
    h: [u8; 32],
    ephemeral: StaticSecret,
    /// Our index in the initiation.
    pub sender: u32,
}

impl Drop for InitiatorState {
    fn drop(&mut self) {
        self.ck.zeroize();
        self.h.zeroize();
    }
}

/// Build an initiation (mac1/mac2 left zero).
pub fn create_initiation(
    local: &Identity,
    remote_static: &[u8; 32],
    static_static: &[u8; 32],
    ephemeral_bytes: [u8; 32],
    sender: u32,
    timestamp: Tai64n,
) -> Result<(InitiatorState, Initiation), NoiseError> {
    let (mut ck, mut h) = initial();
    h = hash(&[&h, remote_static]);
    let e = StaticSecret::from(ephemeral_bytes);
    let e_pub = *PublicKey::from(&e).as_bytes();
    ck = kdf1(&ck, &e_pub);
    h = hash(&[&h, &e_pub]);
    let (c, k) = kdf2(&ck, &dh(&e, remote_static)?);
    ck = c;
    let enc_static = aead_seal(&k, 0, &local.public_key(), &h);
    h = hash(&[&h, &enc_static]);
    let (c, k) = kdf2(&ck, static_static);
    ck = c;
    let enc_ts = aead_seal(&k, 0, &timestamp.0, &h);
    h = hash(&[&h, &enc_ts]);
    let mut msg = Initiation {
        sender,
        ephemeral: e_pub,
        encrypted_static: [0; 48],
        encrypted_timestamp: [0; 28],
        mac1: [0; 16],
        mac2: [0; 16],
    };
    if enc_static.len() != 48 || enc_ts.len() != 28 {
        return Err(NoiseError::Decrypt);
    }
    msg.encrypted_static.copy_from_slice(&enc_static);
    msg.encrypted_timestamp.copy_from_slice(&enc_ts);
    Ok((InitiatorState { ck, h, ephemeral: e, sender }, msg))
}

/// What the responder learned from a valid initiation.
#[derive(Clone)]
pub struct ConsumedInitiation {
    ck: [u8; 32],
    h: [u8; 32],
    /// The initiator's static public key.
    pub peer_static: [u8; 32],
    /// The initiator's ephemeral public key.
    pub peer_ephemeral: [u8; 32],
    /// The initiator's index.
    pub peer_index: u32,
    /// The decrypted timestamp.
    pub timestamp: Tai64n,
}

impl Drop for ConsumedInitiation {
    fn drop(&mut self) {
        self.ck.zeroize();
        self.h.zeroize();
    }
}

/// Process an initiation as the responder. `lookup` maps the decrypted static key to the
/// precomputed `DH(s_local, S_peer)` of a known peer, or `None` for an unknown one.
pub fn consume_initiation(
    local: &Identity,
    msg: &Initiation,
    lookup: impl FnOnce(&[u8; 32]) -> Option<[u8; 32]>,
) -> Result<ConsumedInitiation, NoiseError> {
    let (mut ck, mut h) = initial();
    h = hash(&[&h, &local.public_key()]);
    ck = kdf1(&ck, &msg.ephemeral);
    h = hash(&[&h, &msg.ephemeral]);
    let (c, k) = kdf2(&ck, &dh(local.secret(), &msg.ephemeral)?);
    ck = c;
    let peer = aead_open(&k, 0, &msg.encrypted_static, &h).ok_or(NoiseError::Decrypt)?;
    let mut peer_static = [0u8; 32];
    if peer.len() != 32 {
        return Err(NoiseError::Decrypt);
    }
    peer_static.copy_from_slice(&peer);
    h = hash(&[&h, &msg.encrypted_static]);
    let ss = lookup(&peer_static).ok_or(NoiseError::UnknownPeer)?;
    let (c, k) = kdf2(&ck, &ss);
    ck = c;
    let ts = aead_open(&k, 0, &msg.encrypted_timestamp, &h).ok_or(NoiseError::Decrypt)?;
    let mut timestamp = [0u8; 12];
    if ts.len() != 12 {
        return Err(NoiseError::Decrypt);
    }
    timestamp.copy_from_slice(&ts);
    h = hash(&[&h, &msg.encrypted_timestamp]);
    Ok(ConsumedInitiation {
        ck,
        h,
        peer_static,
        peer_ephemeral: msg.ephemeral,
        peer_index: msg.sender,
        timestamp: Tai64n(timestamp),
    })
}

/// Build the response (mac1/mac2 left zero) and derive the responder's transport keys.
pub fn create_response(
    consumed: &ConsumedInitiation,
    psk: &[u8; 32],
    ephemeral_bytes: [u8; 32],
    sender: u32,
) -> Result<(Response, TransportKeys), NoiseError> {
    let mut ck = consumed.ck;
    let mut h = consumed.h;
    let e = StaticSecret::from(ephemeral_bytes);
    let e_pub = *PublicKey::from(&e).as_bytes();
    ck = kdf1(&ck, &e_pub);
    h = hash(&[&h, &e_pub]);
    ck = kdf1(&ck, &dh(&e, &consumed.peer_ephemeral)?);
    ck = kdf1(&ck, &dh(&e, &consumed.peer_static)?);
    let (c, t, k) = kdf3(&ck, psk);
    ck = c;
    h = hash(&[&h, &t]);
    let empty = aead_seal(&k, 0, &[], &h);
    let mut encrypted_nothing = [0u8; 16];
    if empty.len() != 16 {
        return Err(NoiseError::Decrypt);
    }
    encrypted_nothing.copy_from_slice(&empty);
    let (t_recv, t_send) = kdf2(&ck, &[]);
    ck.zeroize();
    h.zeroize();
    Ok((
        Response {
            sender,
            receiver: consumed.peer_index,
            ephemeral: e_pub,
            encrypted_nothing,
            mac1: [0; 16],
            mac2: [0; 16],
        },
        TransportKeys { send: t_send, recv: t_recv },
    ))
}

/// Process a response as the initiator and derive the initiator's transport keys.
pub fn consume_response(
    state: &InitiatorState,
    local: &Identity,
    psk: &[u8; 32],
    msg: &Response,
) -> Result<TransportKeys, NoiseError> {
    let mut ck = kdf1(&state.ck, &msg.ephemeral);
    let mut h = hash(&[&state.h, &msg.ephemeral]);
    ck = kdf1(&ck, &dh(&state.ephemeral, &msg.ephemeral)?);
    ck = kdf1(&ck, &dh(local.secret(), &msg.ephemeral)?);
    let (c, t, k) = kdf3(&ck, psk);
    ck = c;
    h = hash(&[&h, &t]);
    aead_open(&k, 0, &msg.encrypted_nothing, &h).ok_or(NoiseError::Decrypt)?;
    let (t_send, t_recv) = kdf2(&ck, &[]);
    ck.zeroize();
    h.zeroize();
    Ok(TransportKeys { send: t_send, recv: t_recv })
}
