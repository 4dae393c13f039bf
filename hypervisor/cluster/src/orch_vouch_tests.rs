//! Vouching for a pulled state (crate::replica's `vouch` module; docs/orchestration.md "A
//! pulled state is vouched for"), on `Orch` nodes over the in-process network of
//! `orch_tests`.
use alloc::vec;

use raftbare::{LogEntries, LogIndex, LogPosition, Message, MessageHeader, MessageSeqNo, NodeId, Term};

use super::*;
use crate::replica::{Snapshot, Verdict};
use crate::snapshot::{snapshot_digest, SnapshotSender};

/// Node `at`'s committed state as a snapshot at its applied position.
fn applied_snapshot(net: &Net, at: usize) -> Snapshot {
    let r = net.nodes[at].as_ref().unwrap().replica().unwrap();
    let (position, config) = r.log().get_position_and_config(LogIndex::new(r.applied_index())).unwrap();
    Snapshot { position, config: config.clone(), state: r.state().clone() }
}

/// Deliver `snap` to node `to` as member `from`'s answer to its pull: the chunks marked pulled
/// that `from`'s `orchd` would send.
fn inject_pulled(net: &mut Net, from: usize, to: usize, snap: Snapshot) {
    let now = net.now;
    let from_id = net.nodes[from].as_ref().unwrap().replica().unwrap().id();
    let to_id = net.nodes[to].as_ref().unwrap().replica().unwrap().id();
    let at = snap.position;
    let message = Message::AppendEntriesCall {
        header: MessageHeader { from: NodeId::new(from_id), term: at.term, seqno: MessageSeqNo::new(0) },
        commit_index: at.index,
        entries: LogEntries::new(at),
    };
    let env = Envelope { from: from_id, to: to_id, message, commands: vec![], grant: false, applied: 0, snapshot: Some(snap), pre_vote: false };
    let chunks = SnapshotSender::default().pulled_datagrams(env, 0, now);
    assert!(!chunks.is_empty());
    for b in chunks {
        net.nodes[to].as_mut().unwrap().handle(now, from, &b);
    }
}

/// A member that a restarted (diskless) node hears, answering a pull, is not enough on its
/// own: node N, restarted without storage and cut from the leader L (so it catches up only by
/// pulling), gets a state of L's name forged (a workload `evil` added) that only L's word
/// backs, once far ahead of the cluster's log and once at the position the cluster committed.
/// B, the member N hears, answers `Behind` to the first and `Differs` to the second: neither
/// is installed (N's state never holds `evil`), and N then installs B's real state.
#[test]
fn a_forged_pulled_state_is_not_installed() {
    for (seed, far) in [(0u64, true), (1, false), (2, true), (3, false)] {
        let mut net = formed(140 + seed);
        let l = net.leader().unwrap();
        let (b, n) = ((l + 1) % 3, (l + 2) % 3);
        net.kill(n);
        net.cut.push((l, n));
        net.restart(n);
        assert!(net.run_until(5_000, |x| x.nodes[n].as_ref().and_then(|o| o.replica()).is_some()), "seed {seed}: {n} did not start");
        let mut forged = applied_snapshot(&net, l);
        forged.state.workloads.insert("evil".to_string(), spec("evil", 1));
        if far {
            forged.position = LogPosition { term: forged.position.term, index: LogIndex::new(forged.position.index.get() + 500) };
        }
        inject_pulled(&mut net, l, n, forged);
        assert!(net.nodes[n].as_ref().unwrap().replica().unwrap().pending_pull().is_some(), "seed {seed}: the forged state is not pending");
        for _ in 0..150 {
            net.run_for(100);
            let o = net.nodes[n].as_ref().unwrap();
            assert!(!o.state().is_some_and(|s| s.workloads.contains_key("evil")), "seed {seed} (far {far}): the forged state was installed at {:?}", net.now);
        }
        let o = net.nodes[n].as_ref().unwrap();
        let r = o.replica().unwrap();
        assert_eq!(o.state().map(|s| s.workloads.len()), Some(2), "seed {seed}: {n} did not install the real state (pending {:?}, expired {}, contradicted {}, installed {})", r.pending_pull(), r.pulls_expired, r.pulls_contradicted, r.pulls_installed());
        assert!(o.counters.pulls_installed >= 1, "seed {seed}: {n} caught up without a pull");
        if far {
            assert!(r.pulls_expired >= 1, "seed {seed}: the forged state far ahead was not dropped on expiry");
        } else {
            assert!(r.pulls_contradicted >= 1, "seed {seed}: the forged state at the committed position was not contradicted");
        }
        // B, the member N hears, was asked and answered
        assert!(net.nodes[b].as_ref().unwrap().replica().unwrap().vouches_answered >= 1, "seed {seed}: {b} was not asked to vouch");
    }
}

/// What a member answers a vouch request: `Same` for its committed state at a position it
/// applied earlier (replayed from its log: five entries were applied after it), `Differs` for
/// another state or another term at that position, `Behind` for a position it has not applied.
#[test]
fn a_member_vouches_only_for_its_own_committed_state() {
    for seed in 0..3u64 {
        let mut net = formed(150 + seed);
        let l = net.leader().unwrap();
        let (b, n) = ((l + 1) % 3, (l + 2) % 3);
        let then = applied_snapshot(&net, b);
        let at = then.position;
        let digest = snapshot_digest(&then);
        for i in 0..5 {
            net.submit_via(l, Command::PutWorkload(spec(&alloc::format!("w{i}"), 1)));
        }
        assert!(net.run_until(10_000, |x| x.nodes[b].as_ref().unwrap().replica().unwrap().commit_index() >= at.index.get() + 5), "seed {seed}: the writes did not commit at {b}");
        let mut tampered = then.clone();
        tampered.state.workloads.remove("db");
        let other_term = LogPosition { term: Term::new(at.term.get() + 1), index: at.index };
        let ahead = LogPosition { term: at.term, index: LogIndex::new(at.index.get() + 1000) };
        let asks = [(at, digest, Verdict::Same), (at, snapshot_digest(&tampered), Verdict::Differs), (other_term, digest, Verdict::Differs), (ahead, digest, Verdict::Behind)];
        for (position, digest, want) in asks {
            // a request per election_min / 2 from one member is answered
            net.run_for(300);
            let now = net.now;
            let asker = net.nodes[n].as_ref().unwrap().replica().unwrap().id();
            let bid = net.nodes[b].as_ref().unwrap().replica().unwrap().id();
            let o = net.nodes[b].as_mut().unwrap();
            o.take_outgoing();
            o.handle(now, n, &encode(&Wire::Vouch { from: asker, to: bid, position, digest }));
            let got: Vec<Verdict> = o
                .take_outgoing()
                .into_iter()
                .filter(|(to, _)| *to == n)
                .filter_map(|(_, bytes)| match decode(&bytes) {
                    Ok(Wire::Vouched { verdict, position: p, digest: d, .. }) if p == position && d == digest => Some(verdict),
                    _ => None,
                })
                .collect();
            assert_eq!(got, vec![want], "seed {seed}: {position:?}");
        }
    }
}

/// With five members one member's word is not enough (quorum (1) of the rule): node N,
/// restarted without storage, hears only member K; a state in K's name with `evil` added (far
/// ahead, so no member could contradict it anyway) arrives, and K's own honest answers to N's
/// pulls too. N and K are two of five: nothing is installed while N hears only K. Healed, N
/// catches up (from the leader or by a pull vouched for by the others) and never held `evil`.
#[test]
fn with_five_members_one_members_word_is_not_enough() {
    for seed in 0..3u64 {
        let mut net = Net::new(5, 160 + seed);
        assert!(net.run_until(15_000, |x| x.leader().is_some() && x.nodes.iter().flatten().all(|o| o.state().is_some_and(|s| s.nodes.len() == 5))), "seed {seed}: not formed");
        let l = net.leader().unwrap();
        net.submit_via(l, Command::PutWorkload(spec("web", 2)));
        assert!(net.run_until(10_000, |x| x.nodes.iter().flatten().all(|o| o.state().is_some_and(|s| s.workloads.len() == 1))), "seed {seed}: web not committed everywhere");
        let (k, n) = ((l + 1) % 5, (l + 2) % 5);
        net.kill(n);
        for other in (0..5).filter(|o| *o != n && *o != k) {
            net.cut.push((other, n));
        }
        net.restart(n);
        assert!(net.run_until(5_000, |x| x.nodes[n].as_ref().and_then(|o| o.replica()).is_some()), "seed {seed}: {n} did not start");
        let mut forged = applied_snapshot(&net, k);
        forged.state.workloads.insert("evil".to_string(), spec("evil", 1));
        forged.position = LogPosition { term: forged.position.term, index: LogIndex::new(forged.position.index.get() + 500) };
        inject_pulled(&mut net, k, n, forged);
        for _ in 0..100 {
            net.run_for(100);
            let o = net.nodes[n].as_ref().unwrap();
            assert!(!o.state().is_some_and(|s| s.workloads.contains_key("evil")), "seed {seed}: the forged state was installed at {:?}", net.now);
            assert_eq!(o.counters.pulls_installed, 0, "seed {seed}: a state only K vouched for was installed at {:?}", net.now);
        }
        net.cut.clear();
        let caught_up = net.run_until(15_000, |x| x.nodes[n].as_ref().and_then(|o| o.state()).is_some_and(|s| s.workloads.len() == 1 && s.workloads.contains_key("web")));
        assert!(caught_up, "seed {seed}: {n} did not catch up once healed");
        let o = net.nodes[n].as_ref().unwrap();
        assert!(!o.state().is_some_and(|s| s.workloads.contains_key("evil")), "seed {seed}: the forged state was installed");
    }
}

/// A pulled state that was dropped (here a member said its state differs) can come again: the
/// node's snapshot receiver forgets the pulled transfer it assembled when the replica did not
/// install it, so the same member's same answer (a quiet cluster: nothing moved) is assembled
/// again and installed (review of session 17, finding 2).
#[test]
fn a_dropped_pulled_state_is_pulled_again() {
    for seed in 0..3u64 {
        let mut net = formed(170 + seed);
        let l = net.leader().unwrap();
        let n = (l + 2) % 3;
        net.kill(n);
        net.cut.push((l, n));
        // quiet: N's replicas placed elsewhere and nothing more to commit, so a member's
        // answer after the drop is the same state as before it
        let b = (l + 1) % 3;
        let mut last = (0, net.now);
        let quiet = net.run_until(30_000, |x| {
            let c = x.nodes[b].as_ref().unwrap().replica().unwrap().applied_index();
            if c != last.0 {
                last = (c, x.now);
            }
            x.now.saturating_sub(last.1) > Duration::from_secs(5)
        });
        assert!(quiet, "seed {seed}: the cluster did not go quiet");
        net.restart(n);
        let pending = net.run_until(15_000, |x| x.nodes[n].as_ref().and_then(|o| o.replica()).is_some_and(|r| r.pending_pull().is_some()));
        assert!(pending, "seed {seed}: {n} never had a pulled state pending");
        let (position, digest, _) = net.nodes[n].as_ref().unwrap().replica().unwrap().pending_pull().unwrap();
        let (lid, nid) = (net.nodes[l].as_ref().unwrap().replica().unwrap().id(), net.nodes[n].as_ref().unwrap().replica().unwrap().id());
        let now = net.now;
        net.nodes[n].as_mut().unwrap().handle(now, l, &encode(&Wire::Vouched { from: lid, to: nid, position, digest, verdict: Verdict::Differs, applied: position.index.get() }));
        let r = net.nodes[n].as_ref().unwrap().replica().unwrap();
        assert!(r.pending_pull().is_none() && r.pulls_contradicted == 1, "seed {seed}: the contradicted state is still pending");
        assert_eq!(r.pulls_installed(), 0);
        let again = net.run_until(15_000, |x| x.nodes[n].as_ref().is_some_and(|o| o.counters.pulls_installed >= 1 && o.state().is_some_and(|s| s.workloads.len() == 2)));
        assert!(again, "seed {seed}: the dropped state was not pulled and installed again");
        // the same state as the one dropped (nothing moved meanwhile)
        let r = net.nodes[n].as_ref().unwrap().replica().unwrap();
        assert_eq!(r.applied_index(), position.index.get(), "seed {seed}: the cluster moved on: not the same state");
    }
}

/// A member answers vouch requests at most once per asking member per `election_min / 2`,
/// whatever generation bits the asker's id carries (each answer may replay the log and hash the
/// state): two requests at once, the second in another generation's name, get one answer; one
/// 300 ms later gets another.
#[test]
fn vouch_requests_are_answered_once_per_member_per_window() {
    let mut net = formed(180);
    let l = net.leader().unwrap();
    let (b, n) = ((l + 1) % 3, (l + 2) % 3);
    let snap = applied_snapshot(&net, b);
    let (position, digest) = (snap.position, snapshot_digest(&snap));
    let bid = net.nodes[b].as_ref().unwrap().replica().unwrap().id();
    let asker = net.nodes[n].as_ref().unwrap().replica().unwrap().id();
    let answers = |net: &mut Net, ids: &[u64]| {
        let now = net.now;
        let o = net.nodes[b].as_mut().unwrap();
        o.take_outgoing();
        for id in ids {
            o.handle(now, n, &encode(&Wire::Vouch { from: *id, to: bid, position, digest }));
        }
        o.take_outgoing().into_iter().filter(|(to, bytes)| *to == n && matches!(decode(bytes), Ok(Wire::Vouched { .. }))).count()
    };
    assert_eq!(answers(&mut net, &[asker, asker | 7 << 16]), 1);
    net.run_for(300);
    assert_eq!(answers(&mut net, &[asker | 3 << 16]), 1);
}

/// The replay behind `Same` goes through a `RemoveNode` as `apply_committed` does: a follower
/// asked about its applied position just after a member's removal, three commits later,
/// answers `Same`. (Broken once, the replay skipping removals: `Differs`. Its quorum guard's
/// voters, `voters_with` on the replayed state, give the same answer as without voters here,
/// so this does not check them.)
#[test]
fn a_vouch_replays_a_removal_as_it_was_applied() {
    for seed in 0..3u64 {
        let mut net = formed(190 + seed);
        let l = net.leader().unwrap();
        let (b, k, n) = ((l + 1) % 3, (l + 2) % 3, l);
        net.submit_via(l, Command::RemoveNode(net.keys[k]));
        let key = net.keys[k];
        assert!(net.run_until(10_000, |x| x.nodes[b].as_ref().and_then(|o| o.state()).is_some_and(|s| !s.nodes.contains(&key))), "seed {seed}: {b} did not apply the removal");
        let then = applied_snapshot(&net, b);
        let base = net.nodes[b].as_ref().unwrap().replica().unwrap().log().snapshot_position().index.get();
        assert!(base < then.position.index.get(), "seed {seed}: compacted past the removal");
        for i in 0..3 {
            net.submit_via(l, Command::PutWorkload(spec(&alloc::format!("after{i}"), 1)));
        }
        let at = then.position.index.get();
        assert!(net.run_until(10_000, |x| x.nodes[b].as_ref().unwrap().replica().unwrap().applied_index() >= at + 3), "seed {seed}: the writes did not apply at {b}");
        let now = net.now;
        let (asker, bid) = (net.nodes[n].as_ref().unwrap().replica().unwrap().id(), net.nodes[b].as_ref().unwrap().replica().unwrap().id());
        let o = net.nodes[b].as_mut().unwrap();
        o.take_outgoing();
        o.handle(now, n, &encode(&Wire::Vouch { from: asker, to: bid, position: then.position, digest: snapshot_digest(&then) }));
        let got: Vec<Verdict> = o.take_outgoing().into_iter().filter_map(|(_, bytes)| match decode(&bytes) {
            Ok(Wire::Vouched { verdict, .. }) => Some(verdict),
            _ => None,
        }).collect();
        assert_eq!(got, vec![Verdict::Same], "seed {seed}");
    }
}
