use super::*;

const fn svc(name: &'static str, program: &'static str) -> Service {
    Service { name, program, arg: 0, priority: 4, endpoint: true, sends: &[], ports: &[], irq: None, mmio: &[], dma_pages: 0, memory_pages: 16, restart: true, router: false, shares: &[], grants: &[], vm_control: false }
}

#[test]
fn the_node_manifest_is_valid() {
    assert_eq!(check(SERVICES), Ok(()));
    assert!(SERVICES.iter().any(|s| s.name == "nicd"));
}

#[test]
fn unknown_program_refused() {
    assert_eq!(check(&[svc("a", "rtcd"), svc("b", "nosuch")]), Err(Error::UnknownProgram(1)));
    // the supervisor is started by the kernel, not by itself
    assert_eq!(check(&[svc("a", "supd")]), Err(Error::UnknownProgram(0)));
    for t in TEST_PROGRAMS {
        assert_eq!(check(&[svc("a", "rtcd"), svc("b", t)]), Err(Error::TestProgram(1)), "{t}");
    }
}

#[test]
fn duplicate_names_refused() {
    assert_eq!(check(&[svc("a", "rtcd"), svc("a", "echod")]), Err(Error::DuplicateName(1)));
}

#[test]
fn overlapping_grants_refused() {
    let mut a = svc("a", "rtcd");
    let mut b = svc("b", "echod");
    a.ports = &[0x70, 0x71];
    b.ports = &[0x71];
    assert_eq!(check(&[a, b]), Err(Error::PortTwice(1)));
    b.ports = &[];
    a.mmio = &[Mmio::Fixed { base: 0xfe00_0000, len: 0x2000 }];
    b.mmio = &[Mmio::Fixed { base: 0xfe00_1000, len: 0x1000 }];
    assert_eq!(check(&[a, b]), Err(Error::MmioOverlap(1)));
    b.mmio = &[Mmio::Fixed { base: 0xfe00_2000, len: 0x1000 }];
    assert_eq!(check(&[a, b]), Ok(()));
    a.mmio = &[Mmio::Device(Device::VirtioNet)];
    b.mmio = &[Mmio::Device(Device::VirtioNet)];
    assert_eq!(check(&[a, b]), Err(Error::DeviceTwice(1)));
    // the NAT64 uplink is another device: one service each, never two
    b.mmio = &[Mmio::Device(Device::VirtioNetUplink)];
    assert_eq!(check(&[a, b]), Ok(()));
    a.mmio = &[Mmio::Device(Device::VirtioNetUplink)];
    assert_eq!(check(&[a, b]), Err(Error::DeviceTwice(1)));
    a.mmio = &[Mmio::Device(Device::VirtioNet)];
    b.mmio = &[];
    a.irq = Some(Irq::Isa(8));
    b.irq = Some(Irq::Isa(8));
    assert_eq!(check(&[a, b]), Err(Error::IrqTwice(1)));
    // one service listing the same port twice
    let mut c = svc("c", "nicd");
    c.ports = &[0x80, 0x80];
    assert_eq!(check(&[c]), Err(Error::PortTwice(0)));
}

#[test]
fn bad_mmio_refused() {
    let mut a = svc("a", "rtcd");
    a.mmio = &[Mmio::Fixed { base: 0xfe00_0010, len: 0x1000 }];
    assert_eq!(check(&[a]), Err(Error::MmioUnaligned(0)));
    a.mmio = &[Mmio::Fixed { base: 0xffff_ffff_ffff_f000, len: 0x2000 }];
    assert_eq!(check(&[a]), Err(Error::MmioUnaligned(0)));
}

#[test]
fn quotas_over_budget_refused() {
    let mut a = svc("a", "rtcd");
    let mut b = svc("b", "echod");
    a.memory_pages = MEMORY_BUDGET_PAGES;
    b.memory_pages = 1;
    assert_eq!(check(&[a, b]), Err(Error::MemoryOverBudget));
    a.memory_pages = DMA_BUDGET_PAGES;
    a.dma_pages = DMA_BUDGET_PAGES;
    b.memory_pages = 1;
    b.dma_pages = 1;
    assert_eq!(check(&[a, b]), Err(Error::DmaOverBudget));
    b.dma_pages = 2;
    assert_eq!(check(&[b]), Err(Error::DmaOverMemory(0)));
}

#[test]
fn send_targets_must_exist() {
    let mut a = svc("a", "rtcd");
    a.sends = &["b"];
    let mut b = svc("b", "echod");
    assert_eq!(check(&[a, b]), Ok(()));
    b.endpoint = false;
    assert_eq!(check(&[a, b]), Err(Error::UnknownSendTarget(0)));
    a.sends = &["nobody"];
    assert_eq!(check(&[a]), Err(Error::UnknownSendTarget(0)));
}

#[test]
fn priority_bounded() {
    let mut a = svc("a", "rtcd");
    a.priority = 8;
    assert_eq!(check(&[a]), Err(Error::BadPriority(0)));
}

#[test]
fn backoff_doubles_and_is_bounded() {
    assert_eq!(backoff_ms(1), BACKOFF_MIN_MS);
    assert_eq!(backoff_ms(2), BACKOFF_MIN_MS * 2);
    assert_eq!(backoff_ms(3), BACKOFF_MIN_MS * 4);
    assert_eq!(backoff_ms(40), BACKOFF_MAX_MS);
    assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
}

#[test]
fn one_router_and_shares_only_to_send_targets() {
    let mut a = svc("a", "nicd");
    let mut b = svc("b", "netd");
    a.sends = &["b"];
    a.shares = &["b"];
    b.router = true;
    assert_eq!(check(&[a, b]), Ok(()));
    a.router = true;
    assert_eq!(check(&[a, b]), Err(Error::BadNetGrant(1)));
    a.router = false;
    a.shares = &["c"];
    assert_eq!(check(&[a, b]), Err(Error::BadNetGrant(0)));
}

#[test]
fn vm_control_granted_once_to_a_service_with_an_endpoint() {
    let mut a = svc("a", "workd");
    let mut b = svc("b", "echod");
    a.vm_control = true;
    assert_eq!(check(&[a, b]), Ok(()));
    b.vm_control = true;
    assert_eq!(check(&[a, b]), Err(Error::BadVmControl(1)));
    b.vm_control = false;
    a.endpoint = false;
    assert_eq!(check(&[a, b]), Err(Error::BadVmControl(0)));
    let mut v = SERVICES.iter().filter(|s| s.vm_control);
    assert_eq!(v.next().map(|s| s.name), Some("workd"));
    assert!(v.next().is_none());
}

#[test]
fn only_orchd_badge_may_admit_peers() {
    // netd's LABEL_ADMIT_PEER rule: the badge of orchd's send capability, nothing else
    let orchd = index_of(SERVICES, "orchd").expect("orchd in the manifest") as u64 + 1;
    assert!(is_from(SERVICES, "orchd", orchd));
    for other in ["natd", "apid", "memberd", "workd", "nicd", "supd"] {
        if let Some(i) = index_of(SERVICES, other) {
            assert!(!is_from(SERVICES, "orchd", i as u64 + 1), "{other}'s badge admitted");
        }
    }
    assert!(!is_from(SERVICES, "orchd", 0), "a sender with no manifest badge admitted");
    assert!(!is_from(SERVICES, "orchd", SERVICES.len() as u64 + 1));
    assert!(!is_from(SERVICES, "orchd", u64::MAX));
    assert!(!is_from(SERVICES, "no-such-service", orchd));
    // every service that sends to netd is one of these: orchd among them, but no other admits
    assert!(SERVICES.iter().any(|s| s.name == "orchd" && s.sends.contains(&"netd")));
}
