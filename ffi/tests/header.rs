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

/// `fg_verdict` carries every field the core's verdict has (`Verdict::FIELDS`),
/// durations with their unit (`retry_after_ns`); text fields with a length.
#[test]
fn the_c_verdict_has_every_core_field() {
    let header = include_str!("../../include/floodgate.h");
    let end = header
        .find("} fg_verdict;")
        .expect("fg_verdict in the header");
    let start = header[..end].rfind("typedef struct").expect("its start");
    let body = &header[start..end];
    let members: Vec<&str> = body
        .lines()
        .filter_map(|l| l.trim().strip_suffix(';'))
        .filter_map(|l| l.rsplit([' ', '*']).next())
        .collect();
    for field in fg_core::policy::Verdict::FIELDS {
        let c_name = match field {
            "retry_after" | "reset_after" => format!("{field}_ns"),
            other => other.to_string(),
        };
        assert!(
            members.contains(&c_name.as_str()),
            "fg_verdict lacks {c_name} (members: {members:?})"
        );
    }
}
