//! Link options for the `banctl` binary.

use std::path::Path;

fn main() {
    // Relative relocations packed (DT_RELR, glibc >= 2.36, binutils >= 2.38; Debian 12 has
    // both): the table the loader reads at every start shrinks from ~420 KB to a few KB, and
    // with it the binary and each process's resident file pages.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rerun-if-changed=build.rs");
    symbol_order();
}

/// The functions a daemon runs (`build/symbol-order.txt`, written by `cargo xtask
/// symbol-order`) placed first and together in a release build's code. The kernel maps a
/// binary's pages 64 KiB or more around each one touched, so code spread over the whole file
/// makes nearly all of it resident; packed, an idle daemon keeps about a third of it.
/// Symbols the file names that a build lacks are skipped: a stale file costs memory, never
/// the build. `BANCTL_SYMBOL_ORDER=off` leaves the order to the linker, `=<path>` uses
/// another file.
fn symbol_order() {
    println!("cargo:rerun-if-env-changed=BANCTL_SYMBOL_ORDER");
    // Read when the script runs, not built into it: a script built in another checkout may
    // be reused here.
    let Ok(manifest_dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let default = Path::new(&manifest_dir).join("build/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", default.display());
    let path = match std::env::var("BANCTL_SYMBOL_ORDER") {
        Ok(v) if v == "off" => return,
        Ok(v) => v.into(),
        Err(_) => default,
    };
    let env = |key: &str| std::env::var(key).unwrap_or_default();
    // Only where rustc links with its LLD by default (x86_64 Linux, Rust >= 1.90): other
    // linkers do not know the option.
    let lld = env("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && env("CARGO_CFG_TARGET_OS") == "linux"
        && env("CARGO_CFG_TARGET_ENV") == "gnu"
        && rustc_minor().is_some_and(|minor| minor >= 90);
    if env("PROFILE") != "release" || !lld || !path.exists() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        path.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// The minor version of the rustc building this (`rustc 1.95.0 (...)` gives 95).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").ok()?;
    let out = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}
