//! Snapshot transfers as hostile bytes (`catenary_cluster::snapshot`): the input is read as a
//! snapshot's bytes (`decode_snapshot`: an error or a snapshot that re-encodes to the same
//! bytes), then as a sequence of datagrams (each a u16 length and that many bytes) fed to one
//! follower's assembler and one leader's sender in the middle of a real transfer. Nothing may
//! panic; the assembler never holds more than `SNAPSHOT_MAX` bytes; a snapshot it hands over
//! is within the limits and goes to a replica, which must not panic either.
#![no_main]
use catenary_cluster::desired::Limits;
use catenary_cluster::raft_codec::{decode, Wire};
use catenary_cluster::replica::{Envelope, Replica, ReplicaConfig, Snapshot};
use catenary_cluster::snapshot::{decode_snapshot, encode_snapshot, SnapshotReceiver, SnapshotSender, SNAPSHOT_MAX};
use core::time::Duration;
use raftbare::{ClusterConfig, LogEntries, LogIndex, LogPosition, Message, MessageHeader, MessageSeqNo, NodeId, Term};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(s) = decode_snapshot(data, &limits) {
        assert_eq!(encode_snapshot(&s), data);
        assert!(s.state.within(&limits));
    }
    // A leader in the middle of sending a small snapshot to replica 2.
    let mut tx = SnapshotSender::default();
    let snap = Snapshot { position: LogPosition { term: Term::new(1), index: LogIndex::new(3) }, config: ClusterConfig::new(), state: Default::default() };
    let message = Message::AppendEntriesCall {
        header: MessageHeader { from: NodeId::new(1), term: Term::new(2), seqno: MessageSeqNo::new(0) },
        commit_index: LogIndex::new(3),
        entries: LogEntries::new(snap.position),
    };
    let _ = tx.datagrams(Envelope { from: 1, to: 2, message, commands: Vec::new(), grant: false, applied: 0, snapshot: Some(snap), pre_vote: false });
    let mut rx = SnapshotReceiver::default();
    let mut replica = Replica::join(2, ReplicaConfig::default(), 1, Duration::ZERO);
    let mut rest = data;
    while rest.len() >= 2 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let (b, tail) = rest[2..].split_at(n);
        rest = tail;
        match decode(b) {
            Ok(Wire::SnapChunk(c)) => {
                let (_, env) = rx.on_chunk(c, replica.term(), &limits);
                assert!(rx.buffered() <= SNAPSHOT_MAX);
                if let Some(mut e) = env {
                    assert!(e.snapshot.as_ref().is_some_and(|s| s.state.within(&limits)));
                    e.to = 2;
                    replica.handle(Duration::from_millis(1), e);
                }
            }
            Ok(Wire::SnapAck(a)) => {
                for d in tx.on_ack(&a) {
                    assert!(d.len() <= catenary_cluster::raft_codec::DATAGRAM_MAX);
                }
            }
            _ => {}
        }
    }
});
