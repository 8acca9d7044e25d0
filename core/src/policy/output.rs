//! A verdict decided into buffers the caller keeps: [`VerdictBuf`].
//!
//! [`Engine::check_request`](super::Engine::check_request) returns a fresh
//! [`Verdict`], whose identity and header values are new strings: a handful of
//! small allocations per request. A front end that decides request after
//! request (a binding's handle, a worker thread, the C ABI with a caller-owned
//! buffer) keeps one `VerdictBuf` instead, and
//! [`Engine::check_request_into`](super::Engine::check_request_into) reuses its
//! strings and vectors: once they have grown to the policy's sizes, an allowed
//! request allocates nothing (tested with a counting allocator in
//! `core/tests/alloc.rs`).

use super::{Reason, Verdict};

/// Strings kept for reuse at most (a verdict has up to 5 headers and an identity).
const SPARE: usize = 8;

/// A [`Verdict`] and the spare strings of the previous ones. Not `Sync`-shared:
/// one per thread or per handle.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictBuf {
    verdict: Verdict,
    spare: Vec<String>,
}

impl Default for VerdictBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl VerdictBuf {
    /// An empty buffer (its first uses allocate; later ones reuse).
    pub fn new() -> Self {
        Self {
            verdict: Verdict::plain(true, 200, Reason::NoRule),
            spare: Vec::with_capacity(SPARE),
        }
    }

    /// The last verdict decided into this buffer.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// The last verdict, owned.
    pub fn into_verdict(self) -> Verdict {
        self.verdict
    }

    /// Clears the verdict for the next decision, keeping its strings and the
    /// header vector's capacity.
    pub(super) fn clear(&mut self) {
        let v = &mut self.verdict;
        let identity = v.identity.take();
        let headers = v.headers.drain(..).map(|(_, s)| s);
        for mut s in identity.into_iter().chain(headers) {
            if self.spare.len() < SPARE {
                s.clear();
                self.spare.push(s);
            }
        }
        let headers = std::mem::take(&mut v.headers);
        *v = Verdict {
            headers,
            ..Verdict::plain(true, 200, Reason::NoRule)
        };
    }

    /// Replaces the verdict with `v`, keeping this buffer's header vector (and
    /// its capacity): allocation-free when `v` has no headers and its strings
    /// came from [`string`](Self::string).
    pub(super) fn set(&mut self, mut v: Verdict) {
        self.clear();
        let mut headers = std::mem::take(&mut self.verdict.headers);
        headers.append(&mut v.headers);
        self.verdict = Verdict { headers, ..v };
    }

    /// The verdict, to fill in place after [`clear`](Self::clear) (an allowed
    /// request: `allowed`, `status` 200 and no headers yet, as cleared).
    pub(super) fn verdict_mut(&mut self) -> &mut Verdict {
        &mut self.verdict
    }

    /// An empty string, reused if one is spare.
    pub(super) fn string(&mut self) -> String {
        self.spare.pop().unwrap_or_default()
    }

    /// The verdict's header list and the spare strings, for rendering headers.
    pub(super) fn headers(&mut self) -> (&mut Vec<(&'static str, String)>, &mut Vec<String>) {
        (&mut self.verdict.headers, &mut self.spare)
    }
}
