//! sysfuzz: the ring-3 syscall fuzzer (started by the kernel's `syscall_fuzz` test, see
//! docs/microkernel.md "Syscall fuzzer"). It calls every syscall with hostile arguments —
//! kernel and non-canonical addresses, ranges that cross the end of the user half, huge
//! lengths and page counts, unowned, MMIO and guard pages, stale, foreign, remote, empty and
//! out-of-range capability slots, forged reply tokens, huge timeouts — in random sequences
//! from a seeded PRNG, enters the kernel with hostile RFLAGS (TF, AC) and stack pointers,
//! and now and then kills itself on purpose (kernel/non-canonical/guard-page accesses,
//! privileged instructions, `int n`). The node must survive all of it; a call that must fail
//! but succeeds is a violation, reported to the test.
//!
//! Its raw syscalls go through `catenary_arch_user::hostile`, which does not make a call that
//! would unmap or let anyone write this program's own memory (counted as refused); every other
//! hostile argument reaches the kernel.
//!
//! The same binary is the peer the fuzzer calls and grants memory to (it answers every call).
//!
//! Capability slots (given by the test): 0 own endpoint (send+recv), 1 the peer's endpoint
//! (send+grant), 2 a stale endpoint (its owner died), 3 the test's report endpoint (never
//! fuzzed), 4 an endpoint on another node (send+grant+bind), 5 a capability without rights.
//! The first message on slot 0 is the configuration (see `Cfg`).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use catenary_user::hostile::{self, Fault};
use catenary_user::*;

use catenary_ipc::sysfuzz::*;

const PAGE: u64 = 4096;
/// The label of the fuzzer's grant calls whose grant the peer reads.
const GRANT_LABEL: u64 = 0x6a;
const USER_END: u64 = 0x0000_8000_0000_0000;
const ARENA: u64 = 0x1000_0000;
const ARENA_PAGES: u64 = 4096;
const MMIO_VA: u64 = 0x3000_0000;
/// The pages of the final held grant (inside the range SYS_MAP accepts, never fuzzed).
const HOLD_VA: u64 = 0x3200_0000;
const DMA_VA: u64 = 0x3100_0000;
const GRANT_WINDOW: u64 = 0x0000_6000_0000_0000;
const STACK_TOP: u64 = 0x0000_7fff_ffff_0000;
const STACK_PAGES: u64 = 32;
const GUARD: u64 = STACK_TOP - (STACK_PAGES + 1) * PAGE;
const SLOT_OWN: u64 = 0;
const SLOT_PEER: u64 = 1;
const SLOT_STALE: u64 = 2;
const SLOT_REPORT: u64 = 3;
const SLOT_REMOTE: u64 = 4;
const SLOT_NORIGHTS: u64 = 5;

/// What the test tells the fuzzer: when to stop, which classes are on, the physical page of
/// its MMIO grant, and the task ids of the peer and of the test.
struct Cfg {
    deadline: u64,
    classes: u64,
    mmio_phys: u64,
    peer_task: u64,
}

/// SplitMix64 (Steele, Lea, Flood 2014): a few lines, no dependency, and the whole run is a
/// function of the seed the test prints. Not for cryptography.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// Where an address points, as far as this task knows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Could be valid user memory (arena, stack, text, DMA, MMIO, wild user addresses).
    User,
    /// Known to be unmapped in this task (null page, stack guard, grant window).
    Unmapped,
    /// At or above the end of the user half: the kernel half, non-canonical, or a range that
    /// crosses USER_END or wraps. Any syscall given such a range must refuse it.
    Outside,
}

/// The syscall names, for the coverage line.
const NAMES: [&str; 19] = [
    "null", "yield", "exit", "sleep", "time", "send", "recv", "call", "reply", "map", "unmap", "log", "join", "call_grant",
    "map_mmio", "dma_alloc", "bind_address", "sender", "other",
];

struct Fz {
    rng: Rng,
    cfg: Cfg,
    calls: [u64; 19],
    errors: u64,
    violations: u64,
    /// Calls `hostile` did not make: they would have unmapped or let someone write this
    /// program's own memory (its image, stack or heap).
    refused: u64,
    dma_left: u64,
    text: u64,
    steps: u64,
}

fn is_err(r: u64) -> bool {
    r > u64::MAX - 4096
}

/// The class of [addr, addr + len) (len 0: the class of addr alone).
fn class_of(addr: u64, len: u64) -> Class {
    match addr.checked_add(len) {
        Some(end) if addr < USER_END && end <= USER_END => {
            if addr < PAGE || ((GUARD..GUARD + PAGE).contains(&addr) && end <= GUARD + PAGE) || addr >= GRANT_WINDOW && end <= GRANT_WINDOW + (1 << 40) {
                Class::Unmapped
            } else {
                Class::User
            }
        }
        _ => Class::Outside,
    }
}

/// SYS_LOG prints at most this many bytes (longer lengths are cut, not refused).
const LOG_MAX: u64 = 200;

/// Whether [virt, virt + pages) touches a page whose state this task relies on: the null
/// page, stack guard and grant window stay unmapped (reads there must fail), the MMIO pages
/// stay MMIO (grants of them must fail). It never maps anything there itself.
fn reserved(virt: u64, pages: u64) -> bool {
    let end = virt.saturating_add(pages.saturating_mul(PAGE));
    let hits = |lo: u64, hi: u64| virt < hi && end > lo;
    hits(0, PAGE) || hits(GUARD, GUARD + PAGE) || hits(GRANT_WINDOW, GRANT_WINDOW + (1 << 40)) || hits(HOLD_VA, HOLD_VA + 4 * PAGE) || mmio_pages(virt, pages)
}

/// Whether [virt, virt + pages) touches its two MMIO pages, which it keeps mapped (and maps
/// nothing else over) so that a grant of them must fail.
fn mmio_pages(virt: u64, pages: u64) -> bool {
    virt < MMIO_VA + 2 * PAGE && virt.saturating_add(pages.saturating_mul(PAGE)) > MMIO_VA
}

static PROBE: &str = "sysfuzz: SYS_LOG probe string (a valid user buffer)";

impl Fz {
    fn addr(&mut self) -> u64 {
        let r = &mut self.rng;
        let a = match r.below(14) {
            0 => r.below(PAGE),
            1 | 2 => ARENA + r.below(ARENA_PAGES) * PAGE,
            3 => self.text + r.below(16) * PAGE,
            4 => STACK_TOP - r.below(STACK_PAGES + 2) * PAGE,
            5 => GUARD,
            6 => MMIO_VA + r.below(2) * PAGE,
            7 => DMA_VA + r.below(4) * PAGE,
            8 => GRANT_WINDOW + r.below(64) * PAGE,
            9 => USER_END - r.pick(&[PAGE, 2 * PAGE, 1, 8, 200]),
            10 => r.pick::<u64>(&[USER_END, 0x0000_8000_0000_1000, 0xffff_7fff_ffff_f000, 0x8000_0000_0000_0000, 0xdead_beef_0000_0000])
                .wrapping_add(r.below(16) * PAGE),
            11 => r.pick::<u64>(&[0xffff_8000_0000_0000, 0xffff_8000_0010_0000, 0xffff_ffff_8000_0000, 0xffff_ffff_8020_0000, 0xffff_ffff_ffff_f000, 0xffff_ff00_0000_0000])
                .wrapping_add(r.below(64) * PAGE),
            12 => r.next(),
            _ => r.below(0x7000_0000_0000) & !(PAGE - 1),
        };
        if self.rng.one_in(8) { a.wrapping_add(self.rng.pick(&[1, 8, 0x800, 0xfff])) } else { a }
    }

    fn len(&mut self, addr: u64) -> u64 {
        let r = &mut self.rng;
        match r.below(12) {
            0 => 0,
            1 => r.pick(&[1, 8, 200, 201]),
            2 => r.pick(&[PAGE - 1, PAGE, PAGE + 1, 2 * PAGE]),
            3 => r.below(64 * 1024),
            4 => r.below(16 * 1024 * 1024),
            5 => r.pick(&[1 << 32, 1 << 47, 1 << 52, 1 << 63]),
            6 => r.pick(&[u64::MAX, u64::MAX - PAGE + 1, u64::MAX - 7]),
            7 => 0u64.wrapping_sub(addr), // addr + len wraps to exactly 0
            8 => USER_END.wrapping_sub(addr).wrapping_add(r.pick(&[0, 1, PAGE])),
            _ => r.below(4 * PAGE),
        }
    }

    fn pages(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(8) {
            0 => 0,
            1..=3 => 1 + r.below(4),
            4 => r.pick(&[16, 1023, 1024, 1025, 4096]),
            5 => r.pick(&[1 << 20, 1 << 36, 1 << 52, (1 << 52) + 1]),
            6 => r.pick(&[u64::MAX, u64::MAX / PAGE + 1, 1 << 63]),
            _ => 1,
        }
    }

    fn slot(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(10) {
            0..=2 => SLOT_PEER,
            3 => SLOT_OWN,
            4 => SLOT_STALE,
            5 => SLOT_REMOTE,
            6 => SLOT_NORIGHTS,
            7 => 6 + r.below(58),
            8 => r.pick(&[64, 65, 1000, 1 << 31, 1 << 32, u64::MAX, u64::MAX - 1]),
            _ => r.next(),
        }
    }

    fn timeout(&mut self) -> u64 {
        // Small: the task must keep moving. Huge values are the C_HUGE_TIMEOUT class.
        1 + self.rng.below(2_000_000)
    }

    /// A slot on which send/call/recv must fail whatever the state of the node.
    fn dead_slot(slot: u64) -> bool {
        slot == SLOT_STALE || slot == SLOT_NORIGHTS || slot >= 6
    }

    fn note(&mut self, nr: u64, r: u64) {
        if r == hostile::REFUSED {
            self.refused += 1;
            return;
        }
        self.calls[(nr as usize).min(18)] += 1;
        if is_err(r) {
            self.errors += 1;
        }
    }

    /// A call that must have failed succeeded: log it and tell the test.
    fn violation(&mut self, what: &str, nr: u64, a0: u64, a1: u64, a2: u64, r: u64) {
        self.violations += 1;
        logf!("sysfuzz: VIOLATION {} succeeded: nr {} args {:#x} {:#x} {:#x} -> {:#x}", what, nr, a0, a1, a2, r);
        let _ = send(SLOT_REPORT, REPORT_VIOLATION, [nr, a0, a1, r]);
    }

    fn expect_err(&mut self, what: &str, must_fail: bool, nr: u64, a: [u64; 3], r: u64) {
        self.note(nr, r);
        if must_fail && !is_err(r) {
            self.violation(what, nr, a[0], a[1], a[2], r);
        }
    }

    fn junk(&mut self) -> u64 {
        if self.rng.one_in(2) { self.rng.next() } else { self.addr() }
    }

    /// One random syscall with hostile arguments.
    fn step(&mut self) {
        self.steps += 1;
        let nr = match self.rng.below(40) {
            0 => SYS_NULL,
            1 => SYS_YIELD,
            2 => SYS_SLEEP,
            3 => SYS_TIME,
            4..=6 => SYS_SEND,
            7 | 8 => SYS_RECV,
            9..=11 => SYS_CALL,
            12 | 13 => SYS_REPLY,
            14..=17 => SYS_MAP,
            18..=20 => SYS_UNMAP,
            21..=23 => SYS_LOG,
            24 => SYS_JOIN,
            25..=28 => SYS_CALL_GRANT,
            29..=31 => SYS_MAP_MMIO,
            32 => SYS_DMA_ALLOC,
            33 => SYS_BIND_ADDRESS,
            34 => SYS_SENDER,
            35 => 18 + self.rng.below(64 - 18),
            36 => 0x100 + self.rng.below(1 << 20),
            37 => u64::MAX - self.rng.below(4),
            _ => SYS_NULL,
        };
        match nr {
            SYS_NULL | SYS_TIME | SYS_SENDER | SYS_YIELD => {
                let (j0, j1, j2) = (self.junk(), self.junk(), self.junk());
                let r = if nr == SYS_SENDER {
                    hostile::syscall_msg(nr, j0, j1, [j2; 4])
                } else {
                    hostile::syscall(nr, [j0, j1, j2, self.rng.next(), self.rng.next(), self.rng.next()])
                };
                self.note(nr, r);
                if nr != SYS_TIME && r != 0 {
                    self.violation("plain syscall", nr, j0, j1, j2, r);
                }
            }
            SYS_SLEEP => {
                let ns = self.timeout() / 8;
                let r = hostile::syscall(nr, [ns, self.junk(), 0, 0, 0, 0]);
                self.note(nr, r);
            }
            SYS_SEND | SYS_CALL => {
                let mut slot = self.slot();
                if nr == SYS_CALL {
                    // rdi bits 32..63: the caller's timeout in ms (0: none). A call to its own
                    // endpoint is never answered: it needs one (without: the final-op class).
                    let ms = match self.rng.below(4) {
                        _ if slot & 0xffff_ffff == SLOT_OWN => 1 + self.rng.below(5),
                        0 => 1 + self.rng.below(50),
                        1 => self.rng.pick(&[u32::MAX as u64, 1 << 31, 0xffff]),
                        _ => 0,
                    };
                    slot = (slot & 0xffff_ffff) | ms << 32;
                }
                let dead = Self::dead_slot(if nr == SYS_CALL { slot & 0xffff_ffff } else { slot });
                let label = match self.rng.below(16) {
                    0 | 1 => LABEL_NOTIFY,
                    // (not in the first run, whose held grant needs the peer)
                    2 if slot & 0xffff_ffff == SLOT_PEER && self.cfg.classes & F_FIRST_RUN == 0 && self.rng.one_in(64) => PEER_DIE,
                    3 => GRANT_LABEL,
                    _ => self.rng.next(),
                };
                let mut w = [self.junk(), self.junk(), self.junk(), self.junk()];
                if label == GRANT_LABEL {
                    // a forged grant descriptor: the peer's grant window (where a real grant
                    // of ours would be), in an ordinary message; the peer must not take it
                    w[2] = (GRANT_WINDOW + self.rng.below(64) * 4096 * PAGE) | self.rng.below(2);
                    w[3] = PAGE * (1 + self.rng.below(4));
                }
                let r = if nr == SYS_SEND {
                    hostile::syscall(nr, [slot, label, w[0], w[1], w[2], w[3]])
                } else {
                    hostile::syscall_msg(nr, slot, label, w)
                };
                self.expect_err("send/call on a dead slot", dead, nr, [slot, label, w[0]], r);
            }
            SYS_RECV => {
                let slot = self.slot();
                let t = if self.cfg.classes & C_HUGE_TIMEOUT != 0 && self.rng.one_in(16) {
                    // Empty its queue so the receive really waits: now + t overflows, and the
                    // test's next TICK ends the wait.
                    while recv(SLOT_OWN, 1).is_ok() {}
                    self.rng.pick(&[u64::MAX, u64::MAX - 1, 1 << 63, u64::MAX - now_ns()])
                } else {
                    self.timeout()
                };
                let slot = if t > 1 << 62 { SLOT_OWN } else { slot };
                let r = hostile::syscall_msg(nr, slot, t, [self.junk(); 4]);
                // Only slot 0 carries the receive right.
                self.expect_err("recv without the receive right", slot != SLOT_OWN, nr, [slot, t, 0], r);
            }
            SYS_REPLY => {
                let tok = match self.rng.below(4) {
                    0 => self.rng.below(64),
                    1 => self.rng.below(1 << 20),
                    2 => self.rng.pick(&[0, u64::MAX, u64::MAX - 1, 1 << 63]),
                    _ => self.rng.next(),
                };
                let r = hostile::syscall(nr, [tok, self.rng.next(), self.junk(), self.junk(), 0, 0]);
                // Nobody ever calls this task: it owes no reply.
                self.expect_err("reply with a forged token", true, nr, [tok, 0, 0], r);
            }
            SYS_MAP => {
                let (virt, pages) = (self.addr(), self.pages());
                let outside = class_of(virt, pages.saturating_mul(PAGE)) == Class::Outside;
                // Pages known to be mapped: this code's page, a rodata page, the stack.
                let probe = PROBE.as_ptr() as u64 & !(PAGE - 1);
                let on_text = virt & !(PAGE - 1) == self.text || virt & !(PAGE - 1) == probe || (STACK_TOP - STACK_PAGES * PAGE..STACK_TOP).contains(&virt);
                // Bounded memory: fresh pages only in the arena (or refused ones).
                let in_arena = virt >= ARENA && virt.saturating_add(pages.saturating_mul(PAGE)) <= ARENA + ARENA_PAGES * PAGE;
                if !in_arena && !outside && !on_text && virt.is_multiple_of(PAGE) && pages != 0 && pages <= 1 << 40 {
                    return;
                }
                if reserved(virt, pages) && !outside {
                    return;
                }
                let r = hostile::syscall(nr, [virt, pages, self.junk(), 0, 0, 0]);
                self.expect_err("map outside the user half / over mapped pages", pages > 0 && (outside || (on_text && virt % PAGE == 0)), nr, [virt, pages, 0], r);
            }
            SYS_UNMAP => {
                let (virt, pages) = (self.addr(), self.pages());
                let outside = class_of(virt, pages.saturating_mul(PAGE)) == Class::Outside;
                if outside && self.cfg.classes & C_UNMAP_HOSTILE == 0 {
                    return;
                }
                if mmio_pages(virt, pages) && !outside {
                    return;
                }
                // Unmapping its own code, data or stack kills this task later: rare.
                let own = virt < ARENA || (STACK_TOP - STACK_PAGES * PAGE..STACK_TOP).contains(&virt);
                if own && !outside && (self.cfg.classes & F_FIRST_RUN != 0 || !self.rng.one_in(64)) {
                    return;
                }
                let r = hostile::syscall(nr, [virt, pages, self.junk(), 0, 0, 0]);
                if r == hostile::REFUSED && own {
                    // its own code, data or stack: the run ends with the unmap (no Rust code
                    // may run on memory it took away); a chosen exit for the test
                    logf!("sysfuzz: unmapping its own memory ({:#x}, {} pages) and exiting (after {} steps)", virt, pages, self.steps);
                    self.report(REPORT_STATS);
                    hostile::unmap_then_exit(virt, pages, 1 << 63 | 0x0a);
                }
                self.expect_err("unmap outside the user half", pages > 0 && outside, nr, [virt, pages, 0], r);
            }
            SYS_LOG => {
                let (ptr, len) = if self.rng.one_in(16) {
                    (PROBE.as_ptr() as u64 + self.rng.below(8), self.rng.below(PROBE.len() as u64 - 8))
                } else {
                    let p = self.addr();
                    (p, self.len(p))
                };
                // The kernel reads at most LOG_MAX bytes: that range must be valid.
                let cls = class_of(ptr, len.min(LOG_MAX));
                let mmio = ptr < MMIO_VA + 2 * PAGE && ptr.saturating_add(len.min(LOG_MAX)) > MMIO_VA;
                if mmio && self.cfg.classes & C_LOG_MMIO == 0 {
                    return;
                }
                // Readable user memory other than the probe string would print its bytes
                // (zeros, mostly) into the node's log: ask for none of it.
                let probe = (PROBE.as_ptr() as u64..PROBE.as_ptr() as u64 + 8).contains(&ptr);
                let len = if cls == Class::User && !mmio && !probe { 0 } else { len };
                let r = hostile::syscall(nr, [ptr, len, self.junk(), 0, 0, 0]);
                self.expect_err("log from outside the user half / an unmapped page", len > 0 && cls != Class::User, nr, [ptr, len, 0], r);
            }
            SYS_JOIN => {
                let t = match self.rng.below(4) {
                    0 => self.rng.below(32),
                    1 => self.cfg.peer_task,
                    2 => self.rng.pick(&[0, u64::MAX, 1 << 32]),
                    _ => self.rng.next(),
                };
                let to = self.timeout();
                let r = hostile::syscall(nr, [t, to, 0, 0, 0, 0]);
                self.note(nr, r);
            }
            SYS_CALL_GRANT => {
                let slot = if self.rng.one_in(4) { self.slot() } else { SLOT_PEER };
                let base = self.addr();
                let len = self.len(base);
                let writable = self.rng.one_in(2);
                let cls = class_of(base & !1, len);
                let label = if self.rng.one_in(2) { GRANT_LABEL } else { self.rng.next() };
                let r = hostile::syscall_msg(nr, slot, label, [self.junk(), self.junk(), base | writable as u64, len]);
                let unowned = cls != Class::User || (base & !1) & !(PAGE - 1) == MMIO_VA || (base & !1) & !(PAGE - 1) == MMIO_VA + PAGE || (writable && (self.text..self.text + PAGE).contains(&base));
                self.expect_err("grant of memory the task does not own", len > 0 && unowned, nr, [slot, base, len], r);
            }
            SYS_MAP_MMIO => {
                let virt = if self.rng.one_in(3) { ARENA + self.rng.below(ARENA_PAGES) * PAGE } else { self.addr() };
                let p = self.cfg.mmio_phys;
                let phys = match self.rng.below(6) {
                    0 | 1 => p,
                    2 => p + PAGE,
                    3 => self.rng.pick(&[0xfee0_0000, 0x10_0000, 0, 0xfec0_0000, 0xffff_f000, HOLE_PHYS, HOLE_PHYS + PAGE]),
                    4 => p.wrapping_sub(PAGE),
                    _ => self.rng.next() & !(PAGE - 1),
                };
                let len = if self.rng.one_in(2) { self.rng.pick(&[PAGE, 1, PAGE - 1, PAGE + 1, 0]) } else { self.len(phys) };
                if len > 1 << 40 && self.cfg.classes & C_MMIO_HUGE_LEN == 0 {
                    return;
                }
                if reserved(virt, len.div_ceil(PAGE)) && class_of(virt, len.div_ceil(PAGE).saturating_mul(PAGE)) != Class::Outside {
                    return;
                }
                let r = hostile::syscall(nr, [virt, phys, len, 0, 0, 0]);
                let ungranted = (phys != p && phys != HOLE_PHYS) || len > PAGE;
                let outside = class_of(virt, len.div_ceil(PAGE).saturating_mul(PAGE)) == Class::Outside;
                self.expect_err("map_mmio outside the grant / the user half", len > 0 && (ungranted || outside), nr, [virt, phys, len], r);
            }
            SYS_DMA_ALLOC => {
                let virt = if self.rng.one_in(2) { DMA_VA + (4 + self.rng.below(60)) * PAGE } else { self.addr() };
                let pages = self.pages();
                if reserved(virt, pages) && class_of(virt, pages.saturating_mul(PAGE)) != Class::Outside {
                    return;
                }
                let r = hostile::syscall(nr, [virt, pages, 0, 0, 0, 0]);
                let outside = class_of(virt, pages.saturating_mul(PAGE)) == Class::Outside;
                self.expect_err("dma_alloc over the quota / outside the user half", pages > 0 && (pages > self.dma_left || outside), nr, [virt, pages, 0], r);
                if !is_err(r) {
                    self.dma_left = self.dma_left.saturating_sub(pages);
                }
            }
            SYS_ALIVE => {
                // Only periods out of range: an armed heartbeat would have the fuzzer killed
                // for not beating (the kernel tests cover the armed case).
                let p = self.rng.pick(&[0, 1, HEARTBEAT_MIN_MS - 1, HEARTBEAT_MAX_MS + 1, 1 << 40, u64::MAX]);
                let r = hostile::syscall_msg(nr, p, self.junk(), [0; 4]);
                self.expect_err("alive with a period out of range", true, nr, [p, 0, 0], r);
            }
            SYS_BIND_ADDRESS => {
                let slot = self.slot();
                let r = hostile::syscall_msg(nr, slot, self.junk(), [0; 4]);
                // No capability here carries BIND for a local endpoint.
                self.expect_err("bind_address", true, nr, [slot, 0, 0], r);
            }
            _ => {
                let r = hostile::syscall_msg(nr, self.junk(), self.junk(), [self.junk(); 4]);
                self.expect_err("unknown syscall number", nr >= 0x100, nr, [0, 0, 0], r);
            }
        }
    }

    /// Enter the kernel in odd machine states: hostile RFLAGS, a hostile stack pointer.
    fn odd_entry(&mut self) {
        let nr = self.rng.pick(&[SYS_NULL, SYS_TIME, SYS_YIELD, SYS_SENDER]);
        match self.rng.below(4) {
            0 => {
                let r = hostile::syscall_with_flags(hostile::FLAG_AC, nr, self.junk(), self.junk(), 0);
                self.note(nr, r);
            }
            1 if self.cfg.classes & (C_TRAP_FLAG | F_FIRST_RUN) == C_TRAP_FLAG && self.rng.one_in(64) => {
                // Single-stepping `syscall`: the #DB is due right at the kernel's entry.
                let r = hostile::syscall_with_flags(hostile::FLAG_TF, nr, 0, 0, 0);
                self.note(nr, r);
            }
            2 => {
                let bad = self.rng.pick(&[0, 8, GUARD + PAGE - 8, USER_END, 0x8000_0000_0000_0000, 0xffff_ffff_8000_0000, !15]);
                let nr = self.rng.pick(&[SYS_NULL, SYS_TIME, SYS_YIELD]);
                let r = hostile::syscall_with_rsp(bad, nr);
                self.note(nr, r);
            }
            3 if self.cfg.classes & C_LOG_FORGE != 0 && self.rng.one_in(2) => {
                // A line of its own in the node's log, if control characters went through.
                let mut l = Line::new();
                let _ = core::fmt::Write::write_fmt(&mut l, format_args!("sysfuzz: forging\n{}\r\x1b[2K{}\x1b[1A", FORGED_LINE, FORGED_LINE));
                let r = hostile::syscall(SYS_LOG, [l.as_str().as_ptr() as u64, l.as_str().len() as u64, 0, 0, 0, 0]);
                self.note(SYS_LOG, r);
            }
            _ => {
                // Timer interrupts taken with AC set.
                hostile::spin_with_ac(3_000_000);
            }
        }
    }

    /// Kill this task on purpose, in one of many ways (the test counts kills by vector).
    fn suicide(&mut self) -> ! {
        let how = self.rng.below(12);
        logf!("sysfuzz: dying on purpose (way {}) after {} steps", how, self.steps);
        self.report(REPORT_STATS);
        match how {
            0 => {
                hostile::read_u64(self.rng.pick(&[0xffff_ffff_8020_0000, 0xffff_8000_0000_0000, 0xffff_ffff_ffff_fff8]));
            }
            1 => {
                hostile::read_u64(self.rng.pick(&[USER_END, 0x8000_0000_0000_0000, 0xdead_beef_dead_bee0]));
            }
            2 => {
                hostile::read_u64(GUARD + 8);
            }
            3 => {
                // its own (read-only) code
                hostile::write_u64(self.text, 0);
            }
            4 => hostile::fault(Fault::Ud2),
            5 => hostile::fault(Fault::Int3),
            6 => hostile::fault(Fault::Int(self.rng.next() as u8)),
            7 => hostile::fault(self.rng.pick(&[Fault::Hlt, Fault::Cli, Fault::Rdmsr, Fault::WriteCr3, Fault::Icebp])),
            8 => hostile::fault(Fault::SegLoad(self.rng.pick(&[0x08, 0x10, 0x2b, 0xfff8, 0x4]))),
            9 => hostile::fault(Fault::SimdDivZero),
            10 => hostile::fault(Fault::TrapFlag),
            _ => {
                let _ = inb(0x70);
            }
        }
        // Still alive: that was a (valid) no-op.
        exit(0x5f_0000 | how)
    }

    /// The last thing a run does: block in a way only the test can end (or exit).
    fn final_op(&mut self) -> ! {
        self.report(REPORT_STATS);
        let how = match self.cfg.classes & (F_FIRST_RUN | F_FIRST_HOLD) {
            0 => self.rng.below(6),
            F_FIRST_RUN => 5,
            _ => 4,
        };
        match how {
            0 if self.cfg.classes & C_HUGE_TIMEOUT != 0 => {
                let ns = self.rng.pick(&[u64::MAX, u64::MAX - 1, 1 << 63, u64::MAX - now_ns()]);
                logf!("sysfuzz: final op: sleep({:#x})", ns);
                sleep_ns(ns);
            }
            1 if self.cfg.classes & C_HUGE_TIMEOUT != 0 => {
                let t = self.rng.pick(&[u64::MAX, 1 << 63]);
                logf!("sysfuzz: final op: recv(own, {:#x}) / join(peer, {:#x})", t, t);
                let _ = recv(SLOT_OWN, t);
                hostile::syscall(SYS_JOIN, [self.cfg.peer_task, t, 0, 0, 0, 0]);
            }
            2 => {
                log("sysfuzz: final op: call to its own endpoint");
                let _ = call(SLOT_OWN, 1, [0; 4]);
            }
            4 => {
                // Lend pages to the peer, which never answers: the test kills this task while
                // they are mapped in the peer (the frames must pass to the peer, then back).
                // Fresh pages of its own, away from everything it fuzzed; the peer's queue may
                // be full of its junk for a moment.
                let _ = hostile::syscall(SYS_MAP, [HOLD_VA, 4, 0, 0, 0, 0]);
                log("sysfuzz: final op: grant held by the peer");
                let w = self.rng.one_in(2);
                for _ in 0..200 {
                    match hostile::syscall_msg(SYS_CALL_GRANT, SLOT_PEER, GRANT_HOLD, [0, 0, HOLD_VA | w as u64, 4 * PAGE]) {
                        r if r == 3u64.wrapping_neg() => sleep_ns(1_000_000), // QueueFull
                        r => {
                            logf!("sysfuzz: the held grant call ended: {:#x}", r);
                            break;
                        }
                    }
                }
            }
            3 => {
                // Any exit code is the task's to choose (the top bit marks it for the test).
                let code = self.rng.next() | 1 << 63;
                self.calls[SYS_EXIT as usize] += 1;
                self.report(REPORT_DONE);
                exit(code)
            }
            _ => {}
        }
        self.calls[SYS_EXIT as usize] += 1;
        self.report(REPORT_DONE);
        exit(0)
    }

    fn report(&mut self, label: u64) {
        let covered = self.calls.iter().enumerate().filter(|(_, c)| **c > 0).fold(0u64, |m, (i, _)| m | 1 << i);
        let total: u64 = self.calls.iter().sum();
        let _ = send(SLOT_REPORT, label, [total, self.errors, self.violations, covered]);
    }

    fn log_coverage(&self) {
        let mut l = Line::new();
        let _ = core::fmt::Write::write_str(&mut l, "sysfuzz: calls");
        for (i, n) in self.calls.iter().enumerate() {
            if *n > 0 {
                let _ = core::fmt::Write::write_fmt(&mut l, format_args!(" {}={}", NAMES[i], n));
            }
        }
        log(l.as_str());
        logf!("sysfuzz: {} calls not made (aimed at its own memory: hostile::REFUSED)", self.refused);
    }
}

fn peer() -> u64 {
    let mut held = 0u64;
    loop {
        let Ok(m) = recv(SLOT_OWN, 0) else { continue };
        if m.label == PEER_STOP && m.badge == 0 {
            // A held call's caller was killed by now: its call ended with it.
            if held != 0 && reply(held, 0, [0; 4]).is_ok() {
                return PEER_BAD_REPLY;
            }
            return 0;
        }
        if m.label == PEER_DIE && m.badge == 1 && m.reply == 0 {
            return PEER_DIED;
        }
        if m.reply == 0 {
            continue;
        }
        if m.label == GRANT_HOLD && m.badge == 1 && m.grant().is_some() {
            held = m.reply; // never answered: the caller dies holding the grant
            continue;
        }
        // A granted range (read-only use: the fuzzer may grant its own stack). Words 2 and 3
        // of any call are the sender's to choose: only what the kernel flagged as a grant is
        // read (the fuzzer also sends forged descriptors with GRANT_LABEL).
        let mut sum = 0u64;
        if let Some(g) = m.grant().filter(|_| m.label == GRANT_LABEL) {
            let mut off = 0;
            while off < g.len().min(64 * PAGE) {
                sum = sum.wrapping_add(g.try_read_u64(off).unwrap_or_else(|| g.read_u8(off) as u64));
                off += PAGE;
            }
        }
        let _ = reply(m.reply, m.label.wrapping_add(1), [sum, 0, 0, 0]);
    }
}

entry!(run);

fn run(seed: u64) -> u64 {
    let Ok(c) = recv(SLOT_OWN, 0) else { return 1 };
    match c.label {
        CFG_PEER => return peer(),
        CFG_FUZZ => {}
        _ => return 2,
    }
    let cfg = Cfg { deadline: c.words[0], classes: c.words[1], mmio_phys: c.words[2], peer_task: c.words[3] };
    let mut fz = Fz { rng: Rng(seed), cfg, calls: [0; 19], errors: 0, violations: 0, refused: 0, dma_left: 4, text: run as *const () as u64 & !(PAGE - 1), steps: 0 };
    logf!("sysfuzz: run seed {:#018x}, classes {:#x}, {} ms", seed, fz.cfg.classes, fz.cfg.deadline.saturating_sub(now_ns()) / 1_000_000);
    // Some real state to aim at: arena pages, the MMIO grant, DMA memory.
    // (raw: the fuzzer unmaps and remaps them; no region object of it points there)
    let _ = hostile::syscall(SYS_MAP, [ARENA, 8, 0, 0, 0, 0]);
    let _ = hostile::syscall(SYS_MAP_MMIO, [MMIO_VA, fz.cfg.mmio_phys, PAGE, 0, 0, 0]);
    let _ = hostile::syscall(SYS_MAP_MMIO, [MMIO_VA + PAGE, HOLE_PHYS, PAGE, 0, 0, 0]);
    if !is_err(hostile::syscall(SYS_DMA_ALLOC, [DMA_VA, 2, 0, 0, 0, 0])) {
        fz.dma_left -= 2;
    }
    loop {
        if now_ns() >= fz.cfg.deadline {
            fz.log_coverage();
            fz.final_op();
        }
        for _ in 0..64 {
            match fz.rng.below(32768) {
                0 if fz.cfg.classes & F_FIRST_RUN == 0 => fz.suicide(),
                1..=128 => fz.odd_entry(),
                _ => fz.step(),
            }
        }
        if fz.steps % 1024 < 64 {
            fz.report(REPORT_STATS);
        }
    }
}
