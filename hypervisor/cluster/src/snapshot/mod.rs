//! Raft snapshots over the fabric: the snapshot's bytes, and the chunked InstallSnapshot
//! transfer (Raft §7) that carries them in datagrams of at most
//! [`crate::raft_codec::DATAGRAM_MAX`] bytes (docs/orchestration.md, "Snapshots over the
//! fabric").
//!
//! **The snapshot's bytes** ([`encode_snapshot`], [`decode_snapshot`]): one deterministic
//! encoding of a [`Snapshot`](crate::replica::Snapshot) (the same state always gives the same bytes; maps in key order,
//! little-endian, the layout of `raft_codec` for workload specs):
//!
//! ```text
//! u8  version (1)
//! u64 position term, u64 position index                 each < 2^62
//! ids voters, ids new_voters, ids non_voters            u16 count ≤ 64, then strictly increasing u64 ids
//! u64 applied                                            the state's applied-command count
//! u32 n, n × spec                                        workloads by name, names strictly increasing
//! u32 n, n × key[32]                                     nodes, strictly increasing
//! u32 n, n × key[32]                                     node_order (admission order), no key twice
//! u32 n, n × key[32]                                     drained, strictly increasing
//! u32 n, n × (key[32], u8 role 1 admin | 2 viewer)       operators, keys strictly increasing
//! u32 n, n × (str workload, u32 replica, key[32] node)   assignments, (workload, replica) strictly increasing
//! u32 n, n × (str workload, u32 replica, key[32] host, u64 at)  releases, likewise
//! u32 n, n × (key[32], u16 m, m × (str label, u8 0 removed | 1 set, [str value]))
//!                                                        label changes per node, node keys and
//!                                                        label keys strictly increasing
//! ```
//!
//! The encoder names every field of [`DesiredState`](crate::desired::DesiredState) (a destructuring), so a field added to
//! the state does not compile until the snapshot carries it.
//!
//! Decoding refuses a count past its bound or past what the bytes left could hold (before
//! allocating), keys out of order or repeated, trailing bytes, and a state outside the
//! receiver's [`Limits`](crate::desired::Limits) ([`DesiredState::within`](crate::desired::DesiredState::within)); so `decode(encode(s)) == s` and a decoded
//! snapshot re-encodes to the same bytes.
//!
//! **The transfer.** The leader's snapshot is sent in chunks of [`CHUNK_LEN`] bytes
//! ([`SnapChunk`], `raft_codec` kind 8). Every chunk carries the whole header: sender and
//! receiver ids, the leader's number for the transfer, the leader's term, commit index and applied count (the empty AppendEntries
//! call the follower handles once it installed the snapshot, as [`Envelope::snapshot`](crate::replica::Envelope::snapshot)), the
//! last included position (index and term), the snapshot's total length (at most
//! [`SNAPSHOT_MAX`]), the SHA-256 of the whole snapshot, the chunk's offset (a multiple of
//! [`CHUNK_LEN`]), a done flag (the last chunk) and the data (exactly `min(CHUNK_LEN, total -
//! offset)` bytes). The follower answers every chunk with a [`SnapAck`] (kind 9): the number of
//! bytes it holds without a gap from the start (`next`; `total` once it assembled and installed
//! the snapshot, or already had). The leader ([`SnapshotSender`]) keeps at most [`WINDOW`]
//! chunks beyond the acknowledged offset in flight; each acknowledgement moves the window on,
//! and the replica's own re-send of the snapshot (at most one per peer per `election_min`,
//! [`crate::replica::Replica`]) is the retransmission timer: it resumes from where the latest
//! acknowledgement said the follower is (not from zero; and below the acknowledged offset if
//! the follower restarted and lost what it held).
//!
//! The follower ([`SnapshotReceiver`]) assembles one snapshot at a time into a buffer of the
//! announced length (at most [`SNAPSHOT_MAX`]), keeps chunks that arrive out of order, ignores
//! duplicates, chunks of a term older than its own or than the assembly's, and chunks of an
//! older snapshot than the one it assembles; a chunk of a newer term or a later snapshot
//! replaces the assembly. Once every chunk is there it checks the digest and decodes the bytes
//! (length, order, limits), and only then hands the replica the snapshot with its
//! AppendEntries call (which installs it atomically: state, applied index and log at once). A
//! snapshot that fails either check is dropped whole and counted ([`SnapshotReceiver::refused`]).
//!
//! The code: `encoding.rs` holds the snapshot's bytes; `transfer.rs` the chunks and
//! acknowledgements (their wire form, `raft_codec` kinds 8 and 9) and both sides of the transfer.

mod encoding;
#[cfg(test)]
mod fixtures;
mod transfer;

pub use encoding::{decode_snapshot, digest_parts, encode_snapshot, snapshot_digest};
pub use transfer::{SnapAck, SnapChunk, SnapHead, SnapshotReceiver, SnapshotSender, CHUNK_LEN, WINDOW};

/// The largest snapshot (encoded bytes) sent or assembled. `orchd` has a 4 MiB heap; its
/// write budget keeps the state's heap below this ([`crate::orch::NODE_WRITE_BUDGET`]), and
/// the encoding is smaller than the heap it describes (tested).
pub const SNAPSHOT_MAX: usize = 1 << 20;
