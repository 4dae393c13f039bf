//! ACPI fixed-hardware power management: the power button and soft-off (S5).
//!
//! [`init`] reads the FADT's PM1 event and control blocks (I/O ports only: a hardware-reduced
//! platform without them has no fixed power button here) and the DSDT's `\_S5` sleep types,
//! puts the chipset in ACPI mode if firmware left it in legacy mode (the FADT's `SMI_CMD` /
//! `ACPI_ENABLE` handshake, so a press reaches the OS rather than firmware's SMI handler), and
//! sets `PWRBTN_EN`. The kernel then polls [`take_button_press`] (a read of `PM1_STS`, no
//! interrupt routing: the SCI is level-triggered and shared, and a press need not be seen
//! within less than a poll). [`power_off`] writes `SLP_TYP(S5) | SLP_EN`.
//!
//! The ports written here come from the tables [`init`] reads. `init` takes effect once (the
//! kernel calls it at boot with the boot protocol's RSDP, as the IOAPIC accessors take their
//! first address): a later call, whatever table it points at, touches no port. An RSDP in
//! memory the allocator manages is refused (as `acpi::parse` refuses it), and no port of the
//! PCI configuration mechanism (0xCF8–0xCFF: a write there reprograms devices, and their DMA)
//! is ever written, whatever the tables say.

use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::instructions::port::Port;

/// PM1 status / enable: the power button's bit (ACPI 6.5 §4.8.3.1).
const PWRBTN: u16 = 1 << 8;
/// PM1 control: SCI_EN (ACPI mode), SLP_TYP (bits 10-12), SLP_EN (bit 13).
const SCI_EN: u16 = 1;
const SLP_TYP_MASK: u16 = 7 << 10;
const SLP_EN: u16 = 1 << 13;

#[derive(Clone, Copy, Debug)]
struct Regs {
    /// PM1a/PM1b event blocks' status registers (the enable registers follow at half the
    /// block's length; written once, at `init`).
    evt: [Option<u16>; 2],
    /// PM1a/PM1b control blocks.
    cnt: [Option<u16>; 2],
    /// `\_S5`'s (SLP_TYPa, SLP_TYPb), when the DSDT declares it plainly.
    s5: Option<(u8, u8)>,
}

static REGS: spin::Once<Regs> = spin::Once::new();
/// `init` ran (successfully or not past its checks): later calls touch no port.
static TRIED: AtomicBool = AtomicBool::new(false);

/// What [`init`] found, for the boot log.
#[derive(Clone, Copy, Debug)]
pub struct PowerInfo {
    pub pm1a_event: u16,
    pub pm1a_control: u16,
    /// `\_S5`'s SLP_TYPa and SLP_TYPb (None: no plain `\_S5`; [`power_off`] then returns and
    /// the machine keeps running).
    pub s5: Option<(u8, u8)>,
    /// The chipset was in legacy mode and this boot switched it to ACPI mode.
    pub acpi_enabled_now: bool,
}

#[derive(Debug)]
pub enum PowerProblem {
    Tables(acpi::AcpiError),
    NotFirmware,
    /// The PM1 blocks are not I/O ports (hardware-reduced ACPI, or memory-mapped).
    NotPortIo,
    /// The power button is a control-method device (a GPE and AML), which needs an AML
    /// interpreter this kernel does not have.
    ControlMethodButton,
    /// The chipset did not enter ACPI mode within a second of the request.
    NoAcpiMode,
    /// `init` already ran: the power button is armed (or refused) once per boot.
    AlreadyDone,
    /// A PM register the tables name lies in the PCI configuration ports, or wraps.
    BadPort,
}

fn port_of(g: &acpi::address::GenericAddress) -> Option<u16> {
    (g.address_space == acpi::address::AddressSpace::SystemIo && g.address != 0).then_some(g.address).and_then(|a| u16::try_from(a).ok())
}

/// A 16-bit register at `port`: not in (or reaching into) the PCI configuration ports.
fn safe_port(port: u16) -> bool {
    let end = port as u32 + 1;
    !(port as u32 <= 0xcff && end >= 0xcf8)
}

/// `\_S5`'s sleep types from the DSDT at `address`, read only after checking that its header
/// and then its whole length lie in firmware memory (a wild pointer gives `None`, never a
/// panic). The table is read for the length of this call only.
fn dsdt_s5(address: u64) -> Option<(u8, u8)> {
    const HEADER: u64 = 36;
    if address == 0 || !crate::memory::firmware_readable(address, HEADER) {
        return None;
    }
    let mut len = [0u8; 4];
    // SAFETY: the 36-byte header lies in firmware memory no Rust code writes (checked above)
    // and covered by the direct map; bytes 4..8 are its length field, read as bytes.
    unsafe { core::ptr::copy_nonoverlapping((crate::paging::p2v(address) + 4) as *const u8, len.as_mut_ptr(), 4) };
    let len = u32::from_le_bytes(len) as u64;
    if !(HEADER..=4 << 20).contains(&len) || !crate::memory::firmware_readable(address, len) {
        return None;
    }
    // SAFETY: the whole table (at most 4 MiB) lies in firmware memory that is not
    // allocator-managed and that no Rust code writes (checked just above), covered by the
    // direct map; the slice is only read, and does not outlive this call.
    let aml = unsafe { core::slice::from_raw_parts((crate::paging::p2v(address) + HEADER) as *const u8, (len - HEADER) as usize) };
    catenary_bootinfo::s5_sleep_types(aml)
}

fn read16(port: u16) -> u16 {
    // SAFETY: a PM1 register the FADT names (I/O space); reading it has no memory effect.
    unsafe { Port::<u16>::new(port).read() }
}

fn write16(port: u16, v: u16) {
    // SAFETY: a PM1 register the FADT names; its effects are the chipset's power state, not
    // memory this kernel holds.
    unsafe { Port::<u16>::new(port).write(v) }
}

/// Find the PM1 registers and `\_S5`, switch to ACPI mode and arm the power button. Once per
/// boot: a later call is refused (`AlreadyDone`) without touching a port.
pub fn init(rsdp: u64) -> Result<PowerInfo, PowerProblem> {
    if !crate::memory::firmware_readable(rsdp, 36) {
        return Err(PowerProblem::NotFirmware);
    }
    if TRIED.swap(true, Ordering::AcqRel) {
        return Err(PowerProblem::AlreadyDone);
    }
    // SAFETY: as in `acpi::parse`: `DirectMapHandler` maps only non-allocator memory covered
    // by the direct map (checked per mapping), and the crate only reads.
    let tables = unsafe { acpi::AcpiTables::from_rsdp(crate::acpi::DirectMapHandler, rsdp as usize) }.map_err(PowerProblem::Tables)?;
    let fadt = tables.find_table::<acpi::fadt::Fadt>().map_err(PowerProblem::Tables)?;
    if { fadt.flags }.power_button_is_control_method() {
        return Err(PowerProblem::ControlMethodButton);
    }
    let evt_a = fadt.pm1a_event_block().map_err(PowerProblem::Tables)?;
    let cnt_a = fadt.pm1a_control_block().map_err(PowerProblem::Tables)?;
    let (Some(ea), Some(ca)) = (port_of(&evt_a), port_of(&cnt_a)) else { return Err(PowerProblem::NotPortIo) };
    let evt_b = fadt.pm1b_event_block().ok().flatten().as_ref().and_then(port_of);
    let cnt_b = fadt.pm1b_control_block().ok().flatten().as_ref().and_then(port_of);
    // the event block is status then enable, each half of its length (at least 2 bytes each)
    let evt_half = ((evt_a.bit_width / 8) as u16 / 2).max(2);
    let enables: Option<alloc::vec::Vec<u16>> = [Some(ea), evt_b].into_iter().flatten().map(|e| e.checked_add(evt_half)).collect();
    let Some(enables) = enables else { return Err(PowerProblem::BadPort) };
    if ![Some(ea), evt_b, Some(ca), cnt_b].into_iter().flatten().chain(enables.iter().copied()).all(safe_port) {
        return Err(PowerProblem::BadPort);
    }
    let (smi_cmd, acpi_enable) = ({ fadt.smi_cmd_port }, { fadt.acpi_enable });
    let s5 = fadt.dsdt_address().ok().and_then(|a| dsdt_s5(a as u64));
    let mut acpi_enabled_now = false;
    if read16(ca) & SCI_EN == 0 && smi_cmd != 0 && acpi_enable != 0 {
        // legacy mode: ask firmware to hand the PM registers over (ACPI 6.5 §16.3.1)
        let Some(port) = u16::try_from(smi_cmd).ok().filter(|p| safe_port(*p)) else { return Err(PowerProblem::BadPort) };
        // SAFETY: the FADT's SMI command port; the write asks firmware for ACPI mode.
        unsafe { Port::<u8>::new(port).write(acpi_enable) };
        let end = crate::time::now_ns() + 1_000_000_000;
        while read16(ca) & SCI_EN == 0 {
            if crate::time::now_ns() > end {
                return Err(PowerProblem::NoAcpiMode);
            }
            crate::time::spin_ns(1_000_000);
        }
        acpi_enabled_now = true;
    }
    let regs = *REGS.call_once(|| Regs { evt: [Some(ea), evt_b], cnt: [Some(ca), cnt_b], s5 });
    for (e, en) in regs.evt.into_iter().flatten().zip(enables) {
        write16(e, PWRBTN); // a press from before this boot is not a request to this one
        write16(en, read16(en) | PWRBTN);
    }
    Ok(PowerInfo { pm1a_event: ea, pm1a_control: ca, s5: regs.s5, acpi_enabled_now })
}

/// Whether the power button was pressed since the last call (its status bit is cleared).
/// Always false before [`init`] succeeded.
pub fn take_button_press() -> bool {
    let Some(r) = REGS.get() else { return false };
    let mut pressed = false;
    for e in r.evt.into_iter().flatten() {
        if read16(e) & PWRBTN != 0 {
            write16(e, PWRBTN); // write-one-to-clear: the other status bits are left as they are
            pressed = true;
        }
    }
    pressed
}

/// Soft-off (S5). Returns only if the machine is still running afterwards (no plain `\_S5`,
/// no PM1 control block, or firmware ignored the request); the caller says so and the node
/// keeps running.
pub fn power_off() {
    let Some(r) = REGS.get() else { return };
    let Some((a, b)) = r.s5 else { return };
    // ACPI's sleep sequence (6.5 §7.4.2.1): the types into both control blocks, then SLP_EN
    // into both
    let mut typed = [None; 2];
    for ((cnt, typ), slot) in r.cnt.into_iter().zip([a, b]).zip(typed.iter_mut()) {
        let Some(cnt) = cnt else { continue };
        let v = (read16(cnt) & !(SLP_TYP_MASK | SLP_EN)) | (typ as u16) << 10;
        write16(cnt, v);
        *slot = Some((cnt, v));
    }
    for (cnt, v) in typed.into_iter().flatten() {
        write16(cnt, v | SLP_EN);
    }
    crate::time::spin_ns(100_000_000);
}
