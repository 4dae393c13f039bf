//! `catenary-ipc`: the kernel's inter-process communication logic, as plain safe Rust that is
//! tested on the host. The kernel (`hypervisor/kernel/src/task.rs`) wraps it with the blocking,
//! waking and register marshalling of the syscall ABI.
//!
//! # Core types
//!
//! * [`Address`] — where a message goes: `node` is an IPv6 /128 (all-zero = this node) and
//!   `endpoint` the endpoint on that node. [`IpcSpace`] delivers locally only: a non-local node
//!   gives [`IpcError::Unreachable`]; the kernel takes that branch first and hands remote sends
//!   and calls to the node's router (`netd`), so callers do not change. A remote call is
//!   registered with [`IpcSpace::call_remote`] (callee [`REMOTE`]), a call arriving from
//!   another node is made by [`REMOTE`].
//! * [`Capability`] — an unforgeable right held in a task's [`CapTable`] slot: a target
//!   [`Address`], [`Rights`] (`SEND`, `RECV`, `GRANT`) and a `badge` the receiver sees, so a server
//!   can tell its clients apart. A task names a capability only by its slot number.
//! * [`Message`] — fixed size: a `label` plus [`MSG_WORDS`] data words, an optional memory
//!   [`Grant`] (a page-aligned range of the sender's memory lent to the receiver, for bulk data),
//!   the sender's `badge` (filled in by the kernel, never by the sender) and a `reply` token when
//!   the message is a call.
//! * [`Endpoint`] — a bounded FIFO of messages owned by one task, plus the tasks blocked
//!   receiving on it. A full queue is [`IpcError::QueueFull`] for the sender: nothing is dropped.
//!   Interrupt notifications are the one exception to queueing: they are coalesced into a
//!   pending bit set, so an interrupt storm can never fill a queue or be lost.
//! * [`IpcSpace`] — all endpoints and outstanding calls of one node. `send`/`recv`/`call`/
//!   `reply`/`task_died` return what the kernel must do (wake whom, with which result).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

pub type TaskId = u64;
pub type EndpointId = u64;

/// Data words in a message (besides the label). Chosen so a message fits the syscall registers.
pub const MSG_WORDS: usize = 4;
/// Label of an interrupt notification; `words[0]` holds the pending IRQ bits.
pub const LABEL_NOTIFY: u64 = 0xffff_ffff_ffff_0001;

/// The protocol between the ring-3 NIC driver (`nicd`) and the kernel's network task (`netd`):
/// the frame ring's layout in `nicd`'s DMA memory and the IPC labels that wake either side.
/// Page 0 holds `rx_head` (0x00, driver), `rx_tail` (0x08, kernel), `tx_head` (0x10, kernel),
/// `tx_tail` (0x18, driver), receive lengths at 0x100 + 8·slot and transmit lengths at
/// 0x200 + 8·slot; then `SLOTS` receive and `SLOTS` transmit slots of `SLOT_LEN` bytes.
/// Heads and tails count frames (slot = count % SLOTS); messages only wake, the ring is the truth.
pub mod nic_ring {
    pub const SLOTS: u64 = 16;
    pub const SLOT_LEN: u64 = 2048;
    pub const RING_PAGES: u64 = 1 + 2 * SLOTS * SLOT_LEN / 4096;
    pub const RX_HEAD: u64 = 0x00;
    pub const RX_TAIL: u64 = 0x08;
    pub const TX_HEAD: u64 = 0x10;
    pub const TX_TAIL: u64 = 0x18;
    pub const RX_LEN: u64 = 0x100;
    pub const TX_LEN: u64 = 0x200;
    pub const RX_SLOTS: u64 = 0x1000;
    pub const TX_SLOTS: u64 = 0x1000 + SLOTS * SLOT_LEN;
    /// Transmit stamps at 0x300 + 8·slot: the producer's TSC when it queued the frame (0: not
    /// stamped), so the driver can count how long frames wait for it. Figures only.
    pub const TX_STAMP: u64 = 0x300;
    /// Receive stamps at 0x380 + 8·slot: the driver's TSC when it wrote the frame.
    pub const RX_STAMP: u64 = 0x380;
    /// The driver writes 1 here before it sleeps on its endpoint (and re-checks the transmit
    /// ring after), 0 when it runs: a producer that finds 0 after publishing frames need not
    /// wake it (`LABEL_TX`), so a burst costs one wakeup. Producers may always wake it.
    pub const TX_WAITING: u64 = 0x400;
    /// The driver's counters ([`stat`]), cumulative, for the bench's per-stage breakdown.
    pub const STATS: u64 = 0x800;
    /// Indices of the driver's counters at [`STATS`] + 8·index (TSC cycles and counts).
    pub mod stat {
        /// Times the driver's loop ran (woken or polled).
        pub const LOOPS: u64 = 0;
        /// Frames from the device into the receive ring, and the cycles it took (device
        /// receive, copy, recycle).
        pub const RX_FRAMES: u64 = 1;
        pub const RX_CYCLES: u64 = 2;
        /// `LABEL_RX` wakeups sent to the stack, and their cycles (the IPC send).
        pub const RX_WAKES: u64 = 3;
        pub const RX_WAKE_CYCLES: u64 = 4;
        /// Frames from the transmit ring to the device, and the cycles (buffer, copy, the
        /// device send until the device used the buffer).
        pub const TX_FRAMES: u64 = 5;
        pub const TX_CYCLES: u64 = 6;
        /// Of `TX_CYCLES`: the device send alone (notify and wait for the used buffer).
        pub const TX_DEVICE_CYCLES: u64 = 7;
        /// Stamped transmit frames and the cycles from their stamp until the driver took them.
        pub const TX_STAMPED: u64 = 8;
        pub const TX_WAIT_CYCLES: u64 = 9;
        pub const COUNT: u64 = 10;
    }

    /// kernel → driver: [common, notify, isr, device] physical addresses.
    pub const LABEL_CONFIG: u64 = 1;
    /// kernel → driver: [notify multiplier, device config length, notify length, flags].
    pub const LABEL_CONFIG2: u64 = 2;
    /// `LABEL_CONFIG2` flag (the bench's reference, `net.nic=reference`): wait until the
    /// device has used each transmitted frame, as the driver did before it queued them.
    pub const CONFIG2_WAIT_EACH: u64 = 1;
    /// kernel → driver: frames wait in the transmit ring, or the receive ring was full and has
    /// room again.
    pub const LABEL_TX: u64 = 3;
    /// driver → kernel: [ring physical address, MAC (6 bytes, little-endian), link up, MSI-X ok].
    pub const LABEL_UP: u64 = 0x10;
    /// driver → kernel: frames wait in the receive ring.
    pub const LABEL_RX: u64 = 0x11;
    /// driver → kernel: initialisation failed ([step]).
    pub const LABEL_FAIL: u64 = 0x12;
    /// driver → ring-3 netd (before `LABEL_UP`): the ring is lent to it (`SYS_SHARE`) and
    /// mapped at [address] in its grant window.
    pub const LABEL_SHARED: u64 = 0x13;
    /// driver → netd: a new driver started and waits for `LABEL_CONFIG`.
    pub const LABEL_HELLO: u64 = 0x14;

    /// The indices in the shared ring page do not describe a ring of `SLOTS` frames: the other
    /// side misbehaves (or its memory was corrupted).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct BadIndices {
        pub head: u64,
        pub tail: u64,
    }

    /// Frames between a producer's `head` and a consumer's `tail`. Both are free-running
    /// counters the other side can write anything into, so the distance is taken with
    /// `wrapping_sub` and refused when it is more than the ring holds: a hostile value can
    /// neither overflow the arithmetic nor make the reader loop over phantom frames.
    pub fn pending(head: u64, tail: u64) -> Result<u64, BadIndices> {
        let n = head.wrapping_sub(tail);
        if n > SLOTS {
            Err(BadIndices { head, tail })
        } else {
            Ok(n)
        }
    }

    /// Free slots for the producer (`SLOTS - pending`), with the same check.
    pub fn room(head: u64, tail: u64) -> Result<u64, BadIndices> {
        pending(head, tail).map(|n| SLOTS - n)
    }

    /// The slot of frame counter `count`.
    pub fn slot(count: u64) -> u64 {
        count % SLOTS
    }

    /// A frame length read from the ring: at most one slot (None otherwise).
    pub fn frame_len(len: u64) -> Option<usize> {
        (len <= SLOT_LEN).then_some(len as usize)
    }
}

/// The frame ring between a microVM's virtio-net device (its vCPU task, in the kernel) and the
/// ring-3 `netd`, in `PAGES` pages of `netd`'s memory (lent with `netd::OP_VM_RING`). The same
/// shape as [`nic_ring`] seen from `netd`: "RX" frames came from the VM (the kernel produces,
/// `netd` consumes), "TX" frames go to the VM (`netd` produces, the kernel consumes). Slots
/// never cross a page. Fixed slots: a guest can make neither side allocate; when a ring is
/// full, frames are dropped and counted.
pub mod vm_ring {
    pub const SLOTS: u64 = 64;
    pub const SLOT_LEN: u64 = 2048;
    pub const PAGES: u64 = 1 + 2 * SLOTS * SLOT_LEN / 4096;
    pub const RX_HEAD: u64 = 0x00;
    pub const RX_TAIL: u64 = 0x08;
    pub const TX_HEAD: u64 = 0x10;
    pub const TX_TAIL: u64 = 0x18;
    pub const RX_LEN: u64 = 0x100;
    pub const TX_LEN: u64 = 0x400;
    pub const RX_SLOTS: u64 = 0x1000;
    pub const TX_SLOTS: u64 = 0x1000 + SLOTS * SLOT_LEN;
    // No stamps, waiting flag or driver counters as in `nic_ring`: with 64 slots the length
    // words fill 0x100..0x300 and 0x400..0x600, so `nic_ring`'s offsets for them would overlap.

    pub use super::nic_ring::BadIndices;

    /// Frames between `head` and `tail` (see [`super::nic_ring::pending`]), for this ring's
    /// `SLOTS`.
    pub fn pending(head: u64, tail: u64) -> Result<u64, BadIndices> {
        let n = head.wrapping_sub(tail);
        if n > SLOTS { Err(BadIndices { head, tail }) } else { Ok(n) }
    }
    pub fn room(head: u64, tail: u64) -> Result<u64, BadIndices> {
        pending(head, tail).map(|n| SLOTS - n)
    }
    /// Byte offset of frame counter `count`'s slot in the RX or TX area `base`.
    pub fn slot_offset(base: u64, count: u64) -> u64 {
        base + (count % SLOTS) * SLOT_LEN
    }
    /// Byte offset of frame counter `count`'s length word in `RX_LEN` or `TX_LEN`.
    pub fn len_offset(base: u64, count: u64) -> u64 {
        base + (count % SLOTS) * 8
    }
    /// A frame length read from the ring: at most one slot.
    pub fn frame_len(len: u64) -> Option<usize> {
        (len <= SLOT_LEN).then_some(len as usize)
    }
}

/// The protocol between the supervisor (`supd`, ring 3) and the kernel. The supervisor's spawn
/// authority is a send capability to the kernel's spawner endpoint whose badge (set by the
/// kernel, unforgeable) has bit i set for each manifest service i it may start; the kernel
/// answers and reports deaths on the supervisor's own endpoint.
pub mod supervisor {
    /// supervisor -> spawner: start service `words[0]` (its manifest index).
    pub const LABEL_SPAWN: u64 = 1;
    /// kernel -> supervisor: service `words[0]` runs as task `words[1]`, restarted `words[2]`
    /// times so far (the kernel's count; a restarted supervisor adopts a running service this
    /// way: asked to start it, the spawner answers with the task that runs it).
    pub const LABEL_STARTED: u64 = 0x20;
    /// kernel -> supervisor: service `words[0]` cannot start (`words[1]`: a `NOT_STARTED_*`).
    pub const LABEL_NOT_STARTED: u64 = 0x21;
    /// kernel -> supervisor: service `words[0]` (task `words[1]`) died with exit code
    /// `words[2]` (`0xdead0000 | vector` for an exception) at address `words[3]` (the
    /// faulting address of a page fault, else the instruction pointer; 0 for an exit).
    pub const LABEL_FAULT: u64 = 0x22;
    /// anyone -> supervisor (call): about service `words[0]`, reply words: how often it was
    /// restarted, the task that runs it (0: none), and how many of its deaths this
    /// supervisor was told of (`LABEL_FAULT`, a queued one included).
    pub const LABEL_QUERY: u64 = 2;
    /// The exit code (`LABEL_FAULT` word 2) of a task the kernel's spin watchdog killed: it
    /// ran the watchdog's limit of CPU time without a system call (hung in a loop); word 3 is
    /// where it ran.
    pub const WATCHDOG_CODE: u64 = 0xdead_0100;
    /// The exit code of a task the kernel's heartbeat check killed: it armed a heartbeat
    /// (`SYS_ALIVE`) and missed one; word 3 is where it ran (its last saved instruction).
    pub const HEARTBEAT_CODE: u64 = 0xdead_0101;
    /// Test only (`nicd.hang_after=N`, probes kernel): set in `nicd`'s start argument with N
    /// in the low bits, the first `nicd` hangs in a sleeping loop after N received frames
    /// (without it, N alone makes it crash there: `nicd.crash_after=N`).
    pub const NICD_TEST_HANG: u64 = 1 << 32;
    /// Test only (`supd.test_hang=1`, probes kernel): set in the first `supd`'s start argument
    /// (whose low bits are the number of services), it hangs in a sleeping loop 5 s after its
    /// start, for its heartbeat to catch (the kernel restarts it without the flag).
    pub const SUPD_TEST_HANG: u64 = 1 << 32;
    pub const NOT_STARTED_NO_RIGHT: u64 = 1;
    pub const NOT_STARTED_RUNNING: u64 = 2;
    pub const NOT_STARTED_NO_DEVICE: u64 = 3;
    pub const NOT_STARTED_NO_MEMORY: u64 = 4;
}

/// The kernel's power endpoint (`"power"` in `catenary_manifest::KERNEL_ENDPOINTS`): the ACPI
/// power button and soft-off. Only services the manifest gives a send capability to it reach
/// it (`apid`, which runs the orderly shutdown: docs/orchestration.md, "The power button").
pub mod power {
    /// call: was the power button pressed since boot? Reply label 0; `words[0]` = 1 if so
    /// (latched: a restarted caller still sees it), `words[1]` = milliseconds since the press.
    pub const LABEL_BUTTON: u64 = 1;
    /// call: the orderly shutdown is done, switch the machine off (ACPI S5). Never answered
    /// when it works; `ERR_NO_SOFT_OFF` when firmware gave no plain `\_S5` (or ignored it);
    /// `ERR_NOT_PRESSED` before any press.
    pub const LABEL_POWER_OFF: u64 = 2;
    /// Reply label: the request is not one of the above.
    pub const ERR_UNKNOWN: u64 = 0xe0;
    /// Reply label: this machine cannot switch itself off; it keeps running.
    pub const ERR_NO_SOFT_OFF: u64 = 0xe1;
    /// Reply label: `LABEL_POWER_OFF` before any press (refused: only the button switches a
    /// node off).
    pub const ERR_NOT_PRESSED: u64 = 0xe2;
    /// After a press, the kernel switches the machine off itself once this long has passed,
    /// whether or not a service finished the orderly shutdown (a hung or dead `apid` must not
    /// keep a node up that its operator switched off).
    pub const SHUTDOWN_GRACE_MS: u64 = 60_000;
}

/// The kernel ↔ ring-3 `netd` interface (`SYS_NET`): the router's operations and the fixed
/// records they copy through the caller's buffer. Little-endian u64s at the offsets given;
/// /128s are 16 bytes in network order.
pub mod natgw;

pub mod netd {
    /// Copy the boot data into the buffer (layout `BOOT_*`); rax = bytes written.
    pub const OP_BOOT: u64 = 1;
    /// The node's fabric /128 is `buf[0..16]`: the kernel routes remote sends and calls to
    /// the router's endpoint from now on (and binds `echo`'s task /128 the first time).
    pub const OP_UP: u64 = 2;
    /// Take the next remote send/call or answer into the buffer: rax = 0 (nothing),
    /// [`TAKE_OUT`] or [`TAKE_REPLY`].
    pub const OP_TAKE: u64 = 3;
    /// Deliver a message from another node (record `DELIVER_*`) to the endpoint bound to its
    /// destination /128.
    pub const OP_DELIVER: u64 = 4;
    /// Our call `arg` was answered (record `COMPLETE_*`); rax = 1 if a caller was waiting.
    pub const OP_COMPLETE: u64 = 5;
    /// Whether a task still waits for our call `arg` (rax 1/0).
    pub const OP_WAITING: u64 = 6;
    /// Answer calls from other nodes whose callee died or timed out (queued for `OP_TAKE`).
    pub const OP_REAP: u64 = 7;
    /// The endpoint bound to the /128 `buf[0..16]` (rax), or an error.
    pub const OP_LOOKUP: u64 = 8;
    /// The next microVM link event for this `netd` into the buffer (record `VM_*`): rax = 0
    /// (none), [`VM_ATTACH`] (a link this `netd` has not been told about: every live link
    /// again after a restart) or [`VM_DETACH`] (its microVM ended).
    pub const OP_VM_NEXT: u64 = 9;
    /// Lend the kernel the frame ring (layout [`crate::vm_ring`]) for link `arg`: `buf`/`len`
    /// are the ring's `vm_ring::PAGES` pages of the caller's own memory. The vCPU task reads
    /// and writes them only while they are still the caller's.
    pub const OP_VM_RING: u64 = 10;
    /// Frames for link `arg`'s microVM wait in its ring (the vCPU task takes them).
    pub const OP_VM_KICK: u64 = 11;
    /// Link `arg` (detached) is done: its last frames are routed; the kernel forgets it.
    pub const OP_VM_DONE: u64 = 12;
    /// Receive interrupts the NIC has raised so far (rax).
    pub const OP_NIC_IRQS: u64 = 13;
    pub const VM_ATTACH: u64 = 1;
    pub const VM_DETACH: u64 = 2;
    // OP_VM_NEXT: kind @0, link id @8, the VM's /128 @16, MAC @32 (6 bytes), flags @40
    // (VM_ALLOW_IPC), frames the kernel dropped for want of a ring or of room @48.
    pub const VM_ALLOW_IPC: u64 = 1;
    /// `OP_REAP`'s rax: a probe asked `netd` to log its reliability counters.
    pub const REAP_REPORT: u64 = 1;
    /// Who made call `arg` (received by the router, not answered yet): rax = the caller's
    /// task id, `buf[0..16]` = the fabric /128 bound to it (all zero: none). The socket
    /// protocol's client identity: a client cannot claim another task's /128.
    pub const OP_CALLER: u64 = 16;
    /// Whether task `arg` is alive (rax 1/0): `netd` closes the sockets of dead clients.
    pub const OP_ALIVE: u64 = 17;

    /// A task's call to `netd`'s endpoint (with a writable grant): the cluster file as
    /// `netd` booted with it (public: node and operator keys, names, endpoints) is copied
    /// into the grant. Reply label 0 with words [bytes, up, members, 0] (`up`: bit i set when
    /// the i-th `node` line is this node or has an established fabric session, i < 64), or
    /// [`CLUSTER_TOO_SMALL`] with words [bytes needed, ..] / [`CLUSTER_NO_GRANT`] /
    /// [`CLUSTER_NOT_READY`] (the stack is not up yet: ask again). The API service (`apid`)
    /// learns its operators and the nodes from it.
    pub const LABEL_CLUSTER: u64 = 0x4e43_0001;
    /// A task's call to `netd`'s endpoint: reply label 0 with words [seed, unix seconds now,
    /// 0, 0]: 64 bits from the node's entropy (BLAKE2s of the kernel-collected fabric seed,
    /// the clock and a counter: fresh for every call) and the fabric's wall clock, or
    /// [`CLUSTER_NOT_READY`]. The membership service (`memberd`) seeds its SWIM RNG with the
    /// first and numbers its generation with the second.
    pub const LABEL_SEED: u64 = 0x4e43_0002;
    /// A task's call: reply label 0 with words = this node's fabric public key (32 bytes as
    /// 4 little-endian words; public), or [`CLUSTER_NOT_READY`].
    pub const LABEL_SELF: u64 = 0x4e43_0003;
    /// `orchd`'s call, once the replicated desired state committed `AdmitNode`: words = the
    /// admitted key (4 LE words); the fabric takes it as a peer. Reply 0 (a peer now or
    /// already), [`ADMIT_REFUSED`] (a low-order key, a /64 clash, too many), [`ADMIT_NOT_ORCHD`]
    /// (the call's badge is not `orchd`'s: no other task may admit).
    pub const LABEL_ADMIT_PEER: u64 = 0x4e43_0004;
    /// A task's call with a writable grant: the admission table (`catenary_net::admission`:
    /// keys admitted at run time, pending nodes) is copied in. Reply 0 [bytes, rows, 0, 0],
    /// [`CLUSTER_TOO_SMALL`] [bytes needed], [`CLUSTER_NO_GRANT`], [`CLUSTER_NOT_READY`].
    pub const LABEL_ADMISSION: u64 = 0x4e43_0005;
    /// `orchd`'s call, once the replicated desired state committed `RemoveNode` of a key it
    /// had admitted: words = the key (4 LE words); the fabric drops it as a peer (a cluster
    /// file's node too), refuses its hellos, and lists it removed in the admission table, from
    /// which `memberd` revokes it. Reply 0 (removed, or it was no peer), [`ADMIT_REFUSED`]
    /// (this node's own key, an operator's), [`ADMIT_NOT_ORCHD`] (not `orchd`'s badge).
    pub const LABEL_REMOVE_PEER: u64 = 0x4e43_0006;
    pub const ADMIT_REFUSED: u64 = 4;
    /// [`LABEL_ADMIT_PEER`] from a task other than `orchd`: refused, nothing admitted.
    pub const ADMIT_NOT_ORCHD: u64 = 5;
    pub const CLUSTER_NO_GRANT: u64 = 1;
    pub const CLUSTER_TOO_SMALL: u64 = 2;
    pub const CLUSTER_NOT_READY: u64 = 3;

    /// Records are at most this long.
    pub const RECORD: usize = 128;
    /// TESTS ONLY: a fabric IPC message with this label makes a ring-3 `netd` started with
    /// `netd.test_panic=1` panic (its first incarnation): a packet that kills `netd`, not the
    /// node.
    pub const TEST_PANIC_LABEL: u64 = 0x7e57_0bad;
    pub const TAKE_OUT: u64 = 1;
    pub const TAKE_REPLY: u64 = 2;
    // OP_TAKE, TAKE_OUT: src /128 @8 (zero: the node's), dst @24, endpoint @40, label @48,
    // words @56..88, token @88 (0: a send).
    // OP_TAKE, TAKE_REPLY: caller /128 @8, called /128 @24, incarnation @40, call id @48,
    // ok @56 (1: label/words are the reply; 0: label is the IPC error code), label @64, words @72..104.
    // OP_DELIVER: to /128 @0, from /128 @16, incarnation @32, call id @40 (0: a send), label @48,
    // words @56..88.
    // OP_COMPLETE (arg = token): from /128 @0, ok @16, label/code @24, words @32..64.

    /// Boot data: version @0 (1), flags @8 ([`BOOT_KEY`], [`BOOT_MSIX`]), Unix time at boot
    /// @16, the virtio structures @24 (common, notify, isr, device physical addresses, notify
    /// multiplier, device config length, notify length: 7 words), command line length @80,
    /// cluster file length @88, node key @96..128, identity seed @128..160, fabric seed
    /// @160..192, online CPUs @192, memory MiB @200, then the command line and the cluster
    /// file.
    pub const BOOT_HEADER: usize = 208;
    pub const BOOT_MAX: usize = 64 * 1024;
    pub const BOOT_KEY: u64 = 1;
    pub const BOOT_MSIX: u64 = 2;
    /// This is `netd`'s first start (the command line's probes run once).
    pub const BOOT_FIRST: u64 = 4;
    /// The node key was generated at this boot from hardware entropy (no `node.key` boot
    /// module): the node is in no cluster file yet and waits to be admitted.
    pub const BOOT_GENERATED: u64 = 8;

    pub fn get_u64(b: &[u8], off: usize) -> u64 {
        let mut w = [0u8; 8];
        if let Some(s) = b.get(off..off + 8) {
            w.copy_from_slice(s);
        }
        u64::from_le_bytes(w)
    }
    pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
        if let Some(s) = b.get_mut(off..off + 8) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }
    pub fn get_addr(b: &[u8], off: usize) -> [u8; 16] {
        let mut a = [0u8; 16];
        if let Some(s) = b.get(off..off + 16) {
            a.copy_from_slice(s);
        }
        a
    }
    pub fn put_addr(b: &mut [u8], off: usize, a: &[u8; 16]) {
        if let Some(s) = b.get_mut(off..off + 16) {
            s.copy_from_slice(a);
        }
    }
}

/// The syscall ABI's numbers (RAX at `syscall` / `int 0x80`), shared by the kernel and the
/// ring-3 runtime so they cannot drift apart.
pub mod syscall {
    pub const SYS_NULL: u64 = 0;
    pub const SYS_YIELD: u64 = 1;
    pub const SYS_EXIT: u64 = 2;
    pub const SYS_SLEEP: u64 = 3;
    pub const SYS_TIME: u64 = 4;
    pub const SYS_SEND: u64 = 5;
    pub const SYS_RECV: u64 = 6;
    /// `call(slot, label, words)`: rdi = capability slot (bits 0..31) | timeout in ms
    /// (bits 32..63; 0 = the default: none for a local call, 20 s for a call to another
    /// node). No answer by then: [`IpcError::Timeout`](crate::IpcError::Timeout).
    pub const SYS_CALL: u64 = 7;
    pub const SYS_REPLY: u64 = 8;
    pub const SYS_MAP: u64 = 9;
    pub const SYS_UNMAP: u64 = 10;
    pub const SYS_LOG: u64 = 11;
    pub const SYS_JOIN: u64 = 12;
    pub const SYS_CALL_GRANT: u64 = 13;
    /// Set by the kernel (never by a sender) in r13 of a received message when words 2 and 3
    /// describe a memory grant it mapped for this receiver (address | writable, length).
    /// Without it words 2 and 3 are the sender's data: a descriptor in an ordinary message is
    /// not a grant.
    pub const MSG_FLAG_GRANT: u64 = 1;
    pub const SYS_MAP_MMIO: u64 = 14;
    pub const SYS_DMA_ALLOC: u64 = 15;
    /// `bind_address(slot)`: give the local endpoint of capability `slot` (which must carry
    /// [`Rights::BIND`](crate::Rights::BIND)) a fabric /128 of the node's /64; returns it in
    /// rdi (high 64 bits) and rsi (low 64 bits).
    pub const SYS_BIND_ADDRESS: u64 = 16;
    /// `sender()`: the authenticated fabric /128 the last message this task received came
    /// from (rdi high, rsi low); all zero for a message from this node.
    pub const SYS_SENDER: u64 = 17;
    /// `net(slot, op, buf, len, arg)`: the router's calls (ring-3 `netd` only: the capability
    /// in `slot` must carry [`Rights::ROUTER`](crate::Rights::ROUTER)); ops and records in
    /// [`crate::netd`].
    pub const SYS_NET: u64 = 18;
    /// `share(slot, base, len)`: lend [base, base+len) of the caller's own RAM, writable, to
    /// the owner of the endpoint of capability `slot` (which must carry
    /// [`Rights::SHARE`](crate::Rights::SHARE)) until either dies; returns where the pages are
    /// mapped in the receiver's grant window (the same mapping again for the same range).
    pub const SYS_SHARE: u64 = 19;
    /// `grant_of(token)`: the memory grant that came with the call `token` the caller
    /// received and has not answered: rdi = address | writable, rsi = length in bytes
    /// (what the kernel mapped, never what the caller's words claim).
    pub const SYS_GRANT_OF: u64 = 20;
    /// `vm(slot, op, buf, len, arg)`: VM control for the workload service (the capability in
    /// `slot` must carry [`Rights::VMCTL`](crate::Rights::VMCTL) on the caller's own
    /// endpoint); ops and records in `catenary_workload::vmctl`.
    pub const SYS_VM: u64 = 21;
    /// Answer a call and wait for the next message in one system call: rdi = reply token,
    /// rsi = label, rdx, r10, r8, r9 = words, r13 = the receive capability slot; returns as
    /// `SYS_RECV` (without a timeout). A bad token or slot refuses the whole call.
    pub const SYS_REPLY_RECV: u64 = 22;
    /// `alive(period_ms)`: a heartbeat. The first call arms the kernel's heartbeat check for
    /// the calling task; each call promises the next within `period_ms`
    /// ([`HEARTBEAT_MIN_MS`]..=[`HEARTBEAT_MAX_MS`], else [`ERR_BAD_ARG`]). A task that misses
    /// it is hung (a service's main loop stopped going round, even if it still makes system
    /// calls) and is killed with [`crate::supervisor::HEARTBEAT_CODE`]. Time the task waits
    /// for the CPU (ready, not running) or for the reply to a call does not count.
    pub const SYS_ALIVE: u64 = 23;
    /// Shortest heartbeat period (ms): the kernel looks every 100 ms.
    pub const HEARTBEAT_MIN_MS: u64 = 100;
    /// Longest heartbeat period (ms).
    pub const HEARTBEAT_MAX_MS: u64 = 600_000;
    /// Error code (returned negated) of a syscall given a bad argument: an address outside
    /// the caller's memory, a range that overflows, memory or a device it does not own.
    pub const ERR_BAD_ARG: u64 = 100;
    /// Error code (returned negated): the caller's memory quota, or the node's memory, is
    /// exhausted.
    pub const ERR_NO_MEMORY: u64 = 101;
    /// Most pages one `SYS_MAP` maps (bounded work per call; map more with more calls).
    pub const MAP_MAX_PAGES: u64 = 1024;
}
/// The protocol between the kernel's `syscall_fuzz` test and the ring-3 fuzzer `sysfuzz`
/// (docs/microkernel.md, "Syscall fuzzer"): configuration and report labels, and the
/// operation classes that stay off until the kernel finding behind each is fixed.
pub mod sysfuzz {
    /// First message on the fuzzer's own endpoint: words = deadline (ns), classes, physical
    /// page of its MMIO grant, the peer's task id.
    pub const CFG_FUZZ: u64 = 0x5f0;
    /// First message on the peer's own endpoint (the same binary answering calls).
    pub const CFG_PEER: u64 = 0x5f1;
    /// To the peer from the test (badge 0): exit.
    pub const PEER_STOP: u64 = 0x5f2;
    /// Fuzzer → test: words = calls, errors, violations, bitmask of syscalls covered.
    pub const REPORT_STATS: u64 = 0x5f3;
    /// Fuzzer → test: a call that must fail succeeded; words = nr, arg0, arg1, result.
    pub const REPORT_VIOLATION: u64 = 0x5f4;
    /// Fuzzer → test: the run reached its deadline (words as `REPORT_STATS`).
    pub const REPORT_DONE: u64 = 0x5f5;
    /// Fuzzer → peer (a call with a grant): keep the call unanswered; the fuzzer then waits
    /// until the test kills it, so the caller dies while its pages are lent.
    pub const GRANT_HOLD: u64 = 0x5f7;
    /// Fuzzer → peer: exit now (with `PEER_DIED`); later calls meet a dead endpoint.
    pub const PEER_DIE: u64 = 0x5f8;
    pub const PEER_DIED: u64 = 0x5fde;
    /// The peer's exit code when a reply to a held call whose caller died went through.
    pub const PEER_BAD_REPLY: u64 = 0x5fbad;
    /// Test → fuzzer, every few tens of ms: ends a receive that waits with a huge timeout.
    pub const TICK: u64 = 0x5f6;
    /// A second MMIO grant: a physical page nothing answers at (QEMU reads it as all ones),
    /// outside the kernel's direct map. The fuzzer maps it and hands pointers into it around.
    pub const HOLE_PHYS: u64 = 0x80_0000_0000;
    /// In the classes word: the first run, which reaches its (short) deadline without killing
    /// itself (no deliberate faults, no unmapping of its own code or stack, no TF, and it does
    /// not tell the peer to exit) and exits there (so SYS_EXIT is always covered).
    pub const F_FIRST_RUN: u64 = 1 << 32;
    /// With `F_FIRST_RUN`: end with the held grant instead (the caller-dies-while-granted path
    /// in every test run).
    pub const F_FIRST_HOLD: u64 = 1 << 33;
    /// SYS_UNMAP of kernel-half, non-canonical and wrapping ranges.
    pub const C_UNMAP_HOSTILE: u64 = 1 << 0;
    /// SYS_MAP_MMIO with lengths whose page count overflows `pages * 4096`.
    pub const C_MMIO_HUGE_LEN: u64 = 1 << 1;
    /// SYS_LOG of a buffer in the task's MMIO mapping.
    pub const C_LOG_MMIO: u64 = 1 << 2;
    /// Timeouts (sleep, recv, join) for which `now + timeout` overflows (a receive on its own
    /// endpoint with one, ended by the test's next `TICK`; sleep/join with one at the end).
    pub const C_HUGE_TIMEOUT: u64 = 1 << 3;
    /// `syscall` executed with RFLAGS.TF set (a #DB due at the kernel's entry).
    pub const C_TRAP_FLAG: u64 = 1 << 4;
    /// SYS_LOG of text with a newline, a carriage return and terminal escapes, which would
    /// forge a line of the node's log (`FORGED_LINE`, which the xtask test looks for).
    pub const C_LOG_FORGE: u64 = 1 << 5;
    /// (The test's side) NMIs sent to the other CPUs every ~20 ms while the fuzzers run: an
    /// NMI in ring 3 (or anywhere) must resume what it interrupted, never kill the task.
    pub const C_NMI: u64 = 1 << 6;
    pub const ALL_CLASSES: u64 = 0x7f;
    /// What a forged log line starts with (never at the start of a real line).
    pub const FORGED_LINE: &str = "ktest sysfuzz_forged_line ... ok";
}
/// The stand-in task of calls that cross nodes: the callee of a call to another node, the
/// caller of a call from another node (the kernel's router answers for it).
pub const REMOTE: TaskId = u64::MAX;

/// The placeholder owner of held endpoint `id` (see [`IpcSpace::hold_endpoint`]); never a
/// task id (the scheduler counts tasks from 1).
pub const fn held_owner(id: EndpointId) -> TaskId {
    (1 << 62) | id
}
/// The badge of every message that came from another node (or a microVM) through the
/// node's router; `origin` then names the sender.
pub const REMOTE_BADGE: u64 = 0xfab0_0000_0000_0000;
/// Default queue depth.
pub const DEFAULT_CAPACITY: usize = 16;

/// A message destination: node identity (IPv6 /128, zero = local) and endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Address {
    pub node: [u8; 16],
    pub endpoint: EndpointId,
}

impl Address {
    pub const LOCAL_NODE: [u8; 16] = [0; 16];
    pub const fn local(endpoint: EndpointId) -> Address {
        Address { node: Self::LOCAL_NODE, endpoint }
    }
    pub fn is_local(&self) -> bool {
        self.node == Self::LOCAL_NODE
    }
}

/// Capability rights (a small bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(pub u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const SEND: Rights = Rights(1);
    pub const RECV: Rights = Rights(2);
    pub const GRANT: Rights = Rights(4);
    /// May give the endpoint a fabric /128 (`bind_address`): makes it reachable from other
    /// nodes. Not part of [`Rights::ALL`]: only granted on purpose.
    pub const BIND: Rights = Rights(8);
    /// On a capability to the node's router endpoint (`netd`'s): may use `SYS_NET` (take the
    /// kernel's remote sends and calls, deliver messages from other nodes, complete calls).
    /// Minted by the kernel only, for the manifest's `router` service.
    pub const ROUTER: Rights = Rights(16);
    /// May lend memory to the endpoint's owner for as long as both live (`SYS_SHARE`).
    /// Minted by the kernel only, per the manifest's `shares`.
    pub const SHARE: Rights = Rights(32);
    /// On a capability to the workload service's own endpoint: may use `SYS_VM` (create,
    /// power off and hear from microVMs). Minted by the kernel only, for the manifest's
    /// `vm_control` service.
    pub const VMCTL: Rights = Rights(64);
    pub const ALL: Rights = Rights(7);
    pub fn contains(self, o: Rights) -> bool {
        self.0 & o.0 == o.0
    }
    pub fn union(self, o: Rights) -> Rights {
        Rights(self.0 | o.0)
    }
    /// Rights of a derived capability can only shrink.
    pub fn intersect(self, o: Rights) -> Rights {
        Rights(self.0 & o.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub target: Address,
    pub rights: Rights,
    pub badge: u64,
}

/// A range of the sender's memory lent to the receiver along with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Page-aligned virtual address in the sender's address space.
    pub base: u64,
    /// Length in bytes (rounded up to pages by the kernel).
    pub len: u64,
    pub writable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Message {
    pub label: u64,
    pub words: [u64; MSG_WORDS],
    pub grant: Option<Grant>,
    /// Badge of the capability the sender used (set by the kernel).
    pub badge: u64,
    /// Non-zero when the sender waits for a reply: pass it to `reply`.
    pub reply: u64,
    /// The fabric /128 a message from another node (or a microVM) came from, as the fabric
    /// authenticated it (set by the kernel's router, never by a sender); zero: this node.
    pub origin: [u8; 16],
}

impl Message {
    pub fn new(label: u64, words: [u64; MSG_WORDS]) -> Message {
        Message { label, words, ..Default::default() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpcError {
    /// The slot holds no capability.
    NoCapability,
    /// The capability lacks the right needed (send, receive, grant).
    NoRight,
    /// The receiver's queue is full; the message was not sent.
    QueueFull,
    /// The peer died (endpoint closed, or the server died before replying).
    DeadPeer,
    /// A blocking receive or call timed out: no answer within the caller's timeout (for a call
    /// to another node also when that node is down or the fabric lost every retransmission).
    Timeout,
    /// No such endpoint.
    NoEndpoint,
    /// The reply token matches no outstanding call of this task.
    BadReply,
    /// The address names another node and no route exists (yet).
    Unreachable,
    /// The capability table is full.
    TableFull,
}

impl IpcError {
    /// Stable numeric codes used by the syscall ABI (returned negated).
    pub fn code(self) -> u64 {
        match self {
            IpcError::NoCapability => 1,
            IpcError::NoRight => 2,
            IpcError::QueueFull => 3,
            IpcError::DeadPeer => 4,
            IpcError::Timeout => 5,
            IpcError::NoEndpoint => 6,
            IpcError::BadReply => 7,
            IpcError::Unreachable => 8,
            IpcError::TableFull => 9,
        }
    }
    pub fn from_code(c: u64) -> Option<IpcError> {
        Some(match c {
            1 => IpcError::NoCapability,
            2 => IpcError::NoRight,
            3 => IpcError::QueueFull,
            4 => IpcError::DeadPeer,
            5 => IpcError::Timeout,
            6 => IpcError::NoEndpoint,
            7 => IpcError::BadReply,
            8 => IpcError::Unreachable,
            9 => IpcError::TableFull,
            _ => return None,
        })
    }
}

/// A task's capabilities, indexed by slot.
#[derive(Debug, Clone, Default)]
pub struct CapTable {
    slots: Vec<Option<Capability>>,
    limit: usize,
}

impl CapTable {
    pub fn new(limit: usize) -> CapTable {
        CapTable { slots: Vec::new(), limit }
    }
    /// Store a capability in the first free slot.
    pub fn insert(&mut self, c: Capability) -> Result<usize, IpcError> {
        if let Some(i) = self.slots.iter().position(|s| s.is_none()) {
            self.slots[i] = Some(c);
            return Ok(i);
        }
        if self.slots.len() >= self.limit {
            return Err(IpcError::TableFull);
        }
        self.slots.push(Some(c));
        Ok(self.slots.len() - 1)
    }
    /// Whether [`CapTable::insert`] would find a slot.
    pub fn has_room(&self) -> bool {
        self.slots.len() < self.limit || self.slots.iter().any(|s| s.is_none())
    }
    pub fn get(&self, slot: usize) -> Result<Capability, IpcError> {
        self.slots.get(slot).copied().flatten().ok_or(IpcError::NoCapability)
    }
    /// The capability in `slot`, if it carries `need`.
    pub fn check(&self, slot: usize, need: Rights) -> Result<Capability, IpcError> {
        let c = self.get(slot)?;
        if c.rights.contains(need) { Ok(c) } else { Err(IpcError::NoRight) }
    }
    pub fn remove(&mut self, slot: usize) -> Result<Capability, IpcError> {
        self.slots.get_mut(slot).and_then(|s| s.take()).ok_or(IpcError::NoCapability)
    }
    /// A copy of `slot` with fewer (never more) rights and a new badge.
    pub fn derive(&self, slot: usize, rights: Rights, badge: u64) -> Result<Capability, IpcError> {
        let c = self.get(slot)?;
        Ok(Capability { target: c.target, rights: c.rights.intersect(rights), badge })
    }
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub id: EndpointId,
    pub owner: TaskId,
    pub capacity: usize,
    queue: VecDeque<Message>,
    /// Tasks blocked in `recv` on this endpoint, in arrival order.
    waiters: VecDeque<TaskId>,
    /// Coalesced interrupt notification bits not yet received.
    pending_notify: u64,
    /// Messages ever accepted (statistics).
    pub delivered: u64,
}

impl Endpoint {
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// What the kernel must do after a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The message sits in the endpoint's queue.
    Queued,
    /// `receiver` was blocked in `recv`: hand it `msg` and wake it.
    Direct { receiver: TaskId, msg: Message },
}

#[derive(Debug, Clone, Copy)]
struct PendingCall {
    caller: TaskId,
    /// The task expected to reply (owner of the called endpoint).
    callee: TaskId,
}

/// After a task died: whom to wake with which error.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeathReport {
    pub closed_endpoints: Vec<EndpointId>,
    /// Tasks blocked on a call or receive that can no longer complete.
    pub wake_with_error: Vec<(TaskId, IpcError)>,
    pub dropped_messages: usize,
}

/// Every endpoint and outstanding call on this node.
#[derive(Debug, Default)]
pub struct IpcSpace {
    endpoints: BTreeMap<EndpointId, Endpoint>,
    calls: BTreeMap<u64, PendingCall>,
    next_endpoint: EndpointId,
    next_token: u64,
}

impl IpcSpace {
    pub fn new() -> IpcSpace {
        IpcSpace { next_endpoint: 1, next_token: 1, ..Default::default() }
    }

    pub fn create_endpoint(&mut self, owner: TaskId, capacity: usize) -> EndpointId {
        let id = self.next_endpoint;
        self.next_endpoint += 1;
        self.endpoints.insert(
            id,
            Endpoint {
                id,
                owner,
                capacity: capacity.max(1),
                queue: VecDeque::new(),
                waiters: VecDeque::new(),
                pending_notify: 0,
                delivered: 0,
            },
        );
        id
    }

    pub fn endpoint(&self, id: EndpointId) -> Option<&Endpoint> {
        self.endpoints.get(&id)
    }

    fn resolve(&self, a: &Address) -> Result<EndpointId, IpcError> {
        if !a.is_local() {
            return Err(IpcError::Unreachable);
        }
        match self.endpoints.get(&a.endpoint) {
            Some(_) => Ok(a.endpoint),
            // Endpoints are never reused, so an unknown local id is a closed one.
            None if a.endpoint < self.next_endpoint && a.endpoint != 0 => Err(IpcError::DeadPeer),
            None => Err(IpcError::NoEndpoint),
        }
    }

    /// Asynchronous send through capability `cap`. Never blocks; a full queue is an error.
    pub fn send(&mut self, cap: &Capability, mut msg: Message) -> Result<Delivery, IpcError> {
        if !cap.rights.contains(Rights::SEND) {
            return Err(IpcError::NoRight);
        }
        if msg.grant.is_some() && !cap.rights.contains(Rights::GRANT) {
            return Err(IpcError::NoRight);
        }
        let id = self.resolve(&cap.target)?;
        msg.badge = cap.badge;
        let ep = self.endpoints.get_mut(&id).ok_or(IpcError::NoEndpoint)?;
        if let Some(r) = ep.waiters.pop_front() {
            ep.delivered += 1;
            return Ok(Delivery::Direct { receiver: r, msg });
        }
        if ep.queue.len() >= ep.capacity {
            return Err(IpcError::QueueFull);
        }
        ep.queue.push_back(msg);
        ep.delivered += 1;
        Ok(Delivery::Queued)
    }

    /// Send a call: like `send`, but the message carries a fresh reply token and the caller
    /// is registered as waiting for the reply. Returns the token with the delivery.
    pub fn call(&mut self, caller: TaskId, cap: &Capability, mut msg: Message) -> Result<(u64, Delivery), IpcError> {
        let id = self.resolve(&cap.target)?;
        let callee = self.endpoints.get(&id).map(|e| e.owner).ok_or(IpcError::NoEndpoint)?;
        let token = self.next_token;
        msg.reply = token;
        let d = self.send(cap, msg)?;
        self.next_token += 1;
        self.calls.insert(token, PendingCall { caller, callee });
        Ok((token, d))
    }

    /// Register a call of `caller` to another node (its callee is [`REMOTE`]); returns the
    /// token the reply must name.
    pub fn call_remote(&mut self, caller: TaskId) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.calls.insert(token, PendingCall { caller, callee: REMOTE });
        token
    }

    /// The task waiting for call `token`, if `callee` owes its reply.
    pub fn caller_of(&self, callee: TaskId, token: u64) -> Option<TaskId> {
        self.calls.get(&token).filter(|c| c.callee == callee).map(|c| c.caller)
    }

    /// End call `token` owed by `replier` without a reply message (it failed); returns the
    /// caller to wake with an error.
    pub fn end_call(&mut self, replier: TaskId, token: u64) -> Result<TaskId, IpcError> {
        match self.calls.get(&token) {
            Some(c) if c.callee == replier => Ok(self.calls.remove(&token).unwrap().caller),
            _ => Err(IpcError::BadReply),
        }
    }

    /// Answer call `token`; returns the caller to wake with `msg`.
    pub fn reply(&mut self, replier: TaskId, token: u64, mut msg: Message) -> Result<(TaskId, Message), IpcError> {
        match self.calls.get(&token) {
            Some(c) if c.callee == replier => {
                let c = self.calls.remove(&token).unwrap();
                msg.reply = 0;
                Ok((c.caller, msg))
            }
            _ => Err(IpcError::BadReply),
        }
    }

    /// Forget a call whose caller gave up (timeout); a later reply gets `BadReply`.
    pub fn cancel_call(&mut self, token: u64) {
        self.calls.remove(&token);
    }

    /// Receive from endpoint `id` (the caller must hold a receive right for it). `Ok(None)`
    /// means nothing is queued and the task is now registered as waiting: block it, and call
    /// `cancel_wait` if it times out.
    pub fn recv(&mut self, receiver: TaskId, id: EndpointId) -> Result<Option<Message>, IpcError> {
        let ep = self.endpoints.get_mut(&id).ok_or(IpcError::DeadPeer)?;
        if ep.pending_notify != 0 {
            let bits = core::mem::take(&mut ep.pending_notify);
            return Ok(Some(Message::new(LABEL_NOTIFY, [bits, 0, 0, 0])));
        }
        if let Some(m) = ep.queue.pop_front() {
            return Ok(Some(m));
        }
        if !ep.waiters.contains(&receiver) {
            ep.waiters.push_back(receiver);
        }
        Ok(None)
    }

    /// Non-blocking receive: `Ok(None)` if empty, without registering a waiter.
    pub fn try_recv(&mut self, id: EndpointId) -> Result<Option<Message>, IpcError> {
        let ep = self.endpoints.get_mut(&id).ok_or(IpcError::DeadPeer)?;
        if ep.pending_notify != 0 {
            let bits = core::mem::take(&mut ep.pending_notify);
            return Ok(Some(Message::new(LABEL_NOTIFY, [bits, 0, 0, 0])));
        }
        Ok(ep.queue.pop_front())
    }

    pub fn cancel_wait(&mut self, task: TaskId, id: EndpointId) {
        if let Some(ep) = self.endpoints.get_mut(&id) {
            ep.waiters.retain(|t| *t != task);
        }
    }

    /// Deliver interrupt bits to endpoint `id`: straight to a waiting receiver, otherwise
    /// coalesced into the pending set (never queued, never lost).
    pub fn notify(&mut self, id: EndpointId, bits: u64) -> Result<Option<(TaskId, Message)>, IpcError> {
        let ep = self.endpoints.get_mut(&id).ok_or(IpcError::DeadPeer)?;
        if let Some(r) = ep.waiters.pop_front() {
            let all = bits | core::mem::take(&mut ep.pending_notify);
            return Ok(Some((r, Message::new(LABEL_NOTIFY, [all, 0, 0, 0]))));
        }
        ep.pending_notify |= bits;
        Ok(None)
    }

    /// A task died: close its endpoints (queued messages are dropped, their callers and any
    /// other receivers get `DeadPeer`), fail calls it owed replies to, forget its own calls.
    pub fn task_died(&mut self, task: TaskId) -> DeathReport {
        let mut r = DeathReport::default();
        let mine: Vec<EndpointId> = self.endpoints.values().filter(|e| e.owner == task).map(|e| e.id).collect();
        for id in mine {
            let ep = self.endpoints.remove(&id).unwrap();
            r.dropped_messages += ep.queue.len();
            for w in ep.waiters {
                if w != task {
                    r.wake_with_error.push((w, IpcError::DeadPeer));
                }
            }
            r.closed_endpoints.push(id);
        }
        for ep in self.endpoints.values_mut() {
            ep.waiters.retain(|t| *t != task);
        }
        let mut dead_tokens = Vec::new();
        for (tok, c) in &self.calls {
            if c.callee == task && c.caller != task {
                r.wake_with_error.push((c.caller, IpcError::DeadPeer));
                dead_tokens.push(*tok);
            } else if c.caller == task {
                dead_tokens.push(*tok);
            }
        }
        for t in dead_tokens {
            self.calls.remove(&t);
        }
        r
    }

    /// Keep endpoint `id` open while the task that receives on it is down (a service being
    /// restarted): it gets the placeholder owner [`held_owner`], so `task_died` of the old
    /// owner leaves it open; messages queue (up to its capacity) and calls wait.
    pub fn hold_endpoint(&mut self, id: EndpointId) -> bool {
        match self.endpoints.get_mut(&id) {
            Some(e) => {
                e.owner = held_owner(id);
                true
            }
            None => false,
        }
    }

    /// Give a held endpoint to `owner` (the restarted service): calls that reached it while it
    /// was held are now owed by `owner`.
    pub fn adopt_endpoint(&mut self, id: EndpointId, owner: TaskId) -> bool {
        let held = held_owner(id);
        match self.endpoints.get_mut(&id) {
            Some(e) if e.owner == held => e.owner = owner,
            _ => return false,
        }
        for c in self.calls.values_mut() {
            if c.callee == held {
                c.callee = owner;
            }
        }
        true
    }

    /// Whether call `token` still waits for its reply.
    pub fn call_pending(&self, token: u64) -> bool {
        self.calls.contains_key(&token)
    }

    pub fn outstanding_calls(&self) -> usize {
        self.calls.len()
    }
}

#[cfg(test)]
mod tests;
