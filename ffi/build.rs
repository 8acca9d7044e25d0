//! Generates the C header into OUT_DIR (never into the source tree): the
//! `header` test compares it with the committed `include/floodgate.h`; and
//! places the hot path's functions side by side (core/link/hot-text.ld).
include!("../core/link/hot_text.rs");

fn main() {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let out = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml"))
        .unwrap_or_else(|e| panic!("cbindgen.toml: {e}"));
    match cbindgen::generate_with_config(&crate_dir, config) {
        Ok(bindings) => {
            bindings.write_to_file(format!("{out}/floodgate.h"));
        }
        Err(e) => panic!("cbindgen: {e}"),
    }
    println!("cargo:include={out}");
    // The SONAME carries the ABI's major version (see include/floodgate.h).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libfloodgate.so.0");
    }
    link_hot_text(&std::path::Path::new(&crate_dir).join("../core/link/hot-text.ld"));
}
