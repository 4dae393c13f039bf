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
    },
    // The echo service (uapp role 1): the target of the local and fabric IPC tests.
    Service {
        name: "echo",
        program: "uapp",
        arg: 1,
        priority: 4,
        endpoint: true,
        sends: &[],
        ports: &[],
        irq: None,
        mmio: &[],
        dma_pages: 0,
        memory_pages: 64,
        restart: true,
    },
    // The virtio-net driver: the device's virtio structures, DMA memory (heap 96 pages,
    // virtqueues, the 17-page frame ring), the receive interrupt, and a send capability to
    // the kernel's netd. Priority 7: above netd, so its wakeup preempts netd.
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
    },
];
