//! The kernel logger behind the `log` facade: boot-relative timestamp, level, component.
//! `[    1.234567] INFO  mm: 500 MiB free`

use catenary_arch::{println, time};
use log::{Level, LevelFilter, Log, Metadata, Record};

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, _m: &Metadata) -> bool {
        true
    }
    fn log(&self, r: &Record) {
        let ns = time::now_ns();
        let lvl = match r.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // Component = last path segment of the target (module path by default).
        let comp = r.target().rsplit("::").next().unwrap_or(r.target());
        println!("[{:5}.{:06}] {} {}: {}", ns / 1_000_000_000, (ns / 1000) % 1_000_000, lvl, comp, OneLine(r.args()));
    }
    fn flush(&self) {}
}

/// A record's text as one line: control characters (newline, carriage return, terminal
/// escapes) print as `.`. Records carry text from ring-3 tasks (SYS_LOG) and the network, and
/// the tests read the serial log line by line: nobody but the kernel starts a line. Filtered
/// while formatting, without allocating (the logger runs with locks held).
struct OneLine<'a>(&'a core::fmt::Arguments<'a>);

impl core::fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        struct Filter<'a, 'b>(&'a mut core::fmt::Formatter<'b>);
        impl core::fmt::Write for Filter<'_, '_> {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                for c in s.chars() {
                    self.0.write_char(if c.is_control() { '.' } else { c })?;
                }
                Ok(())
            }
        }
        core::fmt::write(&mut Filter(f), *self.0)
    }
}

pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
