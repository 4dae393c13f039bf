//! `cargo xtask bench vm` (microVM boot overhead) — filled in with the microVM monitor.

pub fn bench_vm() -> Result<(), String> {
    Err("the microVM benchmark needs the microVM monitor (issue: MicroVM monitor)".into())
}
