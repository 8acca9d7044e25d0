//! napi-rs link setup, and the hot path's functions placed side by side
//! (core/link/hot-text.ld).
include!("../../core/link/hot_text.rs");

fn main() {
    napi_build::setup();
    link_hot_text(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../core/link/hot-text.ld"),
    );
}
