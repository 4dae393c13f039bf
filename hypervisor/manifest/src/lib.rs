//! The services the supervisor (`supd`) starts, each with everything it is granted, in one
//! table ([`SERVICES`]). The table is checked when this crate compiles ([`check`] runs in a
//! constant): an unknown program, a send capability to nothing, a port, MMIO range or device
//! granted twice, or DMA/memory quotas over the node's budget stop the build with a message.
//! The kernel grants exactly what an entry says when the supervisor asks for it (see
//! docs/microkernel.md, "Supervisor"); the supervisor reads its names and restart policy here.
#![no_std]
#![forbid(unsafe_code)]

mod services;
pub use services::SERVICES;

/// Programs of the kernel image (bins of hypervisor/user; the kernel's build script embeds
/// exactly these, less [`TEST_PROGRAMS`] in the node kernel).
pub const PROGRAMS: &[&str] = &["supd", "rtcd", "echod", "uapp", "nicd", "netd", "sysfuzz", "workd", "wkctl", "apid", "natd", "orchd", "memberd"];

/// Test programs: `uapp` (the test and benchmark roles), `sysfuzz` (the syscall fuzzer) and
/// `wkctl` (a hostile workload-protocol client). Only the in-kernel test build and the probes
/// kernel embed them; the node kernel that ships has none (the kernel's build script leaves
/// them out, xtask's `node_kernel_without_test_programs` checks the image), so no service may name
/// one ([`Error::TestProgram`]).
pub const TEST_PROGRAMS: &[&str] = &["uapp", "sysfuzz", "wkctl"];

/// The supervisor's own program: started by the kernel, not an entry of [`SERVICES`].
pub const SUPERVISOR: &str = "supd";

/// Endpoints that kernel tasks own, which services may be given send capabilities to:
/// `power`, the ACPI power button and soft-off (`catenary_ipc::power`). (`netd`'s endpoint is
/// the `netd` service's, which the in-kernel stack, `net.netd=kernel`, adopts instead.)
pub const KERNEL_ENDPOINTS: &[&str] = &["power"];

/// Node-wide budgets the quotas of all services together must fit in.
pub const DMA_BUDGET_PAGES: u64 = 1024;
pub const MEMORY_BUDGET_PAGES: u64 = 16384;
/// Services at most (the supervisor's spawn capability carries one bit per service).
pub const MAX_SERVICES: usize = 32;
/// Send capabilities a service may be given (slots 1..).
pub const MAX_SENDS: usize = 8;

/// Restart delay after the n-th crash in a row: `BACKOFF_MIN_MS << n`, at most `BACKOFF_MAX_MS`.
pub const BACKOFF_MIN_MS: u64 = 50;
pub const BACKOFF_MAX_MS: u64 = 5000;

/// The delay before restart number `restarts` (1 = the first restart).
pub const fn backoff_ms(restarts: u32) -> u64 {
    let shift = if restarts == 0 { 0 } else { restarts - 1 };
    if shift >= 16 {
        return BACKOFF_MAX_MS;
    }
    let d = BACKOFF_MIN_MS << shift;
    if d > BACKOFF_MAX_MS { BACKOFF_MAX_MS } else { d }
}

/// A device whose registers the kernel finds at boot (its BARs are assigned by firmware).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The first virtio-net PCI function: its four virtio structures (common, notify, ISR,
    /// device configuration), page-rounded. Bus mastering is turned off when the service dies.
    VirtioNet,
    /// The second virtio-net PCI function: a NAT64 gateway's IPv4 uplink (docs/nat64.md),
    /// present only on nodes given one. The same four structures, bus mastering off at death.
    VirtioNetUplink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mmio {
    /// A fixed physical range (base, length), both page-aligned.
    Fixed { base: u64, len: u64 },
    Device(Device),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irq {
    /// An ISA interrupt routed through the IOAPIC, notifying the service's endpoint.
    Isa(u8),
    /// The MSI-X receive interrupt of the service's device (programmed by the kernel).
    DeviceMsix(Device),
}

#[derive(Clone, Copy, Debug)]
pub struct Service {
    pub name: &'static str,
    /// One of [`PROGRAMS`].
    pub program: &'static str,
    /// The start argument (rdi at entry).
    pub arg: u64,
    /// Scheduler priority 0..=7.
    pub priority: u8,
    /// Its own endpoint in capability slot 0. The endpoint outlives the task: a restarted
    /// service gets the same one, so capabilities others hold to it keep working.
    pub endpoint: bool,
    /// Send capabilities in slots 1.. (badge = this service's index + 1): other services
    /// (which must have an endpoint) or [`KERNEL_ENDPOINTS`].
    pub sends: &'static [&'static str],
    pub ports: &'static [u16],
    pub irq: Option<Irq>,
    pub mmio: &'static [Mmio],
    /// Pages it may take with `dma_alloc`.
    pub dma_pages: u64,
    /// Its memory quota: pages it may take with `map` and `dma_alloc`, page tables included
    /// (its program image and stack are not charged) — the kernel's per-task page quota.
    pub memory_pages: u64,
    /// Restart it (with backoff) when it dies.
    pub restart: bool,
    /// The node's router (ring-3 `netd`): one more capability, to its own endpoint with the
    /// `ROUTER` right (`SYS_NET`), after its send capabilities. At most one service.
    pub router: bool,
    /// Those of its `sends` whose capability also carries the `SHARE` right (`SYS_SHARE`:
    /// memory lent for as long as both live, e.g. `nicd`'s frame ring to `netd`).
    pub shares: &'static [&'static str],
    /// Those of its `sends` whose capability also carries the `GRANT` right (lend its own
    /// memory for the length of a call: requests and answers through a buffer).
    pub grants: &'static [&'static str],
    /// The node's workload service (`workd`): one more capability, to its own endpoint with
    /// the `VMCTL` right (`SYS_VM`: create, power off and hear from microVMs), after its send
    /// capabilities and the router's. At most one service.
    pub vm_control: bool,
}

/// Why a manifest is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    TooManyServices,
    DuplicateName(usize),
    UnknownProgram(usize),
    /// The service runs a test program ([`TEST_PROGRAMS`]), which the node kernel lacks.
    TestProgram(usize),
    BadPriority(usize),
    UnknownSendTarget(usize),
    TooManySends(usize),
    PortTwice(usize),
    MmioUnaligned(usize),
    MmioOverlap(usize),
    DeviceTwice(usize),
    IrqTwice(usize),
    DmaOverBudget,
    MemoryOverBudget,
    DmaOverMemory(usize),
    /// More than one router, or a share with a service it has no send capability to.
    BadNetGrant(usize),
    /// More than one service with `vm_control`, or one without an endpoint.
    BadVmControl(usize),
}

impl Error {
    pub const fn message(self) -> &'static str {
        match self {
            Error::TooManyServices => "manifest: more services than the spawn capability can name",
            Error::DuplicateName(_) => "manifest: two services with the same name",
            Error::UnknownProgram(_) => "manifest: a service names a program that is not embedded (see PROGRAMS)",
            Error::TestProgram(_) => "manifest: a service names a test program, which the node kernel does not embed (see TEST_PROGRAMS)",
            Error::BadPriority(_) => "manifest: a priority above 7",
            Error::UnknownSendTarget(_) => "manifest: a send capability to a name that is neither a service with an endpoint nor a kernel endpoint",
            Error::TooManySends(_) => "manifest: more send capabilities than MAX_SENDS",
            Error::PortTwice(_) => "manifest: an I/O port granted twice",
            Error::MmioUnaligned(_) => "manifest: a fixed MMIO range that is empty, unaligned or wraps",
            Error::MmioOverlap(_) => "manifest: overlapping MMIO grants",
            Error::DeviceTwice(_) => "manifest: a device granted to two services",
            Error::IrqTwice(_) => "manifest: an interrupt granted twice",
            Error::DmaOverBudget => "manifest: DMA quotas over DMA_BUDGET_PAGES",
            Error::MemoryOverBudget => "manifest: memory quotas over MEMORY_BUDGET_PAGES",
            Error::DmaOverMemory(_) => "manifest: a DMA quota larger than the service's memory quota",
            Error::BadNetGrant(_) => "manifest: two routers, or a share or grant to a service not in its sends",
            Error::BadVmControl(_) => "manifest: two services with vm_control, or one without an endpoint",
        }
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn contains(list: &[&str], s: &str) -> bool {
    let mut i = 0;
    while i < list.len() {
        if str_eq(list[i], s) {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether a call carrying `badge` comes from the service `name`: badges are set by the kernel
/// from the sender's capability (its manifest index + 1), so a task cannot claim another's.
/// Badge 0 (a sender the manifest did not name) and an unknown `name` never match.
pub const fn is_from(services: &[Service], name: &str, badge: u64) -> bool {
    match index_of(services, name) {
        Some(i) => badge != 0 && badge == i as u64 + 1,
        None => false,
    }
}

/// The index of service `name` in `services`.
pub const fn index_of(services: &[Service], name: &str) -> Option<usize> {
    let mut i = 0;
    while i < services.len() {
        if str_eq(services[i].name, name) {
            return Some(i);
        }
        i += 1;
    }
    None
}

const fn device_of(m: Mmio) -> Option<Device> {
    match m {
        Mmio::Device(d) => Some(d),
        Mmio::Fixed { .. } => None,
    }
}

const fn same_device(a: Device, b: Device) -> bool {
    matches!((a, b), (Device::VirtioNet, Device::VirtioNet) | (Device::VirtioNetUplink, Device::VirtioNetUplink))
}

const fn same_irq(a: Irq, b: Irq) -> bool {
    match (a, b) {
        (Irq::Isa(x), Irq::Isa(y)) => x == y,
        (Irq::DeviceMsix(x), Irq::DeviceMsix(y)) => same_device(x, y),
        _ => false,
    }
}

/// Check a manifest (runs at compile time for [`SERVICES`]; host-tested with bad tables).
pub const fn check(services: &[Service]) -> Result<(), Error> {
    if services.len() > MAX_SERVICES {
        return Err(Error::TooManyServices);
    }
    let (mut dma, mut mem) = (0u64, 0u64);
    let mut i = 0;
    while i < services.len() {
        let s = &services[i];
        if !contains(PROGRAMS, s.program) || str_eq(s.program, SUPERVISOR) {
            return Err(Error::UnknownProgram(i));
        }
        if contains(TEST_PROGRAMS, s.program) {
            return Err(Error::TestProgram(i));
        }
        if s.priority > 7 {
            return Err(Error::BadPriority(i));
        }
        if s.sends.len() > MAX_SENDS {
            return Err(Error::TooManySends(i));
        }
        let mut k = 0;
        while k < s.sends.len() {
            let t = s.sends[k];
            let svc_ep = match index_of(services, t) {
                Some(j) => services[j].endpoint,
                None => false,
            };
            if !svc_ep && !contains(KERNEL_ENDPOINTS, t) {
                return Err(Error::UnknownSendTarget(i));
            }
            k += 1;
        }
        if s.dma_pages > s.memory_pages {
            return Err(Error::DmaOverMemory(i));
        }
        let mut k = 0;
        while k < s.shares.len() {
            if !contains(s.sends, s.shares[k]) {
                return Err(Error::BadNetGrant(i));
            }
            k += 1;
        }
        let mut k = 0;
        while k < s.grants.len() {
            if !contains(s.sends, s.grants[k]) {
                return Err(Error::BadNetGrant(i));
            }
            k += 1;
        }
        if s.router {
            let mut j = i + 1;
            while j < services.len() {
                if services[j].router {
                    return Err(Error::BadNetGrant(j));
                }
                j += 1;
            }
        }
        if s.vm_control {
            if !s.endpoint {
                return Err(Error::BadVmControl(i));
            }
            let mut j = i + 1;
            while j < services.len() {
                if services[j].vm_control {
                    return Err(Error::BadVmControl(j));
                }
                j += 1;
            }
        }
        dma = dma.saturating_add(s.dma_pages);
        mem = mem.saturating_add(s.memory_pages);
        let mut m = 0;
        while m < s.mmio.len() {
            if let Mmio::Fixed { base, len } = s.mmio[m] {
                if len == 0 || base % 4096 != 0 || len % 4096 != 0 || base.checked_add(len).is_none() {
                    return Err(Error::MmioUnaligned(i));
                }
            }
            m += 1;
        }
        // against every later service (and itself for ports/MMIO listed twice)
        let mut j = i;
        while j < services.len() {
            let o = &services[j];
            if j != i && str_eq(s.name, o.name) {
                return Err(Error::DuplicateName(j));
            }
            let mut a = 0;
            while a < s.ports.len() {
                let mut b = if j == i { a + 1 } else { 0 };
                while b < o.ports.len() {
                    if s.ports[a] == o.ports[b] {
                        return Err(Error::PortTwice(j));
                    }
                    b += 1;
                }
                a += 1;
            }
            let mut a = 0;
            while a < s.mmio.len() {
                let mut b = if j == i { a + 1 } else { 0 };
                while b < o.mmio.len() {
                    match (s.mmio[a], o.mmio[b]) {
                        (Mmio::Fixed { base: x, len: lx }, Mmio::Fixed { base: y, len: ly }) => {
                            if x < y.saturating_add(ly) && y < x.saturating_add(lx) {
                                return Err(Error::MmioOverlap(j));
                            }
                        }
                        (p, q) => {
                            if let (Some(x), Some(y)) = (device_of(p), device_of(q)) {
                                if same_device(x, y) {
                                    return Err(Error::DeviceTwice(j));
                                }
                            }
                        }
                    }
                    b += 1;
                }
                a += 1;
            }
            if j != i {
                if let (Some(x), Some(y)) = (s.irq, o.irq) {
                    if same_irq(x, y) {
                        return Err(Error::IrqTwice(j));
                    }
                }
            }
            j += 1;
        }
        i += 1;
    }
    if dma > DMA_BUDGET_PAGES {
        return Err(Error::DmaOverBudget);
    }
    if mem > MEMORY_BUDGET_PAGES {
        return Err(Error::MemoryOverBudget);
    }
    Ok(())
}

/// Stop the build if `$table` is not a valid manifest. A table that passes:
///
/// ```
/// use catenary_manifest::*;
/// const GOOD: &[Service] = &[Service { name: "x", program: "echod", arg: 0, priority: 4, endpoint: true, sends: &["x"],
///     ports: &[0x80], irq: None, mmio: &[], dma_pages: 0, memory_pages: 16, restart: true, router: false, shares: &[], grants: &[], vm_control: false }];
/// assert_valid!(GOOD);
/// ```
///
/// The same table naming a program that is not embedded does not compile:
///
/// ```compile_fail
/// use catenary_manifest::*;
/// const BAD: &[Service] = &[Service { name: "x", program: "nosuch", arg: 0, priority: 4, endpoint: true, sends: &["x"],
///     ports: &[0x80], irq: None, mmio: &[], dma_pages: 0, memory_pages: 16, restart: true, router: false, shares: &[], grants: &[], vm_control: false }];
/// assert_valid!(BAD);
/// ```
///
/// Nor do two services granted the same port:
///
/// ```compile_fail
/// use catenary_manifest::*;
/// const A: Service = Service { name: "a", program: "echod", arg: 0, priority: 4, endpoint: true, sends: &[],
///     ports: &[0x80], irq: None, mmio: &[], dma_pages: 0, memory_pages: 16, restart: true, router: false, shares: &[], grants: &[], vm_control: false };
/// const BAD: &[Service] = &[A, Service { name: "b", ..A }];
/// assert_valid!(BAD);
/// ```
#[macro_export]
macro_rules! assert_valid {
    ($table:expr) => {
        const _: () = match $crate::check($table) {
            Ok(()) => (),
            Err(e) => panic!("{}", e.message()),
        };
    };
}

assert_valid!(SERVICES);

#[cfg(test)]
mod tests;
