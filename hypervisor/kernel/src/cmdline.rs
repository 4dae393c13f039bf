//! Kernel command line: whitespace-separated `key=value` or bare `flag` words.

pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|w| match w.split_once('=') {
        Some((k, v)) if k == key => Some(v),
        None if w == key => Some(""),
        _ => None,
    })
}
