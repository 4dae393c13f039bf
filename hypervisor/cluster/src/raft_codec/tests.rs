//! The wire format's tests: round trips, bounds, hostile bytes.

use super::*;
use crate::desired::{Command, RestartPolicy, Role, WorkloadSpec};
use raftbare::{ClusterConfig, LogEntries, LogEntry, LogIndex, MessageHeader, MessageSeqNo, NodeId, Term};
use alloc::string::ToString;
use alloc::vec;

fn spec(name: &str) -> WorkloadSpec {
    WorkloadSpec {
        health: None,
        name: name.to_string(),
        image: [9; 32],
        replicas: 2,
        vcpus: 1,
        mem_mib: 128,
        env: vec![("PORT".to_string(), "80".to_string()), ("ü".to_string(), "ß".to_string())],
        args: vec!["--serve".to_string()],
        restart: RestartPolicy::OnFailure { max_restarts: 3 },
        constraints: vec![
            Constraint::LabelEquals { key: "zone".to_string(), value: "a".to_string() },
            Constraint::OnNodes(vec![NodeKey([1; 32]), NodeKey([2; 32])]),
            Constraint::NotOnNode(NodeKey([3; 32])),
            Constraint::LabelNotEquals { key: "disk".to_string(), value: "hdd".to_string() },
        ],
    }
}

fn every_command() -> Vec<Command> {
    let k = NodeKey([5; 32]);
    vec![
        Command::PutWorkload(spec("web")),
        Command::PutWorkload(WorkloadSpec {
            health: Some(crate::desired::HealthCheck { cmd: vec!["wget".to_string(), "-q".to_string(), "http://[::1]/ü".to_string()], interval_secs: 10, timeout_secs: 5, retries: 3, start_period_secs: 30 }),
            ..spec("checked")
        }),
        Command::RemoveWorkload("web".to_string()),
        Command::AdmitNode(k),
        Command::RemoveNode(k),
        Command::Drain(k),
        Command::Undrain(k),
        Command::SetOperator { key: k, role: Some(Role::Viewer) },
        Command::SetOperator { key: k, role: None },
        Command::Assign { workload: "web".to_string(), replica: 1, node: k },
        Command::Unassign { workload: "web".to_string(), replica: 1 },
        Command::Released { workload: "web".to_string(), replica: 1 },
        Command::SetLabels { node: k, changes: vec![("zone".to_string(), Some("b".to_string())), ("disk".to_string(), None), ("empty".to_string(), Some(String::new()))] },
    ]
}

fn pos(t: u64, i: u64) -> LogPosition {
    LogPosition { term: Term::new(t), index: LogIndex::new(i) }
}

fn append(n_commands: usize) -> Envelope {
    let mut entries = LogEntries::new(pos(1, 4));
    entries.push(LogEntry::Term(Term::new(2)));
    let mut config = ClusterConfig::new();
    config.voters.extend([NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    config.new_voters.extend([NodeId::new(1), NodeId::new(2), NodeId::new(65539)]);
    entries.push(LogEntry::ClusterConfig(config));
    let mut commands = Vec::new();
    let all = every_command();
    for i in 0..n_commands {
        entries.push(LogEntry::Command);
        commands.push((pos(2, 7 + i as u64), all[i % all.len()].clone()));
    }
    let header = MessageHeader { from: NodeId::new(2), term: Term::new(2), seqno: MessageSeqNo::new(77) };
    Envelope { from: 2, to: 3, message: Message::AppendEntriesCall { header, commit_index: LogIndex::new(5), entries }, commands, grant: true, applied: 3, snapshot: None, pre_vote: false }
}

#[test]
fn every_message_and_command_round_trips() {
    let h = MessageHeader { from: NodeId::new(1), term: Term::new(9), seqno: MessageSeqNo::new(3) };
    let mut wires = vec![
        Wire::Raft(Envelope { from: 1, to: 2, message: Message::RequestVoteCall { header: h, last_position: pos(8, 40) }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false }),
        Wire::Raft(Envelope { from: 1, to: 2, message: Message::RequestVoteReply { header: h, vote_granted: true }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false }),
        Wire::Raft(Envelope { from: 1, to: 2, message: Message::AppendEntriesReply { header: h, last_position: pos(9, 41) }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false }),
        Wire::Raft(Envelope { from: 1, to: 2, message: Message::RequestVoteCall { header: h, last_position: pos(8, 40) }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: true }),
        Wire::Raft(Envelope { from: 1, to: 2, message: Message::RequestVoteReply { header: h, vote_granted: false }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: true }),
        Wire::Raft(append(10)),
        Wire::Proposed { request: u64::MAX, term: 4, index: 99 },
        Wire::Join { id: 1 << 16 | 2 },
        Wire::Capacity { vcpus: 4, mem_mib: 1 << 40, images: vec![] },
        Wire::Capacity { vcpus: 4, mem_mib: 1 << 40, images: (0..IMAGES_MAX as u8).map(|i| [i; 32]).collect() },
        Wire::Store { free_mib: 0, images: vec![] },
        Wire::Store { free_mib: u64::MAX, images: vec![([3; 32], 7), ([4; 32], u32::MAX)] },
        Wire::Store { free_mib: 12, images: (0..IMAGES_MAX as u8).map(|i| ([i; 32], i as u32)).collect() },
        Wire::WhoAmI,
        Wire::Healthy { replicas: vec![] },
        Wire::Healthy { replicas: (0..HEALTHY_MAX as u8).map(|i| HealthyReplica { tag: [i; 8], spec: [!i; 32] }).collect() },
        Wire::Members { extra: vec![] },
        Wire::Pull { from: 1 << 16 | 2, to: 3, applied: 41 },
        Wire::Vouch { from: 1 << 16 | 2, to: 3, position: pos(7, 300), digest: [0xab; 32] },
        Wire::Vouched { from: 3, to: 1 << 16 | 2, position: pos(7, 300), digest: [0xab; 32], verdict: Verdict::Same, applied: 299 },
        Wire::Vouched { from: 3, to: 2, position: pos(7, 300), digest: [1; 32], verdict: Verdict::Differs, applied: 300 },
        Wire::Vouched { from: 3, to: 2, position: pos(7, 300), digest: [1; 32], verdict: Verdict::Behind, applied: 3 },
        Wire::Vouched { from: 3, to: 2, position: pos(7, 300), digest: [1; 32], verdict: Verdict::Stale, applied: 1 << 40 },
        Wire::Members { extra: (0..EXTRA_MAX as u8).map(|i| NodeKey([i; 32])).collect() },
    ];
    assert!(encode(&wires[wires.len() - 1]).len() <= DATAGRAM_MAX);
    let full_capacity = wires.iter().find(|w| matches!(w, Wire::Capacity { images, .. } if images.len() == IMAGES_MAX)).unwrap();
    assert!(encode(full_capacity).len() <= DATAGRAM_MAX);
    let mut too_many_images = encode(full_capacity);
    too_many_images[14] = IMAGES_MAX as u8 + 1;
    too_many_images.extend([7u8; 32]);
    assert_eq!(decode(&too_many_images), Err(WireError::OutOfRange));
    let full_store = wires.iter().find(|w| matches!(w, Wire::Store { images, .. } if images.len() == IMAGES_MAX)).unwrap();
    assert!(encode(full_store).len() <= DATAGRAM_MAX);
    let mut too_many_sizes = encode(full_store);
    too_many_sizes[10] = IMAGES_MAX as u8 + 1;
    too_many_sizes.extend([7u8; 36]);
    assert_eq!(decode(&too_many_sizes), Err(WireError::OutOfRange));
    let full_healthy = wires.iter().find(|w| matches!(w, Wire::Healthy { replicas } if replicas.len() == HEALTHY_MAX)).unwrap();
    assert!(encode(full_healthy).len() <= DATAGRAM_MAX);
    let mut too_many_healthy = encode(full_healthy);
    too_many_healthy[2] = HEALTHY_MAX as u8 + 1;
    too_many_healthy.extend([7u8; 40]);
    assert_eq!(decode(&too_many_healthy), Err(WireError::OutOfRange));
    let mut too_many = encode(&Wire::Members { extra: vec![] });
    too_many[2] = EXTRA_MAX as u8 + 1;
    too_many.extend(core::iter::repeat_n(1u8, 32 * (EXTRA_MAX + 1)));
    assert_eq!(decode(&too_many), Err(WireError::OutOfRange));
    for c in every_command() {
        wires.push(Wire::Propose { request: 7, command: c });
    }
    for w in wires {
        let b = encode(&w);
        assert_eq!(decode(&b), Ok(w.clone()), "{w:?}");
        // Every truncation is an error, and so is a trailing byte.
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "{w:?} cut at {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(WireError::Trailing));
    }
}

#[test]
fn a_replica_tag_is_the_start_of_the_names_sha256() {
    // `printf cl-web-0 | sha256sum`: f7b20f41a331a3ef…
    assert_eq!(replica_tag("cl-web-0"), [0xf7, 0xb2, 0x0f, 0x41, 0xa3, 0x31, 0xa3, 0xef]);
    assert_ne!(replica_tag("cl-web-1"), replica_tag("cl-web-0"));
}

#[test]
fn inconsistent_envelopes_are_refused() {
    // Sender not the message's sender.
    let mut e = append(2);
    e.from = 3;
    assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::Inconsistent));
    // A grant on a reply.
    let h = MessageHeader { from: NodeId::new(1), term: Term::new(9), seqno: MessageSeqNo::new(3) };
    let e = Envelope { from: 1, to: 2, message: Message::AppendEntriesReply { header: h, last_position: pos(9, 41) }, commands: vec![], grant: true, applied: 12, snapshot: None, pre_vote: false };
    assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::Inconsistent));
    // A command missing, or at the wrong position.
    let mut e = append(3);
    e.commands.pop();
    assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::CommandMismatch));
    let mut e = append(3);
    e.commands[1].0 = pos(2, 100);
    assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::CommandMismatch));
    // Commands on a vote.
    let e = Envelope { from: 1, to: 2, message: Message::RequestVoteReply { header: h, vote_granted: true }, commands: vec![(pos(1, 1), Command::RemoveWorkload("x".to_string()))], grant: false, applied: 0, snapshot: None, pre_vote: false };
    assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::CommandMismatch));
    // A term entry newer than the message's term, or going back.
    let mut entries = LogEntries::new(pos(3, 4));
    entries.push(LogEntry::Term(Term::new(2)));
    let hh = MessageHeader { from: NodeId::new(2), term: Term::new(5), seqno: MessageSeqNo::new(1) };
    let e = Envelope { from: 2, to: 1, message: Message::AppendEntriesCall { header: hh, commit_index: LogIndex::new(0), entries }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false };
    assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::BadEntries));
    let mut entries = LogEntries::new(pos(3, 4));
    entries.push(LogEntry::Term(Term::new(6)));
    let e = Envelope { from: 2, to: 1, message: Message::AppendEntriesCall { header: hh, commit_index: LogIndex::new(0), entries }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false };
    assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::BadEntries));
    // Numbers near overflow.
    let big = MessageHeader { from: NodeId::new(1), term: Term::new(NUMBER_MAX), seqno: MessageSeqNo::new(3) };
    let e = Envelope { from: 1, to: 2, message: Message::RequestVoteReply { header: big, vote_granted: false }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false };
    assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::OutOfRange));
}

#[test]
fn long_appends_are_cut_to_a_prefix_that_fits_a_datagram() {
    let e = append(60);
    assert!(encode(&Wire::Raft(e.clone())).len() > DATAGRAM_MAX);
    let b = encode_within(&e, DATAGRAM_MAX).expect("a prefix fits");
    assert!(b.len() <= DATAGRAM_MAX);
    let Ok(Wire::Raft(cut)) = decode(&b) else { panic!("decodes") };
    let (Message::AppendEntriesCall { entries: full, .. }, Message::AppendEntriesCall { entries: part, .. }) = (&e.message, &cut.message) else { panic!() };
    assert!(part.len() >= 3 && part.len() < full.len(), "{} of {}", part.len(), full.len());
    assert_eq!(part.prev_position(), full.prev_position());
    assert_eq!(cut.commands[..], e.commands[..cut.commands.len()]);
    // One more entry would not have fitted.
    let mut more = full.clone();
    more.truncate(part.len() + 1);
    let last = more.last_position().index;
    let bigger = Envelope {
        message: Message::AppendEntriesCall { header: MessageHeader { from: NodeId::new(2), term: Term::new(2), seqno: MessageSeqNo::new(77) }, commit_index: LogIndex::new(5), entries: more },
        commands: e.commands.iter().filter(|(p, _)| p.index <= last).cloned().collect(),
        ..e.clone()
    };
    assert!(encode(&Wire::Raft(bigger)).len() > DATAGRAM_MAX);
}

#[test]
fn oversized_commands_are_refused_before_proposing() {
    let mut s = spec("big");
    assert!(command_fits(&Command::PutWorkload(s.clone())));
    s.args = vec!["x".repeat(1400)];
    assert!(!command_fits(&Command::PutWorkload(s.clone())));
    s.args = vec!["y".repeat(STRING_MAX + 1)];
    assert!(!command_fits(&Command::PutWorkload(s)));
}

/// Three replicas that talk only through the codec elect a leader and commit; every
/// envelope decodes to itself.
#[test]
fn replicas_commit_over_the_codec() {
    use crate::replica::{Replica, ReplicaConfig};
    use core::time::Duration;
    let ids = [0u64, 1, 2];
    let mut rs: Vec<Replica> = ids
        .iter()
        .map(|&i| if i == 0 { Replica::bootstrap(i, &ids, ReplicaConfig::default(), 3, Duration::ZERO) } else { Replica::join(i, ReplicaConfig::default(), 3, Duration::ZERO) })
        .collect();
    let mut seen = 0;
    let mut proposed = false;
    for ms in 0..5_000u64 {
        let now = Duration::from_millis(ms);
        for r in rs.iter_mut() {
            r.tick(now);
        }
        let mut out = Vec::new();
        for r in rs.iter_mut() {
            out.extend(r.take_outgoing());
        }
        for e in out {
            let b = encode_within(&e, DATAGRAM_MAX).expect("fits");
            let Ok(Wire::Raft(d)) = decode(&b) else { panic!("decodes") };
            assert_eq!(d, e);
            seen += 1;
            rs[d.to as usize].handle(now, d);
        }
        if !proposed {
            if let Some(l) = rs.iter_mut().find(|r| r.is_leader()) {
                for c in every_command() {
                    l.propose(now, c).unwrap();
                }
                proposed = true;
            }
        }
    }
    assert!(proposed && seen > 100, "{seen} envelopes");
    for r in &rs {
        assert_eq!(r.applied().len(), every_command().len());
        assert_eq!(r.state(), rs[0].state());
    }
}

/// Random, bit-flipped and truncated datagrams: an error or a message, never a panic; a
/// decoded message encodes back to the same bytes.
#[test]
fn hostile_datagrams_never_panic() {
    let mut seed = 0x5eed_u64;
    let mut rnd = move || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let base: Vec<Vec<u8>> = vec![encode(&Wire::Raft(append(8))), encode(&Wire::Propose { request: 1, command: Command::PutWorkload(spec("w")) })];
    let mut ok = 0;
    for i in 0..40_000 {
        let mut b = base[i % base.len()].clone();
        match rnd() % 4 {
            0 => {
                for _ in 0..1 + rnd() % 4 {
                    let at = (rnd() as usize) % b.len();
                    b[at] ^= 1 << (rnd() % 8);
                }
            }
            1 => b.truncate((rnd() as usize) % b.len()),
            2 => {
                let at = (rnd() as usize) % b.len();
                b[at] = rnd() as u8;
                let next = (at + 1).min(b.len() - 1);
                b[next] = 0xff;
            }
            _ => {
                b = (0..rnd() % 200).map(|_| rnd() as u8).collect();
                if b.len() > 2 && rnd() % 2 == 0 {
                    b[0] = MAGIC;
                    b[1] = 1 + (rnd() % 4) as u8;
                }
            }
        }
        if let Ok(w) = decode(&b) {
            assert_eq!(encode(&w), b, "re-encoding differs");
            ok += 1;
        }
    }
    assert!(ok > 0, "some mutations still decode");
}
