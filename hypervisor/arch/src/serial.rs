//! 16550 UART on COM1 (0x3f8): the node console. Polled transmit; used by the logger, the
//! register dump and the panic handler, so it must work before anything else is set up.
//! Written here rather than taken from a crate because it is a dozen port writes and has to be
//! usable from the fault path with its own lock-bypass.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;
use x86_64::instructions::port::Port;

pub const COM1: u16 = 0x3f8;

pub struct Uart {
    base: u16,
}

impl Uart {
    pub const fn new(base: u16) -> Self {
        Self { base }
    }

    fn outb(&self, off: u16, v: u8) {
        // SAFETY: COM1 registers; writing them has no memory-safety effect.
        unsafe { Port::<u8>::new(self.base + off).write(v) }
    }

    fn inb(&self, off: u16) -> u8 {
        // SAFETY: reading a UART register has no memory-safety effect.
        unsafe { Port::<u8>::new(self.base + off).read() }
    }

    /// 115200 8N1, FIFOs on, interrupts off (polled).
    pub fn init(&self) {
        self.outb(1, 0x00); // IER: no interrupts
        self.outb(3, 0x80); // LCR: DLAB
        self.outb(0, 0x01); // divisor 1 = 115200
        self.outb(1, 0x00);
        self.outb(3, 0x03); // 8N1
        self.outb(2, 0xc7); // FIFO enable + clear, 14-byte threshold
        self.outb(4, 0x03); // DTR | RTS
    }

    pub fn write_byte(&self, b: u8) {
        // Wait for THR empty, bounded so a missing UART cannot hang the node.
        for _ in 0..100_000 {
            if self.inb(5) & 0x20 != 0 {
                break;
            }
        }
        self.outb(0, b);
    }

    pub fn try_read_byte(&self) -> Option<u8> {
        if self.inb(5) & 1 != 0 {
            Some(self.inb(0))
        } else {
            None
        }
    }
}

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
        Ok(())
    }
}

static CONSOLE: Mutex<Uart> = Mutex::new(Uart::new(COM1));
static PANICKING: AtomicBool = AtomicBool::new(false);

pub fn init() {
    CONSOLE.lock().init();
}

/// Most bytes written per hold of the console lock (with interrupts off). A line up to this
/// long comes out whole; a longer one in pieces (another CPU's line may land between them).
pub const CHUNK: usize = 256;

/// Formats into a stack buffer and writes it out `CHUNK` bytes per lock hold.
struct Chunker {
    buf: [u8; CHUNK],
    len: usize,
}

impl Chunker {
    fn flush(&mut self) {
        let bytes = &self.buf[..self.len];
        crate::cpu::without_interrupts(|| {
            let u = CONSOLE.lock();
            for &b in bytes {
                if b == b'\n' {
                    u.write_byte(b'\r');
                }
                u.write_byte(b);
            }
            drop(u);
        });
        self.len = 0;
    }
}

impl fmt::Write for Chunker {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == CHUNK {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Write formatted output to the console: interrupts are off (no deadlock with IRQ handlers)
/// and the lock held only while one chunk of at most `CHUNK` bytes goes out.
pub fn write_fmt(args: fmt::Arguments) {
    use fmt::Write;
    if PANICKING.load(Ordering::Relaxed) {
        // The fault path may have interrupted a holder of the lock: bypass it.
        let _ = Uart::new(COM1).write_fmt(args);
        return;
    }
    let mut c = Chunker { buf: [0; CHUNK], len: 0 };
    let _ = c.write_fmt(args);
    if c.len > 0 {
        c.flush();
    }
}

/// Run `f` with interrupts off while holding the console lock (fault-path tests: a dump that
/// needed the lock would never appear).
pub fn hold_console_lock(f: impl FnOnce()) {
    crate::cpu::without_interrupts(|| {
        let _held = CONSOLE.lock();
        f();
    });
}

/// Switch the console to lock-free mode for the fault/panic path.
pub fn enter_panic_mode() {
    PANICKING.store(true, Ordering::Relaxed);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
