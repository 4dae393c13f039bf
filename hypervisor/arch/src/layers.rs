//! The arch crate's layers (after Asterinas's OSTD): each file uses only files of its own or a
//! lower layer, and no two files of one layer use each other, except the virtualization
//! facade and its backends. Checked by the test below over the sources' `crate::` paths.
//!
//! 0. CPU registers and ports: `cpu`, `percpu`, `gdt`, `serial`, `stages` (cycle accounting),
//!    `qemu`, `rtc`, `entropy`, `pci`, `fastmem` (bulk zeroing and copying)
//! 1. physical memory and paging: `memory`, `paging`, `heap`, `pcid` (TLB tags of user spaces)
//! 2. interrupts, APIC and time: `trap`, `apic`, `time`, `acpi`, `virtio`
//! 3. SMP, user address spaces, task contexts, boot and power: `smp`, `uspace`, `user_mem`,
//!    `context`, `boot`, `limine`, `power` (the ACPI power button and soft-off)
//! 4. virtualization: `virt`, `svm`, `vmx`, `guest_switch`

#[cfg(test)]
mod tests {
    use alloc::format;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    const FILES: &[(&str, u8, &str)] = &[
        ("cpu", 0, include_str!("cpu.rs")),
        ("percpu", 0, include_str!("percpu.rs")),
        ("gdt", 0, include_str!("gdt.rs")),
        ("serial", 0, include_str!("serial.rs")),
        ("stages", 0, include_str!("stages.rs")),
        ("qemu", 0, include_str!("qemu.rs")),
        ("rtc", 0, include_str!("rtc.rs")),
        ("entropy", 0, include_str!("entropy.rs")),
        ("pci", 0, include_str!("pci.rs")),
        ("fastmem", 0, include_str!("fastmem.rs")),
        ("memory", 1, include_str!("memory.rs")),
        ("paging", 1, include_str!("paging.rs")),
        ("heap", 1, include_str!("heap.rs")),
        ("pcid", 1, include_str!("pcid.rs")),
        ("trap", 2, include_str!("trap.rs")),
        ("apic", 2, include_str!("apic.rs")),
        ("time", 2, include_str!("time.rs")),
        ("acpi", 2, include_str!("acpi.rs")),
        ("virtio", 2, include_str!("virtio.rs")),
        ("smp", 3, include_str!("smp.rs")),
        ("uspace", 3, include_str!("uspace.rs")),
        ("user_mem", 3, include_str!("user_mem.rs")),
        ("context", 3, include_str!("context.rs")),
        ("boot", 3, include_str!("boot.rs")),
        ("limine", 3, include_str!("limine.rs")),
        ("power", 3, include_str!("power.rs")),
        ("virt", 4, include_str!("virt.rs")),
        ("svm", 4, include_str!("svm.rs")),
        ("vmx", 4, include_str!("vmx/mod.rs")),
        ("vmx", 4, include_str!("vmx/caps.rs")),
        ("vmx", 4, include_str!("vmx/vmcs.rs")),
        ("vmx", 4, include_str!("vmx/ept.rs")),
        ("vmx", 4, include_str!("vmx/host.rs")),
        ("vmx", 4, include_str!("vmx/setup.rs")),
        ("vmx", 4, include_str!("vmx/state.rs")),
        ("vmx", 4, include_str!("vmx/entry.rs")),
        ("guest_switch", 4, include_str!("guest_switch.rs")),
    ];
    /// The virtualization facade and its backends name each other (trait and dispatch).
    const ALLOWED_PAIRS: &[(&str, &str)] = &[("virt", "svm"), ("virt", "vmx")];

    /// The modules `src` names as `crate::x` (macros `print`/`println` live in `serial`).
    fn deps(name: &str, src: &str) -> Vec<String> {
        let mut v: Vec<String> = src
            .match_indices("crate::")
            .map(|(i, _)| src[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
            .map(|d| if d == "print" || d == "println" { "serial".to_string() } else { d })
            .filter(|d| d != name && !d.is_empty())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn layers_point_down() {
        let layer = |n: &str| FILES.iter().find(|f| f.0 == n).map(|f| f.1);
        let all: Vec<(&str, u8, Vec<String>)> = FILES.iter().map(|&(n, l, s)| (n, l, deps(n, s))).collect();
        let mut bad = Vec::new();
        for (n, l, ds) in &all {
            for d in ds {
                let Some(dl) = layer(d) else { continue }; // not a layered module (lib items)
                let pair = ALLOWED_PAIRS.iter().any(|&(a, b)| (a, b) == (*n, d.as_str()) || (b, a) == (*n, d.as_str()));
                if dl > *l {
                    bad.push(format!("{n} (layer {l}) uses {d} (layer {dl})"));
                } else if dl == *l && !pair && all.iter().any(|(m, _, mds)| m == d && mds.iter().any(|x| x == n)) {
                    bad.push(format!("{n} and {d} (layer {l}) use each other"));
                }
            }
        }
        assert!(bad.is_empty(), "arch layering broken:\n{}", bad.join("\n"));
    }

    #[test]
    fn every_module_has_a_layer() {
        let lib = include_str!("lib.rs");
        for m in lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';')) {
            assert!(m == "layers" || FILES.iter().any(|f| f.0 == m), "module {m} has no layer in layers.rs");
        }
    }
}
