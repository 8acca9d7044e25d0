//! Links test binaries against the interpreter pyo3 found (see ../../shared
//! TOOLCHAIN pitfall 1: Debian's libpython could be picked otherwise), and
//! places the hot path's functions side by side (core/link/hot-text.ld).
include!("../../core/link/hot_text.rs");

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    link_hot_text(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../core/link/hot-text.ld"),
    );
}
