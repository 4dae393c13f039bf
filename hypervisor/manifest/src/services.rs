//! The node's services: the one place that says what each ring-3 service is granted.

use crate::{Device, Irq, Mmio, Service};

pub const SERVICES: &[Service] = &[
    // The CMOS RTC driver: its two ports and IRQ 8; serves GET_TIME/GET_TICKS.
    Service {
        name: "rtcd",
        program: "rtcd",
        arg: 0,
        priority: 6,
        endpoint: true,
        sends: &[],
        ports: &[0x70, 0x71],
        irq: Some(Irq::Isa(8)),
        mmio: &[],
        dma_pages: 0,
        memory_pages: 64,
        restart: true,
        router: false,
        shares: &[],
        grants: &[],
        vm_control: false,
    },
    // The echo service (`echod`): answers calls with label + 1, words + 1. Task index 1 of the
    // node's fabric /64, the target of fabric liveness checks and of the IPC tests.
    Service {
        name: "echo",
        program: "echod",
        arg: 0,
        priority: 4,
        endpoint: true,
        sends: &[],
        ports: &[],
        irq: None,
        mmio: &[],
        dma_pages: 0,
        memory_pages: 64,
        restart: true,
        router: false,
        shares: &[],
        grants: &[],
        vm_control: false,
    },
    // The virtio-net driver: the device's virtio structures, DMA memory (heap 96 pages,
    // virtqueues, the 17-page frame ring), the receive interrupt, and a send capability to
    // netd's endpoint that may lend it the frame ring (SHARE). Priority 7: above netd, so its
    // wakeup preempts netd.
    Service {
        name: "nicd",
        program: "nicd",
        arg: 0,
        priority: 7,
        endpoint: true,
        sends: &["netd"],
        ports: &[],
        irq: Some(Irq::DeviceMsix(Device::VirtioNet)),
        mmio: &[Mmio::Device(Device::VirtioNet)],
        dma_pages: 160,
        memory_pages: 320,
        restart: true,
        router: false,
        shares: &["netd"],
        grants: &[],
        vm_control: false,
    },
    // The network stack (smoltcp, netfabric sessions, the fabric IPC router, the microVM
    // links) in ring 3 (the default; with `net.netd=kernel` the kernel runs it and adopts this
    // entry's endpoint): its endpoint (nicd's reports, the kernel's notifications), a send
    // capability to nicd, the router capability (SYS_NET), and memory for its heap (the
    // stack, sessions, queues: 3072 pages) and the microVM links' frame rings (8 × 65 pages).
    // No ports, MMIO or DMA: frames come through the ring nicd lends it.
    Service {
        name: "netd",
        program: "netd",
        arg: 0,
        priority: 6,
        endpoint: true,
        sends: &["nicd"],
        ports: &[],
        irq: None,
        mmio: &[],
        dma_pages: 0,
        memory_pages: 4736,
        restart: true,
        router: true,
        shares: &[],
        grants: &[],
        vm_control: false,
    },
    // The workload service: owns the node's microVMs (create, stop, restart, logs) and serves
    // the workload protocol (catenary_workload::proto) on its endpoint; the VM-control
    // capability (SYS_VM) is its only authority over them. Memory for its heap (logs of up to
    // 32 workloads at 64 KiB each, requests, the event buffer).
    Service {
        name: "workd",
        program: "workd",
        arg: 0,
        priority: 5,
        endpoint: true,
        sends: &[],
        ports: &[],
        irq: None,
        mmio: &[],
        dma_pages: 0,
        memory_pages: 1024,
        restart: true,
        router: false,
        shares: &[],
        grants: &[],
        vm_control: true,
    },
    // The membership service (docs/orchestration.md): SWIM over one UDP port on the node's
    // fabric /128 through netd's sockets; answers apid's member-table query and admissions on
    // its endpoint. A send capability to netd that may lend a buffer (GRANT: the cluster
    // file); memory for its heap (1 MiB) and buffers.
    Service {
        name: "memberd",
        program: "memberd",
        arg: 0,
        priority: 5,
        endpoint: true,
        sends: &["netd"],
        ports: &[],
        irq: None,
        mmio: &[],
        dma_pages: 0,
        memory_pages: 384,
        restart: true,
        router: false,
        shares: &[],
        grants: &["netd"],
        vm_control: false,
    },
    // The operator API (docs/api.md): HTTP on the node's fabric /128, port 8080, through
    // netd's sockets; each request becomes workload-protocol calls to workd. Send capabilities
    // to both that may lend its buffers for a call (GRANT); a send capability to the kernel's
    // power endpoint (the power button's orderly shutdown); no other authority. Memory for its
    // heap: connections' requests (≤ 260 KiB each), image pushes in progress, the event ring.
    Service {
        name: "apid",
        program: "apid",
        arg: 0,
        priority: 4,
        endpoint: true,
        sends: &["workd", "netd", "orchd", "memberd", "power"],
        ports: &[],
        irq: None,
        mmio: &[],
        dma_pages: 0,
        memory_pages: 2560,
        restart: true,
        router: false,
        shares: &[],
        grants: &["workd", "netd", "orchd", "memberd"],
        vm_control: false,
    },
    // The orchestration service (docs/orchestration.md): the Raft replica of the desired
    // state over UDP on the node's fabric /128 (netd's sockets), the leader's scheduler, and
    // the cluster replicas this node runs through workd. Send capabilities to both that may
    // lend its buffers (GRANT); memory for its heap (log, state, datagrams).
    Service {
        name: "orchd",
        program: "orchd",
        arg: 0,
        priority: 4,
        endpoint: true,
        sends: &["workd", "netd"],
        ports: &[],
        irq: None,
        mmio: &[],
        dma_pages: 0,
        memory_pages: 1280,
        restart: true,
        router: false,
        shares: &[],
        grants: &["workd", "netd"],
        vm_control: false,
    },
    // The NAT64 gateway (docs/nat64.md): only on a node given an IPv4 uplink
    // (`nat64.uplink=`, `nat64.router=` and a second virtio-net function; the kernel enables
    // it). The uplink device's structures (no interrupt: it polls while idle), DMA memory for
    // its heap (the translator's state table and virtqueue buffers), the exchange buffer and
    // the queues; a send capability to netd that may lend it the exchange buffer (GRANT).
    Service {
        name: "natd",
        program: "natd",
        arg: 0,
        priority: 5,
        endpoint: true,
        sends: &["netd"],
        ports: &[],
        irq: None,
        mmio: &[Mmio::Device(Device::VirtioNetUplink)],
        dma_pages: 544,
        memory_pages: 640,
        restart: true,
        router: false,
        shares: &[],
        grants: &["netd"],
        vm_control: false,
    },
];
