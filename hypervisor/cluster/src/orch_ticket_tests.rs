//! A write's ticket ([`Orch::ticket`]) says `Failed` only when the write did not happen: no
//! answer in time, or an outcome compacted away before the node saw it, is `Unconfirmed`
//! (apid: 503 "check before retrying", not 409 `write_not_applied`); and tickets nobody asks
//! about do not pile up.
use super::*;

/// A leader takes a put but hears no follower for longer than the submit timeout (their
/// answers are lost; they still hear it): its ticket says `Unconfirmed`, not `Failed`, and once
/// the answers get through the put is applied on every node (a `Failed` would have been a lie).
#[test]
fn a_write_not_confirmed_in_time_is_unconfirmed_not_failed() {
    for seed in 0..3 {
        let mut net = formed(200 + seed);
        let l = net.leader().unwrap();
        for f in (0..3).filter(|f| *f != l) {
            net.one_way.push((f, l));
        }
        let sent = net.now;
        let t = net.nodes[l].as_mut().unwrap().submit(sent, Command::PutWorkload(spec("late", 1))).unwrap();
        let mut answer = TicketStatus::Pending;
        while answer == TicketStatus::Pending && net.now < sent + Duration::from_secs(20) {
            net.step();
            let now = net.now;
            answer = net.nodes[l].as_mut().unwrap().ticket(now, t);
        }
        assert_eq!(answer, TicketStatus::Unconfirmed, "seed {seed}: the leader's answer with no follower heard");
        assert!(net.now >= sent + net.cfg.submit_timeout, "seed {seed}: answered before the timeout");
        // asked once: the ticket is gone
        let now = net.now;
        assert_eq!(net.nodes[l].as_mut().unwrap().ticket(now, t), TicketStatus::Unknown, "seed {seed}");
        net.one_way.clear();
        assert!(
            net.run_until(20_000, |n| n.nodes.iter().all(|o| o.as_ref().unwrap().state().is_some_and(|s| s.workloads.contains_key("late")))),
            "seed {seed}: the put never applied"
        );
    }
}

/// A follower forwards a put and is cut off once the leader told it the entry's position,
/// before it learnt the commit; the leader commits it and compacts its log past it; healed,
/// the follower catches up by a snapshot. Its ticket then says `Unconfirmed` at once (the
/// snapshot does not say whether the state refused the entry), not `Pending` until the
/// timeout and never `Failed`.
#[test]
fn a_write_compacted_before_its_node_applied_it_is_unconfirmed_at_once() {
    let mut cfg = OrchConfig::default();
    cfg.replica.snapshot_every = 4;
    cfg.replica.snapshot_margin = 0;
    let mut exercised = 0;
    for seed in 0..12 {
        let mut net = Net::with_config(3, 300 + seed, cfg.clone());
        assert!(net.run_until(10_000, |n| n.leader().is_some()), "seed {seed}: no leader");
        let l = net.leader().unwrap();
        let f = (l + 1) % 3;
        // until the follower knows the leader
        assert!(net.run_until(5_000, |n| n.nodes[f].as_ref().unwrap().replica().is_some_and(|r| r.leader().is_some())), "seed {seed}: no leader known");
        let sent = net.now;
        let t = net.nodes[f].as_mut().unwrap().submit(sent, Command::PutWorkload(spec("fwd", 1))).unwrap();
        let at = loop {
            net.step();
            if let Some(p) = net.nodes[f].as_ref().unwrap().tickets.get(t).and_then(|tk| tk.at) {
                break p;
            }
            assert!(net.now < sent + Duration::from_secs(2), "seed {seed}: the leader never answered the forward");
        };
        let follower = |net: &Net| net.nodes[f].as_ref().unwrap().replica().unwrap().commit_index();
        if follower(&net) >= at.index.get() {
            continue; // the commit reached it with the answer: nothing to test with this seed
        }
        for o in (0..3).filter(|o| *o != f) {
            net.cut.push((f, o));
        }
        for i in 0..8 {
            net.submit_via(l, Command::PutWorkload(spec(&alloc::format!("more{i}"), 1)));
        }
        let start = net.nodes[l].as_ref().unwrap().replica().unwrap().log().entries().prev_position().index;
        assert!(start > at.index, "seed {seed}: the leader did not compact past the entry");
        net.cut.clear();
        let mut answer = TicketStatus::Pending;
        while answer == TicketStatus::Pending && net.now < sent + Duration::from_secs(20) {
            net.step();
            let now = net.now;
            answer = net.nodes[f].as_mut().unwrap().ticket(now, t);
        }
        assert!(net.nodes[f].as_ref().unwrap().replica().unwrap().snapshots_installed() > 0, "seed {seed}: the follower caught up without a snapshot");
        assert_eq!(answer, TicketStatus::Unconfirmed, "seed {seed}: the follower's answer");
        assert!(net.now < sent + net.cfg.submit_timeout, "seed {seed}: answered only at the timeout ({:?} after the submit)", net.now - sent);
        assert!(net.nodes[l].as_ref().unwrap().state().unwrap().workloads.contains_key("fwd"), "seed {seed}: the put did not apply");
        exercised += 1;
    }
    assert!(exercised >= 3, "only {exercised} seeds cut the follower off before it learnt the commit");
}

/// Tickets whose caller never asks again (apid gave up or died) are dropped after
/// [`TICKET_KEPT_FOR`] submit timeouts: a node that issued [`TICKETS_MAX`] of them still
/// takes writes.
#[test]
fn abandoned_tickets_do_not_block_writes_for_good() {
    let mut net = formed(400);
    let l = net.leader().unwrap();
    for i in 0..TICKETS_MAX {
        let now = net.now;
        net.nodes[l].as_mut().unwrap().submit(now, Command::PutWorkload(spec(&alloc::format!("a{i}"), 1))).unwrap();
        net.step();
    }
    let now = net.now;
    assert_eq!(net.nodes[l].as_mut().unwrap().submit(now, Command::PutWorkload(spec("b", 1))), Err(SubmitError::Unavailable), "more than TICKETS_MAX waiting");
    net.run_for((net.cfg.submit_timeout * TICKET_KEPT_FOR).as_millis() as u64 + 100);
    assert_eq!(net.write_via(l, Command::PutWorkload(spec("b", 1))), TicketStatus::Committed(Some(crate::put_change::PutChange::Created)));
}

/// A forwarded write's `Proposed` answer counts only from the member it was forwarded to, and
/// only once: another member's `Proposed` for the same ticket number (a spoof, or the answer to
/// an earlier `orchd` run's write with that number) neither fails it nor moves it, and a second
/// answer from the leader (a refusal after the position) changes nothing.
#[test]
fn a_proposed_answer_counts_only_from_the_leader_it_was_forwarded_to() {
    for seed in 0..3 {
        let mut net = formed(500 + seed);
        let l = net.leader().unwrap();
        let (f, other) = ((l + 1) % 3, (l + 2) % 3);
        let now = net.now;
        let t = net.nodes[f].as_mut().unwrap().submit(now, Command::PutWorkload(spec("fwd", 1))).unwrap();
        let refusal = encode(&Wire::Proposed { request: t, term: PROPOSED_FULL, index: 0 });
        let elsewhere = encode(&Wire::Proposed { request: t, term: 1, index: 999 });
        net.nodes[f].as_mut().unwrap().handle(now, other, &elsewhere);
        assert!(net.nodes[f].as_ref().unwrap().tickets.get(t).unwrap().at.is_none(), "seed {seed}: another member's position counted");
        net.nodes[f].as_mut().unwrap().handle(now, other, &refusal);
        assert_eq!(net.nodes[f].as_mut().unwrap().ticket(now, t), TicketStatus::Pending, "seed {seed}: another member's refusal counted");
        // the leader's answer, then a second one from it
        while net.nodes[f].as_ref().unwrap().tickets.get(t).and_then(|tk| tk.at).is_none() {
            assert!(net.now < now + Duration::from_secs(2), "seed {seed}: the leader never answered");
            net.step();
        }
        let at = net.now;
        net.nodes[f].as_mut().unwrap().handle(at, l, &refusal);
        let mut answer = TicketStatus::Pending;
        while answer == TicketStatus::Pending && net.now < now + Duration::from_secs(5) {
            net.step();
            let now = net.now;
            answer = net.nodes[f].as_mut().unwrap().ticket(now, t);
        }
        assert_eq!(answer, TicketStatus::Committed(Some(crate::put_change::PutChange::Created)), "seed {seed}");
    }
}

/// A restarted `orchd` does not reuse the ticket numbers its previous run had in flight: the
/// leader's late `Proposed` refusal of the old run's write (sent again before each of the new
/// run's first writes) leaves every new write alone.
#[test]
fn a_restarted_orchd_does_not_take_its_previous_runs_answers() {
    for seed in 0..3 {
        let mut net = formed(600 + seed);
        let l = net.leader().unwrap();
        let f = (l + 1) % 3;
        let now = net.now;
        let old = net.nodes[f].as_mut().unwrap().submit(now, Command::PutWorkload(spec("old", 1))).unwrap();
        net.kill_orchd(f);
        net.restart(f);
        assert!(net.run_until(10_000, |n| n.nodes[f].as_ref().unwrap().replica().is_some_and(|r| r.leader().is_some())), "seed {seed}: the new orchd found no leader");
        for i in 0..8 {
            let l = net.leader().unwrap();
            let now = net.now;
            let new = net.nodes[f].as_mut().unwrap().submit(now, Command::PutWorkload(spec(&alloc::format!("new{i}"), 1))).unwrap();
            // the answer to the old run's write, arriving late
            net.nodes[f].as_mut().unwrap().handle(now, l, &encode(&Wire::Proposed { request: old, term: PROPOSED_FULL, index: 0 }));
            let mut answer = TicketStatus::Pending;
            while answer == TicketStatus::Pending && net.now < now + Duration::from_secs(5) {
                net.step();
                let now = net.now;
                answer = net.nodes[f].as_mut().unwrap().ticket(now, new);
            }
            assert_eq!(answer, TicketStatus::Committed(Some(crate::put_change::PutChange::Created)), "seed {seed}: write {i} (ticket {new}; the old run's was {old})");
        }
    }
}
