//! Where per-key state lives: the bounded in-memory store (`memory`), the
//! shared-memory table (`shm`, feature `shm`, Unix), Redis (`redis`, feature `redis`).

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
pub(crate) mod shm;
