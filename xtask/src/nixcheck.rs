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
    use std::process::{Command, Output};
    use std::sync::Mutex;

    /// `nix-instantiate ARGS`, one at a time in this process: the tests run in parallel, and
    /// two `nix-instantiate`s that open a new machine's Nix database at once fail with
    /// `SQLite database '/nix/var/nix/db/db.sqlite' is busy` (seen in a CI run on a fresh
    /// machine).
    fn nix_instantiate(args: &[&std::ffi::OsStr]) -> Output {
        static NIX: Mutex<()> = Mutex::new(());
        let _one = NIX.lock().unwrap_or_else(|e| e.into_inner());
        Command::new("nix-instantiate").args(args).output().unwrap()
    }

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
            let out = nix_instantiate(&["--parse".as_ref(), p.as_os_str()]);
            assert!(out.status.success(), "{} does not parse: {}", p.display(), String::from_utf8_lossy(&out.stderr));
        }
    }

    /// `nix run .#qemu-cluster` evaluated offline: nix/qemu-cluster.nix with stub packages
    /// (`writeShellScript` returns the text; QEMU, vde_switch and `catenary` are recording
    /// stubs; cpio, grep, sed and coreutils are the host's), then run with bash. Each node's
    /// QEMU must get a boot module holding the cluster file and that node's own key as
    /// `node.key`, the MAC the cluster file's underlay address comes from, and no key on its
    /// command line; a new DIR is made by `catenary cluster new`, an existing one of N nodes is
    /// used again, one of another size refused; `catenary cluster relay` is started on the
    /// switch's socket for DIR, with DIR/operator as its config.
    #[test]
    fn qemu_cluster_app_boots_each_node_with_its_key_and_the_cluster_file() {
        if Command::new("nix-instantiate").arg("--version").output().is_err() || Command::new("cpio").arg("--version").output().is_err() {
            println!("SKIP: nix-instantiate (nix-bin) or cpio not installed");
            return;
        }
        let t = std::env::temp_dir().join(format!("catenary-nixapp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let stub = t.join("stub/bin");
        std::fs::create_dir_all(&stub).unwrap();
        let log = t.join("log");
        let write_exec = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = stub.join(name);
            std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // QEMU: record the command line, keep a copy of the boot module and its mode
        write_exec("qemu-system-x86_64", &format!(
            "echo \"qemu $*\" >> {log}\nwhile [ $# -gt 0 ]; do if [ \"$1\" = -initrd ]; then stat -c %a \"$2\" >> {log}; cp \"$2\" {t}/module-$(echo \"$*\" | grep -o 'mac=[0-9a-f:]*' | tr : _).cpio; fi; shift; done",
            log = log.display(), t = t.display()));
        write_exec("vde_switch", &format!("echo \"vde_switch $*\" >> {}", log.display()));
        write_exec("vde_plug", "exit 0");
        // `catenary cluster new`: a cluster file and keys as the real one lays them out
        write_exec("catenary", &format!(
            "if [ \"$1 $2\" = \"cluster relay\" ]; then echo \"catenary $* config $CATENARY_CONFIG_DIR vde_plug $(command -v vde_plug)\" >> {log}; exit 0; fi\necho \"catenary $*\" >> {log}\n[ \"$1 $2 $3\" = \"cluster new --nodes\" ] || exit 9\nn=$4; d=$6; mkdir -p \"$d\"\n{{ echo 'catenary-cluster v1'; for i in $(seq 1 $n); do echo \"node node$i $(printf %064x $i) fe80::5054:ff:feca:$i 51820\"; done; }} > \"$d/cluster.txt\"\nfor i in $(seq 1 $n); do printf '%064x\\n' $((1000+i)) > \"$d/node$i.key\"; done",
            log = log.display()));
        for (f, d) in [("K/catenary.elf", "kernel"), ("G/vmlinux", "vmlinux"), ("I/initramfs.cpio.gz", "initramfs")] {
            std::fs::create_dir_all(t.join(f).parent().unwrap()).unwrap();
            std::fs::write(t.join(f), d).unwrap();
        }
        let sb = t.join("stub").display().to_string();
        let expr = format!(
            "import {}/nix/qemu-cluster.nix {{ pkgs = {{ writeShellScript = n: t: t; qemu = \"{sb}\"; vde2 = \"{sb}\"; cpio = \"/usr\"; coreutils = \"/usr\"; gnused = \"/usr\"; gnugrep = \"/usr\"; }}; kernel = \"{k}\"; guestKernel = \"{g}\"; guestInitramfs = \"{i}\"; catenary = \"{sb}\"; }}",
            crate::tools::root().display(), k = t.join("K").display(), g = t.join("G").display(), i = t.join("I").display());
        let out = nix_instantiate(&["--eval".as_ref(), "--strict".as_ref(), "--json".as_ref(), "-E".as_ref(), expr.as_ref()]);
        assert!(out.status.success(), "qemu-cluster.nix does not evaluate: {}", String::from_utf8_lossy(&out.stderr));
        let script: String = serde_json::from_slice(&out.stdout).unwrap();
        let sh = t.join("app.sh");
        std::fs::write(&sh, &script).unwrap();
        let run = |args: &[&str]| Command::new("bash").arg(&sh).args(args).current_dir(&t).output().unwrap();
        // a new cluster of 3 nodes in ./c
        let o = run(&["3", "c"]);
        assert!(o.status.success(), "the app failed: {} {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("catenary cluster new --nodes 3 --dir c"), "{text}");
        let cluster = std::fs::read(t.join("c/cluster.txt")).unwrap();
        for k in 1..=3u32 {
            let key = std::fs::read(t.join(format!("c/node{k}.key"))).unwrap();
            let mac = format!("52:54:00:ca:00:{k:02x}");
            let m = std::fs::read(t.join(format!("module-mac={}.cpio", mac.replace(':', "_")))).unwrap_or_else(|_| panic!("no boot module for {mac}: {text}"));
            let files = catenary_bootinfo::ImageStore::parse(&m).expect("the boot module is a newc cpio");
            assert_eq!(files.get("node.key"), Some(&key[..]), "node{k}'s module holds another key");
            assert_eq!(files.get("cluster.txt"), Some(&cluster[..]));
            assert_eq!(files.get("vmlinux"), Some(&b"vmlinux"[..]));
            assert_eq!(files.get("initramfs.cpio.gz"), Some(&b"initramfs"[..]));
            let key = String::from_utf8(key).unwrap();
            assert!(!text.contains(key.trim()), "node{k}'s key is on a command line: {text}");
        }
        assert_eq!(text.lines().filter(|l| l.starts_with("qemu ")).count(), 3);
        // the operator's way in: `catenary cluster relay` on the switch just started, for the
        // cluster in DIR (absolute), writing DIR/operator, with vde_plug on its PATH
        let lines: Vec<&str> = text.lines().collect();
        let switch = lines.iter().find_map(|l| l.strip_prefix("vde_switch -s ")).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("no vde_switch: {text}"));
        let at = lines.iter().position(|l| l.starts_with("catenary cluster relay")).unwrap_or_else(|| panic!("`catenary cluster relay` was not started: {text}"));
        let dir = t.join("c").canonicalize().unwrap();
        assert_eq!(
            lines[at],
            format!("catenary cluster relay --switch {switch} --dir {} config {} vde_plug {}/vde_plug", dir.display(), dir.join("operator").display(), stub.display()),
            "the relay must get the switch socket, the cluster dir, DIR/operator as its config and vde_plug"
        );
        assert!(lines.iter().position(|l| l.starts_with("vde_switch ")).unwrap() < at, "the relay started before the switch: {text}");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains(&format!("CATENARY_CONFIG_DIR={}/operator catenary nodes", dir.display())), "{stdout}");
        assert_eq!(text.lines().filter(|l| *l == "600").count(), 3, "boot modules must be private: {text}");
        // again with the same DIR: no new keys; with another size: refused
        std::fs::remove_file(&log).unwrap();
        assert!(run(&["3", "c"]).status.success());
        assert!(!std::fs::read_to_string(&log).unwrap().contains("catenary cluster new"), "an existing cluster was made again");
        let o = run(&["2", "c"]);
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("holds a cluster of 3 nodes"));
        let _ = std::fs::remove_dir_all(&t);
    }
}
