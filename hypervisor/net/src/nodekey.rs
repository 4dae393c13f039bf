//! The node's private key as a boot module: the entry [`NODE_KEY_FILE`] of a cpio boot module
//! (PVH passes one module, so it rides with the cluster file), holding the x25519 secret as 64
//! hex digits. It replaces `net.key=` on the kernel command line, which is logged.

/// The cpio entry that holds the node's secret key.
pub const NODE_KEY_FILE: &str = "node.key";

/// Why a key file was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFileError {
    /// Not 64 hex digits (surrounding whitespace allowed).
    Malformed,
    /// All zero: not a key anyone meant to use.
    Zero,
}

/// The secret key in a key file: 64 hex digits, optionally surrounded by whitespace.
pub fn parse_node_key(data: &[u8]) -> Result<[u8; 32], KeyFileError> {
    let s = core::str::from_utf8(data).map_err(|_| KeyFileError::Malformed)?.trim();
    let k = crate::cluster::hex_decode32(s).ok_or(KeyFileError::Malformed)?;
    if k == [0; 32] {
        return Err(KeyFileError::Zero);
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files() {
        let hex = "0f".repeat(32);
        assert_eq!(parse_node_key(hex.as_bytes()), Ok([0x0f; 32]));
        assert_eq!(parse_node_key(alloc::format!("\n {hex}\n").as_bytes()), Ok([0x0f; 32]));
        assert_eq!(parse_node_key(b""), Err(KeyFileError::Malformed));
        assert_eq!(parse_node_key(&hex.as_bytes()[..63]), Err(KeyFileError::Malformed));
        assert_eq!(parse_node_key(alloc::format!("{hex}0").as_bytes()), Err(KeyFileError::Malformed));
        assert_eq!(parse_node_key("zz".repeat(32).as_bytes()), Err(KeyFileError::Malformed));
        assert_eq!(parse_node_key(&[0xff; 64]), Err(KeyFileError::Malformed));
        assert_eq!(parse_node_key("00".repeat(32).as_bytes()), Err(KeyFileError::Zero));
        // a multi-byte character where a digit pair should be: an error, not a panic
        let mut odd = alloc::string::String::from("é");
        odd.push_str(&"0".repeat(62));
        assert_eq!(parse_node_key(odd.as_bytes()), Err(KeyFileError::Malformed));
    }
}
