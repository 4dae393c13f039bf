//! workd: the workload service (docs/workloads.md). Owns the node's microVMs through its one
//! authority, the VM-control capability (`SYS_VM`, slot 1), and serves the workload protocol
//! (`catenary_workload::proto`) on its endpoint (slot 0) to any task that holds a capability to
//! it. Every decision is `catenary_workload::service::Service`'s (host-tested); this is the loop
//! around it: requests from clients (through the memory grant the kernel mapped for the call),
//! the kernel's VM events (a notification, then `OP_EVENTS`), and the service's timers.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use catenary_user::*;
use catenary_workload::admission::Admission;
use catenary_workload::logring::DEFAULT_CAPACITY;
use catenary_workload::proto::{decode_request, encode_response, Transport, LABEL_REQUEST, REQUEST_MAX, TRANSPORT_OK};
use catenary_workload::service::{Service, Vmm};
use catenary_workload::store::ImageIndex;
use catenary_workload::vmctl::{self, CreateVm, Event, NodeInfo, VmEvent, VmHandle, OP_CREATE, OP_EVENTS, OP_IMAGES, OP_INFO, OP_KILL, OP_NET, OP_SIGNAL, OP_STOP, OP_TOUCHED, RECORD_MAX};
use catenary_workload::{Request, Target};

const OWN: u64 = 0;
const VMCTL: u64 = 1;
/// 3 MiB of heap (quota 1024 pages): 32 logs of 64 KiB, the 64 KiB event buffer, requests.
const HEAP_PAGES: u64 = 768;

entry!(run);

/// The kernel, as the service sees it.
struct Kernel {
    buf: Vec<u8>,
}

impl Vmm for Kernel {
    fn create(&mut self, req: &CreateVm) -> Option<VmHandle> {
        let mut rec = vmctl::encode(req)?;
        match vm(VMCTL, OP_CREATE, &mut rec, 0) {
            Ok(h) => Some(h),
            Err(e) => {
                logf!("workd: the kernel refused microVM {} (error {})", req.name, e);
                None
            }
        }
    }
    fn kill(&mut self, h: VmHandle) {
        let _ = vm_value(VMCTL, OP_KILL, 0, h);
    }
    fn stop(&mut self, h: VmHandle, grace_ms: u64) -> bool {
        vm_value(VMCTL, OP_STOP, grace_ms, h).is_ok()
    }
    fn signal(&mut self, h: VmHandle, signal: u8) -> bool {
        vm_value(VMCTL, OP_SIGNAL, signal as u64, h).is_ok()
    }
    fn touched(&mut self, h: VmHandle) -> Option<u64> {
        vm_value(VMCTL, OP_TOUCHED, 0, h).ok()
    }
    fn node_address(&mut self) -> Option<core::net::Ipv6Addr> {
        let mut a = [0u8; 16];
        (vm(VMCTL, OP_NET, &mut a, 0).ok()? == 16).then(|| core::net::Ipv6Addr::from(a))
    }
}

impl Kernel {
    /// A record the kernel writes into our buffer.
    fn read<T: serde::de::DeserializeOwned>(&mut self, op: u64) -> Option<T> {
        let n = vm(VMCTL, op, &mut self.buf, 0).ok()? as usize;
        vmctl::decode(self.buf.get(..n)?)
    }
}

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

fn run(_arg: u64) -> u64 {
    if !dma::init_mapped(HEAP_PAGES) {
        log("workd: no memory for its heap");
        return 1;
    }
    let mut k = Kernel { buf: vec![0u8; RECORD_MAX] };
    let Some(info) = k.read::<NodeInfo>(OP_INFO) else {
        log("workd: the kernel refused OP_INFO: no VM-control capability?");
        return 2;
    };
    let mut index = ImageIndex::new();
    for i in k.read::<Vec<catenary_workload::store::ImageInfo>>(OP_IMAGES).unwrap_or_default() {
        logf!("workd: image {} in the store (rootfs {} bytes)", i.digest, i.rootfs_size);
        let _ = index.insert(i);
    }
    let admission = Admission::new(info.free_bytes);
    logf!("workd: serving the workload protocol; {} images, {} MiB free on the node, {} MiB for workloads, {} CPUs",
        index.list().len(), info.free_bytes >> 20, admission.capacity_mib(), info.cpus);
    let first_image = index.list().first().map(|i| i.digest);
    let mut svc = Service::new(index, admission, info.max_vcpus, DEFAULT_CAPACITY);
    if let (Some(a), Some(image)) = (&info.autostart, first_image) {
        autostart(&mut svc, &mut k, a, image);
    }
    let mut next: Option<u64> = None;
    loop {
        let timeout = match next {
            Some(at) => at.saturating_sub(now_ms()).max(1) * 1_000_000,
            None => 0,
        };
        if let Ok(m) = recv(OWN, timeout) {
            if m.reply != 0 {
                serve(&mut svc, &mut k, &m);
            }
        }
        drain_events(&mut svc, &mut k);
        next = svc.tick(now_ms(), &mut k);
    }
}

/// The workload the node's command line names (`workload.demo=NAME`): created and started
/// through the same requests a client makes.
fn autostart(svc: &mut Service, k: &mut Kernel, a: &vmctl::AutoStart, image: catenary_workload::Digest) {
    let spec = catenary_workload::WorkloadSpec {
        name: a.name.clone(), image, vcpus: 1, memory_mib: a.memory_mib, env: Vec::new(), args: None, restart: catenary_workload::RestartPolicy::No,
        net: a.net,
    };
    let r = svc.handle(Request::Create(spec), now_ms(), k).and_then(|_| svc.handle(Request::Start(Target::Name(a.name.clone())), now_ms(), k));
    match r {
        Ok(_) => logf!("workd: workload {:.64} from image {}: created and started, as the node's command line asks", a.name, image.short()),
        Err(e) => logf!("workd: the command line's workload {:.64}: refused: {:?} ({})", a.name, e, e.message()),
    }
}

fn drain_events(svc: &mut Service, k: &mut Kernel) {
    while let Some(evs) = k.read::<Vec<VmEvent>>(OP_EVENTS) {
        if evs.is_empty() {
            break;
        }
        for e in evs {
            let (vm, ended) = (e.vm, matches!(e.event, Event::Ended { .. }));
            let id = svc_id_of(svc, vm);
            svc.on_event(e, now_ms(), k);
            if let (true, Some(id)) = (ended, id) {
                let mut c = Kernel { buf: Vec::new() };
                if let Ok(catenary_workload::Reply::Status(st)) = svc.handle(Request::Status(Target::Id(id)), now_ms(), &mut c) {
                    logf!("workd: {} ended: {}; now {} (restarts {}, attempts {}, {} KiB touched)", st.name,
                        st.exit.map(|e| alloc::format!("{e}")).unwrap_or_default(), st.state.name(), st.restarts, st.attempts, st.memory_touched >> 10);
                }
            }
        }
    }
}

/// The workload whose current microVM is `vm` (for the log line at its end).
fn svc_id_of(svc: &Service, vm: VmHandle) -> Option<u32> {
    svc.workload_of(vm)
}

fn serve(svc: &mut Service, k: &mut Kernel, m: &Msg) {
    let answer = |label: u64, w: [u64; 4]| {
        let _ = reply(m.reply, label, w);
    };
    if m.label != LABEL_REQUEST {
        return answer(Transport::UnknownLabel as u64, [0; 4]);
    }
    // the grant the kernel mapped for this call, never the words
    let Some(g) = grant_of(m.reply).filter(|g| g.writable()) else { return answer(Transport::NoBuffer as u64, [0; 4]) };
    let glen = g.len();
    let n = m.words[0];
    if n == 0 || n > glen || n > REQUEST_MAX as u64 {
        return answer(Transport::BadLength as u64, [0; 4]);
    }
    let mut req = vec![0u8; n as usize];
    g.read(0, &mut req);
    let resp = match decode_request(&req) {
        Ok(r) => {
            let what = describe(&r);
            let resp = svc.handle(r, now_ms(), k);
            if let Some(w) = what {
                match &resp {
                    Ok(_) => logf!("workd: {}: ok", w),
                    Err(e) => logf!("workd: {}: refused: {:?} ({})", w, e, e.message()),
                }
            }
            resp
        }
        Err(e) => {
            logf!("workd: a malformed request of {} bytes from client {:#x}: refused", n, m.badge);
            Err(e)
        }
    };
    let Some(out) = encode_response(&resp) else { return answer(Transport::BufferTooSmall as u64, [0; 4]) };
    if out.len() as u64 > glen {
        return answer(Transport::BufferTooSmall as u64, [0, out.len() as u64, 0, 0]);
    }
    g.write(0, &out);
    answer(TRANSPORT_OK, [out.len() as u64, 0, 0, 0]);
}

/// The log line of a request that changes something.
fn describe(r: &Request) -> Option<alloc::string::String> {
    let t = |t: &Target| match t {
        Target::Id(i) => alloc::format!("#{i}"),
        Target::Name(n) => alloc::format!("{:.64}", n),
    };
    Some(match r {
        Request::Create(s) => alloc::format!("create {:.64} ({} MiB, {} vCPU, restart {:?}, network {})", s.name, s.memory_mib, s.vcpus, s.restart, if s.net { "on" } else { "none" }),
        Request::Start(x) => alloc::format!("start {}", t(x)),
        Request::Stop { target, .. } => alloc::format!("stop {}", t(target)),
        Request::Destroy(x) => alloc::format!("destroy {}", t(x)),
        Request::Signal { target, signal } => alloc::format!("signal {} to {}", signal, t(target)),
        _ => return None,
    })
}
