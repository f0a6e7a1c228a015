//! Builds the eBPF drop-reason program (src/bpf/drops.bpf.c) with clang into
//! OUT_DIR/drops.bpf.o; src/source/bpf.rs embeds it with include_bytes!.
//!
//! Needs Debian's clang (>= 11; 14 here), installed by
//! tests/tools/install-deps.sh. libbpf's BPF headers (bpf_helpers.h, …) come
//! from the libbpf-sys crate's vendored copy (DEP_BPF_INCLUDE), so they match
//! the libbpf that loads the object; /usr/include (libbpf-dev) is the
//! fallback. `CLANG=/path/to/clang` picks another compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/bpf/drops.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=src/bpf/vmlinux_min.h");
    println!("cargo:rerun-if-env-changed=CLANG");

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("drops.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok("powerpc64") => "powerpc",
        Ok("s390x") => "s390",
        Ok("riscv64") => "riscv",
        Ok(other) => panic!("hvflight: no BPF target arch known for {other}"),
        Err(_) => "x86",
    };
    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        .arg("-Isrc/bpf");
    if let Ok(inc) = std::env::var("DEP_BPF_INCLUDE") {
        cmd.arg(format!("-I{inc}"));
    }
    cmd.args(["-c", src, "-o"]).arg(&obj);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "hvflight: cannot run `{clang}` ({e}): clang builds the eBPF drop-reason \
             program {src}; install it with tests/tools/install-deps.sh (Debian: \
             apt-get install clang) or point CLANG at one"
        )
    });
    if !status.success() {
        panic!("hvflight: `{clang}` failed to compile {src} ({status})");
    }
}
