//! Atomics shim: std normally, loom's model-checked atomics under
//! `--cfg floodgate_loom` (see `tests/loom.rs`).

#[cfg(floodgate_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(floodgate_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
