//! The API end to end on the host: HTTP bytes in, through the reader, authorization and the
//! router, onto the real workload service state machine (over the simulated kernel of
//! `catenary_workload::fuzzing`), JSON bytes out.

use crate::auth::{Operators, Role};
use crate::client::{self, decode, parse_response, ClientError, ClientRequest};
use crate::fuzzing::{self, SimNode, ADMIN, NODE, STRANGER, VIEWER};
use crate::http::{Limits, Method, Request, RequestReader, Response};
use crate::types::*;
use crate::upload::CHUNK_SIZE;
use crate::Api;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use catenary_workload::fuzzing::image;
use catenary_workload::logring::Stream;
use catenary_workload::store::{CONFIG_MEDIA_TYPE, IMAGE_MEDIA_TYPE, ROOTFS_MEDIA_TYPE};
use catenary_workload::vmctl::{self, Event, VmEvent};
use catenary_workload::Digest;
use serde::de::DeserializeOwned;

/// One request as a client sends it: bytes through the reader, the API, and back.
fn call(api: &mut Api, node: &mut SimNode, caller: [u8; 32], req: &ClientRequest) -> (u16, Vec<u8>) {
    let mut reader = RequestReader::new(Limits::default(), node.now_ms);
    let bytes = req.to_bytes("[fd00::1]:8080");
    // delivered in two pieces, as a connection may
    let (a, b) = bytes.split_at(bytes.len() / 2);
    assert_eq!(reader.feed(a, node.now_ms), Ok(None));
    let http = reader.feed(b, node.now_ms).unwrap().unwrap();
    let now = node.now_ms;
    let resp = api.handle(&caller, &http, node, now);
    parse_response(&resp.to_bytes()).unwrap().unwrap()
}

fn ok<T: DeserializeOwned>(api: &mut Api, node: &mut SimNode, req: &ClientRequest) -> T {
    let (status, body) = call(api, node, ADMIN, req);
    decode(status, &body).unwrap_or_else(|e| panic!("{:?} {}: {e}", req.method, req.path))
}

/// The error code and status of a refused request.
fn refused(api: &mut Api, node: &mut SimNode, caller: [u8; 32], req: &ClientRequest) -> (u16, String, String) {
    let (status, body) = call(api, node, caller, req);
    match decode::<serde_json::Value>(status, &body) {
        Err(ClientError::Api { status, code, message }) => (status, code, message),
        r => panic!("{} {}: expected a refusal, got {status} {r:?}", req.method.as_str(), req.path),
    }
}

fn run_req(name: &str, mib: u32) -> RunRequest {
    RunRequest { health: None, name: Some(name.into()), image: image().to_string(), cpus: None, memory_mib: Some(mib), env: vec!["A=1".into()], args: None, restart: None, net: None, replicas: None, constraints: None }
}

#[test]
fn viewer_may_read_but_not_run_and_node_and_stranger_keys_are_refused() {
    let (mut api, mut node) = (fuzzing::api(), SimNode::new(1024));
    // a viewer reads
    let l: WorkloadList = {
        let (s, b) = call(&mut api, &mut node, VIEWER, &client::list_workloads());
        decode(s, &b).unwrap()
    };
    assert!(l.workloads.is_empty());
    // and may not mutate: 403, with a JSON body that says why, and nothing was created
    let (status, code, message) = refused(&mut api, &mut node, VIEWER, &client::run(&run_req("web", 64)));
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    assert!(message.contains("viewer"), "{message}");
    assert_eq!(node.service.len(), 0);
    for r in [client::stop("web", None), client::remove("web"), client::remove_image(&image().to_string())] {
        assert_eq!(refused(&mut api, &mut node, VIEWER, &r).0, 403);
    }
    // a node's own key is not an operator, not even for reading; nor is an unknown key
    for (caller, why) in [(NODE, "node"), (STRANGER, "not an operator")] {
        for r in [client::list_workloads(), client::run(&run_req("web", 64)), client::list_nodes()] {
            let (status, code, message) = refused(&mut api, &mut node, caller, &r);
            assert_eq!((status, code.as_str()), (403, "forbidden"));
            assert!(message.contains(why), "{message}");
        }
    }
    // an admin may
    let w: Workload = ok(&mut api, &mut node, &client::run(&run_req("web", 64)));
    assert_eq!((w.name.as_str(), w.state.as_str()), ("web", "starting"));
}

#[test]
fn operators_come_from_the_cluster_file() {
    let key = |b: u8| crate::auth::hex(&[b; 32]);
    let file = format!(
        "catenary-cluster v1\n# comment\nnode node1 {} fe80::1 51820\noperator alice {} admin\noperator ci {} viewer\n",
        key(1),
        key(2),
        key(3)
    );
    let ops = Operators::parse(&file).unwrap();
    assert_eq!(ops.node_keys, vec![[1; 32]]);
    assert_eq!(ops.by_key(&[2; 32]).unwrap().role, Role::Admin);
    assert_eq!(ops.by_key(&[3; 32]).unwrap().role, Role::Viewer);
    assert!(ops.authorize(&[1; 32], Method::Get).is_err());
    assert!(ops.authorize(&[3; 32], Method::Get).is_ok());
    assert_eq!(ops.authorize(&[3; 32], Method::Delete).unwrap_err().status, 403);
    let bad = [
        (String::from("catenary-cluster v2\n"), 1, "first line"),
        (format!("{file}operator bob {} root\n", key(5)), 6, "role"),
        (format!("{file}operator bob {} admin\n", key(2)), 6, "duplicate operator key"),
        (format!("{file}operator alice {} admin\n", key(4)), 6, "duplicate operator name"),
        (format!("{file}operator bob {} admin\n", key(1)), 6, "node's key"),
        (format!("{file}operator bob 12 admin\n"), 6, "public key"),
        (format!("{file}operator bob {}\n", key(5)), 6, "expected"),
        (format!("{file}operator b/b {} admin\n", key(5)), 6, "name"),
        (format!("{file}operator bob {} admin\n", key(0)), 6, "zero"),
    ];
    for (text, line, why) in bad {
        let e = Operators::parse(&text).unwrap_err();
        assert_eq!(e.line, line, "{text}");
        assert!(e.why.contains(why), "{e} / {why}");
    }
}

#[test]
fn the_caller_is_the_key_whose_fabric_prefix_holds_the_source_address() {
    use netfabric::identity::Prefix64;
    let ids: Vec<netfabric::Identity> = (1..=3u8).map(|b| netfabric::Identity::from_secret_bytes([b; 32])).collect();
    let text = format!(
        "catenary-cluster v1\nnode n1 {} fe80::1 51820\noperator alice {} admin\noperator ci {} viewer\n",
        crate::auth::hex(&ids[0].public_key()),
        crate::auth::hex(&ids[1].public_key()),
        crate::auth::hex(&ids[2].public_key())
    );
    let ops = Operators::parse(&text).unwrap();
    let prefix = |k: &[u8; 32]| -> [u8; 8] { Prefix64::from_public_key(k).network().octets()[..8].try_into().unwrap() };
    // an operator is its whole /64 (the CLI's embedded stack may use any address of it)
    for id in &ids[1..] {
        for a in [id.node_address(), Prefix64::from_public_key(&id.public_key()).address(0x0200_0000_0000_0001)] {
            assert_eq!(ops.caller_of(&a.octets(), prefix), Some(id.public_key()));
        }
    }
    // a node is only its own ::1: a microVM or task in its /64 is not the node, and no caller
    assert_eq!(ops.caller_of(&ids[0].node_address().octets(), prefix), Some(ids[0].public_key()));
    for iid in [0x0200_0000_0000_0001u64, 0x0100_0000_0000_0001, 0, 2] {
        let a = Prefix64::from_public_key(&ids[0].public_key()).address(iid);
        assert_eq!(ops.caller_of(&a.octets(), prefix), None, "{a}");
    }
    let stranger = netfabric::Identity::from_secret_bytes([9; 32]);
    assert_eq!(ops.caller_of(&stranger.node_address().octets(), prefix), None);
    // and then the roles apply: the node is refused, the viewer may only read
    let node = ops.caller_of(&ids[0].node_address().octets(), prefix).unwrap();
    assert_eq!(ops.authorize(&node, Method::Get).unwrap_err().status, 403);
    let ci = ops.caller_of(&ids[2].node_address().octets(), prefix).unwrap();
    assert!(ops.authorize(&ci, Method::Get).is_ok());
    assert_eq!(ops.authorize(&ci, Method::Post).unwrap_err().status, 403);
}

#[test]
fn run_ps_inspect_logs_follow_stop_remove_events() {
    let (mut api, mut node) = (fuzzing::api(), SimNode::new(1024));
    let w: Workload = ok(&mut api, &mut node, &client::run(&run_req("web", 64)));
    assert_eq!((w.id, w.memory_mib, w.cpus, w.restart.as_str()), (1, 64, 1, "no"));
    assert_eq!(node.kernel.created.len(), 1, "run created and started a microVM");
    let vm = node.kernel.next;
    node.service.on_event(VmEvent { vm, event: Event::Ready }, 0, &mut node.kernel);
    node.service.on_event(VmEvent { vm, event: Event::Log { stream: Stream::Stdout, line: b"hello".to_vec() } }, 0, &mut node.kernel);
    let l: WorkloadList = ok(&mut api, &mut node, &client::list_workloads());
    assert_eq!(l.workloads.len(), 1);
    assert_eq!((l.workloads[0].name.as_str(), l.workloads[0].state.as_str()), ("web", "running"));
    let by_id: Workload = ok(&mut api, &mut node, &client::inspect("1"));
    let by_name: Workload = ok(&mut api, &mut node, &client::inspect("web"));
    assert_eq!(by_id, by_name);
    assert_eq!(by_id.image, image().to_string());
    // logs, then follow from the cursor: only the new bytes
    let logs: Logs = ok(&mut api, &mut node, &client::logs("web", 0));
    assert!(logs.records.iter().any(|r| r.stream == "stdout" && r.data == "hello\n"), "{logs:?}");
    node.service.on_event(VmEvent { vm, event: Event::Log { stream: Stream::Stderr, line: b"again".to_vec() } }, 0, &mut node.kernel);
    let more: Logs = ok(&mut api, &mut node, &client::logs("web", logs.next));
    assert_eq!(more.records.len(), 1);
    assert_eq!((more.records[0].stream.as_str(), more.records[0].data.as_str()), ("stderr", "again\n"));
    assert_eq!(more.next, more.end);
    // remove while it runs: 409; stop, the VM ends, then remove
    assert_eq!(refused(&mut api, &mut node, ADMIN, &client::remove("web")).0, 409);
    let s: Workload = ok(&mut api, &mut node, &client::stop("web", Some(1000)));
    assert_eq!(s.state, "stopping");
    node.kernel.alive.retain(|v| *v != vm);
    node.service.on_event(VmEvent { vm, event: Event::Ended { how: vmctl::Ended::Killed, touched_bytes: 1 << 20, wall_ms: 5 } }, 0, &mut node.kernel);
    let s: Workload = ok(&mut api, &mut node, &client::inspect("web"));
    assert_eq!(s.state, "exited");
    let r: Removed = ok(&mut api, &mut node, &client::remove("web"));
    assert_eq!((r.id, r.name.as_str()), (1, "web"));
    assert_eq!(node.service.len(), 0);
    // the events saw it all, in order
    let ev: EventList = ok(&mut api, &mut node, &client::events(0));
    let kinds: Vec<(&str, &str)> = ev.events.iter().map(|e| (e.kind.as_str(), e.state.as_str())).collect();
    assert_eq!(kinds.first(), Some(&("created", "starting")));
    assert!(kinds.contains(&("state", "running")), "{kinds:?}");
    assert!(kinds.contains(&("state", "exited")), "{kinds:?}");
    assert_eq!(kinds.last().map(|k| k.0), Some("removed"));
    let none: EventList = ok(&mut api, &mut node, &client::events(ev.next));
    assert!(none.events.is_empty());
    assert_eq!((none.next, none.lost), (ev.next, 0));
}

/// A run's health check reaches the workload service with the defaults filled in; inspect
/// and ps show it and the workload's health as the guest reports it; a check out of bounds is
/// refused naming the field.
#[test]
fn a_health_check_is_run_with_defaults_and_shown() {
    let (mut api, mut node) = (fuzzing::api(), SimNode::new(1024));
    let mut req = run_req("web", 64);
    req.health = Some(HealthCheck { cmd: vec!["test".into(), "-f".into(), "/tmp/up".into()], interval_secs: Some(2), timeout_secs: None, retries: None, start_period_secs: None });
    let w: Workload = ok(&mut api, &mut node, &client::run(&req));
    let want = catenary_workload::spec::HealthCheck { cmd: vec!["test".into(), "-f".into(), "/tmp/up".into()], interval_secs: 2, timeout_secs: 2, retries: 3, start_period_secs: 0 };
    assert_eq!(node.kernel.created[0].health, Some(want.clone()), "timeout defaults to 5 s, or the interval when shorter");
    assert_eq!((w.health.as_str(), w.health_check.clone()), ("starting", Some(HealthCheck::from_spec(&want))));
    let vm = node.kernel.next;
    node.service.on_event(VmEvent { vm, event: Event::Ready }, 0, &mut node.kernel);
    node.service.on_event(VmEvent { vm, event: Event::Healthy }, 0, &mut node.kernel);
    let l: WorkloadList = ok(&mut api, &mut node, &client::list_workloads());
    assert_eq!(l.workloads[0].health, "healthy");
    assert_eq!(ok::<Workload>(&mut api, &mut node, &client::inspect("web")).health, "healthy");
    // without one: unchecked, and the defaults of a bare check
    let w: Workload = ok(&mut api, &mut node, &client::run(&run_req("plain", 64)));
    assert_eq!((w.health.as_str(), w.health_check), ("unchecked", None));
    let bare = HealthCheck { cmd: vec!["true".into()], interval_secs: None, timeout_secs: None, retries: None, start_period_secs: None };
    assert_eq!(bare.to_spec(), catenary_workload::spec::HealthCheck { cmd: vec!["true".into()], interval_secs: 10, timeout_secs: 5, retries: 3, start_period_secs: 0 });
    for bad in [
        HealthCheck { cmd: vec![], ..bare.clone() },
        HealthCheck { retries: Some(0), ..bare.clone() },
        HealthCheck { interval_secs: Some(2), timeout_secs: Some(3), ..bare.clone() },
    ] {
        let mut req = run_req("bad", 64);
        req.health = Some(bad);
        let (status, _, message) = refused(&mut api, &mut node, ADMIN, &client::run(&req));
        assert_eq!(status, 400);
        assert!(message.starts_with("health:"), "{message}");
    }
}

#[test]
fn bad_requests_get_4xx_with_a_json_error_saying_what_is_wrong() {
    let (mut api, mut node) = (fuzzing::api(), SimNode::new(200));
    let _: Workload = ok(&mut api, &mut node, &client::run(&run_req("web", 64)));
    let raw = |method, path: &str, body: &[u8]| ClientRequest { method, path: path.into(), body: body.to_vec(), chunk_digest: None };
    let mut unknown_image = run_req("x", 64);
    unknown_image.image = format!("{}", Digest([7; 32]));
    let mut bad_digest = run_req("x", 64);
    bad_digest.image = "sha256:XYZ".into();
    let mut bad_restart = run_req("x", 64);
    bad_restart.restart = Some("sometimes".into());
    let cases: Vec<(ClientRequest, u16, &str, &str)> = vec![
        (raw(Method::Get, "/v2/workloads", b""), 404, "no_such_path", "/v1"),
        (raw(Method::Put, "/v1/workloads", b""), 405, "method_not_allowed", "method"),
        (raw(Method::Post, "/v1/workloads", b"{not json"), 400, "bad_request", "body"),
        (raw(Method::Post, "/v1/workloads", b"{\"image\":\"sha256:00\",\"colour\":1}"), 400, "bad_request", "colour"),
        (raw(Method::Get, "/v1/workloads", b"{}"), 400, "bad_request", "no body"),
        (raw(Method::Get, "/v1/workloads/web/logs?cursor=x", b""), 400, "bad_request", "cursor"),
        (raw(Method::Get, "/v1/workloads/web/logs?since=1", b""), 400, "bad_request", "since"),
        (raw(Method::Get, "/v1/workloads/web/logs?cursor=1&cursor=2", b""), 400, "bad_request", "twice"),
        (raw(Method::Get, "/v1/workloads/Web", b""), 400, "bad_request", "workload"),
        (raw(Method::Get, "/v1/images/sha256:12", b""), 400, "bad_request", "digest"),
        (raw(Method::Post, "/v1/workloads/web/stop", b"{\"grace_ms\":300001}"), 400, "bad_request", "grace_ms"),
        (client::inspect("nope"), 404, "no_such_workload", "no such workload"),
        (client::inspect(&format!("{}", u64::MAX)), 400, "bad_request", "workload"),
        (client::run(&run_req("web", 64)), 409, "name_in_use", "name"),
        (client::run(&run_req("big", 16384)), 507, "no_capacity", "MiB free"),
        (client::run(&run_req("Bad_Name", 64)), 400, "bad_spec", "name"),
        (client::run(&run_req("small", 1)), 400, "bad_spec", "memory"),
        (client::run(&unknown_image), 404, "no_such_image", "image"),
        (client::run(&bad_digest), 400, "bad_request", "image"),
        (client::run(&bad_restart), 400, "bad_request", "restart"),
        (client::inspect_image(&Digest([7; 32]).to_string()), 404, "no_such_image", "image"),
        (client::remove_image(&image().to_string()), 409, "image_in_use", "uses"),
        (client::get_upload(9), 404, "no_such_upload", "upload"),
        (client::start("web"), 409, "bad_state", "starting"),
    ];
    for (req, status, code, says) in cases {
        let (s, c, m) = refused(&mut api, &mut node, ADMIN, &req);
        assert_eq!((s, c.as_str()), (status, code), "{} {}: {m}", req.method.as_str(), req.path);
        assert!(m.contains(says), "{} {}: {m:?} should say {says:?}", req.method.as_str(), req.path);
    }
    // a refused run left nothing behind
    assert_eq!(node.service.len(), 1);
}

fn feed_all(bytes: &[u8], limits: Limits) -> Result<Option<Request>, crate::ApiError> {
    let mut r = RequestReader::new(limits, 0);
    let mut out = Ok(None);
    for b in bytes.chunks(7) {
        out = r.feed(b, 0);
        if !matches!(out, Ok(None)) {
            break;
        }
    }
    out
}

#[test]
fn malformed_and_oversized_requests_are_refused_with_their_status() {
    let l = Limits { max_headers: 4, max_head: 256, max_body: 100, timeout_ms: 1000 };
    let ok = feed_all(b"POST /v1/x?y=1 HTTP/1.1\r\nContent-Length: 3\r\nChunk-Digest: sha256:ab\r\n\r\nabcIGNORED", l).unwrap().unwrap();
    assert_eq!((ok.method, ok.path.as_str(), ok.query.as_str(), ok.body.as_slice(), ok.chunk_digest.as_deref()), (Method::Post, "/v1/x", "y=1", &b"abc"[..], Some("sha256:ab")));
    assert_eq!(ok.on_behalf_of, None);
    // a forwarded request names its operator (apid honours it from a node only)
    let fwd = feed_all(b"GET /v1/workloads/w HTTP/1.1\r\ncatenary-on-behalf-of: 0a0b\r\n\r\n", l).unwrap().unwrap();
    assert_eq!(fwd.on_behalf_of.as_deref(), Some("0a0b"));
    let long_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
    let many = "GET / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
    let cases: Vec<(&[u8], u16)> = vec![
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 411),
        (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (b"GET / HTTP/1.0\r\n\r\n", 505),
        (b"PATCH / HTTP/1.1\r\n\r\n", 405),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"\x00\x01\x02 garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (long_header.as_bytes(), 431),
        (many.as_bytes(), 431),
    ];
    for (bytes, status) in cases {
        let e = feed_all(bytes, l).unwrap_err();
        assert_eq!(e.status, status, "{:?}: {e:?}", String::from_utf8_lossy(bytes));
        let r = e.to_response();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // a head that never ends is cut at the limit, however it arrives
    let mut r = RequestReader::new(l, 0);
    let mut res = Ok(None);
    for _ in 0..1000 {
        res = r.feed(b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaa", 0);
        if res.is_err() {
            break;
        }
    }
    assert_eq!(res.unwrap_err().status, 431);
    // a slow client: complete bytes after its deadline are not read
    let mut r = RequestReader::new(l, 5000);
    assert_eq!(r.deadline_ms(), 6000);
    assert_eq!(r.feed(b"GET / HTTP/1.1\r\n", 5500), Ok(None));
    assert!(r.check_deadline(6000).is_ok());
    assert_eq!(r.check_deadline(6001).unwrap_err().status, 408);
    assert_eq!(r.feed(b"\r\n", 6001).unwrap_err().status, 408);
    // a body that never comes is the same
    let mut r = RequestReader::new(l, 0);
    assert_eq!(r.feed(b"POST / HTTP/1.1\r\nContent-Length: 50\r\n\r\nabc", 0), Ok(None));
    assert_eq!(r.check_deadline(1001).unwrap_err().status, 408);
}

/// An image as `catenary image pack` writes it: image.json naming config.json and the rootfs.
fn test_image(rootfs: &[u8], config: &[u8], rootfs_digest: Digest) -> String {
    format!(
        "{{\"schemaVersion\":1,\"mediaType\":\"{IMAGE_MEDIA_TYPE}\",\"rootfs\":{{\"mediaType\":\"{ROOTFS_MEDIA_TYPE}\",\"digest\":\"{}\",\"size\":{},\"file\":\"rootfs.squashfs\"}},\"config\":{{\"mediaType\":\"{CONFIG_MEDIA_TYPE}\",\"digest\":\"{}\",\"size\":{},\"file\":\"config.json\"}},\"source\":{{\"manifest\":null,\"config\":\"sha256:00\"}}}}",
        rootfs_digest,
        rootfs.len(),
        Digest::of(config),
        config.len()
    )
}

#[test]
fn image_push_in_chunks_resumes_refuses_a_corrupt_chunk_and_verifies_the_whole() {
    let (mut api, mut node) = (fuzzing::api(), SimNode::new(1024));
    let rootfs: Vec<u8> = (0..2 * CHUNK_SIZE as u32 + 1000).map(|i| (i * 7 % 251) as u8).collect();
    let config = b"{\"version\":1}".to_vec();
    let manifest = test_image(&rootfs, &config, Digest::of(&rootfs));
    let digest = Digest::of(manifest.as_bytes()).to_string();
    let stream: Vec<u8> = config.iter().chain(rootfs.iter()).copied().collect();
    let create = UploadCreate { image: digest.clone(), manifest: manifest.clone() };
    let u: Upload = ok(&mut api, &mut node, &client::create_upload(&create));
    assert_eq!((u.chunks, u.missing.clone(), u.present, u.size), (3, vec![0, 1, 2], false, stream.len() as u64));
    let chunk = |i: usize| &stream[i * CHUNK_SIZE..((i + 1) * CHUNK_SIZE).min(stream.len())];
    let _: Upload = ok(&mut api, &mut node, &client::put_chunk(u.id, 0, chunk(0)));
    // a chunk corrupted on the way: refused, not kept
    let mut bad = client::put_chunk(u.id, 1, chunk(1));
    bad.body[10] ^= 1;
    let (s, c, _) = refused(&mut api, &mut node, ADMIN, &bad);
    assert_eq!((s, c.as_str()), (422, "chunk_digest_mismatch"));
    // no digest, wrong length, index out of range, commit too early
    let mut nodigest = client::put_chunk(u.id, 1, chunk(1));
    nodigest.chunk_digest = None;
    assert_eq!(refused(&mut api, &mut node, ADMIN, &nodigest).0, 400);
    assert_eq!(refused(&mut api, &mut node, ADMIN, &client::put_chunk(u.id, 1, &chunk(1)[1..])).0, 400);
    assert_eq!(refused(&mut api, &mut node, ADMIN, &client::put_chunk(u.id, 3, b"x")).0, 400);
    assert_eq!(refused(&mut api, &mut node, ADMIN, &client::commit_upload(u.id)).1, "upload_incomplete");
    // the client goes away and comes back: the same upload, with what is still missing
    let again: Upload = ok(&mut api, &mut node, &client::create_upload(&create));
    assert_eq!((again.id, again.missing.clone()), (u.id, vec![1, 2]));
    for i in again.missing {
        let _: Upload = ok(&mut api, &mut node, &client::put_chunk(u.id, i, chunk(i as usize)));
    }
    let img: Image = ok(&mut api, &mut node, &client::commit_upload(u.id));
    assert_eq!(img.digest, digest);
    // the bytes are in the node's store, as one stream
    assert_eq!(node.kernel.stored[0].1, stream);
    assert!(api.uploads.is_empty() && node.kernel.uploads.is_empty());
    let list: ImageList = ok(&mut api, &mut node, &client::list_images());
    assert!(list.images.iter().any(|i| i.digest == digest));
    // pushing it again is instant: the node has it
    let present: Upload = ok(&mut api, &mut node, &client::create_upload(&create));
    assert!(present.present && present.missing.is_empty());
    // and it runs
    let mut r = run_req("pushed", 64);
    r.image = digest;
    let _: Workload = ok(&mut api, &mut node, &client::run(&r));

    // a manifest that does not have the digest it is announced by
    let wrong = UploadCreate { image: Digest([9; 32]).to_string(), manifest: manifest.clone() };
    assert_eq!(refused(&mut api, &mut node, ADMIN, &client::create_upload(&wrong)).1, "image_invalid");
    // a manifest whose rootfs digest is not the rootfs: every chunk has its own digest, the
    // whole does not, and the commit says so (and drops the upload)
    let lying = test_image(&rootfs, &config, Digest([5; 32]));
    let create = UploadCreate { image: Digest::of(lying.as_bytes()).to_string(), manifest: lying };
    let u: Upload = ok(&mut api, &mut node, &client::create_upload(&create));
    for i in 0..u.chunks {
        let _: Upload = ok(&mut api, &mut node, &client::put_chunk(u.id, i, chunk(i as usize)));
    }
    let (s, c, m) = refused(&mut api, &mut node, ADMIN, &client::commit_upload(u.id));
    assert_eq!((s, c.as_str()), (422, "image_invalid"));
    assert!(m.contains("not the image"), "{m}");
    assert!(api.uploads.is_empty() && node.kernel.uploads.is_empty(), "the store freed it");
    assert_eq!(node.kernel.stored.len(), 1);
}

/// When `image.json` lists the chunks' digests (as `catenary image pack` writes it), a chunk
/// that is whole and has its Chunk-Digest but is not the image's is refused as it arrives.
#[test]
fn a_pushed_chunk_that_is_not_the_listed_one_is_refused_at_once() {
    let (mut api, mut node) = (fuzzing::api(), SimNode::new(1024));
    let rootfs: Vec<u8> = (0..2 * CHUNK_SIZE as u32 + 1000).map(|i| (i * 7 % 251) as u8).collect();
    let config = b"{\"version\":1}".to_vec();
    let manifest = String::from_utf8(catenary_workload::store::manifest_for(&rootfs, &config)).unwrap();
    let digest = Digest::of(manifest.as_bytes()).to_string();
    let stream: Vec<u8> = config.iter().chain(rootfs.iter()).copied().collect();
    let u: Upload = ok(&mut api, &mut node, &client::create_upload(&UploadCreate { image: digest.clone(), manifest }));
    let chunk = |i: usize| &stream[i * CHUNK_SIZE..((i + 1) * CHUNK_SIZE).min(stream.len())];
    // chunk 1 from another source: its own digest is right, the image's list says otherwise
    let mut other = chunk(1).to_vec();
    other[10] ^= 1;
    let (s, c, m) = refused(&mut api, &mut node, ADMIN, &client::put_chunk(u.id, 1, &other));
    assert_eq!((s, c.as_str()), (422, "chunk_not_in_image"), "{m}");
    // the image's own chunks are taken, and the image commits
    for i in 0..u.chunks {
        let _: Upload = ok(&mut api, &mut node, &client::put_chunk(u.id, i, chunk(i as usize)));
    }
    let img: Image = ok(&mut api, &mut node, &client::commit_upload(u.id));
    assert_eq!(img.digest, digest);
    assert_eq!(node.kernel.stored[0].1, stream);
}

#[test]
fn uploads_are_bounded() {
    let (mut api, mut node) = (fuzzing::api(), SimNode::new(1024));
    // fuzzing::api allows 1 MiB images and 2 uploads at once
    let big = format!("{{\"rootfs\":{{\"size\":{}}},\"config\":{{\"size\":1}}}}", 1 << 20);
    let c = UploadCreate { image: Digest::of(big.as_bytes()).to_string(), manifest: big };
    assert_eq!(refused(&mut api, &mut node, ADMIN, &client::create_upload(&c)).0, 413);
    let overflow = String::from("{\"rootfs\":{\"size\":18446744073709551615},\"config\":{\"size\":1}}");
    let c = UploadCreate { image: Digest::of(overflow.as_bytes()).to_string(), manifest: overflow };
    assert_eq!(refused(&mut api, &mut node, ADMIN, &client::create_upload(&c)).0, 413);
    for i in 0..3u8 {
        let m = test_image(&[i; 10], b"{}", Digest::of(&[i; 10]));
        let c = UploadCreate { image: Digest::of(m.as_bytes()).to_string(), manifest: m };
        let (status, body) = call(&mut api, &mut node, ADMIN, &client::create_upload(&c));
        assert_eq!(status, if i < 2 { 201 } else { 507 }, "{}", String::from_utf8_lossy(&body));
    }
    // idle uploads go away
    node.now_ms += 60_001;
    let now = node.now_ms;
    api.tick(&mut node, now);
    assert!(api.uploads.is_empty());
}

#[test]
fn images_are_removed_unless_a_workload_uses_them_and_aborted_pushes_are_freed() {
    let (mut api, mut node) = (fuzzing::api(), SimNode::new(1024));
    let _: Workload = ok(&mut api, &mut node, &client::run(&run_req("web", 64)));
    let (s, c, m) = refused(&mut api, &mut node, ADMIN, &client::remove_image(&image().to_string()));
    assert_eq!((s, c.as_str()), (409, "image_in_use"), "{m}");
    let _: serde_json::Value = ok(&mut api, &mut node, &client::stop("web", None));
    let (s, _) = call(&mut api, &mut node, ADMIN, &client::remove("web"));
    assert!(s < 300 || s == 409, "{s}");
    // once no workload names it, it goes (and its frames with it, in the kernel's store)
    let end = VmEvent { vm: 1, event: Event::Ended { how: vmctl::Ended::Killed, touched_bytes: 0, wall_ms: 1 } };
    node.service.on_event(end, 1, &mut node.kernel);
    let _: serde_json::Value = ok(&mut api, &mut node, &client::remove("web"));
    let img: Image = ok(&mut api, &mut node, &client::remove_image(&image().to_string()));
    assert_eq!(img.digest, image().to_string());
    assert_eq!(node.kernel.removed, vec![image()]);
    let list: ImageList = ok(&mut api, &mut node, &client::list_images());
    assert!(list.images.is_empty());
    // an aborted push is freed in the store too
    let m = test_image(&[1; 10], b"{}", Digest::of(&[1; 10]));
    let u: Upload = ok(&mut api, &mut node, &client::create_upload(&UploadCreate { image: Digest::of(m.as_bytes()).to_string(), manifest: m }));
    assert_eq!(node.kernel.uploads.len(), 1);
    let (s, _) = call(&mut api, &mut node, ADMIN, &client::abort_upload(u.id));
    assert_eq!(s, 200);
    assert!(node.kernel.uploads.is_empty() && api.uploads.is_empty());
}

#[test]
fn answers_are_read_back_by_the_client_and_bounded() {
    let r = Response::json(404, b"{\"error\":{\"code\":\"x\",\"message\":\"y\"}}".to_vec()).to_bytes();
    assert_eq!(parse_response(&r[..r.len() - 1]), Ok(None));
    let (s, b) = parse_response(&r).unwrap().unwrap();
    assert_eq!(decode::<Workload>(s, &b), Err(ClientError::Api { status: 404, code: "x".into(), message: "y".into() }));
    assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err(), "no Content-Length");
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n").is_err());
    assert!(parse_response(&[b'a'; 9000]).is_err());
}

/// Inputs from a fixed xorshift stream (the fuzz target runs the same function).
#[test]
fn fuzzing_inputs_never_panic() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds: [&[u8]; 3] = [b"GET /v1/workloads HTTP/1.1\r\n\r\n", b"POST /v1/workloads HTTP/1.1\r\nContent-Length: 80\r\n\r\n{\"image\":\"sha256:1111111111111111111111111111111111111111111111111111111111111111\"}", b"PUT /v1/images/uploads/1/chunks/0 HTTP/1.1\r\n"];
    for i in 0..300 {
        let mut data = Vec::new();
        for _ in 0..(next() % 12) {
            let kind = (next() & 0xff) as u8;
            let body: Vec<u8> = if kind.is_multiple_of(4) && next().is_multiple_of(2) {
                seeds[(next() % 3) as usize].to_vec()
            } else {
                (0..next() % 64).map(|_| next() as u8).collect()
            };
            data.push(kind);
            data.push(body.len() as u8);
            data.extend_from_slice(&body);
        }
        let _ = i;
        fuzzing::run(&data);
    }
}

/// `POST /v1/cluster/workloads` / `DELETE /v1/cluster/workloads/{name}`: checked like `run`,
/// then handed to the node's orchestration service (here a recording stand-in for `orchd`);
/// only admins; a node without one answers 503.
#[test]
fn cluster_writes_go_to_the_orchestration_service() {
    struct Orchd {
        node: SimNode,
        writes: Vec<crate::ClusterWrite>,
    }
    impl crate::Backend for Orchd {
        fn workd(&mut self, req: catenary_workload::proto::Request) -> catenary_workload::proto::Response {
            self.node.workd(req)
        }
        fn nodes(&mut self) -> Vec<Node> {
            self.node.nodes()
        }
        fn workd_chunk(&mut self, req: catenary_workload::proto::Request, bytes: &[u8]) -> catenary_workload::proto::Response {
            self.node.workd_chunk(req, bytes)
        }
        fn cluster(&mut self, w: crate::ClusterWrite) -> Result<Option<catenary_cluster::put_change::PutChange>, crate::ApiError> {
            self.writes.push(w);
            Ok(None)
        }
        fn admit_node(&mut self, key: [u8; 32]) -> Result<(), crate::ApiError> {
            self.node.admit_node(key)
        }
    }
    fn send(api: &mut Api, b: &mut dyn crate::Backend, caller: [u8; 32], req: &ClientRequest) -> (u16, Vec<u8>) {
        let mut reader = RequestReader::new(Limits::default(), 0);
        let http = reader.feed(&req.to_bytes("[fd00::1]:8080"), 0).unwrap().unwrap();
        parse_response(&api.handle(&caller, &http, b, 0).to_bytes()).unwrap().unwrap()
    }
    let mut api = fuzzing::api();
    let mut o = Orchd { node: SimNode::new(1024), writes: Vec::new() };
    let mut req = run_req("web", 64);
    req.replicas = Some(2);
    let (s, b) = send(&mut api, &mut o, ADMIN, &client::run_cluster(&req));
    let w: ClusterWorkload = decode(s, &b).unwrap();
    assert_eq!((s, w.name.as_str(), w.replicas), (201, "web", 2));
    match &o.writes[..] {
        [crate::ClusterWrite::Put { spec, replicas: 2, .. }] => assert_eq!((spec.name.as_str(), spec.memory_mib, spec.env.clone()), ("web", 64, vec!["A=1".to_string()])),
        w => panic!("{w:?}"),
    }
    // a health check goes into the desired state, and from there into each replica's spec
    let mut checked = req.clone();
    checked.health = Some(HealthCheck { cmd: vec!["true".into()], interval_secs: Some(4), timeout_secs: None, retries: Some(2), start_period_secs: Some(30) });
    assert_eq!(send(&mut api, &mut o, ADMIN, &client::run_cluster(&checked)).0, 201);
    let want = catenary_workload::spec::HealthCheck { cmd: vec!["true".into()], interval_secs: 4, timeout_secs: 4, retries: 2, start_period_secs: 30 };
    let Some(crate::ClusterWrite::Put { spec, .. }) = o.writes.pop() else { panic!("no put") };
    assert_eq!(spec.health, Some(want.clone()));
    let catenary_cluster::desired::Command::PutWorkload(desired) = crate::cluster_state::command(crate::ClusterWrite::Put { spec, replicas: 2, constraints: vec![] }, None) else { panic!("not a put") };
    assert_eq!(crate::cluster_state::replica_spec(&desired, 1).unwrap().health, Some(want));
    // nothing ran on this node: the cluster places it
    assert_eq!(o.node.service.len(), 0);
    // refused before reaching the cluster: viewer, no name, replicas 0 or 65, a long name
    assert_eq!(send(&mut api, &mut o, VIEWER, &client::run_cluster(&req)).0, 403);
    for bad in [RunRequest { name: None, ..req.clone() }, RunRequest { replicas: Some(0), ..req.clone() }, RunRequest { replicas: Some(65), ..req.clone() }, RunRequest { name: Some("x".repeat(58)), ..req.clone() }] {
        assert_eq!(send(&mut api, &mut o, ADMIN, &client::run_cluster(&bad)).0, 400, "{bad:?}");
    }
    let (s, b) = send(&mut api, &mut o, ADMIN, &client::remove_cluster("web"));
    assert_eq!(decode::<ClusterWorkload>(s, &b).unwrap().replicas, 0);
    assert_eq!(o.writes.len(), 2);
    assert!(matches!(&o.writes[1], crate::ClusterWrite::Remove(n) if n == "web"));
    // drain: admin only, handed over by name
    assert_eq!(send(&mut api, &mut o, VIEWER, &client::drain_node("node2")).0, 403);
    let (s, b) = send(&mut api, &mut o, ADMIN, &client::drain_node("node2"));
    assert!(decode::<ClusterNode>(s, &b).unwrap().drained);
    assert!(matches!(&o.writes[2], crate::ClusterWrite::Drain(n) if n == "node2"));
    // undrain: the same, as an Undrain
    assert_eq!(send(&mut api, &mut o, VIEWER, &client::undrain_node("node2")).0, 403);
    let (s, b) = send(&mut api, &mut o, ADMIN, &client::undrain_node("node2"));
    assert!(!decode::<ClusterNode>(s, &b).unwrap().drained);
    assert!(matches!(&o.writes[3], crate::ClusterWrite::Undrain(n) if n == "node2"));
    // labels: admin only; set and remove become one change list; malformed keys or values,
    // no change, more than 16, or a key both set and removed are 422 and reach nobody
    let labels = |set: &[(&str, &str)], remove: &[&str]| NodeLabels { set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), remove: remove.iter().map(|k| k.to_string()).collect() };
    let good = labels(&[("zone", "b"), ("gpu", "yes")], &["disk"]);
    assert_eq!(send(&mut api, &mut o, VIEWER, &client::label_node("node2", &good)).0, 403);
    let many: Vec<(String, String)> = (0..17).map(|i| (alloc::format!("k{i}"), "v".to_string())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for bad in [labels(&[("Zone", "b")], &[]), labels(&[("zone", "b c")], &[]), labels(&[], &[""]), labels(&[], &[]), labels(&many, &[]), labels(&[("zone", "b")], &["zone"]), labels(&[], &["a", "a"])] {
        assert_eq!(send(&mut api, &mut o, ADMIN, &client::label_node("node2", &bad)).0, 422, "{bad:?}");
    }
    assert_eq!(o.writes.len(), 4);
    let (s, b) = send(&mut api, &mut o, ADMIN, &client::label_node("node2", &good));
    assert_eq!(decode::<NodeLabels>(s, &b).unwrap(), good);
    match &o.writes[4] {
        crate::ClusterWrite::Label { node, changes } => {
            assert_eq!(node, "node2");
            assert_eq!(changes, &vec![("gpu".to_string(), Some("yes".to_string())), ("zone".to_string(), Some("b".to_string())), ("disk".to_string(), None)]);
        }
        w => panic!("{w:?}"),
    }
    // remove: admin only, handed over by name
    assert_eq!(send(&mut api, &mut o, VIEWER, &client::remove_node("node2")).0, 403);
    let (s, b) = send(&mut api, &mut o, ADMIN, &client::remove_node("node2"));
    assert_eq!(decode::<NodeAdd>(s, &b).unwrap().public_key, "node2");
    assert!(matches!(&o.writes[5], crate::ClusterWrite::RemoveNode(n) if n == "node2"));
    // a node without an orchestration service
    let mut plain = SimNode::new(1024);
    assert_eq!(send(&mut api, &mut plain, ADMIN, &client::run_cluster(&req)).0, 503);
}

/// `POST /v1/nodes`: an admin admits a key (the backend gets it), a viewer gets 403, a key
/// that is not 64 hex (or all zero) 422, and nothing is admitted by the refused requests.
#[test]
fn node_add_is_admin_only_and_checks_the_key() {
    let mut api = fuzzing::api();
    let mut node = SimNode::new(1024);
    let key = "ab".repeat(32);
    assert_eq!(call(&mut api, &mut node, VIEWER, &client::add_node(&key)).0, 403);
    assert_eq!(call(&mut api, &mut node, STRANGER, &client::add_node(&key)).0, 403);
    assert!(node.admitted.is_empty());
    for bad in ["ab", "zz".repeat(32).as_str(), "00".repeat(32).as_str()] {
        assert_eq!(call(&mut api, &mut node, ADMIN, &client::add_node(bad)).0, 422, "{bad}");
    }
    assert!(node.admitted.is_empty());
    let (s, b) = call(&mut api, &mut node, ADMIN, &client::add_node(&key));
    let a: NodeAdd = decode(s, &b).unwrap();
    assert_eq!((s, a.public_key.as_str()), (200, key.as_str()));
    assert_eq!(node.admitted, vec![[0xab; 32]]);
}
