//! Links test binaries against the interpreter pyo3 found (see ../../shared
//! TOOLCHAIN pitfall 1: Debian's libpython could be picked otherwise).
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
