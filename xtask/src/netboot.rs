//! Single-node boots that check how the node sets up its fabric keys and clock:
//! * `net_no_hw_entropy_refuses_keys` — a CPU without RDSEED/RDRAND: the node refuses to
//!   create keys (networking off), does not panic;
//! * `net_insecure_entropy_warns` — the same CPU with `net.insecure-entropy`: keys are
//!   created, with the loud warning;
//! * `net_wall_clock_from_rtc` — the node reads the CMOS RTC at boot (not `net.time`, which
//!   is not passed here) and its time is the host's (QEMU's RTC follows the host clock).

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::qemu::{run_captured, Boot};
use crate::test::Tally;

fn boot(kernel: &Path, cpu: Option<&str>, cmdline: &str, expect: &[&str]) -> Result<crate::qemu::Outcome, String> {
    let mut b = Boot::pvh("q35", kernel.to_path_buf());
    b.smp = 1;
    b.mem = "256M".into();
    b.cmdline = format!("vm=none {cmdline}");
    if let Some(c) = cpu {
        // A later -cpu replaces the default one.
        b.extra.extend(["-cpu".into(), c.into()]);
    }
    b.extra.extend(["-netdev".into(), "user,id=n0".into(), "-device".into(), "virtio-net-pci,netdev=n0".into()]);
    run_captured(b.command(false)?, expect, &["KERNEL PANIC"], Duration::from_secs(60), false)
}

pub fn tests(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    println!("== node keys and clock (single-node boots)");
    let no_hw = "max,-rdrand,-rdseed";
    let o = boot(kernel, Some(no_hw), "", &["refusing to create keys"])?;
    let keys = o.lines.iter().any(|l| l.contains("fabric address"));
    t.record("net_no_hw_entropy_refuses_keys", o.matched && o.failed_on.is_none() && !keys,
        &format!("(matched {}, keys created {keys}, failed on {:?})", o.matched, o.failed_on));

    let o = boot(kernel, Some(no_hw), "net.insecure-entropy", &["*** INSECURE: no hardware entropy", "fabric address"])?;
    t.record("net_insecure_entropy_warns", o.matched && o.failed_on.is_none(), &format!("(failed on {:?})", o.failed_on));

    let o = boot(kernel, None, "", &["wall clock: CMOS RTC reads Unix time "])?;
    let host = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let rtc = o.lines.iter().find_map(|l| {
        let s = l.split("wall clock: CMOS RTC reads Unix time ").nth(1)?;
        s.split_whitespace().next()?.parse::<u64>().ok()
    });
    // Generous: the boot itself takes seconds under TCG on a busy machine.
    let close = rtc.is_some_and(|r| r.abs_diff(host) < 300);
    t.record("net_wall_clock_from_rtc", o.matched && close, &format!("(RTC {rtc:?}, host {host})"));
    Ok(())
}
