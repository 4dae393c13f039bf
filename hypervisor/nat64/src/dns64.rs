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
//! bounded ([`MAX_PENDING`] questions in flight, [`PENDING_TIMEOUT`] each).
//!
//! **Off-path spoofing** (RFC 5452): every question upstream gets a fresh transaction id *and*
//! a fresh UDP source port, both drawn from a ChaCha20 generator seeded with 256 bits of the
//! node's entropy, the port from the pool's range (1024–65535, held in the translator's table
//! while the question is open so no flow can take it, [`Ports`]). An answer counts only when it
//! comes to that port with that id and the question asked, so a blind forger must guess about
//! 31 bits (16 of id, 15.9 of port) per question. A forged answer that does not match leaves
//! the question open.
//!
//! **EDNS(0)** (RFC 6891): questions upstream carry an OPT record offering [`EDNS_SIZE`]
//! (1232 bytes: no IP fragments, which the gateway drops, on any path with an MTU of 1280 or
//! more). A guest's OPT is answered with ours; its size (at least 512, at most 1232) bounds
//! the UDP answer; EDNS versions other than 0 get BADVERS (§6.1.3). Without OPT an answer is
//! at most 512 bytes. A longer answer is cut to the question with TC set, so the client asks
//! again over TCP ([`Client::Tcp`], served by [`crate::dns64_tcp`]), where answers are not cut.
//! An upstream answer with TC set keeps TC (the gateway does not ask upstream over TCP).
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::ToString;
use alloc::vec::Vec;
use core::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use simple_dns::rdata::{RData, AAAA, OPT};
use simple_dns::{Packet, PacketFlag, ResourceRecord, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use crate::{embed, is_global_v4, WELL_KNOWN_PREFIX};

/// The resolver's address inside: `64:ff9b::35` (0.0.0.53 in the prefix).
pub const DNS64_ADDR: [u8; 16] = [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 53];
/// Questions waiting for the upstream resolver, at most.
pub const MAX_PENDING: usize = 64;
/// An unanswered question is forgotten after this.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// A DNS message over UDP is at most this long without EDNS (RFC 1035 §4.2.1).
pub const MAX_MESSAGE: usize = 512;
/// The EDNS(0) UDP payload size offered upstream and to guests, and the longest message
/// accepted from either (RFC 6891 §6.2.5; 1232 keeps IPv6 and IPv4 packets unfragmented).
pub const EDNS_SIZE: u16 = 1232;
/// Upstream source ports are drawn from this range (the pool's; reserved while in use).
pub const PORTS: (u16, u16) = (1024, 65535);

/// Who asked: a guest over UDP (address, port) or a TCP connection of [`crate::dns64_tcp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Client {
    Udp([u8; 16], u16),
    Tcp(u32),
}

/// The upstream source ports: claimed for a question, released when it is answered or
/// forgotten. The translator's table implements it (a claimed port is never handed to a flow).
pub trait Ports {
    /// False if the port is in use.
    fn claim(&mut self, port: u16) -> bool;
    fn release(&mut self, port: u16);
}

/// Ports claimed in a set (tests, fuzzing).
impl Ports for BTreeSet<u16> {
    fn claim(&mut self, port: u16) -> bool {
        self.insert(port)
    }
    fn release(&mut self, port: u16) {
        self.remove(&port);
    }
}

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
    /// Answers cut to fit the client's UDP size (TC set).
    pub truncated: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The client's own question (AAAA or any other type), forwarded.
    Asked,
    /// AAAA had no data: the A question for the same name.
    AskedA,
}

struct Pending {
    client: Client,
    client_id: u16,
    /// The client's EDNS UDP size (None: it sent no OPT).
    edns: Option<u16>,
    /// The client's question, as it sent it (name and type), re-parsed when answering.
    query: Vec<u8>,
    stage: Stage,
    at: Duration,
}

/// What to send after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// A DNS message for the upstream resolver, from this UDP source port.
    Upstream { port: u16, msg: Vec<u8> },
    /// A DNS message for the client.
    Client(Client, Vec<u8>),
    None,
}

pub struct Dns64 {
    /// Open questions by (upstream source port, transaction id).
    pending: BTreeMap<(u16, u16), Pending>,
    rng: ChaCha20Rng,
    stats: Dns64Stats,
}

impl Dns64 {
    /// `seed`: 256 bits of entropy for the upstream ids and ports.
    pub fn new(seed: [u8; 32]) -> Dns64 {
        Dns64 { pending: BTreeMap::new(), rng: ChaCha20Rng::from_seed(seed), stats: Dns64Stats::default() }
    }

    /// Is a question open on this upstream source port (an answer to it is DNS64's)?
    pub fn waiting_on(&self, port: u16) -> bool {
        self.pending.range((port, 0)..=(port, u16::MAX)).next().is_some()
    }

    pub fn stats(&self) -> &Dns64Stats {
        &self.stats
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A fresh upstream (port, id): random, the port claimed. None after a few tries (the
    /// pool is nearly full).
    fn fresh(&mut self, ports: &mut dyn Ports) -> Option<(u16, u16)> {
        let span = u32::from(PORTS.1 - PORTS.0) + 1;
        for _ in 0..16 {
            let r = self.rng.next_u64();
            let port = PORTS.0 + ((r & 0xffff_ffff) % u64::from(span)) as u16;
            let id = (r >> 32) as u16;
            if ports.claim(port) {
                return Some((port, id));
            }
        }
        None
    }

    /// A query from a guest.
    pub fn from_client(&mut self, now: Duration, client: Client, msg: &[u8], ports: &mut dyn Ports) -> Out {
        self.expire(now, ports);
        let Some((id, q, edns)) = question_of(msg) else {
            self.stats.malformed += 1;
            return Out::None;
        };
        if self.pending.len() >= MAX_PENDING {
            self.stats.full += 1;
            return Out::None;
        }
        self.stats.queries += 1;
        let p = Pending { client, client_id: id, edns: edns.map(|e| e.0), query: msg.to_vec(), stage: Stage::Asked, at: now };
        if edns.is_some_and(|e| e.1 != 0) {
            // RFC 6891 §6.1.3: an EDNS version we do not speak
            return reply(&p, &Packet::new_reply(0), Vec::new(), RCODE::BADVERS, false).map_or(Out::None, |m| Out::Client(client, m));
        }
        if q.1 == QTYPE::TYPE(TYPE::A) {
            // the guests are IPv6-only: an A record would only make them try IPv4 and fail
            // (busybox prefers it), so an A question gets an empty answer
            self.stats.empty_a += 1;
            return self.answer(&p, &Packet::new_reply(0), Vec::new(), RCODE::NoError, false);
        }
        let Some((port, up)) = self.fresh(ports) else {
            self.stats.full += 1;
            return Out::None;
        };
        let Some(m) = query(up, &q.0, q.1) else {
            ports.release(port);
            self.stats.malformed += 1;
            return Out::None;
        };
        self.pending.insert((port, up), p);
        Out::Upstream { port, msg: m }
    }

    /// An answer from the upstream resolver to our source `port`.
    pub fn from_upstream(&mut self, now: Duration, port: u16, msg: &[u8], ports: &mut dyn Ports) -> Out {
        self.expire(now, ports);
        let ans = match Packet::parse(msg) {
            Ok(a) if msg.len() <= usize::from(EDNS_SIZE) => a,
            _ => {
                self.stats.malformed += 1;
                return Out::None;
            }
        };
        let key = (port, ans.id());
        let Some(p) = self.pending.get(&key) else {
            self.stats.unmatched += 1;
            return Out::None;
        };
        // the answer must be about the question we asked; a forgery that is not leaves it open
        let Some((_, (name, qtype), _)) = question_of(&p.query) else { return Out::None };
        let asked = if p.stage == Stage::AskedA { QTYPE::TYPE(TYPE::A) } else { qtype };
        let same = ans.questions.len() == 1
            && ans.questions[0].qtype == asked
            && ans.questions[0].qclass == QCLASS::CLASS(CLASS::IN)
            && eq_name(&ans.questions[0].qname.to_string(), &name);
        if !same || !ans.has_flags(PacketFlag::RESPONSE) {
            self.stats.unmatched += 1;
            return Out::None;
        }
        let p = self.pending.remove(&key).expect("looked up above");
        ports.release(port);
        let tc = ans.has_flags(PacketFlag::TRUNCATION);
        let aaaa = qtype == QTYPE::TYPE(TYPE::AAAA);
        match p.stage {
            Stage::Asked if aaaa && !tc && ans.rcode() == RCODE::NoError && !ans.answers.iter().any(|r| matches!(r.rdata, RData::AAAA(_))) => {
                // no AAAA: ask for A (RFC 6147 §5.1.1), from a fresh port and id
                let Some((port, up)) = self.fresh(ports) else { return Out::None };
                let Some(m) = query(up, &name, QTYPE::TYPE(TYPE::A)) else {
                    ports.release(port);
                    return Out::None;
                };
                self.pending.insert((port, up), Pending { stage: Stage::AskedA, at: now, ..p });
                Out::Upstream { port, msg: m }
            }
            Stage::Asked => {
                self.stats.passed += 1;
                self.answer(&p, &ans, ans.answers.clone(), ans.rcode(), tc)
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
                self.answer(&p, &ans, answers, rcode, tc)
            }
        }
    }

    fn answer(&mut self, p: &Pending, up: &Packet, answers: Vec<ResourceRecord>, rcode: RCODE, tc: bool) -> Out {
        let Some(m) = reply(p, up, answers, rcode, tc) else { return Out::None };
        if Packet::parse(&m).is_ok_and(|r| r.has_flags(PacketFlag::TRUNCATION)) && !tc {
            self.stats.truncated += 1;
        }
        Out::Client(p.client, m)
    }

    /// Forget questions the upstream never answered (their ports go back).
    pub fn expire(&mut self, now: Duration, ports: &mut dyn Ports) {
        let dead: Vec<(u16, u16)> = self.pending.iter().filter(|(_, p)| now.saturating_sub(p.at) >= PENDING_TIMEOUT).map(|(k, _)| *k).collect();
        for k in dead {
            self.pending.remove(&k);
            ports.release(k.0);
            self.stats.timed_out += 1;
        }
    }

    /// Forget the questions of a TCP connection that closed (their answers have nowhere to go).
    pub fn forget(&mut self, client: Client, ports: &mut dyn Ports) {
        let dead: Vec<(u16, u16)> = self.pending.iter().filter(|(_, p)| p.client == client).map(|(k, _)| *k).collect();
        for k in dead {
            self.pending.remove(&k);
            ports.release(k.0);
        }
    }
}

/// The id, the single IN question (name as text, type) and the EDNS (UDP size clamped to
/// 512..=[`EDNS_SIZE`], version) of a query.
#[allow(clippy::type_complexity)]
fn question_of(msg: &[u8]) -> Option<(u16, (alloc::string::String, QTYPE), Option<(u16, u8)>)> {
    if msg.len() > usize::from(EDNS_SIZE) {
        return None;
    }
    let p = Packet::parse(msg).ok()?;
    if p.questions.len() != 1 || p.has_flags(PacketFlag::RESPONSE) {
        return None;
    }
    let q = &p.questions[0];
    if !matches!(q.qclass, QCLASS::CLASS(CLASS::IN)) {
        return None;
    }
    let edns = p.opt().map(|o| (o.udp_packet_size.clamp(MAX_MESSAGE as u16, EDNS_SIZE), o.version));
    Some((p.id(), (q.qname.to_string(), q.qtype), edns))
}

fn our_opt() -> OPT<'static> {
    OPT { opt_codes: Vec::new(), udp_packet_size: EDNS_SIZE, version: 0 }
}

fn eq_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

fn query(id: u16, name: &str, qtype: QTYPE) -> Option<Vec<u8>> {
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    *q.opt_mut() = Some(our_opt());
    q.questions.push(simple_dns::Question::new(simple_dns::Name::new(name).ok()?, qtype, QCLASS::CLASS(CLASS::IN), false));
    q.build_bytes_vec_compressed().ok()
}

/// The answer for the client: its id and question, the given records and code, our OPT if it
/// sent one; cut to the question with TC when longer than its UDP size.
fn reply(p: &Pending, up: &Packet, answers: Vec<ResourceRecord>, rcode: RCODE, tc: bool) -> Option<Vec<u8>> {
    let q = Packet::parse(&p.query).ok()?;
    let mut r = Packet::new_reply(p.client_id);
    r.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if q.has_flags(PacketFlag::RECURSION_DESIRED) {
        r.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    if tc {
        r.set_flags(PacketFlag::TRUNCATION);
    }
    if p.edns.is_some() {
        *r.opt_mut() = Some(our_opt());
    }
    *r.rcode_mut() = rcode;
    r.questions = q.questions.clone();
    r.answers = answers;
    if r.answers.is_empty() {
        r.name_servers = up.name_servers.clone(); // the SOA of a negative answer
    }
    let m = r.build_bytes_vec_compressed().ok()?;
    let limit = match p.client {
        Client::Tcp(_) => usize::from(u16::MAX),
        Client::Udp(..) => usize::from(p.edns.unwrap_or(MAX_MESSAGE as u16)),
    };
    if m.len() > limit {
        // too long for the client's UDP: the question alone with TC, it asks again over TCP
        r.answers.clear();
        r.name_servers.clear();
        r.additional_records.clear();
        r.set_flags(PacketFlag::TRUNCATION);
        return r.build_bytes_vec().ok();
    }
    Some(m)
}
