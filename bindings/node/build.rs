//! napi-rs link setup, and the hot path's functions placed side by side.
use std::env;
use std::path::Path;

fn main() {
    napi_build::setup();
    hot_text();
}

/// Links with core/link/hot-text.ld (its comment says why: a check's code is
/// cold between real requests, and scattered over 38 pages of the addon
/// without it). On Linux with GNU's toolchain, whose linkers (rustc's
/// rust-lld, GNU ld) read a script that only adds a section (`INSERT`);
/// not when the build names another linker (mold, gold), nor with
/// FLOODGATE_NO_HOT_TEXT set, nor where the file is missing (a package
/// built outside the repository). Without it the addon is the same code,
/// laid out as the compiler emitted it.
fn hot_text() {
    println!("cargo:rerun-if-env-changed=FLOODGATE_NO_HOT_TEXT");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../core/link/hot-text.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    let var = |name: &str| env::var(name).unwrap_or_default();
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let other_linker = flags.contains("fuse-ld") || flags.contains("linker=");
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || other_linker
        || env::var_os("FLOODGATE_NO_HOT_TEXT").is_some()
    {
        return;
    }
    if let Ok(script) = script.canonicalize() {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{}", script.display());
    }
}
