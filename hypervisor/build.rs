//! Builds the Blanket PV guest (`guest/`, its own Cargo workspace) with a nested `cargo build` into
//! `OUT_DIR`, for `include_bytes!`. The guest is a `no_std` static binary for `x86_64-unknown-linux-gnu`
//! (the stock toolchain's target), position-dependent at 0x200000.
//!
//! When the guest's sources are absent (a packaged copy of this crate: cargo leaves the nested package
//! out), or `BLANKET_SKIP_GUEST` is set, an empty guest is embedded and
//! `blanket_hypervisor::guest::builtin()` reports that clearly.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let guest_dir = manifest_dir.join("guest");
    let out_elf = out_dir.join("blanket-guest.elf");
    println!("cargo:rerun-if-env-changed=BLANKET_SKIP_GUEST");
    let note = out_dir.join("guest-status.txt");
    if std::env::var_os("BLANKET_SKIP_GUEST").is_some() || !guest_dir.join("Cargo.toml").exists() {
        std::fs::write(&out_elf, b"").expect("write OUT_DIR");
        std::fs::write(&note, "the guest was not built: its sources (guest/) are not in this copy of the crate, or BLANKET_SKIP_GUEST was set").expect("write OUT_DIR");
        return;
    }
    rerun_dir(&guest_dir.join("src"));
    for f in ["Cargo.toml", "Cargo.lock", "build.rs", "link.ld"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(f).display());
    }
    let blanket_xen = manifest_dir.join("../blanket-xen");
    rerun_dir(&blanket_xen.join("src"));
    println!(
        "cargo:rerun-if-changed={}",
        blanket_xen.join("Cargo.toml").display()
    );
    let xen_abi = manifest_dir.join("../xen-abi");
    rerun_dir(&xen_abi.join("src"));
    println!(
        "cargo:rerun-if-changed={}",
        xen_abi.join("Cargo.toml").display()
    );

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out_dir.join("guest-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env(
            "RUSTFLAGS",
            "-C relocation-model=static -C no-redzone=yes -C target-cpu=x86-64",
        )
        // The outer build's settings are not the guest's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PROFILE_RELEASE_LTO")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    let status = cmd.status().expect("running cargo for the guest");
    if !status.success() {
        panic!(
            "building the Blanket guest (hypervisor/guest) failed: {status}; see the output above"
        );
    }
    let built = target_dir.join("x86_64-unknown-linux-gnu/release/blanket-guest");
    std::fs::copy(&built, &out_elf).expect("copying the guest ELF into OUT_DIR");
    std::fs::write(&note, "").expect("write OUT_DIR");
}

fn rerun_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rerun_dir(&p);
            } else {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
