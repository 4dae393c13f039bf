use std::process::Command;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let out = std::env::var("OUT_DIR").unwrap();
    // Only the kernel binary gets the linker script; the kernel flags themselves come from xtask.
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/linker.ld");
    println!("cargo:rerun-if-changed={dir}/linker.ld");

    // Ring-3 programs (hypervisor/user, built by xtask) embedded into the image. Without
    // CATENARY_USER_DIR (plain `cargo check`), empty placeholders keep the build working.
    println!("cargo:rerun-if-env-changed=CATENARY_USER_DIR");
    let out_dir = std::env::var("OUT_DIR").unwrap();
    // Exactly the programs the service manifest knows (catenary_manifest::PROGRAMS), listed
    // for the kernel in programs.rs.
    // The test programs (catenary_manifest::TEST_PROGRAMS) only in the in-kernel test build and
    // the probes kernel: the node kernel gets empty placeholders, so not even their strings ship.
    let tests_too = std::env::var_os("CARGO_FEATURE_KTEST").is_some() || std::env::var_os("CARGO_FEATURE_PROBES").is_some();
    let mut table = String::from("pub static PROGRAM_ELFS: &[(&str, &[u8])] = &[\n");
    for prog in catenary_manifest::PROGRAMS {
        let user_dir = std::env::var("CATENARY_USER_DIR").ok().filter(|_| tests_too || !catenary_manifest::TEST_PROGRAMS.contains(prog));
        let path = match user_dir {
            Some(d) => format!("{d}/{prog}"),
            None => {
                let p = format!("{out_dir}/{prog}.empty");
                std::fs::write(&p, b"").unwrap();
                p
            }
        };
        println!("cargo:rerun-if-changed={path}");
        println!("cargo:rustc-env=CATENARY_USER_{}={path}", prog.to_uppercase());
        table.push_str(&format!("    ({prog:?}, include_bytes!({path:?})),\n"));
    }
    table.push_str("];\n");
    std::fs::write(format!("{out_dir}/programs.rs"), table).unwrap();

    // Test guests: assembled with binutils (as/objcopy come with gcc) into flat binaries.
    for guest in ["hostile", "flood", "reinject", "irqonce", "exitloop", "progress", "nmispin", "cpuidloop"] {
        let src = format!("{dir}/testguests/{guest}.S");
        println!("cargo:rerun-if-changed={src}");
        let obj = format!("{out}/{guest}.o");
        let bin = format!("{out}/{guest}.bin");
        let ok = Command::new("as").args(["--32", "-msyntax=intel", "-mnaked-reg", "-o", &obj, &src]).status().map(|s| s.success()).unwrap_or(false)
            && Command::new("objcopy").args(["-O", "binary", "-j", ".text", &obj, &bin]).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            panic!("assembling {src} failed: install binutils (apt-get install binutils)");
        }
    }
}
