// Included by the build scripts of the Node addon, the Python extension and
// the C library (`include!`): links the cdylib with `script`,
// core/link/hot-text.ld, whose comment says why (a check's code is cold
// between real requests, and was scattered over 38 pages of the addon
// without it). On Linux with GNU's toolchain, whose linkers (rustc's
// rust-lld, GNU ld) read a script that only adds a section (`INSERT`); not
// when the build chooses its linker (a `linker` or `-fuse-ld` in its flags,
// a target linker in Cargo's config: mold and gold may not read the script),
// nor with FLOODGATE_NO_HOT_TEXT set, nor where the file is missing. Without
// it the library is the same code, laid out as the compiler emitted it.
fn link_hot_text(script: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=FLOODGATE_NO_HOT_TEXT");
    println!("cargo:rerun-if-changed={}", script.display());
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let other_linker = flags.contains("fuse-ld")
        || flags.contains("linker")
        || std::env::var_os("RUSTC_LINKER").is_some();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || other_linker
        || std::env::var_os("FLOODGATE_NO_HOT_TEXT").is_some()
    {
        return;
    }
    if let Ok(script) = script.canonicalize() {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{}", script.display());
    }
}
