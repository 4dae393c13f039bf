//! Elections: the election timeout as raftbare takes it, and the pre-vote round before it.

use alloc::vec::Vec;
use core::time::Duration;

use raftbare::{Message, MessageHeader, MessageSeqNo, NodeId, Term};

use super::{Envelope, Replica};

impl Replica {
    pub(super) fn is_voter(&self) -> bool {
        let c = self.node.config();
        let me = NodeId::new(self.id);
        c.voters.contains(&me) || c.new_voters.contains(&me)
    }

    /// The election timeout as raftbare handles it: a leader's heartbeat, or a real election.
    pub(super) fn stand(&mut self, now: Duration) {
        if !self.is_leader() && self.is_voter() {
            self.elections_started += 1;
        }
        self.pre_vote = None;
        self.node.handle_election_timeout();
        self.step(now);
    }

    /// Ask every peer whether it would vote for this node in the next term.
    pub(super) fn start_pre_vote(&mut self, now: Duration) {
        self.pre_vote_rounds += 1;
        let (round, term) = (self.pre_vote_rounds, self.term() + 1);
        self.pre_vote = Some((round, term, core::iter::once(self.id).collect()));
        self.deadline = now + self.jitter();
        if self.pre_vote_won() {
            return self.stand(now);
        }
        let header = MessageHeader { from: NodeId::new(self.id), term: Term::new(term), seqno: MessageSeqNo::new(round) };
        let last_position = self.node.log().last_position();
        let peers: Vec<NodeId> = self.node.peers().collect();
        for p in peers {
            let message = Message::RequestVoteCall { header, last_position };
            self.outgoing.push(Envelope { from: self.id, to: p.get(), message, commands: Vec::new(), grant: false, applied: self.reported_applied(), snapshot: None, pre_vote: true });
        }
    }

    /// A majority of the voters (of both configurations during a change) granted the pre-vote.
    fn pre_vote_won(&self) -> bool {
        let Some((_, _, granted)) = &self.pre_vote else { return false };
        let c = self.node.config();
        let count = |set: &alloc::collections::BTreeSet<NodeId>| set.iter().filter(|v| granted.contains(&v.get())).count();
        count(&c.voters) > c.voters.len() / 2 && (c.new_voters.is_empty() || count(&c.new_voters) > c.new_voters.len() / 2)
    }

    /// A pre-vote request or reply ([`Envelope::pre_vote`]).
    pub(super) fn handle_pre_vote(&mut self, now: Duration, env: Envelope) {
        match env.message {
            Message::RequestVoteCall { header, last_position } => {
                // Granted only by a node that has not heard from a leader within the minimum
                // election timeout (so a working leader's followers refuse, and the leader
                // itself) and whose log the candidate's is at least as up to date as (§5.4.1).
                // The term is not compared: a candidate behind in term learns the term from the
                // real election's refusals, and nobody's term moves here.
                let granted = !self.is_leader()
                    && self.leader_heard.is_none_or(|t| now.saturating_sub(t) >= self.cfg.election_min)
                    && self.node.log().last_position() <= last_position;
                let header = MessageHeader { from: NodeId::new(self.id), term: header.term, seqno: header.seqno };
                let message = Message::RequestVoteReply { header, vote_granted: granted };
                self.outgoing.push(Envelope { from: self.id, to: env.from, message, commands: Vec::new(), grant: false, applied: self.reported_applied(), snapshot: None, pre_vote: true });
            }
            Message::RequestVoteReply { header, vote_granted: true } => {
                let current = self.term() + 1;
                let leader = self.is_leader();
                let Some((round, term, granted)) = &mut self.pre_vote else { return };
                if header.seqno.get() != *round || header.term.get() != *term || *term != current || leader {
                    return;
                }
                granted.insert(env.from);
                if self.pre_vote_won() {
                    self.stand(now);
                }
            }
            _ => {}
        }
    }
}
