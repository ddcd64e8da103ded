//! Link arguments for the `drover` binary on Linux with glibc.
//!
//! **Packed relative relocations (DT_RELR).** A position-independent binary of this size
//! carries 1.2 MB of relocation entries that the dynamic loader reads in full at every start,
//! so every `drover` process (an agent on each node, every CLI call) would keep those pages
//! resident. Packed, they take a few kilobytes. GNU ld 2.38+ and lld support
//! `-z pack-relative-relocs`, and glibc 2.36+ applies it; an older linker warns and ignores the
//! option, so the build never fails because of it.
//!
//! **The agent's code laid out together (release builds on x86_64).** The agent is the one
//! process resident on every node, but its code is a tenth of a binary that is also the server
//! and the CLI. Scattered through it, each function the agent runs pulls its neighbours in with
//! it (the kernel maps 64 KiB around each page fault), and the agent kept 9 MiB of code resident
//! to run 2.4 MiB of it. `symbol.order` lists the functions one agent ran (as callgrind saw them),
//! then the server's hottest (as `perf` sampled them: taking the shared code away from the
//! server's cost it a tenth more CPU until its own hot code was laid out together too), and the
//! linker puts them first, in that order. `bench/scripts/symbol-order.sh` writes the file. A
//! function missing from it (new, or renamed since) is only laid out as before. The option is
//! lld's (and mold's); rust-lld is the default linker on x86_64 Linux since Rust 1.90. Set
//! `DROVER_NO_SYMBOL_ORDERING=1` to link with another linker.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        if arch == "x86_64" && release && std::env::var_os("DROVER_NO_SYMBOL_ORDERING").is_none() {
            let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
            let order = std::path::Path::new(&dir).join("symbol.order");
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
            println!("cargo:rerun-if-changed=symbol.order");
        }
    }
    println!("cargo:rerun-if-env-changed=DROVER_NO_SYMBOL_ORDERING");
    println!("cargo:rerun-if-changed=build.rs");
}
