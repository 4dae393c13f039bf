//! The deterministic placement function: which node runs which replica.
//!
//! Pure: the same nodes and workloads give the same plan, whatever order they are listed in
//! (both are sorted first). Rules:
//! - a replica goes only on a node whose free vCPUs and memory (the workload service's
//!   accounting) hold it, and whose labels and key satisfy every constraint;
//! - replicas of one workload are spread: at most one per node;
//! - a workload is placed whole or not at all: if fewer nodes can take it than it has replicas
//!   it is refused with the reason, and nothing of it is placed (no half-running service);
//! - larger workloads are placed first (total memory, then vCPUs, then name), which packs better
//!   than input order; each replica goes to the eligible node with the most memory left after
//!   it, then most vCPUs left, then one whose store already holds the workload's image (no
//!   copy over the fabric), then the smallest key, which spreads load — except that a node
//!   holding the image whose free memory is within an eighth of the roomiest eligible node's
//!   ([`HOLDER_ROOM_SHARE`]) wins over nodes that do not hold it: a copy costs seconds to
//!   minutes of a replacement's start, a little less room costs little;
//! - a node that does not hold a workload's image must have room for it in its image store
//!   (the size a holder reported; a node that reports no room is not refused for it): the copy
//!   would fail there and the replica never start. A placement's copy counts against that room
//!   for the rest of the plan.
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::identity::NodeKey;

/// A node as the scheduler sees it: what is still free on it, and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCapacity {
    pub key: NodeKey,
    pub free_vcpus: u32,
    pub free_mem_mib: u64,
    pub labels: BTreeMap<String, String>,
    /// The images (digests) in its store as it last reported them (at most
    /// [`IMAGES_MAX`]): among nodes otherwise equal, a holder of the workload's image wins.
    pub images: Vec<[u8; 32]>,
    /// The size in MiB of each of `images`, in the same order, as the node reported them
    /// (empty: a node that reports no sizes). The scheduler learns an image's size here.
    pub image_mib: Vec<u32>,
    /// Room left in its image store, MiB ([`STORE_UNKNOWN`]: not reported, never a reason to
    /// refuse the node). A node that does not hold a workload's image takes a replica only if
    /// the image fits: else its copy would fail and the replica would never start.
    pub store_free_mib: u64,
}

/// [`NodeCapacity::store_free_mib`] of a node that did not report its store's room.
pub const STORE_UNKNOWN: u64 = u64::MAX;

/// A node holding a workload's image is preferred over roomier nodes that do not hold it as
/// long as its free memory is at least `1 - 1/HOLDER_ROOM_SHARE` of the roomiest eligible
/// node's (7/8: with 8 GiB free on the roomiest, a holder with 7 GiB free wins).
pub const HOLDER_ROOM_SHARE: u64 = 8;

/// Image digests a node reports ([`crate::raft_codec::Wire::Capacity`]: they fit one
/// datagram with the rest).
pub const IMAGES_MAX: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Constraint {
    /// The node must carry label `key` with this value.
    LabelEquals { key: String, value: String },
    /// The node must not carry label `key` with this value (a node without the label is
    /// allowed: `zone!=a` means "not in zone a").
    LabelNotEquals { key: String, value: String },
    /// The node must be one of these.
    OnNodes(Vec<NodeKey>),
    /// The node must not be this one (a drained node).
    NotOnNode(NodeKey),
}

impl Constraint {
    pub fn allows(&self, node: &NodeCapacity) -> bool {
        match self {
            Constraint::LabelEquals { key, value } => node.labels.get(key) == Some(value),
            Constraint::LabelNotEquals { key, value } => node.labels.get(key) != Some(value),
            Constraint::OnNodes(keys) => keys.contains(&node.key),
            Constraint::NotOnNode(k) => node.key != *k,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadDemand {
    pub name: String,
    pub replicas: u32,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub constraints: Vec<Constraint>,
    /// Its image's digest (nodes that hold it are preferred when otherwise equal).
    pub image: [u8; 32],
    /// Its image's size in MiB, as a holder reported it (0: unknown): what a node that does
    /// not hold it needs free in its store ([`image_sizes`] finds it in the reports).
    pub image_mib: u64,
}

/// The largest size each image was reported with, over `nodes` (a node that reports sizes
/// lists one per image): what [`WorkloadDemand::image_mib`] is filled from.
pub fn image_sizes(nodes: &[NodeCapacity]) -> BTreeMap<[u8; 32], u64> {
    let mut m: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.image_mib.len() == n.images.len()) {
        for (d, mib) in n.images.iter().zip(&n.image_mib) {
            let e = m.entry(*d).or_default();
            *e = (*e).max(u64::from(*mib));
        }
    }
    m
}

impl WorkloadDemand {
    fn total_mem(&self) -> u128 {
        u128::from(self.mem_mib) * u128::from(self.replicas)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Placement {
    pub workload: String,
    pub replica: u32,
    pub node: NodeKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefusalReason {
    /// Zero vCPUs or memory, or a name given to more than one workload.
    Invalid,
    /// Fewer nodes have room and satisfy the constraints than there are replicas.
    NoRoom { eligible: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    pub workload: String,
    pub reason: RefusalReason,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted by workload name, then replica.
    pub placements: Vec<Placement>,
    /// Sorted by workload name.
    pub refused: Vec<Refusal>,
}

/// Does replica of `w` fit on `node`, whose store already gets the images `incoming` from
/// earlier placements of this plan (their room is taken once)?
fn fits(node: &NodeCapacity, incoming: &[[u8; 32]], w: &WorkloadDemand) -> bool {
    node.free_vcpus >= w.vcpus
        && node.free_mem_mib >= w.mem_mib
        && (node.images.contains(&w.image) || incoming.contains(&w.image) || node.store_free_mib >= w.image_mib)
        && w.constraints.iter().all(|c| c.allows(node))
}

/// Places `workloads` on `nodes` (see the module comment for the rules).
pub fn place(nodes: &[NodeCapacity], workloads: &[WorkloadDemand]) -> Plan {
    // A key listed twice is ambiguous (which capacity, which labels?): that node is left out.
    let mut keys: BTreeMap<NodeKey, usize> = BTreeMap::new();
    for n in nodes {
        *keys.entry(n.key).or_default() += 1;
    }
    let mut free: Vec<NodeCapacity> = nodes
        .iter()
        .filter(|n| keys[&n.key] == 1)
        .cloned()
        .collect();
    free.sort_by_key(|n| n.key);

    // A name given twice is ambiguous: every workload with it is refused.
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for w in workloads {
        *names.entry(w.name.as_str()).or_default() += 1;
    }
    let mut plan = Plan::default();
    let mut incoming: Vec<Vec<[u8; 32]>> = alloc::vec![Vec::new(); free.len()];
    let mut valid: Vec<&WorkloadDemand> = Vec::new();
    for w in workloads {
        if w.vcpus == 0 || w.mem_mib == 0 || names[w.name.as_str()] > 1 {
            plan.refused.push(Refusal {
                workload: w.name.clone(),
                reason: RefusalReason::Invalid,
            });
        } else {
            valid.push(w);
        }
    }
    valid.sort_by(|a, b| {
        b.total_mem()
            .cmp(&a.total_mem())
            .then(b.vcpus.cmp(&a.vcpus))
            .then_with(|| a.name.cmp(&b.name))
    });

    for w in valid {
        if w.replicas == 0 {
            continue;
        }
        let eligible = (0..free.len()).filter(|&i| fits(&free[i], &incoming[i], w)).count();
        if eligible < w.replicas as usize {
            plan.refused.push(Refusal {
                workload: w.name.clone(),
                reason: RefusalReason::NoRoom {
                    eligible: eligible as u32,
                },
            });
            continue;
        }
        let mut used = alloc::vec![false; free.len()];
        for replica in 0..w.replicas {
            // Enough eligible nodes were counted above and each replica takes a new one.
            let eligible = || (0..free.len()).filter(|&i| !used[i] && fits(&free[i], &incoming[i], w));
            let roomiest = eligible().map(|i| free[i].free_mem_mib).max().unwrap_or(0);
            let near_holder = |n: &NodeCapacity| n.images.contains(&w.image) && n.free_mem_mib >= roomiest - roomiest / HOLDER_ROOM_SHARE;
            let best = eligible().max_by(|&a, &b| {
                let (na, nb) = (&free[a], &free[b]);
                // A holder near the most room first (see HOLDER_ROOM_SHARE), then room.
                near_holder(na)
                    .cmp(&near_holder(nb))
                    .then((na.free_mem_mib, na.free_vcpus).cmp(&(nb.free_mem_mib, nb.free_vcpus)))
                    // Equal room: a node that holds the image (no copy to wait for), then the
                    // smaller key (max_by keeps the last maximum).
                    .then(na.images.contains(&w.image).cmp(&nb.images.contains(&w.image)))
                    .then(nb.key.cmp(&na.key))
            });
            let Some(i) = best else { break };
            used[i] = true;
            free[i].free_vcpus -= w.vcpus;
            free[i].free_mem_mib -= w.mem_mib;
            if !free[i].images.contains(&w.image) && !incoming[i].contains(&w.image) {
                // the copy this placement brings takes its room once, for every workload of
                // this plan that runs the same image there (not a holder yet: no preference)
                free[i].store_free_mib = free[i].store_free_mib.saturating_sub(w.image_mib);
                incoming[i].push(w.image);
            }
            plan.placements.push(Placement {
                workload: w.name.clone(),
                replica,
                node: free[i].key,
            });
        }
    }
    plan.placements.sort();
    plan.refused.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{sim_key, SimRng};
    use alloc::format;
    use alloc::string::ToString;

    fn random_input(seed: u64) -> (Vec<NodeCapacity>, Vec<WorkloadDemand>) {
        let mut r = SimRng::new(seed);
        let zones = ["a", "b", "c"];
        let n = 1 + r.below(12) as usize;
        // The three images' sizes (MiB); most nodes report their store's room.
        let sizes: Vec<u64> = (0..3).map(|_| r.below(600)).collect();
        // an image no holder reported a size for is 0 for every workload that runs it
        let known: Vec<bool> = (0..3).map(|_| r.per_mille(850)).collect();
        let nodes: Vec<NodeCapacity> = (0..n)
            .map(|i| {
                let mut labels = BTreeMap::new();
                labels.insert("zone".to_string(), zones[r.below(3) as usize].to_string());
                if r.per_mille(300) {
                    labels.insert("gpu".to_string(), "yes".to_string());
                }
                // Half the inputs use a few round sizes, so that ties between nodes are common.
                let (free_vcpus, free_mem_mib) = if seed.is_multiple_of(2) {
                    (r.below(17) as u32, r.below(16_385))
                } else {
                    (4 << r.below(2), 4096 << r.below(2))
                };
                // Each node holds some of three images.
                let images: Vec<[u8; 32]> = (1..=3u8).filter(|_| r.per_mille(400)).map(|d| [d; 32]).collect();
                let image_mib = if r.per_mille(800) { images.iter().map(|d| sizes[d[0] as usize - 1] as u32).collect() } else { Vec::new() };
                let store_free_mib = if r.per_mille(700) { r.below(1200) } else { STORE_UNKNOWN };
                NodeCapacity {
                    key: sim_key(i),
                    free_vcpus,
                    free_mem_mib,
                    labels,
                    images,
                    image_mib,
                    store_free_mib,
                }
            })
            .collect();
        let mut nodes = nodes;
        if r.per_mille(100) {
            // The same key twice, with another capacity: ambiguous, must be left out.
            let mut twin = nodes[0].clone();
            twin.free_mem_mib = r.below(16_385);
            nodes.push(twin);
        }
        let w = r.below(25) as usize;
        let workloads = (0..w)
            .map(|j| {
                let mut constraints = Vec::new();
                match r.below(7) {
                    5 => constraints.push(Constraint::LabelNotEquals {
                        key: "zone".into(),
                        value: zones[r.below(3) as usize].into(),
                    }),
                    0 => constraints.push(Constraint::LabelEquals {
                        key: "zone".into(),
                        value: zones[r.below(3) as usize].into(),
                    }),
                    1 => constraints.push(Constraint::LabelEquals {
                        key: "gpu".into(),
                        value: "yes".into(),
                    }),
                    2 => {
                        constraints.push(Constraint::NotOnNode(sim_key(r.below(n as u64) as usize)))
                    }
                    3 => constraints.push(Constraint::OnNodes(
                        (0..n).filter(|_| r.per_mille(500)).map(sim_key).collect(),
                    )),
                    _ => {}
                }
                let d = r.below(3) as usize;
                WorkloadDemand {
                    name: format!("w{}", if r.per_mille(50) { 0 } else { j }),
                    replicas: r.below(5) as u32,
                    vcpus: r.below(5) as u32,
                    mem_mib: r.below(4097),
                    constraints,
                    image: [1 + d as u8; 32],
                    image_mib: if known[d] { sizes[d] } else { 0 },
                }
            })
            .collect();
        (nodes, workloads)
    }

    /// Capacity (the image stores' room included), spread, constraints, all-or-nothing,
    /// justified refusals, determinism and independence from input order, over 2,000 random
    /// inputs.
    #[test]
    fn placement_properties_hold_on_random_inputs() {
        for seed in 0..2000 {
            let (nodes, workloads) = random_input(seed);
            let plan = place(&nodes, &workloads);
            // What is left on each (unambiguous) node after the plan; never below zero.
            let once = |k: &NodeKey| nodes.iter().filter(|n| n.key == *k).count() == 1;
            let mut left: BTreeMap<NodeKey, NodeCapacity> = nodes
                .iter()
                .filter(|n| once(&n.key))
                .map(|n| (n.key, n.clone()))
                .collect();
            let by_name = |name: &str| {
                workloads
                    .iter()
                    .filter(|w| w.name == name)
                    .collect::<Vec<_>>()
            };
            let mut incoming: BTreeMap<NodeKey, Vec<[u8; 32]>> = BTreeMap::new();
            for p in &plan.placements {
                let ws = by_name(&p.workload);
                assert_eq!(ws.len(), 1, "seed {seed}: placed a duplicate name");
                let w = ws[0];
                assert_eq!(
                    nodes.iter().filter(|n| n.key == p.node).count(),
                    1,
                    "seed {seed}: placed on a missing or ambiguous node"
                );
                let n = left.get_mut(&p.node).expect("a listed node");
                assert!(
                    w.constraints.iter().all(|c| c.allows(n)),
                    "seed {seed}: constraint broken"
                );
                n.free_vcpus = n
                    .free_vcpus
                    .checked_sub(w.vcpus)
                    .expect("vCPUs overcommitted");
                n.free_mem_mib = n
                    .free_mem_mib
                    .checked_sub(w.mem_mib)
                    .expect("memory overcommitted");
                let inc = incoming.entry(p.node).or_default();
                if !n.images.contains(&w.image) && !inc.contains(&w.image) {
                    // the copy: room in the store (once per image and node)
                    n.store_free_mib = n
                        .store_free_mib
                        .checked_sub(w.image_mib)
                        .unwrap_or_else(|| panic!("seed {seed}: {} placed on a store without room for its image", w.name));
                    inc.push(w.image);
                }
            }
            let refused: Vec<&str> = plan.refused.iter().map(|r| r.workload.as_str()).collect();
            for w in &workloads {
                let mine: Vec<&Placement> = plan
                    .placements
                    .iter()
                    .filter(|p| p.workload == w.name)
                    .collect();
                let mut on: Vec<NodeKey> = mine.iter().map(|p| p.node).collect();
                on.sort();
                on.dedup();
                assert_eq!(
                    on.len(),
                    mine.len(),
                    "seed {seed}: two replicas of {} on one node",
                    w.name
                );
                if refused.contains(&w.name.as_str()) {
                    assert!(
                        mine.is_empty(),
                        "seed {seed}: {} refused yet partly placed",
                        w.name
                    );
                } else {
                    assert_eq!(
                        mine.len(),
                        w.replicas as usize,
                        "seed {seed}: {} neither placed whole nor refused",
                        w.name
                    );
                }
            }
            for r in &plan.refused {
                if let RefusalReason::NoRoom { .. } = r.reason {
                    // Justified: even now, fewer nodes could take a replica than it asked for.
                    let w = by_name(&r.workload)[0];
                    let could = left.values().filter(|n| fits(n, incoming.get(&n.key).map_or(&[][..], |v| &v[..]), w)).count();
                    assert!(
                        could < w.replicas as usize,
                        "seed {seed}: {} refused but fits",
                        w.name
                    );
                }
            }
            // Same input, same plan; reversed input order, same plan.
            assert_eq!(place(&nodes, &workloads), plan, "seed {seed}");
            let (mut rn, mut rw) = (nodes.clone(), workloads.clone());
            rn.reverse();
            rw.reverse();
            assert_eq!(place(&rn, &rw), plan, "seed {seed}: depends on input order");
        }
    }

    #[test]
    fn replicas_spread_evenly_over_equal_nodes() {
        let nodes: Vec<NodeCapacity> = (0..4)
            .map(|i| NodeCapacity {
                key: sim_key(i),
                free_vcpus: 64,
                free_mem_mib: 65536,
                labels: BTreeMap::new(),
                images: Vec::new(),
                image_mib: Vec::new(),
                store_free_mib: STORE_UNKNOWN,
            })
            .collect();
        let workloads: Vec<WorkloadDemand> = (0..6)
            .map(|j| WorkloadDemand {
                name: format!("svc{j}"),
                replicas: 2,
                vcpus: 1,
                mem_mib: 512,
                constraints: Vec::new(),
                image: [0; 32],
                image_mib: 0,
            })
            .collect();
        let plan = place(&nodes, &workloads);
        assert!(plan.refused.is_empty());
        let mut count: BTreeMap<NodeKey, usize> = BTreeMap::new();
        for p in &plan.placements {
            *count.entry(p.node).or_default() += 1;
        }
        assert_eq!(count.len(), 4);
        assert!(count.values().all(|&c| c == 3), "{count:?}");
    }

    #[test]
    fn a_workload_that_does_not_fit_is_refused_whole() {
        let nodes: Vec<NodeCapacity> = (0..3)
            .map(|i| NodeCapacity {
                key: sim_key(i),
                free_vcpus: 4,
                free_mem_mib: 1024,
                labels: BTreeMap::new(),
                images: Vec::new(),
                image_mib: Vec::new(),
                store_free_mib: STORE_UNKNOWN,
            })
            .collect();
        let big = WorkloadDemand {
            name: "big".into(),
            replicas: 4,
            vcpus: 1,
            mem_mib: 256,
            constraints: Vec::new(),
            image: [0; 32],
            image_mib: 0,
        };
        let plan = place(&nodes, &[big]);
        assert!(plan.placements.is_empty());
        assert_eq!(
            plan.refused,
            [Refusal {
                workload: "big".into(),
                reason: RefusalReason::NoRoom { eligible: 3 }
            }]
        );
        let drained = WorkloadDemand {
            name: "pinned".into(),
            replicas: 1,
            vcpus: 1,
            mem_mib: 256,
            constraints: alloc::vec![
                Constraint::OnNodes(alloc::vec![sim_key(1)]),
                Constraint::NotOnNode(sim_key(1))
            ],
            image: [0; 32],
            image_mib: 0,
        };
        assert_eq!(
            place(&nodes, &[drained]).refused[0].reason,
            RefusalReason::NoRoom { eligible: 0 }
        );
    }

    /// A node without the image must have room for it in its store; the copy's room is taken
    /// once per plan for every workload of that image; no room report is no refusal.
    #[test]
    fn a_store_without_room_for_the_image_takes_none_of_its_replicas() {
        use alloc::vec;
        let (img, other) = ([0x11; 32], [0x22; 32]);
        let node = |i: usize, mem: u64, images: Vec<[u8; 32]>, room: u64| NodeCapacity {
            key: sim_key(i),
            free_vcpus: 8,
            free_mem_mib: mem,
            labels: BTreeMap::new(),
            image_mib: images.iter().map(|_| 500).collect(),
            images,
            store_free_mib: room,
        };
        let demand = |name: &str, replicas: u32, image: [u8; 32], image_mib: u64| WorkloadDemand {
            name: name.into(),
            replicas,
            vcpus: 1,
            mem_mib: 100,
            constraints: Vec::new(),
            image,
            image_mib,
        };
        // node 0: the most memory but 100 MiB of store; node 1 holds the image (far less
        // memory); node 2: room for it. Without the store rule node 0 would win.
        let nodes = vec![node(0, 8000, vec![], 100), node(1, 4000, vec![img], 0), node(2, 6000, vec![], 600)];
        let on = |p: &Plan| p.placements.iter().map(|p| p.node).collect::<Vec<_>>();
        assert_eq!(on(&place(&nodes, &[demand("a", 1, img, 500)])), vec![sim_key(2)]);
        assert_eq!(place(&nodes, &[demand("a", 3, img, 500)]).refused[0].reason, RefusalReason::NoRoom { eligible: 2 });
        // an unknown size (no holder reported one) refuses nobody; a node that reports no room either
        assert_eq!(on(&place(&nodes, &[demand("a", 1, img, 0)])), vec![sim_key(0)]);
        let unknown = vec![node(0, 8000, vec![], STORE_UNKNOWN), node(2, 6000, vec![], 600)];
        assert_eq!(on(&place(&unknown, &[demand("a", 1, img, 500)])), vec![sim_key(0)]);
        // node 2 alone: two workloads of the image share one copy (500 of its 600 MiB); a third
        // with another 200 MiB image no longer fits its store
        let one = vec![node(2, 6000, vec![], 600)];
        let plan = place(&one, &[demand("b", 1, img, 500), demand("c", 1, img, 500), demand("d", 1, other, 200)]);
        assert_eq!(plan.placements.len(), 2, "{plan:?}");
        assert_eq!(plan.refused.iter().map(|r| r.workload.as_str()).collect::<Vec<_>>(), vec!["d"]);
    }

    /// Among nodes with equal room a holder of the image wins; room still comes first, and
    /// neither spread nor constraints give way to it.
    #[test]
    fn replicas_prefer_nodes_that_hold_the_image_when_otherwise_equal() {
        use alloc::vec;
        let (x, y) = ([0xa1; 32], [0xb2; 32]);
        let node = |i: usize, mem: u64, images: &[[u8; 32]]| NodeCapacity {
            key: sim_key(i),
            free_vcpus: 8,
            free_mem_mib: mem,
            labels: BTreeMap::new(),
            images: images.to_vec(),
            image_mib: Vec::new(),
            store_free_mib: STORE_UNKNOWN,
        };
        let demand = |name: &str, replicas: u32, image: [u8; 32], constraints: Vec<Constraint>| WorkloadDemand {
            name: name.into(),
            replicas,
            vcpus: 1,
            mem_mib: 256,
            constraints,
            image,
            image_mib: 0,
        };
        let on = |plan: &Plan| {
            let mut v: Vec<NodeKey> = plan.placements.iter().map(|p| p.node).collect();
            v.sort();
            v
        };
        let sorted = |mut v: Vec<NodeKey>| {
            v.sort();
            v
        };
        let equal = [node(0, 4096, &[]), node(1, 4096, &[y]), node(2, 4096, &[x]), node(3, 4096, &[x, y])];
        // The holders of x, not the smallest keys.
        assert_eq!(on(&place(&equal, &[demand("a", 2, x, vec![])])), sorted(vec![sim_key(2), sim_key(3)]));
        assert_eq!(on(&place(&equal, &[demand("b", 2, y, vec![])])), sorted(vec![sim_key(1), sim_key(3)]));
        // No holder: the smallest keys, as before.
        let mut all = sorted((0..4).map(sim_key).collect());
        all.truncate(2);
        assert_eq!(on(&place(&equal, &[demand("c", 2, [0xc3; 32], vec![])])), all);
        // Spread: three replicas, two holders: both holders and the smaller of the others.
        let third = sim_key(0).min(sim_key(1));
        assert_eq!(on(&place(&equal, &[demand("d", 3, x, vec![])])), sorted(vec![third, sim_key(2), sim_key(3)]));
        // A constraint keeps a holder out.
        assert_eq!(on(&place(&equal, &[demand("e", 1, x, vec![Constraint::NotOnNode(sim_key(2)), Constraint::NotOnNode(sim_key(3))])])), vec![third]);
        // Room first: a non-holder with much more memory left wins...
        let roomy = [node(0, 8192, &[]), node(1, 4096, &[x])];
        assert_eq!(on(&place(&roomy, &[demand("f", 1, x, vec![])])), vec![sim_key(0)]);
        // ... but not one with less than an eighth more: 7/8 of 8192 is 7168.
        let near = [node(0, 8192, &[]), node(1, 7168, &[x]), node(2, 7000, &[x])];
        assert_eq!(on(&place(&near, &[demand("g", 1, x, vec![])])), vec![sim_key(1)], "the roomier of the near holders");
        let far = [node(0, 8192, &[]), node(1, 7167, &[x])];
        assert_eq!(on(&place(&far, &[demand("h", 1, x, vec![])])), vec![sim_key(0)]);
        // Two replicas: the near holder, then (the holder taken) the most room.
        assert_eq!(on(&place(&near, &[demand("i", 2, x, vec![])])), sorted(vec![sim_key(0), sim_key(1)]));
        // A near holder that does not fit (vCPUs) is not chosen; the band is measured among
        // the nodes that fit.
        let mut tight = near.clone();
        tight[1].free_vcpus = 0;
        assert_eq!(on(&place(&tight, &[demand("j", 1, x, vec![])])), vec![sim_key(0)], "7000 is outside the band of 8192");
        let only_holders = [node(1, 7168, &[x]), node(2, 7000, &[x]), node(3, 6000, &[])];
        assert_eq!(on(&place(&only_holders, &[demand("k", 1, x, vec![])])), vec![sim_key(1)]);
        // Same plan whatever the order of the nodes and of each node's images.
        let mut rev: Vec<NodeCapacity> = equal.iter().rev().cloned().collect();
        for n in &mut rev {
            n.images.reverse();
        }
        for w in [demand("a", 2, x, vec![]), demand("b", 2, y, vec![]), demand("d", 3, x, vec![])] {
            assert_eq!(place(&rev, core::slice::from_ref(&w)), place(&equal, &[w]));
        }
    }
}
