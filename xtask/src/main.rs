//! `cargo xtask`: Catenary's host-side driver. Builds the kernel with the kernel-only flags
//! (host crates and tests keep normal flags), boots it in QEMU, makes the GRUB/Limine ISO,
//! builds guest images, runs every test and the benchmarks.

mod apibench;
mod apitest;
mod hungtest;
mod imagecopytest;
mod updatetest;
mod orchtest;
mod orchkilltest;
mod admissiontest;
mod fabriccli;
mod forge;
mod hostiletest;
mod operator;
mod bochs;
mod bootphases;
mod build;
mod cluster;
mod fuzz;
mod initimage;
mod membertest;
mod layerimage;
mod nat64bench;
mod nat64test;
mod netbench;
mod netboot;
mod netns;
mod nettests;
mod leavetest;
mod lint;
mod snapshottest;
mod removetest;
mod nixcheck;
mod pushtest;
mod preflight;
mod pxe;
mod ociimage;
mod qemu;
mod sim;
mod sockrestart;
mod soak;
mod soak_inspect;
mod smpvm;
mod sysfuzz;
mod test;
mod threenode;
mod bench;
mod benchtable;
mod clusterbench;
mod tools;
mod vmbench;
mod workbench;
mod workloadnet;
mod workloadtest;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build [--test|--probes]   build the kernel ELF (prints its path; --probes: with the test probes)
  run [options] [-- CMDLINE] build and boot Catenary in QEMU, serial console on stdout
      --machine microvm|q35|pc   (default q35)    --smp N (default 2)   --mem SIZE (default 1G)
      --iso                  boot the GRUB ISO instead of -kernel (PVH)   --uefi  (with --iso: OVMF)
      --no-guest             do not attach the guest image bundle
      --image DIR            run a packed Catenary image (`catenary image pack -o DIR`) as the workload
                             `demo`, started by the workload service (workload.demo=demo)
      --nodes N              N nodes on one vde switch (keys + cluster file generated), consoles prefixed [nodeK]
      --probes               boot the probes kernel (the command-line test probes, e.g. -- net.ping=node3;
                             docs/testing.md, The probes kernel); by default the node kernel, which has none
  power NODE                press the ACPI power button of a node of `run --nodes N` (it leaves the
                            cluster, drains, and switches off: docs/orchestration.md)
  iso [--test]              build the hybrid BIOS+UEFI ISO (GRUB; Limine too if `limine` is on PATH)
  netboot [--test] [DIR]    PXE/TFTP directory (GRUB BIOS+UEFI network images, grub.cfg, kernel,
                            modules; default build/netboot; same layout as `nix build .#netboot`)
  guest                     build the guest kernel + initramfs bundle (cached)
  test [--quick] [--only S] run every test; ends with `N passed, N failed, N skipped`
                            (--only S: only the test groups whose names contain S; repeatable)
                            syscall_fuzz: --sysfuzz-seconds N (default 60) --sysfuzz-seed HEX
                            --sysfuzz-classes HEX (docs/microkernel.md)
  fuzz --smoke              every cargo-fuzz target for a few seconds (part of `test`)
  fuzz [--seconds N] [T..]  longer fuzz runs (default 60 s per target); --list names them
  bench [boot|vm|exit|ipc|net|workload|aead|cluster|nat64|api]  benchmarks: every one (no argument) or one; one table of figures, references, ratios and goals, also in build/bench*.json (never asserts)
  sim [--seeds N] [--first F]  the cluster core's chaos schedules (membership, then the replicated
                            desired state) over N seeds (default 1000); each ends
                            with how many held every invariant. --detection: failure-detection times
  lint                      clippy, warnings as errors: host workspace, ring-3 programs, node kernel
                            (node, ktest, probes, ktest+probes builds); not part of `test`
  soak vm --runs N [--parallel K] [--load L] [--qemu-log FLAGS] [--reset-log] [--inspect]
          [--guest minimal|debian] [--node-args WORDS] [--kick-ms N]
                            boot Linux guests back to back under CPU load; ends with
                            `N boots, N clean, 0 node failures` (failure logs in build/soak/)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let r = match cmd.as_str() {
        "build" => build::cmd_build(rest),
        "run" => qemu::cmd_run(rest),
        "power" => cluster::cmd_power(rest),
        "iso" => build::cmd_iso(rest),
        "netboot" => pxe::cmd_netboot(rest),
        "guest" => build::cmd_guest(rest),
        "test" => test::cmd_test(rest),
        "fuzz" => fuzz::cmd_fuzz(rest),
        "bench" => bench::cmd_bench(rest),
        "soak" => soak::cmd_soak(rest),
        "sim" => sim::cmd_sim(rest),
        "lint" => lint::cmd_lint(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
