fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    // Only the kernel binary gets the linker script; the kernel flags themselves come from xtask.
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/linker.ld");
    println!("cargo:rerun-if-changed={dir}/linker.ld");
}
