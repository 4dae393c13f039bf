//! Known-answer tests of the Noise_IKpsk2 handshake: fixed static keys, ephemerals, indices,
//! timestamp and pre-shared key give exact message bytes and exact transport keys.
//!
//! * [`handshake_known_answer`]: both sides are this crate; every byte is pinned.
//! * [`wireguard_go_recorded_session`]: the initiator is this crate with the same fixed inputs
//!   (so its initiation is the pinned one); the responder was a real `wireguard-go`. Its
//!   response and the first data packet it sent (an ICMPv6 echo reply from the Linux stack
//!   behind it) are pinned as recorded; this crate must consume that response, derive the
//!   pinned keys and decrypt the packet to the pinned plaintext. No root, no network.
//!
//! How the recording was made (and how to redo it, e.g. after changing a fixed input): as root
//! with `wireguard-go`, `wg` and `ip` installed,
//! ```text
//! flock /tmp/catenary-netns.lock cargo run -p netfabric --example record_wireguard_go
//! ```
//! `examples/record_wireguard_go.rs` starts `wireguard-go` in a network namespace (key L, pre-shared key,
//! peer H allowed its derived /64), sends it our pinned initiation over a veth, prints the
//! response, sends our first data packet (an echo request to L's node address) and prints the
//! first transport packet `wireguard-go` answers with, as Rust constants to paste below.
//! Recorded once with Debian's `wireguard-go` (version in `RECORDED_WITH`).

mod ka_inputs;

use ka_inputs::*;

use netfabric::cookie;
use netfabric::crypto::{aead_open, CipherImpl, TransportCipher};
use netfabric::ipv6::parse_icmpv6_echo;
use netfabric::messages::{Initiation, Response, Transport, INITIATION_MAC1_OFFSET, RESPONSE_MAC1_OFFSET};
use netfabric::noise::{self, TransportKeys};

fn keys_hex(k: &TransportKeys) -> (String, String) {
    (hex(&k.send), hex(&k.recv))
}

// ------------------------------------------------------------------ pinned answers

const INITIATION: &str = "01000000010203044c2817a9d668ed844d2f95b93b69ecb8485095783a015a424164b0d09702894f5aa99dcd02be77c5de983ed926127aa6e911fb67702668b8b44fb5942c5304cfbaeb785212333830db8026463fed0eeef040a1364e6c7ecae286c3dbc95edbe36a6f6205d2b7feb49855c90dc693ea6c34574f3530a056f3092f2ff100000000000000000000000000000000";
const RESPONSE: &str = "02000000050607080102030419d80204bf85f3e1118e1b23410c88f0d0eeced5156f4c5bdf347b14ed7ec63fd102ab1391e320da28fa3011690496566407d76eaccf8aff4637908e50163d7300000000000000000000000000000000";
const KEY_I_SEND: &str = "52256955357a79a96560be6665338ca6504114bdaa8f7aa19f88c7de2bbc1294";
const KEY_I_RECV: &str = "0ae64296fc0cd5469b01b6e0093acaa2691f92ce5091c8503df491e911612cc1";
const FIRST_DATA: &str = "04000000050607080000000000000000cf7a349475708b4eb5367479c39fb91ae445ff33a4f03fb8ae9cc205ca2374222cef8524e46620d2db36fa3ff88f7b3a7ff23329a1a325acbcb02ac1bd44f8fd048d7ff572966e32bbab63ef9488f56dfbfcdb8859b1eedd0489e28bae86d594";

const RECORDED_WITH: &str = "wireguard-go v0.0.20220316 (Debian package wireguard-go)";
const RECORDED_RESPONSE: &str = "020000009204697801020304c54c44ea1f3dc9728c465964a96c74413775216f8bfc1e8b0ae503b3ec0379119734692e5694bf83d12906bfccd26211226c34c68bbdfa2f8f9980a770a33b1200000000000000000000000000000000";
const RECORDED_KEY_SEND: &str = "3773a9796fe83d4ffcadb589e1f459ed092854f83d3384e2f665cf690de2ebd4";
const RECORDED_KEY_RECV: &str = "6443de8a123380e6326b0df790b755c6f350dfa3d84fd240243bfaea88facbc9";
const RECORDED_DATA: &str = "04000000010203040000000000000000a184402f1e790fdcdc4d9424672553200768e678f577edf2e45a03bc1df5a1c6e46815a1f7476c2381dfd006cbcded72c6f93b07c24178e20296fe463f9920bfe01be8b39d9b76d79a4a66679a4578d108fffaabcf3ae86e3487b39949dd8830";
const RECORDED_PLAINTEXT: &str = "600d97b4001e3a40fd3a9700ff9de5580000000000000001fd730e14004e2b9c00000000000000018100e59a4b4100016e6574666162726963206b6e6f776e2d616e7377657200000000000000000000";

// ------------------------------------------------------------------ tests

#[test]
fn handshake_known_answer() {
    let (h, l) = ids();
    let (state, init) = initiation();
    // The responder (also this crate) with its fixed ephemeral and index.
    let msg = Initiation::parse(&init).unwrap();
    assert!(cookie::check_mac1(&init, INITIATION_MAC1_OFFSET, &cookie::mac1_key(&l.public_key())));
    let consumed = noise::consume_initiation(&l, &msg, |k| {
        assert_eq!(k, &h.public_key());
        noise::static_static(&l, k).ok()
    })
    .unwrap();
    assert_eq!(consumed.timestamp, timestamp());
    let (resp, keys_r) = noise::create_response(&consumed, &PSK, EPH_R, SENDER_R).unwrap();
    let mut resp_bytes = resp.encode();
    cookie::add_macs(&mut resp_bytes, RESPONSE_MAC1_OFFSET, &cookie::mac1_key(&h.public_key()), None);
    let keys_i = noise::consume_response(&state, &h, &PSK, &Response::parse(&resp_bytes).unwrap()).unwrap();
    assert_eq!((keys_i.send, keys_i.recv), (keys_r.recv, keys_r.send));
    let first = seal_transport(&keys_i.send, SENDER_R, 0, &echo_request());

    let got = [hex(&init), hex(&resp_bytes), hex(&keys_i.send), hex(&keys_i.recv), hex(&first)];
    let want = [INITIATION, RESPONSE, KEY_I_SEND, KEY_I_RECV, FIRST_DATA];
    let names = ["INITIATION", "RESPONSE", "KEY_I_SEND", "KEY_I_RECV", "FIRST_DATA"];
    for ((g, w), n) in got.iter().zip(want).zip(names) {
        assert_eq!(g, w, "{n} differs from the pinned known answer:\nconst {n}: &str = \"{g}\";");
    }
}

#[test]
fn wireguard_go_recorded_session() {
    let (h, l) = ids();
    let (state, init) = initiation();
    assert_eq!(hex(&init), INITIATION, "the recording ({RECORDED_WITH}) answers the pinned initiation");
    let resp = unhex(RECORDED_RESPONSE);
    assert!(cookie::check_mac1(&resp, RESPONSE_MAC1_OFFSET, &cookie::mac1_key(&h.public_key())), "wireguard-go's mac1");
    let resp = Response::parse(&resp).unwrap();
    assert_eq!(resp.receiver, SENDER_I);
    let keys = noise::consume_response(&state, &h, &PSK, &resp).expect("wireguard-go's response authenticates");
    assert_eq!(keys_hex(&keys), (RECORDED_KEY_SEND.to_string(), RECORDED_KEY_RECV.to_string()));
    // The packet wireguard-go sent under these keys: its reply to our first data packet.
    let data = unhex(RECORDED_DATA);
    let t = Transport::parse(&data).unwrap();
    assert_eq!(t.receiver, SENDER_I);
    let plain = aead_open(&keys.recv, t.counter, t.ciphertext, &[]).expect("wireguard-go's data packet decrypts");
    assert_eq!(hex(&plain), RECORDED_PLAINTEXT);
    let echo = parse_icmpv6_echo(&plain[..40 + u16::from_be_bytes([plain[4], plain[5]]) as usize]).unwrap();
    assert!(!echo.request);
    assert_eq!((echo.src, echo.dst), (l.node_address(), h.node_address()));
    assert_eq!((echo.id, echo.seq, echo.data), (ECHO_ID, 1, ECHO_PAYLOAD));
    // A wrong pre-shared key does not authenticate the recorded response.
    assert!(noise::consume_response(&state, &h, &[0; 32], &resp).is_err());
}


/// The transport with each ChaCha20-Poly1305 code (crypto::CipherImpl): both seal our first
/// data packet to the pinned bytes and open the packet the real wireguard-go sent.
#[test]
fn recorded_transport_with_each_cipher_impl() {
    let first = unhex(FIRST_DATA);
    let recorded = unhex(RECORDED_DATA);
    let mut padded = echo_request();
    padded.resize(padded.len().div_ceil(16) * 16, 0);
    for imp in [CipherImpl::Vector, CipherImpl::Portable] {
        let send = TransportCipher::with_impl(&unhex(KEY_I_SEND).try_into().unwrap(), imp);
        let mut b = padded.clone();
        let tag = send.seal_in_place(0, &mut b);
        b.extend_from_slice(&tag);
        assert_eq!(hex(&b), hex(&first[16..]), "{imp:?}: our first data packet");
        let recv = TransportCipher::with_impl(&unhex(RECORDED_KEY_RECV).try_into().unwrap(), imp);
        let t = Transport::parse(&recorded).unwrap();
        let (ct, tag) = t.ciphertext.split_at(t.ciphertext.len() - 16);
        let mut b = ct.to_vec();
        assert!(recv.open_in_place(t.counter, &mut b, &tag.try_into().unwrap()), "{imp:?}: wireguard-go's packet opens");
        assert_eq!(hex(&b), RECORDED_PLAINTEXT, "{imp:?}");
        // The wrong counter (nonce) does not open it.
        let mut b = ct.to_vec();
        assert!(!recv.open_in_place(t.counter + 1, &mut b, &tag.try_into().unwrap()), "{imp:?}");
    }
}
