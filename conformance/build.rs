//! Compiles the C side of the conformance tests against Xen's public headers (libxen-dev):
//!
//! - every `c/*.c` into one static library, native x86_64, at `-O2` (layout tables, ring.h peers);
//! - every `c/x86_32/NAME.c` with `c/print_main.c` into an i386 program (`gcc -m32`), whose path reaches the
//!   tests as the environment variable `ABI_X86_32_NAME`.
//!
//! A missing header is a build failure, never a skipped test: install `libxen-dev` and `gcc-multilib`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The interface version the tables are compiled at: the latest that Xen 4.17's headers know.
const XEN_INTERFACE_VERSION: &str = "0x00040e00";

fn c_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "c"))
        .collect();
    files.sort();
    files
}

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let c_dir = manifest.join("c");
    println!("cargo:rerun-if-changed={}", c_dir.display());

    if !Path::new("/usr/include/xen/io/ring.h").exists() {
        panic!(
            "Xen's public headers are missing (/usr/include/xen/io/ring.h). \
             The conformance tests need them: run `apt-get install libxen-dev gcc-multilib` (or `bash .ci/run`)."
        );
    }

    let mut native = cc::Build::new();
    native
        .opt_level(2)
        .define("__XEN_INTERFACE_VERSION__", XEN_INTERFACE_VERSION)
        .include(&c_dir)
        .flag("-std=gnu11")
        .warnings(true)
        .extra_warnings(true)
        .flag("-Wno-unused-parameter")
        .flag("-Wno-missing-field-initializers")
        .warnings_into_errors(true);
    for file in c_files(&c_dir) {
        if file.file_name().is_some_and(|n| n == "print_main.c") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", file.display());
        native.file(file);
    }
    native.compile("blanket_conformance_c");

    let compiler = std::env::var("CC_X86_32").unwrap_or_else(|_| "gcc".to_owned());
    for file in c_files(&c_dir.join("x86_32")) {
        let name = file
            .file_stem()
            .expect("file stem")
            .to_string_lossy()
            .into_owned();
        let exe = out.join(format!("{name}_x86_32"));
        let status = Command::new(&compiler)
            .args(["-m32", "-O2", "-std=gnu11", "-Wall", "-Werror"])
            .arg(format!(
                "-D__XEN_INTERFACE_VERSION__={XEN_INTERFACE_VERSION}"
            ))
            .arg("-I")
            .arg(&c_dir)
            .arg(&file)
            .arg(c_dir.join("print_main.c"))
            .arg("-o")
            .arg(&exe)
            .status()
            .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
        assert!(
            status.success(),
            "`{compiler} -m32` failed on {}: the x86_32 layout checks need gcc-multilib \
             (`apt-get install gcc-multilib`)",
            file.display()
        );
        println!("cargo:rerun-if-changed={}", file.display());
        println!(
            "cargo:rustc-env=ABI_X86_32_{}={}",
            name.to_uppercase(),
            exe.display()
        );
    }
}
