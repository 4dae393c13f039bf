//! The flake, `rust-toolchain.toml` and CI agree on one Rust toolchain (issue 15, item 7).
//!
//! Nix cannot build here (no binary cache, no nixpkgs), so these host tests check what can be
//! checked without it: every Nix file parses (`nix-instantiate --parse`, Debian `nix-bin`), the
//! flake takes its toolchain from `rust-toolchain.toml` through rust-overlay and every Rust
//! derivation builds with that toolchain (never nixpkgs' own `rustc`/`cargo`/`rustPlatform`,
//! which on nixos-24.11 is older than the code needs), and the compiler that CI runs the tests
//! with is the version `rust-toolchain.toml` names. The version is written in one place only.

#[cfg(test)]
mod tests {
    use crate::tools::root;
    use std::process::Command;

    /// `channel = "X"` of rust-toolchain.toml.
    fn pinned_channel() -> String {
        let text = std::fs::read_to_string(root().join("rust-toolchain.toml")).expect("rust-toolchain.toml");
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("channel"))
            .filter_map(|r| r.trim().strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .next()
            .expect("rust-toolchain.toml has no channel")
    }

    /// The flake's Nix files, without comments and with whitespace collapsed.
    fn nix_files() -> Vec<(String, String)> {
        let mut files = vec![root().join("flake.nix")];
        let mut dir: Vec<_> = std::fs::read_dir(root().join("nix")).expect("nix/").map(|e| e.unwrap().path()).collect();
        dir.sort();
        files.extend(dir.into_iter().filter(|p| p.extension().is_some_and(|e| e == "nix")));
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                let code: Vec<&str> = text.lines().map(|l| l.split('#').next().unwrap_or("")).collect();
                let flat = code.join(" ").split_whitespace().collect::<Vec<_>>().join(" ");
                (p.strip_prefix(root()).unwrap().display().to_string(), flat)
            })
            .collect()
    }

    #[test]
    fn flake_takes_the_toolchain_from_rust_toolchain_toml() {
        let files = nix_files();
        let flake = &files.iter().find(|(n, _)| n == "flake.nix").unwrap().1;
        assert!(flake.contains("rust-overlay.url"), "flake.nix has no rust-overlay input");
        assert!(
            flake.contains("rust-bin.fromRustupToolchainFile ./rust-toolchain.toml"),
            "flake.nix does not build its toolchain from rust-toolchain.toml"
        );
        assert!(flake.contains("makeRustPlatform { cargo = toolchain; rustc = toolchain; }"), "flake.nix: no rustPlatform from the pinned toolchain");
        let channel = pinned_channel();
        for (name, code) in &files {
            // One source of truth: no Nix file names the version itself.
            assert!(!code.contains(&channel), "{name} names the Rust version {channel}: take it from rust-toolchain.toml");
            for nixpkgs_rust in ["pkgs.rustPlatform", "pkgs.rustc", "pkgs.cargo", "[ cargo rustc", "cargo rustc ]"] {
                assert!(!code.contains(nixpkgs_rust), "{name} uses nixpkgs' Rust (`{nixpkgs_rust}`), not the pinned toolchain");
            }
            if code.contains("buildRustPackage") {
                assert!(code.contains("rustPlatform }:") || code.contains("rustPlatform, "), "{name} builds Rust without the flake's rustPlatform");
            }
        }
    }

    #[test]
    fn ci_compiler_is_the_pinned_toolchain() {
        let channel = pinned_channel();
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let out = Command::new(&rustc).arg("--version").output().expect("rustc --version");
        let version = String::from_utf8_lossy(&out.stdout);
        assert!(
            version.starts_with(&format!("rustc {channel} ")),
            "the tests run with `{}`, rust-toolchain.toml pins {channel}",
            version.trim()
        );
    }

    #[test]
    fn every_nix_file_parses() {
        if Command::new("nix-instantiate").arg("--version").output().is_err() {
            println!("SKIP: nix-instantiate not installed (Debian package nix-bin)");
            return;
        }
        let mut paths = vec![root().join("flake.nix")];
        for e in std::fs::read_dir(root().join("nix")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "nix") {
                paths.push(p);
            }
        }
        for p in paths {
            let out = Command::new("nix-instantiate").arg("--parse").arg(&p).output().unwrap();
            assert!(out.status.success(), "{} does not parse: {}", p.display(), String::from_utf8_lossy(&out.stderr));
        }
    }
}
