//! Link options for the `banctl` binary.

fn main() {
    // Relative relocations packed (DT_RELR, glibc >= 2.36, binutils >= 2.38; Debian 12 has
    // both): the table the loader reads at every start shrinks from ~420 KB to a few KB, and
    // with it the binary and each process's resident file pages.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rerun-if-changed=build.rs");
}
