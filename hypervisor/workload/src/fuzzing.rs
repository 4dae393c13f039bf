//! The fuzz entry point (target `requests` in `hypervisor/workload/fuzz`, and the host test
//! `fuzzing_inputs_never_panic`): arbitrary bytes split into steps, each either a request as
//! raw bytes (decoded like `workd` decodes a grant), a valid request built from the bytes, a
//! kernel event, or a clock step, applied to a [`Service`] over a simulated kernel. Bounds are
//! checked after every step.

use crate::admission::Admission;
use crate::logring::Stream;
use crate::proto::{decode_request, encode_response, is_cluster_replica, Reply, Request, Target, WORKLOADS_MAX};
use crate::service::{Client, Service, Vmm};
use crate::status::State;
use crate::spec::{RestartPolicy, WorkloadSpec};
use crate::store::{ImageIndex, ImageInfo};
use crate::vmctl::{self, CreateVm, Event, VmEvent, VmHandle, VMS_MAX};
use crate::Digest;
use alloc::string::String;
use alloc::vec::Vec;

/// A kernel that creates VMs until it has `VMS_MAX`, and remembers which are alive.
#[derive(Default)]
pub struct SimKernel {
    pub alive: Vec<VmHandle>,
    pub next: VmHandle,
    pub killed: Vec<VmHandle>,
    pub created: Vec<CreateVm>,
    pub signals: bool,
    /// The node's fabric /128 (None: its network is not up).
    pub node: Option<core::net::Ipv6Addr>,
    /// What the service tagged each VM with (`OP_TAG`).
    pub tags: Vec<(VmHandle, Vec<u8>)>,
    /// Every `OP_DEADLINE` the service made, in order: (VM, deadline ns).
    pub deadlines: Vec<(VmHandle, u64)>,
    pub removed: Vec<Digest>,
    /// The store's uploads in progress: (id, image, manifest, stream).
    pub uploads: Vec<(u32, Digest, Vec<u8>, Vec<u8>)>,
    /// The bytes of the `ImageChunk` being served (`workd` reads them from the grant).
    pub chunk: Vec<u8>,
    /// Images pushed and verified: their info and stream (`config.json ‖ rootfs.squashfs`).
    pub stored: Vec<(ImageInfo, Vec<u8>)>,
    /// The `image.json` of each stored image (what `OP_IMAGE_READ` serves).
    pub manifests: Vec<(Digest, Vec<u8>)>,
    /// Largest image an upload may begin (0: [`SIM_IMAGE_MAX`], which keeps fuzzing small; a
    /// test of images past 32 MiB raises it).
    pub image_max: u64,
}

/// The simulated node's memory.
pub const SIM_MEMORY_MIB: u64 = 2048;
/// The simulated store's largest image (the kernel's bound is `vmctl::IMAGE_MAX`).
pub const SIM_IMAGE_MAX: u64 = 4 << 20;
/// The simulated store's quota (the kernel's: `store.quota_mib=`, or a quarter of the free
/// memory at boot).
pub const SIM_STORE_QUOTA_MIB: u64 = 512;

impl Vmm for SimKernel {
    fn create(&mut self, req: &CreateVm) -> Option<VmHandle> {
        if self.alive.len() >= VMS_MAX || req.memory_mib > 4096 {
            return None;
        }
        self.next += 1;
        self.alive.push(self.next);
        self.created.push(req.clone());
        Some(self.next)
    }
    fn kill(&mut self, vm: VmHandle) {
        self.killed.push(vm);
    }
    fn stop(&mut self, _vm: VmHandle, _grace_ms: u64) -> bool {
        self.signals
    }
    fn signal(&mut self, _vm: VmHandle, _s: u8) -> bool {
        self.signals
    }
    fn touched(&mut self, vm: VmHandle) -> Option<u64> {
        self.alive.contains(&vm).then_some(vm << 20)
    }
    fn node_address(&mut self) -> Option<core::net::Ipv6Addr> {
        self.node
    }
    fn deadline(&mut self, vm: VmHandle, until_ns: u64) {
        // (bounded: the fuzz target renews for ever; the tests look at the latest ones)
        if self.deadlines.len() >= 4096 {
            self.deadlines.drain(..2048);
        }
        self.deadlines.push((vm, until_ns));
    }
    fn tag(&mut self, vm: VmHandle, tag: &[u8]) {
        self.tags.retain(|(v, _)| *v != vm);
        self.tags.push((vm, tag.to_vec()));
    }
    /// 2 CPUs, 2 GiB; a live VM takes its guest memory off the free figure.
    fn info(&mut self) -> Option<vmctl::NodeInfo> {
        let used: u64 = self.alive.iter().filter_map(|h| self.created.get((*h as usize).checked_sub(1)?)).map(|c| (c.memory_mib as u64) << 20).sum();
        let total = SIM_MEMORY_MIB << 20;
        Some(vmctl::NodeInfo { free_bytes: total.saturating_sub(used), total_bytes: total, cpus: 2, max_vcpus: 1, images: self.stored.len() as u32, vms: self.alive.len() as u32, autostart: None })
    }
    fn image_remove(&mut self, image: Digest) -> Result<(), crate::Error> {
        self.removed.push(image);
        self.stored.retain(|(i, _)| i.digest != image);
        self.manifests.retain(|(d, _)| *d != image);
        Ok(())
    }
    /// Images and uploads take whole pages of the quota, as in the kernel's store.
    fn store(&mut self) -> Option<vmctl::StoreInfo> {
        let pages = |n: usize| (n as u64).div_ceil(4096);
        let used = self.stored.iter().map(|(_, d)| pages(d.len())).sum::<u64>() + self.manifests.iter().map(|(_, m)| pages(m.len())).sum::<u64>() + self.uploads.iter().map(|u| pages(u.3.len())).sum::<u64>();
        Some(vmctl::StoreInfo { quota_pages: SIM_STORE_QUOTA_MIB << 8, used_pages: used, uploads: self.uploads.len() as u32, images: self.stored.len() as u32, free_pages: SIM_MEMORY_MIB << 8, uploading: self.uploads.iter().map(|u| (u.1, pages(u.3.len()))).collect() })
    }
    fn image_begin(&mut self, image: Digest, manifest: &[u8]) -> Result<(u32, u64), crate::Error> {
        let (c, r) = crate::store::stream_sizes(manifest).map_err(|_| crate::Error::ImageInvalid)?;
        let max = if self.image_max == 0 { SIM_IMAGE_MAX } else { self.image_max };
        let size = c.checked_add(r).filter(|s| *s <= max).ok_or(crate::Error::StoreFull)?;
        if let Some(u) = self.uploads.iter().find(|u| u.1 == image) {
            return Ok((u.0, u.3.len() as u64));
        }
        if self.uploads.len() >= vmctl::UPLOADS_MAX {
            return Err(crate::Error::StoreFull);
        }
        let id = self.uploads.iter().map(|u| u.0).max().unwrap_or(0) + 1;
        self.uploads.push((id, image, manifest.to_vec(), alloc::vec![0; size as usize]));
        Ok((id, size))
    }
    fn image_write(&mut self, upload: u32, offset: u64, len: u32, digest: Digest) -> Result<(), crate::Error> {
        if self.chunk.len() != len as usize || Digest::of(&self.chunk) != digest {
            return Err(crate::Error::ChunkDigest);
        }
        let u = self.uploads.iter_mut().find(|u| u.0 == upload).ok_or(crate::Error::NoSuchUpload)?;
        let end = offset.checked_add(len as u64).filter(|e| *e <= u.3.len() as u64).ok_or(crate::Error::NoSuchUpload)?;
        u.3[offset as usize..end as usize].copy_from_slice(&self.chunk);
        Ok(())
    }
    fn image_commit(&mut self, upload: u32) -> Result<ImageInfo, crate::Error> {
        let i = self.uploads.iter().position(|u| u.0 == upload).ok_or(crate::Error::NoSuchUpload)?;
        let (_, image, manifest, data) = self.uploads.swap_remove(i);
        let (c, _) = crate::store::stream_sizes(&manifest).map_err(|_| crate::Error::ImageInvalid)?;
        let info = crate::store::verify(&manifest, &data[c as usize..], &data[..c as usize], Some(image)).map_err(|_| crate::Error::ImageInvalid)?;
        self.stored.push((info, data));
        self.manifests.push((image, manifest));
        Ok(info)
    }
    /// The bytes go to `chunk` (the real service's grant).
    fn image_read(&mut self, image: Digest, manifest: bool, offset: u64, len: u32) -> Result<u32, crate::Error> {
        let src = if manifest {
            &self.manifests.iter().find(|m| m.0 == image).ok_or(crate::Error::NoSuchImage)?.1
        } else {
            &self.stored.iter().find(|s| s.0.digest == image).ok_or(crate::Error::NoSuchImage)?.1
        };
        let from = if manifest { 0 } else { (offset.min(src.len() as u64)) as usize };
        let n = (src.len() - from).min(len as usize);
        self.chunk = src[from..from + n].to_vec();
        Ok(n as u32)
    }
    fn image_abort(&mut self, upload: u32) -> Result<(), crate::Error> {
        let n = self.uploads.len();
        self.uploads.retain(|u| u.0 != upload);
        if self.uploads.len() == n { Err(crate::Error::NoSuchUpload) } else { Ok(()) }
    }
}

pub fn image() -> Digest {
    Digest([0x11; 32])
}

pub fn service(free_mib: u64) -> Service {
    let mut ix = ImageIndex::new();
    let d = image();
    ix.insert(ImageInfo { digest: d, rootfs: d, rootfs_size: 4096, config: d, config_size: 10 }).unwrap();
    Service::new(ix, Admission::new(free_mib << 20), 1, 4096)
}

fn word(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = d.len().min(8);
    b[..n].copy_from_slice(&d[..n]);
    u64::from_le_bytes(b)
}

/// Run one input. Panics only if a bound is broken (that is the finding).
pub fn run(data: &[u8]) {
    let mut s = service(1024);
    let mut k = SimKernel { signals: data.first().is_some_and(|b| b & 1 == 1), node: data.first().is_some_and(|b| b & 2 == 2).then(|| core::net::Ipv6Addr::new(0xfd00, 1, 2, 3, 0, 0, 0, 1)), ..Default::default() };
    let mut now = 0u64;
    let mut rest = data;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], rest[1] as usize);
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        match kind % 6 {
            0 => {
                // raw bytes as a request
                if let Ok(r) = decode_request(body) {
                    let resp = s.handle(r, now, &mut k);
                    assert!(encode_response(&resp).is_some(), "every answer fits REPLY_MAX");
                }
            }
            1 => {
                // a well-formed request with fuzzed fields
                let w = word(body);
                let t = if w & 1 == 0 { Target::Id((w >> 1) as u32 % 8) } else { Target::Name(String::from(["a", "b", "c", "cl-a-0"][(w >> 1) as usize % 4])) };
                let mut client = Client::Other;
                let req = match (w >> 8) % 8 {
                    7 => Request::Signal { target: t, signal: (w >> 16) as u8 },
                    0 => Request::Create(WorkloadSpec {
                        // a check in bounds or out of them
                        health: (w & (1 << 34) != 0).then(|| crate::spec::HealthCheck { cmd: alloc::vec![String::from("true")], interval_secs: (w >> 35) as u32 % 3, timeout_secs: 1, retries: (w >> 37) as u32 % 3, start_period_secs: 0 }),
                        name: String::from(["a", "b", "c", "-x", "", "cl-a-0"][(w >> 12) as usize % 6]),
                        image: if w & 0x10000 == 0 { image() } else { Digest([0; 32]) },
                        vcpus: (w >> 17) as u8 % 3,
                        memory_mib: [16, 32, 64, 512, 2000][(w >> 20) as usize % 5],
                        env: Vec::new(),
                        args: None,
                        restart: [RestartPolicy::No, RestartPolicy::Always, RestartPolicy::OnFailure { limit: (w >> 24) as u32 % 4 }][(w >> 30) as usize % 3],
                        net: w & (1 << 33) != 0,
                    }),
                    1 => Request::Start(t),
                    2 => Request::Stop { target: t, grace_ms: Some((w >> 32) as u32) },
                    3 => Request::Destroy(t),
                    4 if w & 0x800 != 0 => Request::Spec(t),
                    4 => Request::Status(t),
                    5 => Request::Logs { target: t, cursor: w >> 20, max: (w >> 40) as u32 },
                    6 if w & 0x1000 != 0 => {
                        // the cluster lease, from orchd or from anyone else
                        client = if w & 0x2000 != 0 { Client::Orchestrator } else { Client::Other };
                        Request::ClusterLease { until_ns: (now + (w >> 16) % 20_000) * 1_000_000 }
                    }
                    _ => Request::List,
                };
                let resp = s.handle_from(client, req, now, &mut k);
                assert!(encode_response(&resp).is_some());
            }
            2 => {
                // a kernel event for a live (or made-up) VM
                let w = word(body);
                let vm = if k.alive.is_empty() || w & 1 == 1 { w >> 1 } else { k.alive[(w >> 1) as usize % k.alive.len()] };
                let event = match (w >> 8) % 6 {
                    0 => Event::Log { stream: Stream::Stdout, line: body.to_vec() },
                    1 => Event::Ready,
                    2 if w & (1 << 20) != 0 => Event::Exit(vmctl::Exit::Unhealthy(9)),
                    2 => Event::Exit(vmctl::Exit::Code((w >> 16) as i32)),
                    5 => Event::Healthy,
                    3 => Event::Lost { bytes: w >> 16 },
                    _ => {
                        k.alive.retain(|v| *v != vm);
                        Event::Ended { how: [vmctl::Ended::PowerOff, vmctl::Ended::Crashed, vmctl::Ended::Killed][(w >> 16) as usize % 3], touched_bytes: w, wall_ms: 1 }
                    }
                };
                s.on_event(VmEvent { vm, event }, now, &mut k);
            }
            3 => {
                now = now.saturating_add(word(body) % 100_000);
                s.tick(now, &mut k);
                // past the lease no cluster replica runs (stopping is allowed)
                if !s.lease_holds(now) {
                    if let Ok(Reply::List(l)) = s.handle(Request::List, now, &mut k) {
                        assert!(l.iter().all(|w| !is_cluster_replica(&w.name) || w.state == State::Stopping), "{l:?}");
                    }
                }
            }
            5 => manifest(body),
            _ => {
                // raw bytes as kernel event records (the service's decoder of OP_EVENTS)
                if let Some(evs) = vmctl::decode::<Vec<VmEvent>>(body) {
                    for e in evs {
                        s.on_event(e, now, &mut k);
                    }
                }
            }
        }
        assert!(s.len() <= WORKLOADS_MAX);
        assert!(s.vms() <= VMS_MAX);
        assert!(s.admission.free_mib() <= s.admission.capacity_mib());
        assert!(s.net_links() <= crate::net::LINKS_MAX as usize);
    }
}

/// A hostile `image.json` (a pushed one, or a holder's answer to a fetch): `data` as the
/// manifest itself, and as (position, byte) edits of a well-formed one that lists three pieces.
/// Every parser returns an error or agrees with the others; none panics. Panics only if they
/// disagree (that is the finding).
pub fn manifest(data: &[u8]) {
    use crate::store::{manifest_info, manifest_pieces, piece_size, stream_sizes, verify};
    let (rootfs, config) = (b"squashfs".as_slice(), b"{}".as_slice());
    let template = {
        let m = crate::store::manifest_without_pieces(rootfs, config);
        let mut t = String::from_utf8(m).unwrap_or_default();
        t = t.replace("\"size\":8,", "\"size\":600000,");
        t.pop();
        t.push_str(",\"pieces\":{\"size\":262144,\"sha256\":\"");
        for i in 0..3 * 64 {
            t.push(char::from(b"0123456789abcdef"[i % 16]));
        }
        t.push_str("\"}}");
        t.into_bytes()
    };
    let mut edited = template.clone();
    for e in data.chunks(3) {
        if let [hi, lo, b] = *e {
            let at = (usize::from(hi) << 8 | usize::from(lo)) % edited.len();
            edited[at] = b;
        }
    }
    for m in [data, template.as_slice(), edited.as_slice()] {
        let (sizes, info, pieces) = (stream_sizes(m), manifest_info(m), manifest_pieces(m));
        assert_eq!(sizes.is_ok(), info.is_ok(), "the parsers agree on what is a manifest");
        assert_eq!(info.is_ok(), pieces.is_ok());
        if let (Ok((c, r)), Ok(Some(p))) = (sizes, &pieces) {
            let size = piece_size(c + r);
            assert_eq!((p.size, p.digests.len() as u64), (size, (c + r).div_ceil(size)), "one digest per piece");
        }
        // the bytes are not the manifest's (its sizes are not theirs): refused, whatever it says
        assert!(verify(m, rootfs, config, None).is_err());
    }
    assert!(manifest_pieces(&template).is_ok_and(|l| l.is_some_and(|l| l.digests.len() == 3)), "the template is well formed");
}

