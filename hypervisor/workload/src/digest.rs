//! Content digests: sha256, written `sha256:<64 lowercase hex>`.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Parse `sha256:<64 lowercase hex>`; anything else is None.
    pub fn parse(s: &str) -> Option<Digest> {
        Digest::from_hex(s.strip_prefix("sha256:")?.as_bytes())
    }

    /// Parse exactly 64 lowercase hex digits (no prefix: `image.json`'s piece list).
    pub fn from_hex(hex: &[u8]) -> Option<Digest> {
        if hex.len() != 64 {
            return None;
        }
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = nib(hex[2 * i])? << 4 | nib(hex[2 * i + 1])?;
        }
        Some(Digest(out))
    }

    /// The first 12 hex digits (log lines).
    pub fn short(&self) -> impl core::fmt::Display + '_ {
        struct S<'a>(&'a [u8; 32]);
        impl core::fmt::Display for S<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                self.0[..6].iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
        S(&self.0)
    }
}

impl core::fmt::Display for Digest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A sha256 over bytes that arrive in pieces (a pushed image's stream).
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl core::fmt::Debug for Digest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn sha256_and_text() {
        let d = Digest::of(b"abc");
        let s = format!("{d}");
        assert_eq!(s, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(Digest::parse(&s), Some(d));
        assert_eq!(format!("{}", d.short()), "ba7816bf8f01");
        let mut h = Hasher::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), d);
        for bad in ["", "sha256:", "sha512:ba78", &s.to_uppercase(), &s[..70], &format!("{s}0"), "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"] {
            assert_eq!(Digest::parse(bad), None, "{bad}");
        }
    }
}
