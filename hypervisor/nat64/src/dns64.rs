//! DNS64 (RFC 6147) at the gateway: microVMs ask `64:ff9b::35` (port 53, UDP) for AAAA
//! records; the gateway asks the upstream IPv4 resolver, and when a name has no AAAA records
//! but has A records it answers with AAAA records synthesized in the NAT64 prefix
//! (`64:ff9b::a.b.c.d`, RFC 6052), so IPv6-only guests reach IPv4-only names.
//!
//! The address `64:ff9b::35` embeds 0.0.0.53, which the translator never uses (0/8 is not
//! global unicast, RFC 6052 §3.1): the route to the gateway that already carries the prefix
//! reaches the resolver, and it cannot shadow a real IPv4 host.
//!
//! DNS messages are parsed and written with the `simple-dns` crate (`no_std` + `alloc`);
//! everything parsed comes from a guest or from the network and is hostile: a message that does
//! not parse, has no or several questions, or is not class IN is dropped and counted. State is
//! bounded ([`MAX_PENDING`] questions in flight, [`PENDING_TIMEOUT`] each); answers are
//! matched by the upstream transaction id, which the gateway picks.
//!
//! What is synthesized (RFC 6147 §5.1): an AAAA question whose upstream answer is NOERROR with
//! no AAAA record gets the A records' addresses (global unicast only, §5.1.4) in the prefix,
//! with the A record's TTL, CNAME records kept; an NXDOMAIN or an answer with AAAA records is
//! passed through. Other questions are forwarded as they are, except A: the guests are
//! IPv6-only (no IPv4 route), so an A question is answered NOERROR with no records at once —
//! a deliberate choice beyond RFC 6147, which passes A through: with an A record busybox and
//! glibc clients try IPv4 first and fail.

use alloc::collections::BTreeMap;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::time::Duration;

use simple_dns::rdata::{RData, AAAA};
use simple_dns::{Packet, PacketFlag, ResourceRecord, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use crate::{embed, is_global_v4, WELL_KNOWN_PREFIX};

/// The resolver's address inside: `64:ff9b::35` (0.0.0.53 in the prefix).
pub const DNS64_ADDR: [u8; 16] = [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 53];
/// Questions waiting for the upstream resolver, at most.
pub const MAX_PENDING: usize = 64;
/// An unanswered question is forgotten after this.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// A DNS message over UDP is at most this long (without EDNS, RFC 1035 §4.2.1).
pub const MAX_MESSAGE: usize = 512;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dns64Stats {
    pub queries: u64,
    pub synthesized: u64,
    pub passed: u64,
    pub malformed: u64,
    pub full: u64,
    pub timed_out: u64,
    pub unmatched: u64,
    /// A questions answered empty (the guests have no IPv4).
    pub empty_a: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The client's own question (AAAA or any other type), forwarded.
    Asked,
    /// AAAA had no data: the A question for the same name.
    AskedA,
}

struct Pending {
    client: ([u8; 16], u16),
    client_id: u16,
    /// The client's question, as it sent it (name and type), re-parsed when answering.
    query: Vec<u8>,
    stage: Stage,
    at: Duration,
}

/// What to send after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// A DNS message for the upstream resolver.
    Upstream(Vec<u8>),
    /// A DNS message for the client (its address and port).
    Client([u8; 16], u16, Vec<u8>),
    None,
}

pub struct Dns64 {
    pending: BTreeMap<u16, Pending>,
    next_id: u16,
    stats: Dns64Stats,
}

impl Default for Dns64 {
    fn default() -> Self {
        Self::new(0x5eed)
    }
}

impl Dns64 {
    /// `seed`: the first upstream transaction id (the gateway passes entropy).
    pub fn new(seed: u16) -> Dns64 {
        Dns64 { pending: BTreeMap::new(), next_id: seed, stats: Dns64Stats::default() }
    }

    pub fn stats(&self) -> &Dns64Stats {
        &self.stats
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn fresh_id(&mut self) -> u16 {
        // an odd step through all 65536 ids; never one in use
        for _ in 0..=MAX_PENDING {
            self.next_id = self.next_id.wrapping_mul(0x6c8d).wrapping_add(0x3a1b);
            if !self.pending.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
        self.next_id
    }

    /// A query from a guest (`src`, `port`: its address and UDP port).
    pub fn from_client(&mut self, now: Duration, src: [u8; 16], port: u16, msg: &[u8]) -> Out {
        self.expire(now);
        let Some((id, q)) = question_of(msg) else {
            self.stats.malformed += 1;
            return Out::None;
        };
        if self.pending.len() >= MAX_PENDING {
            self.stats.full += 1;
            return Out::None;
        }
        self.stats.queries += 1;
        if q.1 == QTYPE::TYPE(TYPE::A) {
            // the guests are IPv6-only: an A record would only make them try IPv4 and fail
            // (busybox prefers it), so an A question gets an empty answer
            let p = Pending { client: (src, port), client_id: id, query: msg.to_vec(), stage: Stage::Asked, at: now };
            let empty = Packet::new_reply(0);
            self.stats.empty_a += 1;
            return reply(&p, &empty, Vec::new(), RCODE::NoError).map_or(Out::None, |m| Out::Client(src, port, m));
        }
        let up = self.fresh_id();
        let Some(m) = query(up, &q.0, q.1) else {
            self.stats.malformed += 1;
            return Out::None;
        };
        self.pending.insert(up, Pending { client: (src, port), client_id: id, query: msg.to_vec(), stage: Stage::Asked, at: now });
        Out::Upstream(m)
    }

    /// An answer from the upstream resolver.
    pub fn from_upstream(&mut self, now: Duration, msg: &[u8]) -> Out {
        self.expire(now);
        let Ok(ans) = Packet::parse(msg) else {
            self.stats.malformed += 1;
            return Out::None;
        };
        let Some(p) = self.pending.remove(&ans.id()) else {
            self.stats.unmatched += 1;
            return Out::None;
        };
        // the answer must be about the question we asked
        let Some((_, (name, qtype))) = question_of(&p.query) else { return Out::None };
        let asked = if p.stage == Stage::AskedA { QTYPE::TYPE(TYPE::A) } else { qtype };
        let same = ans.questions.len() == 1 && ans.questions[0].qtype == asked && eq_name(&ans.questions[0].qname.to_string(), &name);
        if !same || !ans.has_flags(PacketFlag::RESPONSE) {
            self.stats.unmatched += 1;
            return Out::None;
        }
        let aaaa = qtype == QTYPE::TYPE(TYPE::AAAA);
        match p.stage {
            Stage::Asked if aaaa && ans.rcode() == RCODE::NoError && !ans.answers.iter().any(|r| matches!(r.rdata, RData::AAAA(_))) => {
                // no AAAA: ask for A (RFC 6147 §5.1.1)
                let up = self.fresh_id();
                let Some(m) = query(up, &name, QTYPE::TYPE(TYPE::A)) else { return Out::None };
                self.pending.insert(up, Pending { stage: Stage::AskedA, at: now, ..p });
                Out::Upstream(m)
            }
            Stage::Asked => {
                self.stats.passed += 1;
                reply(&p, &ans, ans.answers.clone(), ans.rcode()).map_or(Out::None, |m| Out::Client(p.client.0, p.client.1, m))
            }
            Stage::AskedA => {
                let mut answers = Vec::new();
                for r in &ans.answers {
                    match &r.rdata {
                        RData::A(a) if is_global_v4(a.address.to_be_bytes()) => {
                            let v6 = u128::from_be_bytes(embed(&WELL_KNOWN_PREFIX, a.address.to_be_bytes()));
                            answers.push(ResourceRecord::new(r.name.clone(), CLASS::IN, r.ttl, RData::AAAA(AAAA { address: v6 })));
                        }
                        RData::CNAME(_) => answers.push(r.clone()),
                        _ => {}
                    }
                }
                // NOERROR with no usable A: the empty answer of the AAAA question
                let rcode = if ans.rcode() == RCODE::NameError { RCODE::NameError } else { RCODE::NoError };
                if answers.iter().any(|r| matches!(r.rdata, RData::AAAA(_))) {
                    self.stats.synthesized += 1;
                }
                reply(&p, &ans, answers, rcode).map_or(Out::None, |m| Out::Client(p.client.0, p.client.1, m))
            }
        }
    }

    /// Forget questions the upstream never answered.
    pub fn expire(&mut self, now: Duration) {
        let before = self.pending.len();
        self.pending.retain(|_, p| now.saturating_sub(p.at) < PENDING_TIMEOUT);
        self.stats.timed_out += (before - self.pending.len()) as u64;
    }
}

/// The id and the single IN question (name as text, type) of a query.
fn question_of(msg: &[u8]) -> Option<(u16, (alloc::string::String, QTYPE))> {
    if msg.len() > MAX_MESSAGE {
        return None;
    }
    let p = Packet::parse(msg).ok()?;
    if p.questions.len() != 1 {
        return None;
    }
    let q = &p.questions[0];
    if !matches!(q.qclass, QCLASS::CLASS(CLASS::IN)) {
        return None;
    }
    Some((p.id(), (q.qname.to_string(), q.qtype)))
}

fn eq_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

fn query(id: u16, name: &str, qtype: QTYPE) -> Option<Vec<u8>> {
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(simple_dns::Question::new(simple_dns::Name::new(name).ok()?, qtype, QCLASS::CLASS(CLASS::IN), false));
    q.build_bytes_vec_compressed().ok()
}

/// The answer for the client: its id and question, the given records and code.
fn reply(p: &Pending, up: &Packet, answers: Vec<ResourceRecord>, rcode: RCODE) -> Option<Vec<u8>> {
    let q = Packet::parse(&p.query).ok()?;
    let mut r = Packet::new_reply(p.client_id);
    r.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if q.has_flags(PacketFlag::RECURSION_DESIRED) {
        r.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    *r.rcode_mut() = rcode;
    r.questions = q.questions.clone();
    r.answers = answers;
    if r.answers.is_empty() {
        r.name_servers = up.name_servers.clone(); // the SOA of a negative answer
    }
    let m = r.build_bytes_vec_compressed().ok()?;
    // too long for UDP without EDNS: truncated, the client may retry over TCP (not served)
    if m.len() > MAX_MESSAGE {
        let mut t = Packet::new_reply(p.client_id);
        t.set_flags(PacketFlag::TRUNCATION | PacketFlag::RECURSION_AVAILABLE);
        t.questions = q.questions.clone();
        return t.build_bytes_vec().ok();
    }
    Some(m)
}
