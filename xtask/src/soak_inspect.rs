//! `cargo xtask soak vm --inspect`: read a machine that died in a host triple fault through the
//! QEMU monitor (QEMU paused it with `-action shutdown=pause`, memory and registers intact).
//! For every CPU: its registers, and the 4-level page walk (through `xp`, i.e. what is in
//! memory now) of the addresses an event delivery there touches: the IDT's #DF, #PF and #GP
//! gates, RIP, RSP and the TSS's RSP0/IST slots; then the same addresses read through QEMU's
//! debug translation (`x`). A walk that is intact in memory but faulted in the CPU points at
//! the translation the CPU used; a broken walk points at whoever wrote the tables.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

struct Monitor {
    s: UnixStream,
}

impl Monitor {
    fn connect(path: &Path) -> Result<Monitor, String> {
        let s = UnixStream::connect(path).map_err(|e| format!("monitor {}: {e}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
        let mut m = Monitor { s };
        m.read_prompt()?;
        Ok(m)
    }

    /// Reads until the `(qemu) ` prompt; returns what came before it.
    fn read_prompt(&mut self) -> Result<String, String> {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while start.elapsed() < Duration::from_secs(20) {
            match self.s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.ends_with(b"(qemu) ") {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let text = String::from_utf8_lossy(&out).to_string();
        Ok(strip_escapes(text.trim_end_matches("(qemu) ")))
    }

    fn cmd(&mut self, c: &str) -> String {
        if self.s.write_all(format!("{c}\n").as_bytes()).is_err() {
            return String::from("(monitor write failed)");
        }
        let out = self.read_prompt().unwrap_or_else(|e| format!("(monitor: {e})"));
        // Drop the echoed command line.
        out.lines().skip_while(|l| !l.contains(c)).skip(1).collect::<Vec<_>>().join("\n")
    }

    /// One 64-bit word of guest-physical memory.
    fn xp(&mut self, pa: u64) -> Option<u64> {
        let out = self.cmd(&format!("xp /1gx {pa:#x}"));
        out.split(':').nth(1).and_then(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
    }
}

/// Removes terminal escape sequences (the readline monitor echoes with them).
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.peek() == Some(&'[') {
                it.next();
                while let Some(&d) = it.peek() {
                    it.next();
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// `NAME=value` (hex) out of `info registers` output (segment lines: the base, 2nd field).
fn reg(block: &str, name: &str) -> Option<u64> {
    for l in block.lines() {
        for (i, _) in l.match_indices(name) {
            if i > 0 && l.as_bytes()[i - 1].is_ascii_alphanumeric() {
                continue;
            }
            let rest = l[i + name.len()..].trim_start_matches(' ').trim_start_matches('=').trim_start();
            let mut words = rest.split_whitespace();
            let first = words.next()?;
            // "TR =0040 fffffe0000003000 ...", "IDT=     ffffffff80340610 00000fff"
            let v = if name == "TR" || name == "GS" || name == "FS" { words.next()? } else { first };
            return u64::from_str_radix(v, 16).ok();
        }
    }
    None
}

const PT_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The 4-level walk of `va` from `cr3`, as it is in memory now.
fn walk(m: &mut Monitor, cr3: u64, va: u64) -> String {
    let mut out = format!("  walk {va:#018x}:");
    let mut table = cr3 & PT_ADDR;
    for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
        let idx = (va >> shift) & 511;
        let at = table + idx * 8;
        let Some(e) = m.xp(at) else {
            out.push_str(&format!(" L{level}[{idx}]@{at:#x}=?"));
            return out;
        };
        out.push_str(&format!(" L{level}[{idx}]@{at:#x}={e:#x}"));
        if e & 1 == 0 {
            out.push_str(" NOT PRESENT");
            return out;
        }
        if level > 1 && e & 0x80 != 0 {
            let size = 1u64 << shift;
            let pa = (e & PT_ADDR & !(size - 1)) | (va & (size - 1));
            out.push_str(&format!(" (large) -> {pa:#x}"));
            return out;
        }
        table = e & PT_ADDR;
    }
    out.push_str(&format!(" -> {:#x}", table | (va & 0xfff)));
    out
}

pub fn inspect(sock: &Path) -> String {
    let mut report = String::new();
    let mut m = match Monitor::connect(sock) {
        Ok(m) => m,
        Err(e) => return format!("cannot inspect: {e}\n"),
    };
    report.push_str("== info status\n");
    report.push_str(&m.cmd("info status"));
    report.push('\n');
    for cpu in 0..2 {
        m.cmd(&format!("cpu {cpu}"));
        let regs = m.cmd("info registers");
        report.push_str(&format!("== CPU {cpu}: info registers\n{regs}\n"));
        let (Some(cr3), Some(idt)) = (reg(&regs, "CR3"), reg(&regs, "IDT")) else {
            report.push_str("  (no CR3/IDT in the register dump)\n");
            continue;
        };
        let rip = reg(&regs, "RIP").unwrap_or(0);
        let rsp = reg(&regs, "RSP").unwrap_or(0);
        let tr = reg(&regs, "TR").unwrap_or(0);
        report.push_str(&format!("== CPU {cpu}: page walks (cr3 {cr3:#x}, in memory now)\n"));
        let addrs = [("IDT #DF gate", idt + 0x80), ("IDT #PF gate", idt + 0xe0), ("IDT #GP gate", idt + 0xd0), ("RIP", rip), ("RSP", rsp), ("TSS RSP0", tr + 4), ("TSS IST1", tr + 0x24)];
        for (what, va) in addrs {
            report.push_str(&format!("{what}:\n{}\n", walk(&mut m, cr3, va)));
        }
        report.push_str(&format!("== CPU {cpu}: reads through QEMU's debug translation\n"));
        for (what, va) in addrs {
            report.push_str(&format!("{what}: {}\n", m.cmd(&format!("x /2gx {va:#x}")).trim()));
            report.push_str(&format!("  gva2gpa: {}\n", m.cmd(&format!("gva2gpa {va:#x}")).trim()));
        }
    }
    report
}

/// `soak vm --kick-ms N`: a thread that pauses and resumes the machine through its own monitor
/// every N ms until dropped (or until QEMU logs a triple fault, so the dead machine stays as it
/// died for `--inspect`).
pub struct Kicker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kicker {
    pub fn start(sock: std::path::PathBuf, every_ms: u64, dlog: Option<std::path::PathBuf>) -> Kicker {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut m = loop {
                if st.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(30) {
                    return;
                }
                match Monitor::connect(&sock) {
                    Ok(m) => break m,
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            let mut n = 0u64;
            while !st.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(every_ms));
                n += 1;
                if n.is_multiple_of(16) {
                    if let Some(d) = &dlog {
                        if std::fs::read_to_string(d).map(|l| l.contains("Triple fault")).unwrap_or(false) {
                            return;
                        }
                    }
                }
                m.cmd("stop");
                m.cmd("cont");
            }
        });
        Kicker { stop, thread: Some(thread) }
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
