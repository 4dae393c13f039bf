//! echod: the node's `echo` service (service manifest): answers every call on its endpoint
//! (capability slot 0) with label + 1 and each word + 1. Every node has it at task index 1 of
//! its fabric /64, so a fabric IPC call to it tells whether the node and its router answer.
//! It holds no capability but its own endpoint. The test programs (`uapp`, `wkctl`,
//! `sysfuzz`) are not in the node kernel; this is the one piece of them it ships.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use catenary_user::*;

entry!(run);

fn run(_arg: u64) -> u64 {
    catenary_user::echo::serve()
}
