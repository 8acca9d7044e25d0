//! The shared-memory store: one table in a memory-mapped file (on Linux, under
//! `/dev/shm`) that every process of a machine maps, so a quota is exact across
//! the worker processes of a server (gunicorn, uvicorn, Node cluster, nginx).
//!
//! # The table
//! A fixed number of 16-byte slots, fixed when the file is created. A slot is one
//! `AtomicU128`: a 40-bit tag (bits of the key's hash), an 8-bit quota number and
//! 80 bits of state (`codec.rs`); all zero is an empty slot. Every change is one
//! 128-bit compare-and-swap of the whole slot, so the tag and the state change
//! together: there is no lock, and a process killed at any instruction leaves
//! every slot either before or after its change, never half-written.
//!
//! A key's quota lives in one of the 16 slots after its home slot (linear probing
//! in a window of 256 bytes). A lookup takes the first slot in that window whose
//! tag and quota match. A new key takes the first empty or expired slot of the
//! window (a state that no longer changes any decision: a full bucket, a past
//! window); when all 16 hold live state, it evicts the one that has spent least
//! of its quota (`Codec::score`: one request of a unique-key flood goes before
//! a client near its limit) and counts an eviction. Two processes inserting
//! the same new key at once: the one whose slot comes later in the window sees
//! the other's and gives its slot back (then charges the other's), so a key has
//! one slot.
//!
//! # Several quotas on one key
//! Each quota of a key is its own slot. A check charges them in order; if one
//! denies, the ones already charged are refunded. A concurrent observer can see
//! the first quotas charged before the refund (a request denied for a moment by
//! a charge that is then given back); it never sees more admitted than the
//! quotas allow.
//!
//! # Time
//! Every process reads the same clock: `CLOCK_MONOTONIC` plus an offset to Unix
//! time fixed in the file when it was created (so windows stay aligned to Unix
//! time, and no process's clock calibration matters). The file records the boot
//! it was created in; a file from an earlier boot (whose monotonic times mean
//! nothing now) is replaced by a fresh one under an exclusive `flock`.
//!
//! # The file
//! A 4 KiB header (magic, layout version, slot count, a fingerprint of the quotas
//! that created it, the boot id, the clock offset, the key-hash seeds, a check
//! value of the hash, the eviction counter), then the slots. Created as a
//! temporary file (`O_EXCL`, mode 0600) that is fully written before it is
//! hard-linked into place, so no process ever maps a half-initialised table;
//! opened with `O_NOFOLLOW`, refused unless it is a regular file of this user
//! with no group or other permissions and exactly the expected length. Another
//! layout, slot count or quota set is [`Error::StoreMismatch`].

mod codec;
mod keys;
mod region;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use portable_atomic::AtomicU128;
use rustix::fs::{FileType, FlockOperation, Mode, OFlags};

pub(crate) use codec::{AdaptiveBits, Codec, ban_bits, ban_of};
pub(crate) use keys::SharedKeys;
use region::{Region, monotonic_ns};

use crate::algorithm::Outcome;
use crate::error::{Error, Result};
use crate::quota::Quota;
use crate::state::QuotaState;

/// `FLOODGAT` in little-endian bytes.
const MAGIC: u64 = u64::from_le_bytes(*b"FLOODGAT");
/// Bumped whenever the header or the slot format changes.
const LAYOUT: u64 = 1;
/// Slots a key may live in after its home slot.
const PROBE: usize = 16;
const TAG_BITS: u32 = 40;
const QUOTA_SHIFT: u32 = codec::STATE_BITS;
const TAG_SHIFT: u32 = QUOTA_SHIFT + 8;
/// The bits that say whose a slot is (tag and quota number).
const ID_MASK: u128 = !((1u128 << QUOTA_SHIFT) - 1);
/// Most quotas one table holds (the slot's quota number is 8 bits).
pub(crate) const MAX_TABLE_QUOTAS: usize = 256;

// Header words.
const H_MAGIC: usize = 0;
const H_LAYOUT: usize = 1;
const H_SLOTS: usize = 2;
const H_FINGERPRINT: usize = 3;
const H_BOOT: usize = 4; // and 5
const H_ORIGIN: usize = 6;
const H_SEEDS: usize = 7; // 7..=10
const H_HASH_CHECK: usize = 11;
const H_EVICTIONS: usize = 12;

/// A stable 64-bit FNV-1a, for the file's fingerprint of its quotas (the same in
/// every build, unlike the keyed hashers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn bytes(mut self, bytes: &[u8]) -> Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
    pub(crate) fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    /// Adds a quota's algorithm and numbers.
    pub(crate) fn quota(self, q: &Quota) -> Self {
        let f = self
            .bytes(q.algorithm().name().as_bytes())
            .u64(q.limit())
            .u64(q.period_ns())
            .u64(q.burst());
        // Only calendar quotas add bytes: other tables keep their fingerprint.
        match q.calendar_unit() {
            Some(unit) => f.bytes(b"calendar").bytes(unit.name().as_bytes()),
            None => f,
        }
    }
    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// The 64-bit finaliser of MurmurHash3: spreads a key hash into one per quota.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// This boot's id (Linux: `/proc/sys/kernel/random/boot_id`), or zeros where
/// there is none (then a file from an earlier boot is not detected).
fn boot_id() -> [u64; 2] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: String = text.chars().filter(char::is_ascii_hexdigit).collect();
    let half = |range: std::ops::Range<usize>| {
        hex.get(range)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    [half(0..16), half(16..32)]
}

fn unavailable(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::StoreUnavailable {
        store: "shared memory",
        message: format!("{}: {what}: {e}", path.display()).into(),
    }
}

fn mismatch(path: &Path, problem: String) -> Error {
    Error::StoreMismatch {
        path: path.display().to_string().into(),
        problem: problem.into(),
    }
}

/// What a process needs to open a table: its slot count and the quotas it holds
/// (their fingerprint must match the file's).
#[derive(Debug, Clone)]
pub(crate) struct TableSpec {
    pub slots: usize,
    pub codecs: Vec<Codec>,
    pub fingerprint: u64,
}

/// A mapped table. Shared (`Arc`) by every limiter of an engine that uses it.
#[derive(Debug)]
pub(crate) struct ShmTable {
    region: Region,
    path: PathBuf,
    /// Codecs of the table's quotas, by quota number (the same in every process:
    /// the file's fingerprint covers them).
    codecs: Box<[Codec]>,
    hasher: ahash::RandomState,
    /// Unix time minus monotonic time when the file was created (ns).
    origin: i64,
}

impl ShmTable {
    /// Opens the table at `path`, creating it if it does not exist.
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] when the file cannot be created, opened or
    /// mapped, or is not a private regular file of this user;
    /// [`Error::StoreMismatch`] when it holds another layout, slot count or quota
    /// set, or is corrupt.
    pub(crate) fn open(path: &Path, spec: &TableSpec) -> Result<Arc<Self>> {
        if spec.slots < PROBE {
            return Err(Error::InvalidOption {
                option: "max_keys",
                problem: "the shared-memory store needs at least 16 slots",
            });
        }
        if spec.codecs.is_empty() || spec.codecs.len() > MAX_TABLE_QUOTAS {
            return Err(Error::InvalidOption {
                option: "quotas",
                problem: "a shared-memory table holds 1 to 256 quotas",
            });
        }
        if !AtomicU128::is_lock_free() {
            return Err(unavailable(
                path,
                "this CPU has no 128-bit compare-and-swap",
                "the shared-memory store needs one (x86_64 cmpxchg16b, aarch64)",
            ));
        }
        let boot = boot_id();
        // A few rounds at most: each retry follows another process's creation or
        // replacement of the file.
        for _ in 0..16 {
            let file = match rustix::fs::open(
                path,
                OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => File::from(fd),
                Err(rustix::io::Errno::NOENT) => {
                    Self::create(path, spec, boot)?;
                    continue;
                }
                Err(rustix::io::Errno::LOOP) => {
                    return Err(unavailable(path, "refused", "it is a symbolic link"));
                }
                Err(e) => return Err(unavailable(path, "cannot open", io::Error::from(e))),
            };
            let slots = Self::check_file(path, &file)?;
            let region =
                Region::map(&file, slots).map_err(|e| unavailable(path, "cannot map", e))?;
            let header = region.header();
            let word = |i: usize| header.get(i).map_or(0, |w| w.load(Ordering::Acquire));
            if word(H_MAGIC) != MAGIC {
                return Err(mismatch(path, "not a floodgate table (bad magic)".into()));
            }
            if word(H_LAYOUT) != LAYOUT {
                return Err(mismatch(
                    path,
                    format!(
                        "layout version {} (this build uses {LAYOUT})",
                        word(H_LAYOUT)
                    ),
                ));
            }
            if word(H_SLOTS) != slots as u64 {
                return Err(mismatch(
                    path,
                    "the header's slot count disagrees with the file's length".into(),
                ));
            }
            if [word(H_BOOT), word(H_BOOT + 1)] != boot {
                // Left from an earlier boot: nobody can be using it (its processes
                // are gone), and its times mean nothing now. Replace it, once.
                Self::replace_stale(path, &file, spec, boot)?;
                continue;
            }
            if slots != spec.slots {
                return Err(mismatch(
                    path,
                    format!(
                        "it has {slots} slots, this process asks for {} (max_keys)",
                        spec.slots
                    ),
                ));
            }
            if word(H_FINGERPRINT) != spec.fingerprint {
                return Err(mismatch(
                    path,
                    "it was created for other quotas (every process must load the same \
                     quotas or policy; delete the file or use another path to start over)"
                        .into(),
                ));
            }
            let seeds = [0, 1, 2, 3].map(|i| word(H_SEEDS + i));
            let origin = word(H_ORIGIN) as i64;
            let hasher = ahash::RandomState::with_seeds(seeds[0], seeds[1], seeds[2], seeds[3]);
            let checked = word(H_HASH_CHECK) == hash_check(&hasher);
            if !checked {
                return Err(mismatch(
                    path,
                    "it was created by a build of floodgate that hashes keys differently \
                     (every process must use the same version)"
                        .into(),
                ));
            }
            return Ok(Arc::new(Self {
                region,
                path: path.to_path_buf(),
                codecs: spec.codecs.clone().into_boxed_slice(),
                hasher,
                origin,
            }));
        }
        Err(unavailable(
            path,
            "cannot open",
            "the file kept changing while opening it",
        ))
    }

    /// A private regular file of this user, as long as a table of its header's
    /// slot count: returns that count.
    fn check_file(path: &Path, file: &File) -> Result<usize> {
        let st = rustix::fs::fstat(file)
            .map_err(|e| unavailable(path, "cannot stat", io::Error::from(e)))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(unavailable(path, "refused", "not a regular file"));
        }
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(unavailable(path, "refused", "owned by another user"));
        }
        if st.st_mode & 0o077 != 0 {
            return Err(unavailable(
                path,
                "refused",
                format!(
                    "mode {:o} lets other users read or write it (floodgate creates it 0600)",
                    st.st_mode & 0o777
                ),
            ));
        }
        let len = usize::try_from(st.st_size).unwrap_or(0);
        if len < region::HEADER_BYTES {
            return Err(mismatch(
                path,
                format!("truncated: {len} bytes, shorter than the header"),
            ));
        }
        let slots = (len - region::HEADER_BYTES) / region::SLOT_BYTES;
        if region::file_len(slots) != Some(len) || slots < PROBE {
            return Err(mismatch(
                path,
                format!("{len} bytes is not the length of a table"),
            ));
        }
        Ok(slots)
    }

    /// Writes a new table to a temporary file next to `path` and returns it.
    fn write_new(path: &Path, spec: &TableSpec, boot: [u64; 2]) -> Result<PathBuf> {
        let len = region::file_len(spec.slots).ok_or(Error::InvalidOption {
            option: "max_keys",
            problem: "too large for a shared-memory table",
        })?;
        let unique = ahash::RandomState::new().hash_one(std::process::id());
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}.{unique:016x}.tmp", std::process::id()));
        let tmp = PathBuf::from(name);
        let fd = rustix::fs::open(
            &tmp,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| unavailable(&tmp, "cannot create", io::Error::from(e)))?;
        let file = File::from(fd);
        let written = (|| {
            file.set_len(len as u64)?;
            let region = Region::map(&file, spec.slots)?;
            let header = region.header();
            let seeder = ahash::RandomState::new();
            let seeds = [0u64, 1, 2, 3].map(|i| seeder.hash_one(i));
            let hasher = ahash::RandomState::with_seeds(seeds[0], seeds[1], seeds[2], seeds[3]);
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            let origin = unix.wrapping_sub(monotonic_ns());
            let mut words = vec![
                (H_LAYOUT, LAYOUT),
                (H_SLOTS, spec.slots as u64),
                (H_FINGERPRINT, spec.fingerprint),
                (H_BOOT, boot[0]),
                (H_BOOT + 1, boot[1]),
                (H_ORIGIN, origin),
                (H_HASH_CHECK, hash_check(&hasher)),
            ];
            words.extend((0..4).map(|i| (H_SEEDS + i, seeds.get(i).copied().unwrap_or(0))));
            // The magic last: a header without it is never valid.
            words.push((H_MAGIC, MAGIC));
            for (i, v) in words {
                if let Some(w) = header.get(i) {
                    w.store(v, Ordering::Release);
                }
            }
            io::Result::Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(unavailable(&tmp, "cannot write", e));
        }
        Ok(tmp)
    }

    /// Creates the table at `path` unless another process does first.
    fn create(path: &Path, spec: &TableSpec, boot: [u64; 2]) -> Result<()> {
        let tmp = Self::write_new(path, spec, boot)?;
        // A hard link fails if `path` exists: the first creator wins, and the
        // others open its file.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(unavailable(path, "cannot create", e)),
        }
    }

    /// Replaces a file from an earlier boot, under an exclusive `flock` on it (the
    /// kernel releases the lock if this process dies), unless another process
    /// already did.
    fn replace_stale(path: &Path, file: &File, spec: &TableSpec, boot: [u64; 2]) -> Result<()> {
        rustix::fs::flock(file, FlockOperation::LockExclusive)
            .map_err(|e| unavailable(path, "cannot lock", io::Error::from(e)))?;
        let ours = rustix::fs::fstat(file).ok().map(|s| (s.st_dev, s.st_ino));
        let there = rustix::fs::lstat(path).ok().map(|s| (s.st_dev, s.st_ino));
        if ours.is_some() && ours == there {
            let tmp = Self::write_new(path, spec, boot)?;
            let renamed = std::fs::rename(&tmp, path);
            if renamed.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            renamed
                .map_err(|e| unavailable(path, "cannot replace a file from an earlier boot", e))?;
        }
        // Unlocked when `file` closes.
        Ok(())
    }

    /// Now on the table's clock: the same in every process (ns of Unix time).
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        monotonic_ns().wrapping_add(self.origin as u64)
    }

    /// The hash of a key under a limiter `id` (the table's seeds: the same in
    /// every process that opened the file).
    #[inline]
    pub(crate) fn key_hash(&self, id: u64, key: &[u8]) -> u64 {
        self.hasher.hash_one((id, key))
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Slots in the table.
    pub(crate) fn slots(&self) -> usize {
        self.region.slots().len()
    }

    /// Keys evicted from the table while it was full, by every process.
    pub(crate) fn evicted(&self) -> u64 {
        self.region
            .header()
            .get(H_EVICTIONS)
            .map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// Bytes of the mapping.
    pub(crate) fn bytes(&self) -> usize {
        region::file_len(self.slots()).unwrap_or(0)
    }

    /// Slots holding quota `quota` whose state is still live at `now`.
    pub(crate) fn live(&self, quota: usize, now: u64) -> usize {
        self.region
            .slots()
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&v| v != 0 && quota_of(v) == quota && !self.expired(v, now))
            .count()
    }

    /// Empties every slot of quota numbers in `quotas`.
    pub(crate) fn clear(&self, quotas: std::ops::Range<usize>) {
        for s in self.region.slots() {
            let v = s.load(Ordering::Relaxed);
            if v != 0 && quotas.contains(&quota_of(v)) {
                let _ = s.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    fn slot(&self, i: usize) -> Option<&AtomicU128> {
        self.region.slots().get(i)
    }

    fn expired(&self, v: u128, now: u64) -> bool {
        match self.codecs.get(quota_of(v)) {
            Some(c) => c.expiry(v, now) <= now,
            // A quota number this process does not know (only in a corrupt
            // file): free to take.
            None => true,
        }
    }

    /// Where quota `quota` of the key hashed `h` lives: its codec, its tag (the
    /// slot bits above the state: hash tag and quota number) and its home slot.
    fn locate(&self, quota: usize, h: u64) -> Option<(Codec, u128, usize)> {
        let codec = self.codecs.get(quota).copied()?;
        let h = mix(h ^ (quota as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let tag = (u128::from((h & ((1 << TAG_BITS) - 1)).max(1)) << TAG_SHIFT)
            | ((quota as u128) << QUOTA_SHIFT);
        // fastrange: the high bits of h pick the home slot; the tag is its low bits.
        let home = ((u128::from(h) * self.slots() as u128) >> 64) as usize;
        Some((codec, tag, home))
    }

    /// Empties quota `quota`'s slot of the key hashed `h`: whether it was held.
    pub(crate) fn remove(&self, quota: usize, h: u64) -> bool {
        let Some((_, tag, home)) = self.locate(quota, h) else {
            return false;
        };
        let cap = self.slots();
        (0..PROBE).any(|i| {
            self.slot((home + i) % cap).is_some_and(|s| {
                let v = s.load(Ordering::Acquire);
                v & ID_MASK == tag
                    && s.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
            })
        })
    }

    /// Applies `op` to quota `quota`'s state for the key hashed `h` (the key's
    /// hash mixed with the quota number), at `now`. `op` gets the current state (a
    /// fresh one for a key not held) and returns the outcome and the state to
    /// store (`None`: nothing to write). With `insert == false` a key not held is
    /// not stored (a peek, a refund). Returns `op`'s outcome.
    #[inline]
    pub(crate) fn apply<F>(
        &self,
        quota: usize,
        h: u64,
        now: u64,
        insert: bool,
        mut op: F,
    ) -> Outcome
    where
        F: FnMut(QuotaState) -> (Outcome, Option<QuotaState>),
    {
        let Some(codec) = self.codecs.get(quota).copied() else {
            return DENIED;
        };
        self.apply_bits(quota, h, now, insert, |bits| {
            let (o, new) = op(codec.unpack(bits, now));
            (o, new.map(|s| codec.pack(&s)))
        })
        .unwrap_or(DENIED)
    }

    /// The state bits of quota `quota` of the key hashed `h`, if held.
    pub(crate) fn read_bits(&self, quota: usize, h: u64, now: u64) -> Option<u128> {
        let mut held = None;
        self.apply_bits(quota, h, now, false, |bits| {
            held = Some(bits);
            ((), None)
        });
        held.filter(|&b| b != 0)
    }

    /// [`apply`](Self::apply) on the raw 80 state bits (0 for a key not held):
    /// `op` returns its result and the bits to store. `None` only when the table
    /// cannot answer (a corrupt quota number, or 1,024 rounds of interference).
    #[inline]
    pub(crate) fn apply_bits<R, F>(
        &self,
        quota: usize,
        h: u64,
        now: u64,
        insert: bool,
        mut op: F,
    ) -> Option<R>
    where
        F: FnMut(u128) -> (R, Option<u128>),
    {
        let (_, tag, home) = self.locate(quota, h)?;
        let cap = self.slots();
        let at = |i: usize| (home + i) % cap;
        let state_mask = (1u128 << codec::STATE_BITS) - 1;
        // Bounded: each round follows another process's change to this window.
        for _ in 0..1024 {
            let found = (0..PROBE).find_map(|i| {
                let v = self.slot(at(i))?.load(Ordering::Acquire);
                (v & ID_MASK == tag).then_some((i, v))
            });
            if let Some((i, mut v)) = found {
                let slot = self.slot(at(i))?;
                loop {
                    let (result, new) = op(v & state_mask);
                    let Some(new) = new else { return Some(result) };
                    let nv = tag | (new & state_mask);
                    if nv == v {
                        return Some(result);
                    }
                    match slot.compare_exchange_weak(v, nv, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return Some(result),
                        Err(current) if current & ID_MASK == tag => v = current,
                        // Evicted or reset under us: look again.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let (result, new) = op(0);
            let Some(new) = new else { return Some(result) };
            if !insert {
                return Some(result);
            }
            // The first empty or expired slot, else the live one that has spent least.
            let mut free = None;
            let mut oldest: Option<(u64, usize, u128)> = None;
            for i in 0..PROBE {
                let Some(v) = self.slot(at(i)).map(|s| s.load(Ordering::Acquire)) else {
                    continue;
                };
                if v == 0 || self.expired(v, now) {
                    free = Some((i, v));
                    break;
                }
                let score = self.codecs.get(quota_of(v)).map_or(0, |c| c.score(v, now));
                if oldest.is_none_or(|(e, _, _)| score < e) {
                    oldest = Some((score, i, v));
                }
            }
            let (i, old, evicting) = match (free, oldest) {
                (Some((i, v)), _) => (i, v, false),
                (None, Some((_, i, v))) => (i, v, true),
                (None, None) => return None,
            };
            let slot = self.slot(at(i))?;
            let nv = tag | (new & state_mask);
            if slot
                .compare_exchange(old, nv, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            if evicting && let Some(w) = self.region.header().get(H_EVICTIONS) {
                w.fetch_add(1, Ordering::Relaxed);
            }
            // Another process inserted the same key earlier in the window at the
            // same moment: give this slot back and charge that one.
            let earlier = (0..i).any(|j| {
                self.slot(at(j))
                    .is_some_and(|s| s.load(Ordering::Acquire) & ID_MASK == tag)
            });
            if earlier
                && slot
                    .compare_exchange(nv, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                continue;
            }
            return Some(result);
        }
        None
    }
}

/// The answer when the table cannot answer (only after 1,024 rounds of
/// interference, or a corrupt quota number): deny, never over-admit.
const DENIED: Outcome = Outcome {
    allowed: false,
    remaining: 0,
    retry_after: 0,
    reset_after: 0,
};

fn quota_of(v: u128) -> usize {
    ((v >> QUOTA_SHIFT) & 0xff) as usize
}

fn hash_check(hasher: &ahash::RandomState) -> u64 {
    hasher.hash_one((0u64, b"floodgate shared-memory table".as_slice()))
}
