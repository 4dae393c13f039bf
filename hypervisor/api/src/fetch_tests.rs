//! A node fetches an image from the nodes that hold it, each node the real `Api` over the real
//! workload service (simulated kernel): the node-to-node routes answer only nodes, a holder
//! that serves wrong bytes is refused and the next one gives the image, and nothing a hostile
//! holder sends ends up in the store.

use crate::fetch::{Event, Fetch};
use crate::fuzzing::{self, SimNode, ADMIN, NODE, VIEWER};
use crate::http::{Limits, RequestReader};
use crate::peer::{chunk_path, manifest_path};
use crate::router::Backend;
use crate::upload::CHUNK_SIZE;
use crate::Api;
use alloc::vec::Vec;
use core::task::Poll;
use catenary_workload::proto::{self as wk, Reply};
use catenary_workload::store::{manifest_for, manifest_without_pieces};
use catenary_workload::Digest;

struct Sim {
    api: Api,
    node: SimNode,
}

/// An image of 3 chunks and a bit (the rootfs is pseudo-random bytes), its `image.json`
/// listing its pieces' digests (256 KiB pieces: one a chunk) as `catenary image pack` writes it.
fn image() -> (Digest, Vec<u8>, Vec<u8>) {
    image_with(manifest_for)
}

/// The same image as packed before `image.json` listed the pieces.
fn image_without_list() -> (Digest, Vec<u8>, Vec<u8>) {
    image_with(manifest_without_pieces)
}

fn image_with(manifest_for: fn(&[u8], &[u8]) -> Vec<u8>) -> (Digest, Vec<u8>, Vec<u8>) {
    let config = br#"{"version":1,"os":"linux"}"#.to_vec();
    let mut x = 0x1234_5678u32;
    let rootfs: Vec<u8> = (0..3 * CHUNK_SIZE + 1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let manifest = manifest_for(&rootfs, &config);
    let mut stream = config;
    stream.extend_from_slice(&rootfs);
    (Digest::of(&manifest), manifest, stream)
}

/// Put the image into `n`'s store as a push does.
fn store(n: &mut SimNode, d: Digest, manifest: &[u8], stream: &[u8]) {
    let Ok(Reply::Upload { upload, .. }) = n.workd(wk::Request::ImageBegin { image: d, manifest: manifest.to_vec() }) else { panic!("begin") };
    for (i, c) in stream.chunks(CHUNK_SIZE).enumerate() {
        let r = n.workd_chunk(wk::Request::ImageChunk { upload, offset: (i * CHUNK_SIZE) as u64, len: c.len() as u32, digest: Digest::of(c) }, c);
        assert_eq!(r, Ok(Reply::Done));
    }
    assert!(matches!(n.workd(wk::Request::ImageCommit { upload }), Ok(Reply::Image(_))));
}

fn sims(k: usize) -> Vec<Sim> {
    (0..k).map(|_| Sim { api: fuzzing::api(), node: SimNode::new(1024) }).collect()
}

fn get(s: &mut Sim, caller: [u8; 32], path: &str) -> (u16, Vec<u8>) {
    let bytes = alloc::format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let req = RequestReader::new(Limits::default(), 0).feed(bytes.as_bytes(), 0).unwrap().unwrap();
    let r = s.api.handle(&caller, &req, &mut s.node, 0);
    (r.status, r.body)
}

fn has(n: &mut SimNode, d: Digest) -> bool {
    matches!(n.workd(wk::Request::Images), Ok(Reply::Images(l)) if l.iter().any(|i| i.digest == d))
}

/// Run `f` on node 0 with `get` reaching the others (index i = node i + 1); `corrupt(holder, path, body)`
/// lets a holder lie.
fn fetch(c: &mut [Sim], d: Digest, holders: Vec<usize>, corrupt: &dyn Fn(usize, &str, &mut Vec<u8>)) -> (Vec<Event>, Fetch) {
    let (me, others) = c.split_first_mut().unwrap();
    let mut f = Fetch::new(d, holders);
    let mut events = Vec::new();
    let mut get_from = |h: usize, path: &str| {
        let Some(s) = others.get_mut(h) else { return Poll::Ready(None) };
        let (status, mut body) = get(s, NODE, path);
        corrupt(h, path, &mut body);
        Poll::Ready(Some((status, body)))
    };
    for _ in 0..100 {
        let e = f.step(&mut me.node, &mut get_from);
        events.push(e);
        if f.finished() {
            break;
        }
    }
    (events, f)
}

#[test]
fn node_routes_answer_only_nodes_and_serve_the_stored_bytes() {
    let (d, manifest, stream) = image();
    let mut c = sims(1);
    store(&mut c[0].node, d, &manifest, &stream);
    assert_eq!(get(&mut c[0], NODE, &manifest_path(&d)), (200, manifest.clone()));
    for n in 0..4u32 {
        let (s, b) = get(&mut c[0], NODE, &chunk_path(&d, n));
        let at = n as usize * CHUNK_SIZE;
        assert_eq!((s, b.as_slice()), (200, &stream[at..(at + CHUNK_SIZE).min(stream.len())]));
    }
    assert_eq!(get(&mut c[0], NODE, &chunk_path(&d, 4)).0, 400);
    assert_eq!(get(&mut c[0], NODE, &manifest_path(&Digest([9; 32]))).0, 404);
    // an operator of any role, and a stranger: refused (a node is a caller only at its own ::1)
    for k in [ADMIN, VIEWER, fuzzing::STRANGER] {
        assert_eq!(get(&mut c[0], k, &manifest_path(&d)).0, 403);
        assert_eq!(get(&mut c[0], k, &chunk_path(&d, 0)).0, 403);
    }
}

/// Node 0 fetches; holder 0 lies about chunk 2 (a byte of the rootfs), holder 1 is honest.
/// Returns the events, the fetch, what each holder was asked for (`m` the manifest, else the
/// chunk number), and the nodes.
fn fetch_from_a_liar_then_an_honest_holder(d: Digest, manifest: &[u8], stream: &[u8]) -> (Vec<Event>, Fetch, [Vec<alloc::string::String>; 2], Vec<Sim>) {
    let mut c = sims(3);
    for s in &mut c[1..] {
        store(&mut s.node, d, manifest, stream);
    }
    let asked = core::cell::RefCell::new([Vec::new(), Vec::new()]);
    let lie = |h: usize, path: &str, body: &mut Vec<u8>| {
        let what = path.rsplit_once("/chunks/").map_or("m", |(_, n)| n);
        asked.borrow_mut()[h].push(what.into());
        if h == 0 && path.ends_with("/chunks/2") {
            body[100] ^= 1;
        }
    };
    let (events, f) = fetch(&mut c, d, alloc::vec![0, 1], &lie);
    assert!(matches!(events.last(), Some(Event::Done { from: Some(1), .. })), "{events:?}");
    assert_eq!(f.refused, alloc::vec![0]);
    assert!(has(&mut c[0].node, d));
    // the bytes in node 0's store are the image's, and its failed upload was freed
    assert_eq!(c[0].node.kernel.stored.iter().find(|s| s.0.digest == d).map(|s| s.1.clone()), Some(stream.to_vec()));
    assert!(c[0].node.kernel.uploads.is_empty());
    (events, f, asked.into_inner(), c)
}

#[test]
fn a_holder_serving_a_corrupted_chunk_is_refused_at_that_chunk_and_another_gives_the_image() {
    let (d, manifest, stream) = image();
    let (events, f, asked, mut c) = fetch_from_a_liar_then_an_honest_holder(d, &manifest, &stream);
    // refused at the chunk it lied in (chunk 3 was never asked of it); the honest holder took
    // over at that chunk: chunks 0 and 1 were checked against the list already
    assert!(events.contains(&Event::Refused { holder: 0, why: "a piece does not have the digest image.json lists" }), "{events:?}");
    assert_eq!(asked, [alloc::vec!["m", "0", "1", "2"], alloc::vec!["2", "3"]]);
    assert_eq!(f.received, (3 * CHUNK_SIZE + stream.len() - 2 * CHUNK_SIZE) as u64, "3 chunks from the liar, the rest from the other");
    assert_eq!(f.handovers, 1);
    // fetched again: present at once
    let (events, _) = fetch(&mut c, d, alloc::vec![1], &|_, _, _| {});
    assert!(matches!(events.as_slice(), [Event::Done { from: None, .. }]), "{events:?}");
}

/// An image whose `image.json` lists no chunks (packed before the list existed) is still
/// fetched; a lie in its root filesystem shows when the file's last byte came.
#[test]
fn without_a_piece_list_a_corrupted_chunk_is_refused_at_the_files_end() {
    let (d, manifest, stream) = image_without_list();
    let (events, _, asked, _) = fetch_from_a_liar_then_an_honest_holder(d, &manifest, &stream);
    assert!(events.contains(&Event::Refused { holder: 0, why: "rootfs.squashfs's bytes do not have the digest image.json names" }), "{events:?}");
    // and the next holder gives it all again, from its manifest on
    assert_eq!(asked, [alloc::vec!["m", "0", "1", "2", "3"], alloc::vec!["m", "0", "1", "2", "3"]]);
}

/// A holder that goes away half-way (a node that died while others copied from it): with a
/// piece list the next holder continues at the chunk that got no answer, and nothing already
/// in the upload is fetched again; without one, the next holder starts over.
#[test]
fn a_holder_that_dies_half_way_is_taken_over_at_its_chunk() {
    for (with_list, (d, manifest, stream)) in [(true, image()), (false, image_without_list())] {
        let mut c = sims(3);
        for s in &mut c[1..] {
            store(&mut s.node, d, &manifest, &stream);
        }
        let (me, others) = c.split_first_mut().unwrap();
        let mut f = Fetch::new(d, alloc::vec![0, 1]);
        let mut asked: [Vec<alloc::string::String>; 2] = [Vec::new(), Vec::new()];
        let mut get_from = |h: usize, path: &str| {
            asked[h].push(path.rsplit_once("/chunks/").map_or("m", |(_, n)| n).into());
            // holder 0 is gone from chunk 2 on: never an answer
            if h == 0 && (path.ends_with("/chunks/2") || path.ends_with("/chunks/3")) {
                return Poll::Ready(None);
            }
            Poll::Ready(others.get_mut(h).map(|s| get(s, NODE, path)))
        };
        let mut events = Vec::new();
        while !f.finished() && events.len() < 100 {
            events.push(f.step(&mut me.node, &mut get_from));
        }
        assert!(matches!(events.last(), Some(Event::Done { from: Some(1), .. })), "{events:?}");
        assert!(events.contains(&Event::NotHeld { holder: 0 }), "{events:?}");
        assert_eq!(c[0].node.kernel.stored.iter().find(|s| s.0.digest == d).map(|s| s.1.clone()), Some(stream.clone()));
        assert!(c[0].node.kernel.uploads.is_empty());
        let tries = alloc::vec!["2"; crate::fetch::CHUNK_TRIES as usize];
        assert_eq!(asked[0], [alloc::vec!["m", "0", "1"], tries].concat());
        if with_list {
            assert_eq!((asked[1].clone(), f.handovers), (alloc::vec!["2".into(), "3".into()], 1), "taken over at chunk 2");
            assert_eq!(f.received, stream.len() as u64, "no byte fetched twice");
        } else {
            assert_eq!((asked[1].clone(), f.handovers), (alloc::vec!["m".into(), "0".into(), "1".into(), "2".into(), "3".into()], 0), "from the start");
        }
    }
}

#[test]
fn wrong_manifests_configs_and_lengths_are_refused_and_nothing_is_kept() {
    // config.json ends inside chunk 0: its own digest catches the wrong byte there, before
    // the piece's (with or without the list)
    wrong_manifests_configs_and_lengths(image(), "config.json's bytes do not have the digest image.json names");
    wrong_manifests_configs_and_lengths(image_without_list(), "config.json's bytes do not have the digest image.json names");
}

fn wrong_manifests_configs_and_lengths((d, manifest, stream): (Digest, Vec<u8>, Vec<u8>), config_lie: &str) {
    let mut c = sims(5);
    for s in &mut c[1..] {
        store(&mut s.node, d, &manifest, &stream);
    }
    // holder 0: another image.json; 1: a byte of config.json; 2: a short chunk; 3: a chunk it
    // cannot give (404) after the first
    let lie = |h: usize, path: &str, body: &mut Vec<u8>| match h {
        0 if path.ends_with("/manifest") => body.push(b' '),
        1 if path.ends_with("/chunks/0") => body[3] ^= 0x20,
        2 if path.ends_with("/chunks/1") => body.truncate(10),
        _ => {}
    };
    let (events, f) = fetch(&mut c, d, alloc::vec![0, 1, 2, 7], &lie);
    assert!(events.contains(&Event::Refused { holder: 0, why: "its image.json does not have the image's digest" }), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, Event::Refused { holder: 1, why } if *why == config_lie)), "{events:?}");
    assert!(events.contains(&Event::Refused { holder: 2, why: "a chunk of the wrong length" }), "{events:?}");
    assert!(events.contains(&Event::NotHeld { holder: 7 }), "{events:?}");
    assert_eq!(events.last(), Some(&Event::Failed { why: "no node gave the image" }));
    assert_eq!(f.refused, alloc::vec![0, 1, 2]);
    assert!(!has(&mut c[0].node, d));
    assert!(c[0].node.kernel.uploads.is_empty(), "every refused upload is freed");
    assert!(c[0].node.kernel.stored.is_empty());
}

#[test]
fn a_chunk_without_an_answer_is_asked_again_before_the_next_holder() {
    let (d, manifest, stream) = image();
    let mut c = sims(2);
    store(&mut c[1].node, d, &manifest, &stream);
    let (me, others) = c.split_first_mut().unwrap();
    let mut f = Fetch::new(d, alloc::vec![0]);
    let mut misses = 0;
    let mut get_from = |h: usize, path: &str| {
        // chunk 1 gets no answer twice (a loaded holder), then its bytes
        if path.ends_with("/chunks/1") && misses < crate::fetch::CHUNK_TRIES - 1 {
            misses += 1;
            return Poll::Ready(None);
        }
        Poll::Ready(others.get_mut(h).map(|s| get(s, NODE, path)))
    };
    let mut events = Vec::new();
    while !f.finished() && events.len() < 100 {
        events.push(f.step(&mut me.node, &mut get_from));
    }
    assert_eq!(events.iter().filter(|e| matches!(e, Event::Retry { holder: 0, n: 1 })).count(), 2, "{events:?}");
    assert!(matches!(events.last(), Some(Event::Done { from: Some(0), .. })), "{events:?}");
    assert!(has(&mut me.node, d));
}

#[test]
fn fetch_inputs_never_panic() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut done = 0;
    for _ in 0..60 {
        let data: Vec<u8> = (0..40)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        done += fuzzing::fetch(&data) as u32;
    }
    // every holder truthful: the image arrives; some random inputs got it too
    assert!(fuzzing::fetch(&[2, 0, 2, 0, 2, 0, 2, 0]));
    assert!(done > 0, "no random input reached a whole fetch");
}

/// `apid` never waits for a holder: a request's answer comes some turns later (`Pending` until
/// then). Each step meanwhile asks for the same (holder, path), says `Waiting` and changes
/// nothing; the image arrives as it does when every answer is immediate, and a holder that
/// never answers is given up on only when `get` says so (its deadline), not for being slow.
#[test]
fn answers_that_come_turns_later_are_waited_for_without_moving_on() {
    let (d, manifest, stream) = image();
    let mut c = sims(3);
    store(&mut c[2].node, d, &manifest, &stream);
    let (me, others) = c.split_first_mut().unwrap();
    // holder 0 does not have it (404, after 3 pending turns); holder 1 answers each request
    // after 5 pending turns
    let mut f = Fetch::new(d, alloc::vec![0, 1]);
    let mut asked: Vec<(usize, alloc::string::String)> = Vec::new();
    let mut get_from = |h: usize, path: &str| {
        asked.push((h, path.into()));
        let same = asked.iter().rev().take_while(|a| a.0 == h && a.1 == path).count();
        if same <= if h == 0 { 3 } else { 5 } {
            return Poll::Pending;
        }
        Poll::Ready(others.get_mut(h).map(|s| get(s, NODE, path)))
    };
    let mut events = Vec::new();
    while !f.finished() && events.len() < 200 {
        events.push(f.step(&mut me.node, &mut get_from));
    }
    assert!(matches!(events.last(), Some(Event::Done { from: Some(1), .. })), "{events:?}");
    assert!(has(&mut me.node, d));
    assert_eq!(c[0].node.kernel.stored.iter().find(|s| s.0.digest == d).map(|s| s.1.clone()), Some(stream.clone()));
    let waits = |h: usize| events.iter().filter(|e| **e == Event::Waiting { holder: h }).count();
    // 3 for holder 0's manifest; 5 for each of holder 1's manifest and 4 chunks
    assert_eq!((waits(0), waits(1)), (3, 5 * 5), "{events:?}");
    assert!(events.contains(&Event::NotHeld { holder: 0 }), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Retry { .. } | Event::Refused { .. })), "{events:?}");
    // each request asked for until answered, in order: the manifest, then chunks 0..4
    let mut distinct: Vec<(usize, alloc::string::String)> = Vec::new();
    for a in asked {
        if distinct.last() != Some(&a) {
            distinct.push(a);
        }
    }
    let mut want = alloc::vec![(0, manifest_path(&d)), (1, manifest_path(&d))];
    want.extend((0..4).map(|n| (1, chunk_path(&d, n))));
    assert_eq!(distinct, want);
}

/// Past 32 MiB of stream a piece is two chunks or more (`store::piece_size`): a holder that
/// lies in, or goes silent at, the second chunk of a piece is found at the piece's end, and the
/// next holder takes over at the piece's first chunk, whose bytes it writes again.
#[test]
fn a_failure_inside_a_larger_piece_is_taken_over_at_the_pieces_start() {
    let config = br#"{"version":1}"#.to_vec();
    let rootfs: Vec<u8> = (0..(34usize << 20)).map(|i| (i ^ i >> 11) as u8).collect();
    let manifest = manifest_for(&rootfs, &config);
    let d = Digest::of(&manifest);
    let stream = [config.as_slice(), rootfs.as_slice()].concat();
    let pieces = catenary_workload::store::manifest_pieces(&manifest).unwrap().unwrap();
    assert_eq!(pieces.size, 2 * CHUNK_SIZE as u64);
    let chunks = stream.len().div_ceil(CHUNK_SIZE);
    for silent in [false, true] {
        let mut c = sims(3);
        for s in &mut c {
            s.node.kernel.image_max = 64 << 20;
        }
        for s in &mut c[1..] {
            store(&mut s.node, d, &manifest, &stream);
        }
        let (me, others) = c.split_first_mut().unwrap();
        let mut f = Fetch::new(d, alloc::vec![0, 1]);
        let mut asked: [Vec<alloc::string::String>; 2] = [Vec::new(), Vec::new()];
        let mut get_from = |h: usize, path: &str| {
            asked[h].push(path.rsplit_once("/chunks/").map_or("m", |(_, n)| n).into());
            // holder 0: chunk 5, the second of piece 2, is wrong, or never comes
            if h == 0 && path.ends_with("/chunks/5") {
                if silent {
                    return Poll::Ready(None);
                }
                let (status, mut body) = get(&mut others[0], NODE, path);
                body[7] ^= 0x40;
                return Poll::Ready(Some((status, body)));
            }
            Poll::Ready(others.get_mut(h).map(|s| get(s, NODE, path)))
        };
        let mut events = Vec::new();
        while !f.finished() && events.len() < 400 {
            events.push(f.step(&mut me.node, &mut get_from));
        }
        assert!(matches!(events.last(), Some(Event::Done { from: Some(1), .. })), "{:?}", &events[events.len().saturating_sub(3)..]);
        let want_event = if silent { Event::NotHeld { holder: 0 } } else { Event::Refused { holder: 0, why: "a piece does not have the digest image.json lists" } };
        assert!(events.contains(&want_event), "silent {silent}");
        assert_eq!(c[0].node.kernel.stored.iter().find(|s| s.0.digest == d).map(|s| s.1 == stream), Some(true));
        assert!(c[0].node.kernel.uploads.is_empty());
        let tries = if silent { crate::fetch::CHUNK_TRIES as usize } else { 1 };
        let want0: Vec<alloc::string::String> = ["m", "0", "1", "2", "3", "4"].iter().map(|s| (*s).into()).chain(core::iter::repeat_n("5".into(), tries)).collect();
        assert_eq!(asked[0], want0, "silent {silent}");
        let want1: Vec<alloc::string::String> = (4..chunks).map(|n| alloc::format!("{n}")).collect();
        assert_eq!(asked[1], want1, "taken over at chunk 4, the start of piece 2 (silent {silent})");
        assert_eq!(f.handovers, 1);
    }
}
