//! Node identity and the self-certifying address scheme.
//!
//! * A node identity is an x25519 static key pair.
//! * Its /64 prefix: byte 0 is `0xfd` (the locally assigned half of the ULA block `fc00::/7`),
//!   bytes 1..8 are the first 7 bytes of `BLAKE2s-256("catenary-prefix-v1" ‖ public_key)`.
//!   Anyone holding the public key recomputes the prefix ([`verify`]).
//! * The interface identifier (low 64 bits) is `kind (8 bits) ‖ 0x00 ‖ index (48 bits)`:
//!   kind `0x00` is the node itself (only index 1: the node address is `prefix::1`),
//!   kind `0x01` a microVM, kind `0x02` a task. The [`AddressAllocator`] hands out indices
//!   per kind from 1 upwards and never reuses one, so two live workloads never share an
//!   address and a stale message never reaches a newer workload.

use alloc::collections::BTreeSet;
use core::net::Ipv6Addr;
use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::crypto::hash;

/// Domain-separation label of the prefix derivation.
pub const PREFIX_LABEL: &[u8] = b"catenary-prefix-v1";
/// First byte of every fabric address.
pub const ULA_BYTE: u8 = 0xfd;
/// Largest index of a microVM or task address (48 bits).
pub const MAX_INDEX: u64 = (1 << 48) - 1;

/// A node identity: an x25519 static key pair.
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Identity").field("public", &self.public.as_bytes()).finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity from the caller's RNG.
    pub fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        Self::from_secret_bytes(b)
    }
    /// From a 32-byte secret (clamped by x25519 as usual).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Identity { secret, public }
    }
    /// The secret key bytes (e.g. to configure a WireGuard tool).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }
    /// The public key bytes.
    pub fn public_key(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }
    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
    /// The node's /64 prefix.
    pub fn prefix(&self) -> Prefix64 {
        Prefix64::from_public_key(&self.public_key())
    }
    /// The node's own /128 (`prefix::1`).
    pub fn node_address(&self) -> Ipv6Addr {
        self.prefix().node_address()
    }
}

/// A /64 derived from a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix64(pub [u8; 8]);

impl Prefix64 {
    /// Derive the prefix of a public key.
    pub fn from_public_key(public: &[u8; 32]) -> Self {
        let h = hash(&[PREFIX_LABEL, public]);
        let mut p = [0u8; 8];
        p[0] = ULA_BYTE;
        p[1..8].copy_from_slice(&h[..7]);
        Prefix64(p)
    }
    /// The prefix of an address.
    pub fn of(addr: &Ipv6Addr) -> Self {
        let o = addr.octets();
        let mut p = [0u8; 8];
        p.copy_from_slice(&o[..8]);
        Prefix64(p)
    }
    /// `prefix::iid`.
    pub fn address(&self, iid: u64) -> Ipv6Addr {
        let mut o = [0u8; 16];
        o[..8].copy_from_slice(&self.0);
        o[8..].copy_from_slice(&iid.to_be_bytes());
        Ipv6Addr::from(o)
    }
    /// The node's own address, `prefix::1`.
    pub fn node_address(&self) -> Ipv6Addr {
        self.address(1)
    }
    /// The address of microVM or task `index` (1..=MAX_INDEX); `None` for a bad index or kind.
    pub fn workload_address(&self, kind: AddressKind, index: u64) -> Option<Ipv6Addr> {
        if index == 0 || index > MAX_INDEX {
            return None;
        }
        match kind {
            AddressKind::Node => None,
            AddressKind::MicroVm | AddressKind::Task => {
                Some(self.address(((kind as u64) << 56) | index))
            }
        }
    }
    /// The prefix as an IPv6 network address (low 64 bits zero).
    pub fn network(&self) -> Ipv6Addr {
        self.address(0)
    }
    /// True if `addr` lies in this /64.
    pub fn contains(&self, addr: &Ipv6Addr) -> bool {
        Prefix64::of(addr) == *self
    }
}

impl core::fmt::Display for Prefix64 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/64", self.network())
    }
}

/// What an address inside a node prefix names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum AddressKind {
    /// The node itself (`prefix::1`).
    Node = 0,
    /// A microVM.
    MicroVm = 1,
    /// A task.
    Task = 2,
}

/// Split an address into its kind and index; `None` if the interface identifier is not one
/// this scheme assigns.
pub fn classify(addr: &Ipv6Addr) -> Option<(AddressKind, u64)> {
    let o = addr.octets();
    if o[0] != ULA_BYTE {
        return None;
    }
    let mut iid = [0u8; 8];
    iid.copy_from_slice(&o[8..]);
    let iid = u64::from_be_bytes(iid);
    let kind = (iid >> 56) as u8;
    let reserved = (iid >> 48) as u8;
    let index = iid & MAX_INDEX;
    if reserved != 0 || index == 0 {
        return None;
    }
    match kind {
        0 if index == 1 => Some((AddressKind::Node, 1)),
        1 => Some((AddressKind::MicroVm, index)),
        2 => Some((AddressKind::Task, index)),
        _ => None,
    }
}

/// Does `addr` belong to the node holding `public`? True iff the address is in the prefix
/// derived from `public` and its interface identifier follows the scheme.
pub fn verify(addr: &Ipv6Addr, public: &[u8; 32]) -> bool {
    Prefix64::from_public_key(public).contains(addr) && classify(addr).is_some()
}

/// Error of the [`AddressAllocator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// All 2^48 - 1 indices of that kind have been used.
    Exhausted,
    /// The node kind has exactly one address and is not allocated.
    NotAllocatable,
}

/// Allocates per-microVM and per-task /128s inside one node prefix without collisions.
#[derive(Clone, Debug)]
pub struct AddressAllocator {
    prefix: Prefix64,
    next_vm: u64,
    next_task: u64,
    live: BTreeSet<Ipv6Addr>,
}

impl AddressAllocator {
    /// An allocator for `prefix`.
    pub fn new(prefix: Prefix64) -> Self {
        AddressAllocator { prefix, next_vm: 1, next_task: 1, live: BTreeSet::new() }
    }
    /// Allocate a fresh address of `kind`.
    pub fn allocate(&mut self, kind: AddressKind) -> Result<Ipv6Addr, AllocError> {
        let next = match kind {
            AddressKind::Node => return Err(AllocError::NotAllocatable),
            AddressKind::MicroVm => &mut self.next_vm,
            AddressKind::Task => &mut self.next_task,
        };
        if *next > MAX_INDEX {
            return Err(AllocError::Exhausted);
        }
        let addr = self.prefix.workload_address(kind, *next).ok_or(AllocError::Exhausted)?;
        *next += 1;
        self.live.insert(addr);
        Ok(addr)
    }
    /// Take the given microVM address (one a caller numbers itself, e.g. the workload service's
    /// per-workload /128s): it must be a microVM address of this prefix and not live. The
    /// sequential [`Self::allocate`] never reaches the indices such callers use (they start at
    /// 2^16; see `catenary_workload::net`), and a claimed address can be claimed again once
    /// released.
    pub fn claim(&mut self, addr: Ipv6Addr) -> bool {
        if !self.prefix.contains(&addr) || !matches!(classify(&addr), Some((AddressKind::MicroVm, _))) || self.live.contains(&addr) {
            return false;
        }
        self.live.insert(addr);
        true
    }
    /// Release an address (it is never handed out again). Returns whether it was live.
    pub fn release(&mut self, addr: &Ipv6Addr) -> bool {
        self.live.remove(addr)
    }
    /// Is `addr` currently allocated?
    pub fn is_live(&self, addr: &Ipv6Addr) -> bool {
        self.live.contains(addr)
    }
    /// The prefix this allocator serves.
    pub fn prefix(&self) -> Prefix64 {
        self.prefix
    }
}
