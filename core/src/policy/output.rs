//! A verdict decided into buffers the caller keeps: [`VerdictBuf`].
//!
//! [`Engine::check_request`](super::Engine::check_request) returns a fresh
//! [`Verdict`], whose identity and header values are new strings: a handful of
//! small allocations per request. A front end that decides request after
//! request (a binding's handle, a worker thread, the C ABI with a caller-owned
//! buffer) keeps one `VerdictBuf` instead, and
//! [`Engine::check_request_into`](super::Engine::check_request_into) reuses its
//! strings and vectors: once they have grown to the policy's sizes, an allowed
//! request allocates nothing, nor does a 429 or a ban's answer (tested with a
//! counting allocator in `core/tests/alloc.rs`).

use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use super::{Policy, Reason, TokenProblem, Verdict};
use crate::Decision;

/// Strings kept for reuse at most (a verdict has up to 5 headers and an identity).
const SPARE: usize = 8;

/// A [`Verdict`] and the spare strings of the previous ones. Not `Sync`-shared:
/// one per thread or per handle.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictBuf {
    verdict: Verdict,
    spare: Vec<String>,
    /// The last verdict's rule name, kept by `clear` for [`rule_name`](Self::rule_name).
    last_rule: Option<Arc<str>>,
    /// The policy of the engine this buffer is bound to
    /// ([`Engine::verdict_buf`](super::Engine::verdict_buf)), if it is.
    pub(super) policy: Option<PolicyCache>,
}

/// The current policy of the engine a buffer is bound to: `arc_swap::Cache`
/// over the engine's `ArcSwap`. A check through it reads the engine's
/// pointer (a plain load) and reuses the `Arc` it holds while no reload has
/// replaced it, where `ArcSwap::load` made two atomic read-modify-writes per
/// request (a debt slot taken and paid back; benches/README.md). It keeps
/// that policy (its tables, its Redis connections) alive until a reload
/// replaces it and the buffer decides again, or the buffer is dropped: so
/// only buffers that live as long as their engine are bound (a per-thread
/// buffer would keep a freed engine's policy until the thread ends).
#[derive(Clone)]
pub(super) struct PolicyCache(pub(super) Cache<Arc<ArcSwap<Policy>>, Arc<Policy>>);

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyCache")
    }
}

/// A cache, not part of the buffer's value: buffers compare by their verdicts.
impl PartialEq for PolicyCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
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
            last_rule: None,
            policy: None,
        }
    }

    /// An empty buffer bound to an engine's policy (`Engine::verdict_buf`).
    pub(super) fn bound(policy: PolicyCache) -> Self {
        Self {
            policy: Some(policy),
            ..Self::new()
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
        // Field by field (every field named: a new one must be cleared here),
        // keeping the strings for reuse, instead of building a whole verdict.
        let Verdict {
            allowed,
            status,
            reason,
            retry_after,
            headers,
            rule,
            limit,
            remaining,
            reset_after,
            identity,
            token_problem,
            authenticated,
            settlement,
        } = &mut self.verdict;
        let spare = &mut self.spare;
        let mut keep = |mut s: String| {
            if spare.len() < SPARE {
                s.clear();
                spare.push(s);
            }
        };
        if let Some(s) = identity.take() {
            keep(s);
        }
        for (_, s) in headers.drain(..) {
            keep(s);
        }
        *allowed = true;
        *status = 200;
        *reason = Reason::NoRule;
        *retry_after = std::time::Duration::ZERO;
        if let Some(r) = rule.take() {
            self.last_rule = Some(r);
        }
        *limit = 0;
        *remaining = 0;
        *reset_after = std::time::Duration::ZERO;
        *token_problem = None;
        *authenticated = false;
        *settlement = None;
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

    /// `name` for the verdict's `rule`: the last verdict's when it is the same
    /// rule, so that the usual request touches no reference count (one that
    /// every thread's requests on the rule would share, passing its cache
    /// line between cores).
    pub(super) fn rule_name(&mut self, name: &Arc<str>) -> Arc<str> {
        match self.last_rule.take() {
            Some(held) if Arc::ptr_eq(&held, name) => held,
            _ => Arc::clone(name),
        }
    }

    /// An empty string, reused if one is spare.
    pub(super) fn string(&mut self) -> String {
        self.spare.pop().unwrap_or_default()
    }

    /// `key` as the verdict's identity, in a reused string. Keys are built
    /// from text, so UTF-8 but for a bug: `from_utf8` costs two thirds of
    /// `from_utf8_lossy` on a short key (100 vs 145 instructions).
    pub(super) fn identity(&mut self, key: &[u8]) -> String {
        let mut identity = self.string();
        match std::str::from_utf8(key) {
            Ok(text) => identity.push_str(text),
            Err(_) => identity.push_str(&String::from_utf8_lossy(key)),
        }
        identity
    }

    /// Fills the cleared verdict with a rule's decision `d` on `key`: the
    /// rule's `name` (see [`rule_name`](Self::rule_name)), `d`'s numbers, `key`
    /// as the identity, the token's state. The caller sets the rest (allowed,
    /// status, reason...).
    #[inline]
    pub(super) fn decided(
        &mut self,
        name: Option<&Arc<str>>,
        d: &Decision,
        key: &[u8],
        token_problem: Option<TokenProblem>,
        authenticated: bool,
    ) -> &mut Verdict {
        let rule = name.map(|n| self.rule_name(n));
        let identity = self.identity(key);
        let v = &mut self.verdict;
        v.rule = rule;
        v.limit = d.limit;
        v.remaining = d.remaining;
        v.reset_after = d.reset_after;
        v.identity = Some(identity);
        v.token_problem = token_problem;
        v.authenticated = authenticated;
        v
    }

    /// The verdict's header list and the spare strings, for rendering headers.
    pub(super) fn headers(&mut self) -> (&mut Vec<(&'static str, String)>, &mut Vec<String>) {
        (&mut self.verdict.headers, &mut self.spare)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::policy::TokenProblem;

    #[test]
    fn clear_leaves_the_plain_verdict_and_keeps_the_strings() {
        let mut buf = VerdictBuf::new();
        buf.set(Verdict {
            retry_after: Duration::from_secs(3),
            headers: vec![("RateLimit", "x".into()), ("Retry-After", "3".into())],
            rule: Some(Arc::from("login")),
            limit: 5,
            remaining: 0,
            reset_after: Duration::from_secs(9),
            identity: Some("203.0.113.7".into()),
            token_problem: Some(TokenProblem::Expired),
            authenticated: true,
            ..Verdict::plain(false, 429, Reason::RateLimited)
        });
        buf.clear();
        assert_eq!(buf.verdict(), &Verdict::plain(true, 200, Reason::NoRule));
        assert_eq!(buf.spare.len(), 3, "the identity and both header values");
        assert!(buf.spare.iter().all(String::is_empty));
    }

    #[test]
    fn the_same_rule_name_is_reused_without_a_new_reference() {
        let (login, api): (Arc<str>, Arc<str>) = (Arc::from("login"), Arc::from("api"));
        let mut buf = VerdictBuf::new();
        buf.set(Verdict {
            rule: Some(Arc::clone(&login)),
            ..Verdict::plain(true, 200, Reason::Allowed)
        });
        buf.clear();
        assert_eq!(buf.verdict().rule, None);
        assert_eq!(Arc::strong_count(&login), 2, "kept by the buffer");
        let again = buf.rule_name(&login);
        assert!(Arc::ptr_eq(&again, &login));
        assert_eq!(Arc::strong_count(&login), 2, "moved back out, not cloned");
        buf.verdict_mut().rule = Some(again);
        buf.clear();
        let other = buf.rule_name(&api);
        assert!(Arc::ptr_eq(&other, &api));
        assert_eq!(Arc::strong_count(&login), 1, "the other name was let go");
    }
}
