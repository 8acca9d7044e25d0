//! The committed `include/floodgate.h` is what cbindgen generates from the current
//! source. `FG_BLESS=1 cargo test -p floodgate-ffi --test header` rewrites it.

#[test]
fn committed_header_is_fresh() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/floodgate.h"));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../include/floodgate.h");
    if std::env::var_os("FG_BLESS").is_some() {
        std::fs::write(path, generated).expect("write include/floodgate.h");
        return;
    }
    let committed = std::fs::read_to_string(path).expect("read include/floodgate.h");
    assert!(
        committed == generated,
        "include/floodgate.h is stale: run FG_BLESS=1 cargo test -p floodgate-ffi --test header and commit it"
    );
}

#[test]
fn version_macros_match_the_crate() {
    let header = include_str!("../../include/floodgate.h");
    let v: Vec<&str> = env!("CARGO_PKG_VERSION").split('.').collect();
    for (name, value) in ["MAJOR", "MINOR", "PATCH"].iter().zip(v) {
        assert!(
            header.contains(&format!("#define FG_VERSION_{name} {value}\n")),
            "FG_VERSION_{name} should be {value}"
        );
    }
}
