//! Link the `drover` binary with packed relative relocations (DT_RELR) on Linux with glibc.
//!
//! A position-independent binary of this size carries 1.2 MB of relocation entries that the
//! dynamic loader reads in full at every start, so every `drover` process (an agent on each
//! node, every CLI call) would keep those pages resident. Packed, they take a few kilobytes.
//! GNU ld 2.38+ and lld support `-z pack-relative-relocs`, and glibc 2.36+ applies it; an older
//! linker warns and ignores the option, so the build never fails because of it.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
