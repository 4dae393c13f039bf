//! PCIDs (issue 14 item 3, `catenary_arch::pcid`): a CPU keeps a user space's translations
//! across switches, and never uses one its page tables no longer have.
//!
//! The first two hold with or without PCIDs (without them every CR3 write flushes) and run in
//! every boot; the Bochs run `bochs_pcid`, whose CPU has PCIDs, runs them with PCIDs on, and
//! the third, which needs PCIDs, only on request (`ktest.only=pcid_`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_arch::memory::{self, FreshFrame};
use catenary_arch::pcid;
use catenary_arch::uspace::{self, AddressSpace};
use catenary_arch::{cpu, println};

use crate::init::Node;

const VA: u64 = 0x40_0000;

/// A new space with one page at `VA` holding `value`; the page's frame.
fn space_with(value: u64) -> Result<(AddressSpace, u64), String> {
    let mut s = AddressSpace::new().map_err(|e| format!("space: {e:?}"))?;
    let f = map_at_va(&mut s, value)?;
    Ok((s, f))
}

fn map_at_va(s: &mut AddressSpace, value: u64) -> Result<u64, String> {
    let fresh = FreshFrame::alloc().map_err(|e| format!("frame: {e:?}"))?;
    let f = s.map_fresh_frame(VA, fresh, true, false).map_err(|e| format!("map: {e:?}"))?;
    if !memory::user_write_u64(f, value) {
        return Err(format!("frame {f:#x} is not task memory"));
    }
    Ok(f)
}

/// Give the spaces and their frames back.
fn release(spaces: Vec<AddressSpace>, frames: &[u64]) {
    uspace::switch_cr3(None);
    for s in spaces {
        s.destroy();
    }
    for &f in frames {
        let _ = memory::free_user_frame(f);
    }
}

/// The page at `VA` of a space moves to another frame (unmapped, mapped again) while another
/// space and then the kernel's tables are loaded on this CPU: loading the space again reads
/// the new frame, not a translation kept under the space's PCID. Interrupts stay off
/// throughout, so nothing else (a tick's TLB catch-up, another task) flushes in between.
pub fn pcid_a_page_moved_while_its_space_was_away_is_read_anew(_: &Node) -> Result<(), String> {
    let (mut s, f1) = space_with(0x1111_1111)?;
    let (other, g) = space_with(0x2222_2222)?;
    // (the new frame, our first read, the other space's read, ours after the move)
    type Reads = (u64, Option<u64>, Option<u64>, Option<u64>);
    let r = cpu::without_interrupts(|| -> Result<Reads, String> {
        uspace::switch_cr3(Some(&s));
        let first = s.read_as_loaded(VA);
        uspace::switch_cr3(Some(&other));
        let theirs = other.read_as_loaded(VA);
        uspace::switch_cr3(None);
        s.unmap(VA).map_err(|e| format!("unmap: {e:?}"))?;
        let f2 = map_at_va(&mut s, 0x3333_3333)?;
        uspace::switch_cr3(Some(&s));
        let second = s.read_as_loaded(VA);
        uspace::switch_cr3(None);
        Ok((f2, first, theirs, second))
    });
    let (f2, first, theirs, second) = match r {
        Ok(v) => v,
        Err(e) => {
            release(alloc::vec![s, other], &[f1, g]);
            return Err(e);
        }
    };
    release(alloc::vec![s, other], &[f1, f2, g]);
    println!("ktest pcid: PCID {}, reads {first:x?} / {theirs:x?}, after the move {second:x?}", if pcid::on() { "on" } else { "off" });
    if first != Some(0x1111_1111) || theirs != Some(0x2222_2222) {
        return Err(format!("the first reads were {first:x?} and {theirs:x?}, not 0x11111111 and 0x22222222"));
    }
    if second != Some(0x3333_3333) {
        return Err(format!("after the page moved to a new frame the space read {second:x?}, not 0x33333333 (a stale translation)"));
    }
    Ok(())
}

/// More spaces than a CPU has PCIDs, each with its own frame at the same address, loaded in
/// turn three times: every load reads its own space's value, so a PCID taken from one space
/// and given to another brings none of the first space's translations with it.
pub fn pcid_a_reused_pcid_reads_its_new_space(_: &Node) -> Result<(), String> {
    let n = pcid::SLOTS + 3;
    let mut spaces = Vec::new();
    let mut frames = Vec::new();
    for i in 0..n {
        match space_with(0x5000 + i as u64) {
            Ok((s, f)) => {
                spaces.push(s);
                frames.push(f);
            }
            Err(e) => {
                release(spaces, &frames);
                return Err(e);
            }
        }
    }
    let wrong = cpu::without_interrupts(|| {
        let mut wrong = Vec::new();
        for round in 0..3 {
            for (i, s) in spaces.iter().enumerate() {
                uspace::switch_cr3(Some(s));
                let v = s.read_as_loaded(VA);
                if v != Some(0x5000 + i as u64) {
                    wrong.push((round, i, v));
                }
            }
        }
        uspace::switch_cr3(None);
        wrong
    });
    release(spaces, &frames);
    println!("ktest pcid: PCID {}, {} spaces x 3 rounds, {} wrong reads", if pcid::on() { "on" } else { "off" }, n, wrong.len());
    if !wrong.is_empty() {
        return Err(format!("{} loads read another space's page (round, space, value): {:x?}", wrong.len(), &wrong[..wrong.len().min(6)]));
    }
    Ok(())
}

/// With PCIDs on, the kernel flushes a space's PCID exactly when it must: when the space is
/// new to this CPU, when it unmapped a page since this CPU last flushed it (unloaded or loaded
/// at the time), and when its PCID went to other spaces meanwhile; and it keeps the entries
/// when only the kernel's tables, another space or a new mapping came in between. Checked on
/// the decision each load made (`pcid::last_load`), since no CPU here honours the no-flush
/// bit (Bochs ignores it, QEMU TCG has no PCIDs); the page's accessed bit, cleared without a
/// flush before a kept load, is printed to show what the CPU did. Needs PCIDs: on request.
pub fn pcid_flushes_a_space_exactly_when_it_changed(_: &Node) -> Result<(), String> {
    if !pcid::on() {
        return Err("SKIP: this CPU has no PCIDs on".into());
    }
    let (mut s, f1) = space_with(0x4444_4444)?;
    let (other, g) = space_with(0x5555_5555)?;
    let mut others = Vec::new();
    let mut frames = alloc::vec![f1, g];
    for i in 0..pcid::SLOTS {
        match space_with(0x7000 + i as u64) {
            Ok((o, f)) => {
                others.push(o);
                frames.push(f);
            }
            Err(e) => {
                others.push(s);
                others.push(other);
                release(others, &frames);
                return Err(e);
            }
        }
    }
    // (step, flushed, PCID, value read)
    type Step = (&'static str, Option<(u16, bool)>, Option<u64>);
    type Outcome = (Vec<Step>, Option<bool>, Vec<u64>);
    let r = cpu::without_interrupts(|| -> Result<Outcome, String> {
        let mut steps: Vec<Step> = Vec::new();
        let mut new_frames = Vec::new();
        let load = |steps: &mut Vec<Step>, what: &'static str, sp: &AddressSpace| {
            uspace::switch_cr3(Some(sp));
            steps.push((what, pcid::last_load(), sp.read_as_loaded(VA)));
        };
        load(&mut steps, "new here", &s);
        s.take_accessed(VA); // set by that read's walk; cleared without a flush
        load(&mut steps, "another space, new here", &other);
        uspace::switch_cr3(None);
        load(&mut steps, "back after another space and the kernel", &s);
        let walked = s.take_accessed(VA);
        uspace::switch_cr3(None);
        s.unmap(VA).map_err(|e| format!("unmap: {e:?}"))?;
        new_frames.push(map_at_va(&mut s, 0x6666_6666)?);
        load(&mut steps, "after an unmap while away", &s);
        uspace::switch_cr3(None);
        load(&mut steps, "back, nothing changed", &s);
        // An unmap while it is loaded here (this CPU's entry went with INVLPG, others' did not).
        s.unmap(VA).map_err(|e| format!("unmap: {e:?}"))?;
        new_frames.push(map_at_va(&mut s, 0x6767_6767)?);
        uspace::switch_cr3(None);
        load(&mut steps, "after an unmap while loaded", &s);
        // A new mapping needs no flush (nothing cached it).
        uspace::switch_cr3(None);
        new_frames.push(s.map_fresh_frame(VA + 0x1000, FreshFrame::alloc().map_err(|e| format!("frame: {e:?}"))?, true, false).map_err(|e| format!("map: {e:?}"))?);
        load(&mut steps, "after a new mapping", &s);
        // Every PCID goes to other spaces: s has none left.
        for o in &others {
            uspace::switch_cr3(Some(o));
        }
        load(&mut steps, "after its PCID went to others", &s);
        uspace::switch_cr3(None);
        Ok((steps, walked, new_frames))
    });
    let mut spaces = others;
    spaces.push(s);
    spaces.push(other);
    let (steps, walked, new_frames) = match r {
        Ok(v) => v,
        Err(e) => {
            release(spaces, &frames);
            return Err(e);
        }
    };
    frames.extend(new_frames);
    release(spaces, &frames);
    for (what, load, v) in &steps {
        println!("ktest pcid: {what}: (PCID, flushed) {load:?}, read {v:x?}");
    }
    println!("ktest pcid: the kept load {} the page tables (accessed bit {walked:?}){}", if walked == Some(false) { "did not walk" } else { "walked" },
        if walked == Some(true) { ": this CPU flushed anyway (Bochs ignores the no-flush bit)" } else { "" });
    let want: [(bool, u64); 8] = [
        (true, 0x4444_4444),
        (true, 0x5555_5555),
        (false, 0x4444_4444),
        (true, 0x6666_6666),
        (false, 0x6666_6666),
        (true, 0x6767_6767),
        (false, 0x6767_6767),
        (true, 0x6767_6767),
    ];
    if steps.len() != want.len() {
        return Err(format!("{} loads recorded, not {}", steps.len(), want.len()));
    }
    // The space keeps its first PCID until other spaces take every slot (the last step).
    let first = steps[0].1.map(|l| l.0);
    for (i, ((what, load, v), (flush, value))) in steps.iter().zip(want).enumerate() {
        let Some((p, flushed)) = load else { return Err(format!("{what}: no load recorded")) };
        if flushed != &flush || *v != Some(value) || !(1..=pcid::SLOTS as u16).contains(p) {
            return Err(format!("{what}: PCID {p}, flushed {flushed}, read {v:x?}; wanted flushed {flush}, read {value:#x}"));
        }
        if i != 1 && i != 7 && Some(*p) != first {
            return Err(format!("{what}: PCID {p}, not the space's own {first:?}"));
        }
    }
    if steps[1].1.map(|l| l.0) == first {
        return Err(format!("two spaces got the same PCID {first:?}"));
    }
    Ok(())
}
