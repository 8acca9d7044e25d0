//! Empty: present so that the `[build-dependencies]` of Cargo.toml unify the
//! features of crates the workspace's proc-macros and build scripts use.
fn main() {}
