//! The only `unsafe` code of the shared-memory store: mapping the file and viewing
//! it as atomics, and reading the system-wide monotonic clock. Everything above this module is safe code over `&[AtomicU64]`
//! (the header) and `&[AtomicU128]` (the slots).
//!
//! Why this is sound whatever another process does to the mapped bytes:
//! - every access to the mapping, from every process, is an atomic operation on
//!   an aligned word, so concurrent writers never race in the memory model's
//!   sense, and any bit pattern is a valid `u64`/`u128` (no invalid values);
//! - the views are built only over the length that was mapped, which `map`
//!   checks covers the header and `slots` 16-byte slots; every index into them
//!   goes through `slice::get`;
//! - the mapping is `MmapRaw` (no `&[u8]` over shared bytes is ever formed) and
//!   lives as long as the `Region`, which the views borrow.
//!
//! Not covered by the type system: a process of the same user that truncates the
//! file while it is mapped makes the next access fault (SIGBUS), as with every
//! shared mapping (nginx's zones included). The file is 0600 and opened without
//! following symlinks, so only the owner can do that.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;

use memmap2::{MmapOptions, MmapRaw};
use portable_atomic::AtomicU128;

/// `CLOCK_MONOTONIC` in ns: the same clock in every process of the machine.
/// (Through libc, whose vDSO call works under valgrind, where rustix's own vDSO
/// lookup reads the auxiliary vector valgrind does not map.)
pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration, and
    // CLOCK_MONOTONIC is supported on every Unix this builds for.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Bytes before the first slot: one page, so the slots start 16-byte aligned.
pub(super) const HEADER_BYTES: usize = 4096;
/// The header as 64-bit words.
pub(super) const HEADER_WORDS: usize = HEADER_BYTES / 8;
/// Bytes per slot.
pub(super) const SLOT_BYTES: usize = 16;

/// A mapped table file: a header of atomic words, then `slots` atomic 128-bit slots.
pub(super) struct Region {
    map: MmapRaw,
    slots: usize,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("slots", &self.slots)
            .finish()
    }
}

/// The file length that holds `slots` slots, or `None` on overflow.
pub(super) fn file_len(slots: usize) -> Option<usize> {
    slots.checked_mul(SLOT_BYTES)?.checked_add(HEADER_BYTES)
}

impl Region {
    /// Maps the first `file_len(slots)` bytes of `file`, shared and writable. The
    /// caller has checked the file is that long (a shorter file would fault on
    /// access, not be undefined behaviour, but is refused before mapping).
    pub(super) fn map(file: &File, slots: usize) -> io::Result<Self> {
        let len = file_len(slots)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "table too large"))?;
        let map = MmapOptions::new().len(len).map_raw(file)?;
        if map.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "mapping too short",
            ));
        }
        Ok(Self { map, slots })
    }

    /// The header's words.
    pub(super) fn header(&self) -> &[AtomicU64] {
        let ptr = self.map.as_ptr().cast::<AtomicU64>();
        // SAFETY: the mapping is at least HEADER_BYTES long (checked in `map`) and
        // page-aligned, so it holds HEADER_WORDS aligned u64 words; it lives as
        // long as `self`, which the slice borrows; all accesses to it are atomic
        // (module docs), and every bit pattern is a valid AtomicU64.
        unsafe { std::slice::from_raw_parts(ptr, HEADER_WORDS) }
    }

    /// The slots.
    pub(super) fn slots(&self) -> &[AtomicU128] {
        // SAFETY: HEADER_BYTES < the mapping's length (checked in `map`), so the
        // offset stays inside the mapping.
        let base = unsafe { self.map.as_ptr().add(HEADER_BYTES) };
        let ptr = base.cast::<AtomicU128>();
        // SAFETY: the mapping holds HEADER_BYTES + slots * 16 bytes (checked in
        // `map`); `base` is page-aligned + 4096, so 16-byte aligned as AtomicU128
        // requires; the mapping lives as long as `self`; all accesses are atomic
        // (module docs), and every bit pattern is a valid AtomicU128.
        unsafe { std::slice::from_raw_parts(ptr, self.slots) }
    }
}
