//! Records a real wireguard-go's side of the known-answer session for
//! `tests/known_answer.rs` (root only; see that file's docs):
//! `flock /tmp/catenary-netns.lock cargo run -p netfabric --example record_wireguard_go`
//! prints the `RECORDED_*` constants to paste there.

#[path = "../tests/ka_inputs/mod.rs"]
mod ka_inputs;
#[path = "../tests/wg_netns/mod.rs"]
mod wg_netns;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use ka_inputs::*;
use netfabric::crypto::aead_open;
use netfabric::messages::{Response, Transport};
use netfabric::noise;

fn main() {
    if let Some(why) = wg_netns::unavailable() {
        panic!("cannot record: {why}");
    }
    let (h, l) = ids();
    let mut wg = wg_netns::WgPeer::start("nfka").expect("wireguard-go peer");
    let sock = UdpSocket::bind(SocketAddr::new(wg.local.into(), 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let key = wg.secret_file("key", &l.secret_bytes());
    let psk = wg.secret_file("psk", &PSK);
    let prefix = h.prefix().to_string();
    let ep = format!("[{}]:{}", wg.local, sock.local_addr().unwrap().port());
    let wgif = wg.wgif.clone();
    wg.exec(&["wg", "set", &wgif, "listen-port", "51820", "private-key", &key, "peer", &wg_netns::b64(&h.public_key()),
        "preshared-key", &psk, "allowed-ips", &prefix, "endpoint", &ep]).unwrap();
    wg.exec(&["ip", "-6", "addr", "add", &format!("{}/64", l.node_address()), "dev", &wgif, "nodad"]).unwrap();
    wg.exec(&["ip", "link", "set", &wgif, "up"]).unwrap();
    wg.exec(&["ip", "-6", "route", "add", &prefix, "dev", &wgif]).unwrap();
    let wg_ep = SocketAddr::new(wg.remote.into(), 51820);

    let (state, init) = initiation();
    sock.send_to(&init, wg_ep).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).expect("a response from wireguard-go");
    let resp_bytes = buf[..n].to_vec();
    let resp = Response::parse(&resp_bytes).expect("a handshake response");
    let keys = noise::consume_response(&state, &h, &PSK, &resp).expect("response authenticates");
    sock.send_to(&seal_transport(&keys.send, resp.sender, 0, &echo_request()), wg_ep).unwrap();
    let data = loop {
        let (n, _) = sock.recv_from(&mut buf).expect("a data packet from wireguard-go");
        let Ok(t) = Transport::parse(&buf[..n]) else { continue };
        match aead_open(&keys.recv, t.counter, t.ciphertext, &[]) {
            Some(p) if !p.is_empty() => break (buf[..n].to_vec(), p),
            _ => continue,
        }
    };
    let version = std::process::Command::new("wireguard-go").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    println!("const RECORDED_WITH: &str = \"{}\";", version.lines().next().unwrap_or(""));
    println!("const RECORDED_RESPONSE: &str = \"{}\";", hex(&resp_bytes));
    println!("const RECORDED_KEY_SEND: &str = \"{}\";", hex(&keys.send));
    println!("const RECORDED_KEY_RECV: &str = \"{}\";", hex(&keys.recv));
    println!("const RECORDED_DATA: &str = \"{}\";", hex(&data.0));
    println!("const RECORDED_PLAINTEXT: &str = \"{}\";", hex(&data.1));
}
