//! Where per-key state lives. Today: the bounded in-memory [`memory`] store.

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub mod redis;
