//! Memory map normalisation: overlap resolution, sorting, merging, carving reservations.

use crate::{MemoryKind, MemoryRegion};
use alloc::vec::Vec;

/// Sorts, resolves overlaps (higher precedence wins) and merges adjacent same-kind regions.
///
/// Sweep over the region boundaries keeping, for each kind, how many regions cover the current
/// point; each elementary interval gets the highest-precedence covered kind. O(n log n).
pub(crate) fn normalize(map: &mut Vec<MemoryRegion>) {
    // (position, +1/-1, kind index); ends sort before starts at the same position, which does not
    // matter for correctness because intervals are only emitted between distinct positions.
    let mut events: Vec<(u64, i8, usize)> = Vec::with_capacity(map.len() * 2);
    for r in map.iter() {
        let end = r.end();
        if end <= r.start {
            continue;
        }
        let k = r.kind.precedence() as usize;
        events.push((r.start, 1, k));
        events.push((end, -1, k));
    }
    events.sort_unstable_by_key(|&(pos, delta, _)| (pos, delta));

    let mut out: Vec<MemoryRegion> = Vec::with_capacity(map.len());
    let mut counts = [0usize; 8];
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, delta, k) = events[i];
            if delta > 0 {
                counts[k] += 1;
            } else {
                counts[k] -= 1;
            }
            i += 1;
        }
        let Some(next) = events.get(i).map(|e| e.0) else {
            break;
        };
        let Some(top) = (0..8).rev().find(|&k| counts[k] > 0) else {
            continue;
        };
        let kind = MemoryKind::ALL[top];
        match out.last_mut() {
            Some(last) if last.kind == kind && last.end() == pos => last.len += next - pos,
            _ => out.push(MemoryRegion {
                start: pos,
                len: next - pos,
                kind,
            }),
        }
    }
    *map = out;
}

/// Re-labels the `Usable` parts of `[start, start + len)` as `kind` and re-normalises.
pub(crate) fn reserve(map: &mut Vec<MemoryRegion>, start: u64, len: u64, kind: MemoryKind) {
    let end = start.saturating_add(len);
    if end <= start {
        return;
    }
    normalize(map);
    let mut out: Vec<MemoryRegion> = Vec::with_capacity(map.len() + 2);
    for r in map.iter() {
        let (rs, re) = (r.start, r.end());
        if r.kind != MemoryKind::Usable || re <= start || rs >= end {
            out.push(*r);
            continue;
        }
        let (cs, ce) = (rs.max(start), re.min(end));
        if rs < cs {
            out.push(MemoryRegion {
                start: rs,
                len: cs - rs,
                kind: MemoryKind::Usable,
            });
        }
        out.push(MemoryRegion {
            start: cs,
            len: ce - cs,
            kind,
        });
        if ce < re {
            out.push(MemoryRegion {
                start: ce,
                len: re - ce,
                kind: MemoryKind::Usable,
            });
        }
    }
    *map = out;
    normalize(map);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use MemoryKind::*;

    fn r(start: u64, len: u64, kind: MemoryKind) -> MemoryRegion {
        MemoryRegion { start, len, kind }
    }

    #[test]
    fn sorts_and_merges() {
        let mut m = vec![
            r(0x2000, 0x1000, Usable),
            r(0, 0x1000, Usable),
            r(0x1000, 0x1000, Usable),
        ];
        normalize(&mut m);
        assert_eq!(m, vec![r(0, 0x3000, Usable)]);
    }

    #[test]
    fn gap_prevents_merge_and_empty_dropped() {
        let mut m = vec![
            r(0, 0x1000, Usable),
            r(0x2000, 0x1000, Usable),
            r(0x5000, 0, Reserved),
        ];
        normalize(&mut m);
        assert_eq!(m, vec![r(0, 0x1000, Usable), r(0x2000, 0x1000, Usable)]);
    }

    #[test]
    fn reserved_wins_over_usable() {
        let mut m = vec![r(0, 0x10000, Usable), r(0x4000, 0x2000, Reserved)];
        normalize(&mut m);
        assert_eq!(
            m,
            vec![
                r(0, 0x4000, Usable),
                r(0x4000, 0x2000, Reserved),
                r(0x6000, 0xa000, Usable)
            ]
        );
        // Either order of input gives the same answer.
        let mut m2 = vec![r(0x4000, 0x2000, Reserved), r(0, 0x10000, Usable)];
        normalize(&mut m2);
        assert_eq!(m, m2);
    }

    #[test]
    fn partial_overlap_and_precedence_chain() {
        let mut m = vec![
            r(0, 0x3000, AcpiReclaimable),
            r(0x2000, 0x3000, BadMemory),
            r(0x1000, 0x1000, Usable),
        ];
        normalize(&mut m);
        assert_eq!(
            m,
            vec![r(0, 0x2000, AcpiReclaimable), r(0x2000, 0x3000, BadMemory)]
        );
    }

    #[test]
    fn overflowing_region_is_clamped() {
        let mut m = vec![r(u64::MAX - 0xfff, 0x2000, Usable)];
        normalize(&mut m);
        assert_eq!(m, vec![r(u64::MAX - 0xfff, 0xfff, Usable)]);
    }

    #[test]
    fn reserve_carves_only_usable() {
        let mut m = vec![
            r(0, 0x4000, Usable),
            r(0x4000, 0x1000, AcpiNvs),
            r(0x5000, 0x3000, Usable),
        ];
        reserve(&mut m, 0x3000, 0x3000, KernelAndModules);
        assert_eq!(
            m,
            vec![
                r(0, 0x3000, Usable),
                r(0x3000, 0x1000, KernelAndModules),
                r(0x4000, 0x1000, AcpiNvs),
                r(0x5000, 0x1000, KernelAndModules),
                r(0x6000, 0x2000, Usable),
            ]
        );
        // Reserving outside any region or with zero length changes nothing.
        let before = m.clone();
        reserve(&mut m, 0x100000, 0x1000, KernelAndModules);
        reserve(&mut m, 0x1000, 0, KernelAndModules);
        assert_eq!(m, before);
    }
    /// Random maps: the normalised map must be sorted, disjoint, merged, and give every probed
    /// address the highest-precedence kind among the input regions covering it.
    #[test]
    fn randomised_against_model() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..500 {
            let input: Vec<MemoryRegion> = (0..1 + rnd(12))
                .map(|_| {
                    r(
                        rnd(64) * 0x100,
                        rnd(32) * 0x100,
                        MemoryKind::ALL[rnd(8) as usize],
                    )
                })
                .collect();
            let mut m = input.clone();
            normalize(&mut m);
            for w in m.windows(2) {
                assert!(w[0].end() <= w[1].start);
                assert!(!(w[0].end() == w[1].start && w[0].kind == w[1].kind));
            }
            assert!(m.iter().all(|r| r.len > 0));
            for probe in (0..0x6000).step_by(0x80) {
                let want = input
                    .iter()
                    .filter(|r| r.start <= probe && probe < r.end())
                    .map(|r| r.kind)
                    .max_by_key(|k| k.precedence());
                let got = m
                    .iter()
                    .find(|r| r.start <= probe && probe < r.end())
                    .map(|r| r.kind);
                assert_eq!(got, want, "probe {probe:#x} input {input:?}");
            }
            let again = m.clone();
            normalize(&mut m);
            assert_eq!(m, again, "idempotent");
        }
    }
}
