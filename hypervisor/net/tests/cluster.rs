//! The cluster file parser rejects nonsense with a clear, line-numbered error (it comes from a
//! boot module; the kernel logs the error and runs without peers, never panics).
use catenary_net::cluster::{hex_encode, ClusterError, MAX_MEMBERS};
use catenary_net::Cluster;
use netfabric::Identity;

fn key(seed: u8) -> String {
    hex_encode(&Identity::from_secret_bytes([seed; 32]).public_key())
}

fn parse(body: &str) -> Result<Cluster, ClusterError> {
    Cluster::parse(&format!("catenary-cluster v1\n# comment\n{body}"))
}

fn line_err(body: &str) -> (usize, &'static str) {
    match parse(body) {
        Err(ClusterError::Line(n, why)) => (n, why),
        other => panic!("{body:?}: expected a line error, got {other:?}"),
    }
}

#[test]
fn good_file_parses() {
    let c = parse(&format!("node a {} fe80::1 51820\n\nnode b-2 {} fe80::2 1\n", key(1), key(2))).unwrap();
    assert_eq!(c.members.len(), 2);
    assert_eq!(c.members[1].port, 1);
}

#[test]
fn operator_lines_are_operators_not_members() {
    let c = parse(&format!("node a {} fe80::1 51820\noperator alice {} admin\noperator ci {} viewer\n", key(1), key(2), key(3))).unwrap();
    assert_eq!(c.members.len(), 1);
    assert_eq!(c.operators.iter().map(|o| (o.name.as_str(), o.role.as_str())).collect::<Vec<_>>(), [("alice", "admin"), ("ci", "viewer")]);
    let (k1, k2) = (key(1), key(2));
    let zero = "0".repeat(64);
    for (body, why) in [
        (format!("node a {k1} fe80::1 1\noperator x {k1} admin\n"), "operator key (or its /64) is a node's"),
        (format!("operator x {k2} root\n"), "role is not admin or viewer"),
        (format!("operator x {k2}\n"), "expected: operator NAME KEY admin|viewer"),
        (format!("operator x {zero} admin\n"), "public key is a low-order point"),
        (format!("operator x {k2} admin\noperator y {k2} admin\n"), "duplicate operator name or key"),
        (format!("operator x/ {k2} admin\n"), "bad name (1-32 of A-Z a-z 0-9 - _)"),
    ] {
        assert_eq!(line_err(&body).1, why, "{body}");
    }
}

#[test]
fn nonsense_is_a_clear_error() {
    let (k1, k2) = (key(1), key(2));
    let zero = "0".repeat(64);
    let order8 = "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800";
    let cases: Vec<(String, &str)> = vec![
        (format!("node a {k1} fe80::1 0\n"), "port 0"),
        (format!("node a {k1} fe80::1 65536\n"), "bad port (1-65535)"),
        (format!("node a {k1} fe80::1 -1\n"), "bad port (1-65535)"),
        (format!("node a {zero} fe80::1 1\n"), "public key is a low-order point"),
        (format!("node a {order8} fe80::1 1\n"), "public key is a low-order point"),
        (format!("node a {} fe80::1 1\n", &k1[..63]), "bad public key (64 hex digits)"),
        (format!("node a +{} fe80::1 1\n", &k1[1..]), "bad public key (64 hex digits)"),
        (format!("node a {}é fe80::1 1\n", &k1[..62]), "bad public key (64 hex digits)"),
        (format!("node a {k1} 10.0.0.1 1\n"), "bad IPv6 address"),
        (format!("node a {k1} :: 1\n"), "underlay address is unspecified, loopback or multicast"),
        (format!("node a {k1} ff02::1 1\n"), "underlay address is unspecified, loopback or multicast"),
        (format!("node a {k1} fe80::1 1 extra\n"), "bad label (KEY=VALUE: 1-63 of a-z 0-9 . _ - /, then 0-63 of A-Z a-z 0-9 . _ -)"),
        (format!("peer a {k1} fe80::1 1\n"), "expected: node NAME KEY ADDR PORT [LABEL=VALUE]..."),
        (format!("node a\u{0}b {k1} fe80::1 1\n"), "bad name (1-32 of A-Z a-z 0-9 - _)"),
        (format!("node {} {k1} fe80::1 1\n", "n".repeat(33)), "bad name (1-32 of A-Z a-z 0-9 - _)"),
    ];
    for (body, why) in cases {
        assert_eq!(line_err(&body), (3, why), "{body:?}");
    }
    let dups = [
        (format!("node a {k1} fe80::1 1\nnode a {k2} fe80::2 1\n"), "duplicate node name"),
        (format!("node a {k1} fe80::1 1\nnode b {k1} fe80::2 1\n"), "duplicate public key"),
        (format!("node a {k1} fe80::1 1\nnode b {k2} fe80::1 1\n"), "duplicate underlay address and port"),
    ];
    for (body, why) in dups {
        assert_eq!(line_err(&body), (4, why), "{body:?}");
    }
    assert_eq!(Cluster::parse("catenary-cluster v2\n"), Err(ClusterError::BadMagic));
    assert_eq!(Cluster::parse(""), Err(ClusterError::BadMagic));
    assert_eq!(ClusterError::Line(3, "port 0").to_string(), "line 3: port 0");
}

#[test]
fn member_count_is_bounded() {
    let mut body = String::new();
    for i in 0..=MAX_MEMBERS {
        let mut secret = [9u8; 32];
        secret[1..3].copy_from_slice(&(i as u16).to_le_bytes());
        let k = hex_encode(&Identity::from_secret_bytes(secret).public_key());
        body.push_str(&format!("node n{i} {k} fe80::{:x} 51820\n", i + 1));
    }
    assert_eq!(parse(&body), Err(ClusterError::TooManyMembers));
}

/// Hostile bytes never panic the parser.
#[test]
fn arbitrary_text_never_panics() {
    let mut x = 0x1234_5678u32;
    for _ in 0..2000 {
        let mut s = String::from("catenary-cluster v1\n");
        for _ in 0..(x % 200) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            s.push(char::from_u32(x % 0x250).unwrap_or('?'));
            if x.is_multiple_of(7) {
                s.push_str(" node a 1 fe80::1 ");
            }
        }
        let _ = Cluster::parse(&s);
    }
}

/// `node` lines may carry labels (`zone=a`) for the orchestration's placement constraints:
/// parsed per node key, bad or repeated labels refused with the line.
#[test]
fn node_lines_carry_labels() {
    let body = format!("node a {} fe80::1 51820 zone=a disk=ssd\nnode b {} fe80::2 51820\n", key(1), key(2));
    let c = parse(&body).unwrap();
    assert_eq!(c.members.len(), 2);
    let labels = Cluster::labels(&format!("catenary-cluster v1\n{body}"));
    let of = |k: u8| labels.iter().find(|(key, _)| hex_encode(key) == self::key(k)).map(|(_, l)| l.clone());
    assert_eq!(of(1), Some(vec![("zone".to_string(), "a".to_string()), ("disk".to_string(), "ssd".to_string())]));
    assert_eq!(of(2), Some(vec![]));
    for bad in ["zone", "=a", "Zone=a", "zone=a b=", "zone=a zone=b", "zone=a/b"] {
        let line = format!("node a {} fe80::1 51820 {bad}\n", key(1));
        let ok_if_empty_value = bad == "zone=a b=";
        if ok_if_empty_value {
            assert!(parse(&line).is_ok(), "{bad}: an empty value is a value");
            continue;
        }
        assert_eq!(line_err(&line).0, 3, "{bad}");
    }
    let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
    assert_eq!(line_err(&format!("node a {} fe80::1 51820 {}\n", key(1), many.join(" "))).1, "more than 16 labels");
}
