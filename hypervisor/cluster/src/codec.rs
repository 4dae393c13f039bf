//! The membership wire format, with key admission built into decoding.
//!
//! A fixed binary layout (no serde): every identity is 52 bytes (key, address, generation), so
//! a datagram's size is bounded by foca's `max_packet_size` and decoding never allocates more
//! than that. Decoding refuses an identity whose key the cluster has not admitted, and a header
//! whose source is not the key the fabric authenticated the datagram with: foca then drops the
//! whole datagram, so a non-admitted node never enters any member table, neither by talking
//! itself nor by being gossiped about.
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use core::cell::RefCell;
use core::fmt;

use bytes::{Buf, BufMut};
use foca::{Header, Member, Message, State};

use crate::identity::{NodeId, NodeKey};

/// What the codec, the leave-notice handler and the membership wrapper share.
#[derive(Default, Debug)]
pub struct Shared {
    /// Keys allowed into the member table.
    pub admitted: BTreeSet<NodeKey>,
    /// The fabric-authenticated sender of the datagram being decoded, if any.
    pub authenticated_src: Option<NodeKey>,
    /// The generation of each key that announced a graceful leave (shown as `left`, not
    /// `dead`). One entry per admitted key at most.
    pub left: BTreeMap<NodeKey, u32>,
}

pub type SharedRef = Rc<RefCell<Shared>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    Truncated,
    BadTag(u8),
    NotAdmitted,
    SourceMismatch,
    BufferFull,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Truncated => f.write_str("truncated datagram"),
            CodecError::BadTag(t) => write!(f, "unknown tag {t}"),
            CodecError::NotAdmitted => f.write_str("identity not admitted"),
            CodecError::SourceMismatch => {
                f.write_str("header source is not the authenticated sender")
            }
            CodecError::BufferFull => f.write_str("output buffer full"),
        }
    }
}

impl core::error::Error for CodecError {}

pub struct Codec {
    shared: SharedRef,
}

impl Codec {
    pub fn new(shared: SharedRef) -> Self {
        Codec { shared }
    }

    fn check_admitted(&self, id: &NodeId) -> Result<(), CodecError> {
        if self.shared.borrow().admitted.contains(&id.key) {
            Ok(())
        } else {
            Err(CodecError::NotAdmitted)
        }
    }
}

pub fn put_id(id: &NodeId, mut buf: impl BufMut) -> Result<(), CodecError> {
    if buf.remaining_mut() < NodeId::ENCODED_LEN {
        return Err(CodecError::BufferFull);
    }
    buf.put_slice(&id.key.0);
    buf.put_slice(&id.addr);
    buf.put_u32(id.generation);
    Ok(())
}

pub fn get_id(mut buf: impl Buf) -> Result<NodeId, CodecError> {
    if buf.remaining() < NodeId::ENCODED_LEN {
        return Err(CodecError::Truncated);
    }
    let mut key = [0u8; 32];
    buf.copy_to_slice(&mut key);
    let mut addr = [0u8; 16];
    buf.copy_to_slice(&mut addr);
    let generation = buf.get_u32();
    Ok(NodeId {
        key: NodeKey(key),
        addr,
        generation,
    })
}

fn get_u8(buf: &mut impl Buf) -> Result<u8, CodecError> {
    if buf.remaining() < 1 {
        return Err(CodecError::Truncated);
    }
    Ok(buf.get_u8())
}

fn get_u16(buf: &mut impl Buf) -> Result<u16, CodecError> {
    if buf.remaining() < 2 {
        return Err(CodecError::Truncated);
    }
    Ok(buf.get_u16())
}

fn room(buf: &impl BufMut, n: usize) -> Result<(), CodecError> {
    if buf.remaining_mut() < n {
        Err(CodecError::BufferFull)
    } else {
        Ok(())
    }
}

impl foca::Codec<NodeId> for Codec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        put_id(&header.src, &mut buf)?;
        room(&buf, 2)?;
        buf.put_u16(header.src_incarnation);
        put_id(&header.dst, &mut buf)?;
        room(&buf, 2)?;
        match &header.message {
            Message::Ping(n) => buf.put_slice(&[0, *n]),
            Message::Ack(n) => buf.put_slice(&[1, *n]),
            Message::PingReq {
                target,
                probe_number,
            } => {
                buf.put_slice(&[2, *probe_number]);
                put_id(target, &mut buf)?;
            }
            Message::IndirectPing {
                origin,
                probe_number,
            } => {
                buf.put_slice(&[3, *probe_number]);
                put_id(origin, &mut buf)?;
            }
            Message::IndirectAck {
                target,
                probe_number,
            } => {
                buf.put_slice(&[4, *probe_number]);
                put_id(target, &mut buf)?;
            }
            Message::ForwardedAck {
                origin,
                probe_number,
            } => {
                buf.put_slice(&[5, *probe_number]);
                put_id(origin, &mut buf)?;
            }
            Message::Announce => buf.put_u8(6),
            Message::Feed => buf.put_u8(7),
            Message::Gossip => buf.put_u8(8),
            Message::Broadcast => buf.put_u8(9),
            Message::TurnUndead => buf.put_u8(10),
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeId>, CodecError> {
        let src = get_id(&mut buf)?;
        self.check_admitted(&src)?;
        if let Some(auth) = self.shared.borrow().authenticated_src {
            if auth != src.key {
                return Err(CodecError::SourceMismatch);
            }
        }
        let src_incarnation = get_u16(&mut buf)?;
        let dst = get_id(&mut buf)?;
        let tag = get_u8(&mut buf)?;
        let message = match tag {
            0 => Message::Ping(get_u8(&mut buf)?),
            1 => Message::Ack(get_u8(&mut buf)?),
            2..=5 => {
                let probe_number = get_u8(&mut buf)?;
                let other = get_id(&mut buf)?;
                self.check_admitted(&other)?;
                match tag {
                    2 => Message::PingReq {
                        target: other,
                        probe_number,
                    },
                    3 => Message::IndirectPing {
                        origin: other,
                        probe_number,
                    },
                    4 => Message::IndirectAck {
                        target: other,
                        probe_number,
                    },
                    _ => Message::ForwardedAck {
                        origin: other,
                        probe_number,
                    },
                }
            }
            6 => Message::Announce,
            7 => Message::Feed,
            8 => Message::Gossip,
            9 => Message::Broadcast,
            10 => Message::TurnUndead,
            t => return Err(CodecError::BadTag(t)),
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        put_id(member.id(), &mut buf)?;
        room(&buf, 3)?;
        buf.put_u16(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<NodeId>, CodecError> {
        let id = get_id(&mut buf)?;
        self.check_admitted(&id)?;
        let incarnation = get_u16(&mut buf)?;
        let state = match get_u8(&mut buf)? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            t => return Err(CodecError::BadTag(t)),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

/// Graceful-leave notices ride foca's custom broadcasts: `b'L'` then the leaving identity.
pub struct LeaveNotices {
    shared: SharedRef,
}

impl LeaveNotices {
    pub fn new(shared: SharedRef) -> Self {
        LeaveNotices { shared }
    }

    pub fn encode(id: &NodeId) -> [u8; 1 + NodeId::ENCODED_LEN] {
        let mut out = [0u8; 1 + NodeId::ENCODED_LEN];
        out[0] = b'L';
        let mut w = &mut out[1..];
        // 52 bytes into a 52-byte slice cannot run out of room.
        let _ = put_id(id, &mut w);
        out
    }
}

/// A leave notice is identified by the identity that left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftKey(pub NodeId);

impl foca::Invalidates for LeftKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl foca::BroadcastHandler<NodeId> for LeaveNotices {
    type Key = LeftKey;
    type Error = CodecError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<LeftKey>, CodecError> {
        if data.len() != 1 + NodeId::ENCODED_LEN {
            return Err(CodecError::Truncated);
        }
        if data[0] != b'L' {
            return Err(CodecError::BadTag(data[0]));
        }
        let id = get_id(&data[1..])?;
        let mut shared = self.shared.borrow_mut();
        if !shared.admitted.contains(&id.key) {
            return Err(CodecError::NotAdmitted);
        }
        // New information is passed on; a notice we already hold, or one older than it, is
        // not (foca then stops disseminating it).
        if shared
            .left
            .get(&id.key)
            .is_some_and(|&g| g >= id.generation)
        {
            return Ok(None);
        }
        shared.left.insert(id.key, id.generation);
        Ok(Some(LeftKey(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Membership, MembershipConfig};
    use crate::sim::{sim_key, SimRng};
    use alloc::vec::Vec;
    use core::time::Duration;
    use foca::Codec as _;

    fn shared_with(keys: &[NodeKey]) -> SharedRef {
        let s: SharedRef = Rc::new(RefCell::new(Shared::default()));
        s.borrow_mut().admitted.extend(keys.iter().copied());
        s
    }

    fn id(i: usize) -> NodeId {
        NodeId::new(sim_key(i), [i as u8; 16], 7)
    }

    #[test]
    fn header_and_member_round_trip_and_admission() {
        let mut c = Codec::new(shared_with(&[sim_key(0), sim_key(1)]));
        let h = Header {
            src: id(0),
            src_incarnation: 3,
            dst: id(1),
            message: Message::PingReq {
                target: id(1),
                probe_number: 9,
            },
        };
        let mut buf = Vec::new();
        c.encode_header(&h, &mut buf).unwrap();
        assert_eq!(c.decode_header(&buf[..]).unwrap(), h);
        let m = Member::new(id(1), 5, State::Suspect);
        let mut mb = Vec::new();
        c.encode_member(&m, &mut mb).unwrap();
        assert_eq!(c.decode_member(&mb[..]).unwrap(), m);
        // A key that is not admitted is refused wherever it appears.
        let mut strict = Codec::new(shared_with(&[sim_key(0)]));
        assert_eq!(strict.decode_member(&mb[..]), Err(CodecError::NotAdmitted));
        assert_eq!(strict.decode_header(&buf[..]), Err(CodecError::NotAdmitted));
        // A header whose source is not the fabric-authenticated sender is refused.
        c.shared.borrow_mut().authenticated_src = Some(sim_key(1));
        assert_eq!(c.decode_header(&buf[..]), Err(CodecError::SourceMismatch));
        // Every truncation is an error, never a panic.
        c.shared.borrow_mut().authenticated_src = None;
        for n in 0..buf.len() {
            assert!(c.decode_header(&buf[..n]).is_err());
        }
    }

    #[test]
    fn hostile_datagrams_are_refused_without_panic() {
        let keys = [sim_key(0), sim_key(1)];
        let mut m = Membership::new(id(0), MembershipConfig::default(), 1, keys, Vec::new());
        let mut rng = SimRng::new(42);
        // A valid datagram to mutate: what node 1 would send when announcing.
        let mut other = Membership::new(
            id(1),
            MembershipConfig::default(),
            2,
            keys,
            alloc::vec![id(0)],
        );
        other.tick(Duration::ZERO);
        let valid = other.take_outgoing().pop().expect("announce").data;
        assert!(m
            .handle_datagram(Duration::ZERO, sim_key(1), &valid)
            .is_ok());
        for round in 0..20_000u64 {
            let mut d = valid.clone();
            match round % 3 {
                0 => {
                    let i = rng.below(d.len() as u64) as usize;
                    d[i] ^= 1 << rng.below(8);
                }
                1 => d.truncate(rng.below(d.len() as u64) as usize),
                _ => d = (0..rng.below(2000)).map(|_| rng.next_u64() as u8).collect(),
            }
            let _ = m.handle_datagram(Duration::from_millis(round), sim_key(1), &d);
        }
        // Nothing but the two admitted keys ever got in.
        assert!(m.members().iter().all(|v| v.id.key == sim_key(1)));
    }
}
