//! `catenary bench-api` (hidden; run by `cargo xtask bench api`, docs/api.md "Benchmarks"):
//! figures from the CLI's side, all through one embedded fabric session (made by an untimed
//! first request): the latency of `GET /v1/workloads` (each a TCP connection through the
//! session, request and whole answer), an image push (`image push`: create, chunks of 256 KiB
//! each verified by the node and written to its store, commit), and, as the fabric's raw
//! reference in the same session, a TCP echo of as many bytes to the node's echo service.
//! Prints figures; asserts nothing.

use super::commands::{CliError, Ctx};
use catenary_api::client;
use catenary_api::types::WorkloadList;
use std::path::Path;
use std::time::Instant;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The value at quantile `q` (0..=1) of `v` (nearest rank).
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn bench(c: &Ctx, gets: usize, push: Option<&Path>, echo: Option<&str>, echo_bytes: usize) -> Result<(), CliError> {
    let t = Instant::now();
    let _: WorkloadList = c.t.call(&client::list_workloads())?;
    println!("bench-api: first request (fabric handshake + GET) {:.1} ms", ms(t));
    let mut lat = Vec::with_capacity(gets);
    for _ in 0..gets {
        let t = Instant::now();
        let _: WorkloadList = c.t.call(&client::list_workloads())?;
        lat.push(ms(t));
    }
    let (med, p99) = (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99));
    println!("bench-api: GET /v1/workloads x{gets}: median {med:.2} ms p99 {p99:.2} ms");
    if let Some(dir) = push {
        let (_, m) = crate::image::verify(dir, None).map_err(|e| CliError::Other(format!("{}: {e}", dir.display())))?;
        let bytes = m.config.size + m.rootfs.size;
        let t = Instant::now();
        super::commands::image_push(c, dir)?;
        let took = ms(t);
        println!("bench-api: push {bytes} bytes in {took:.0} ms: {:.3} MB/s", bytes as f64 / took / 1000.0);
    }
    if let Some(ep) = echo {
        let sent: Vec<u8> = (0..echo_bytes).map(|i| (i * 7 % 251) as u8).collect();
        let t = Instant::now();
        let got = c.t.echo_at(ep, &sent)?;
        let took = ms(t);
        if got.get(..sent.len()) != Some(&sent[..]) {
            return Err(CliError::Other(format!("echo: {} bytes came back, not the ones sent", got.len())));
        }
        println!("bench-api: echo {echo_bytes} bytes out and back in {took:.0} ms: {:.3} MB/s", echo_bytes as f64 / took / 1000.0);
    }
    Ok(())
}
