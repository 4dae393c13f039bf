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
        println!("[{:5}.{:06}] {} {}: {}", ns / 1_000_000_000, (ns / 1000) % 1_000_000, lvl, comp, r.args());
    }
    fn flush(&self) {}
}

pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
