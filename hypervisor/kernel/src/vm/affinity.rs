//! Where vCPU tasks may run.

/// Where vCPU tasks may run: every CPU, except CPU 0 on QEMU TCG with two or more CPUs, where
/// another CPU's x87-state restores race with CPU 0's world switches and lose its SVM flags
/// (`catenary_arch::cpu::qemu_tcg_first_cpu_race`; docs/vmm.md "The host triple fault").
pub fn vcpu_affinity(cpus: usize) -> catenary_sched::Affinity {
    if catenary_arch::cpu::qemu_tcg_first_cpu_race(cpus) {
        catenary_sched::Affinity(!1u64)
    } else {
        catenary_sched::Affinity::ANY
    }
}

/// The CPU a test pins one microVM to: the last CPU where CPU 0 is off limits, else CPU 0.
pub fn vm_test_cpu(cpus: usize) -> usize {
    if catenary_arch::cpu::qemu_tcg_first_cpu_race(cpus) { cpus - 1 } else { 0 }
}
