//! Bearer-token verification with `jsonwebtoken`.
//!
//! - Only algorithms on the allow-list are accepted; `none` cannot even be parsed
//!   by `jsonwebtoken`, so it is always rejected.
//! - Every key is bound to one algorithm when the policy is loaded, and a token is
//!   only checked with a key of its own algorithm: an HS256 token "signed" with an
//!   RSA public key finds no HMAC key and fails (no algorithm confusion).
//! - `jsonwebtoken` checks the signature, `iss` and `aud`. `exp` and `nbf` are
//!   checked here, against the engine's time (so replays are deterministic), and
//!   must be JSON numbers: a string `exp` is rejected, not skipped.
//! - Verified tokens are cached until they expire, in a bounded store keyed by a
//!   seeded hash of the token; a hit compares the whole token, so a hash collision
//!   can never lend one token's identity to another.
//! - Failed verifications are limited per client network (the IPv6 prefix of
//!   `ipv6_prefix`, so one /64 is one client), so a flood of forged tokens costs
//!   at most that many signature checks per second. A check is charged before it
//!   runs and given back when the token verifies: a client sending valid tokens
//!   never spends the budget of others behind the same address. Requests without
//!   an address share one budget of their own. Past the budget, a token not in
//!   the cache is not checked at all, and its request is answered 429.
//! - Tokens longer than [`MAX_TOKEN_BYTES`] are malformed before any parsing.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

use super::config::{Path, Source};
use super::identity::{Claims, header};
use crate::limiter::Limiter;
use crate::quota::Quota;
use crate::store::memory::MemoryStore;
use std::path::Path as FsPath;

/// Why a token was not accepted. Never an error: the request goes on as anonymous
/// (or gets 401, per `on_invalid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenProblem {
    /// Not three base64url parts with JSON inside, or an unparsable header (this
    /// includes `alg: none`).
    Malformed,
    /// The header's algorithm is not on the allow-list.
    AlgorithmNotAllowed,
    /// No configured key for this `kid` and algorithm.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `exp` or `nbf` is not a number.
    BadTimeClaim,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not include the configured audience.
    WrongAudience,
    /// A required claim is missing.
    MissingClaim,
    /// Too many failed signature checks from this client's network: not even
    /// verified. The request is answered 429, whatever `on_invalid` says.
    RateLimited,
}

crate::codes::codes!(TokenProblem {
    Malformed => "malformed",
    AlgorithmNotAllowed => "algorithm_not_allowed",
    UnknownKey => "unknown_key",
    BadSignature => "bad_signature",
    Expired => "expired",
    NotYetValid => "not_yet_valid",
    BadTimeClaim => "bad_time_claim",
    WrongIssuer => "wrong_issuer",
    WrongAudience => "wrong_audience",
    MissingClaim => "missing_claim",
    RateLimited => "rate_limited",
});

impl TokenProblem {
    pub(crate) fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// Longer bearer tokens are refused unparsed (a signed JWT with a handful of
/// claims is well under 2 KiB; proxies commonly cap a header at 8 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What the request's token amounts to.
#[derive(Debug, Clone)]
pub(crate) enum TokenCheck {
    Absent,
    Valid(Arc<Claims>),
    Invalid(TokenProblem),
    /// Not in the cache, and the client's network spent its verification
    /// budget: not verified, so neither valid nor invalid. The request is
    /// answered 429 after this wait (whatever `on_invalid` says): a token
    /// nobody checked must not get a 401 (a client would drop a good token),
    /// nor go on as anonymous while the app may accept it (it would be
    /// served on the anonymous quota instead of its subject's).
    Throttled(Duration),
}

/// A key bound to one algorithm.
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// A verified token, remembered until it expires.
struct Cached {
    token: Box<str>,
    claims: Arc<Claims>,
    exp: f64,
    nbf: Option<f64>,
}

/// The verifier built from `[jwt]`.
pub(crate) struct JwtVerifier {
    keys: Vec<VerifyKey>,
    allowed: Vec<Algorithm>,
    header: String,
    leeway_s: f64,
    required: Vec<String>,
    cache: MemoryStore<Cached>,
    hasher: ahash::RandomState,
    verify_limit: Option<Limiter>,
    pub(crate) reject_invalid: bool,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("allowed", &self.allowed)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// A key to load: from a PEM file, a JWKS entry or the HMAC secret.
pub(crate) enum KeySource {
    Secret(Vec<u8>),
    Pem(Vec<u8>),
    Jwk(Box<jsonwebtoken::jwk::Jwk>),
}

/// Everything [`JwtVerifier::new`] needs, already read from files and the environment.
pub(crate) struct JwtSetup {
    pub allowed: Vec<Algorithm>,
    pub issuer: Option<Vec<String>>,
    pub audience: Option<Vec<String>>,
    pub leeway_s: u64,
    pub required: Vec<String>,
    pub header: String,
    pub keys: Vec<(Option<String>, Algorithm, KeySource)>,
    pub cache_size: usize,
    pub verify_limit: Option<Quota>,
    pub reject_invalid: bool,
}

/// The family of an algorithm: which kind of key it verifies with.
fn family(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => "hmac",
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => "rsa",
        ES256 | ES384 => "ec",
        EdDSA => "ed",
        // Algorithms added by later jsonwebtoken versions: no key of ours verifies them.
        _ => "unsupported",
    }
}

impl JwtVerifier {
    /// Builds the verifier; errors are messages for the config error.
    pub(crate) fn new(setup: JwtSetup) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (kid, alg, source) in setup.keys {
            if !setup.allowed.contains(&alg) {
                return Err(format!("key algorithm {alg:?} is not in jwt.algorithms"));
            }
            let key = match (&source, family(alg)) {
                (KeySource::Secret(s), "hmac") => DecodingKey::from_secret(s),
                (KeySource::Pem(p), "rsa") => {
                    DecodingKey::from_rsa_pem(p).map_err(|e| format!("bad RSA PEM: {e}"))?
                }
                (KeySource::Pem(p), "ec") => {
                    DecodingKey::from_ec_pem(p).map_err(|e| format!("bad EC PEM: {e}"))?
                }
                (KeySource::Pem(p), "ed") => {
                    DecodingKey::from_ed_pem(p).map_err(|e| format!("bad Ed25519 PEM: {e}"))?
                }
                (KeySource::Jwk(j), _) => {
                    DecodingKey::from_jwk(j).map_err(|e| format!("bad JWK: {e}"))?
                }
                _ => {
                    return Err(format!(
                        "a {} key cannot verify {alg:?}",
                        if matches!(source, KeySource::Secret(_)) {
                            "secret"
                        } else {
                            "public"
                        }
                    ));
                }
            };
            let mut validation = Validation::new(alg);
            validation.algorithms = vec![alg];
            validation.validate_exp = false; // checked in `times`, on the engine's clock
            validation.validate_nbf = false;
            validation.leeway = 0;
            validation.required_spec_claims = HashSet::new();
            if let Some(iss) = &setup.issuer {
                validation.set_issuer(iss);
                validation.required_spec_claims.insert("iss".into());
            }
            match &setup.audience {
                Some(aud) => {
                    validation.set_audience(aud);
                    validation.required_spec_claims.insert("aud".into());
                }
                None => validation.validate_aud = false,
            }
            keys.push(VerifyKey {
                kid,
                alg,
                key,
                validation,
            });
        }
        if keys.is_empty() {
            return Err("no keys: set secret_env, keys or jwks_file".into());
        }
        let verify_limit = match setup.verify_limit {
            Some(q) => Some(
                Limiter::builder()
                    .quota(q)
                    .max_keys(100_000)
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        Ok(Self {
            keys,
            allowed: setup.allowed,
            header: setup.header.to_ascii_lowercase(),
            leeway_s: setup.leeway_s as f64,
            required: setup.required,
            cache: MemoryStore::new(setup.cache_size.max(16), 16, u64::MAX),
            hasher: ahash::RandomState::new(),
            verify_limit,
            reject_invalid: setup.reject_invalid,
        })
    }

    /// `exp` (required) and `nbf` (optional) as numbers, or the problem.
    fn times(claims: &Claims) -> Result<(f64, Option<f64>), TokenProblem> {
        let number = |v: &Value| {
            v.as_f64()
                .filter(|f| f.is_finite())
                .ok_or(TokenProblem::BadTimeClaim)
        };
        let exp = number(claims.get("exp").ok_or(TokenProblem::MissingClaim)?)?;
        let nbf = claims.get("nbf").map(number).transpose()?;
        Ok((exp, nbf))
    }

    fn in_time(&self, exp: f64, nbf: Option<f64>, now_s: f64) -> Result<(), TokenProblem> {
        if now_s >= exp + self.leeway_s {
            return Err(TokenProblem::Expired);
        }
        if nbf.is_some_and(|nbf| now_s + self.leeway_s < nbf) {
            return Err(TokenProblem::NotYetValid);
        }
        Ok(())
    }

    /// The request header carrying the token, lower case.
    pub(crate) fn header(&self) -> &str {
        &self.header
    }

    /// Finds and checks the request's bearer token at `now` (Unix time). `ip` is
    /// the client's address already masked to its network.
    pub(crate) fn check(
        &self,
        headers: &[(&str, &str)],
        ip: Option<IpAddr>,
        now: Duration,
    ) -> TokenCheck {
        let Some(value) = header(headers, &self.header) else {
            return TokenCheck::Absent;
        };
        let token = match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return TokenCheck::Absent,
        };
        if token.is_empty() {
            return TokenCheck::Absent;
        }
        if token.len() > MAX_TOKEN_BYTES {
            return TokenCheck::Invalid(TokenProblem::Malformed);
        }
        let now_s = now.as_secs_f64();
        let fp = std::hash::BuildHasher::hash_one(&self.hasher, token);
        let hit = self.cache.read(fp, |c| {
            c.filter(|c| &*c.token == token)
                .map(|c| (c.claims.clone(), c.exp, c.nbf))
        });
        if let Some((claims, exp, nbf)) = hit {
            return match self.in_time(exp, nbf, now_s) {
                Ok(()) => TokenCheck::Valid(claims),
                Err(p) => TokenCheck::Invalid(p),
            };
        }
        let octets = match ip {
            Some(IpAddr::V4(v4)) => Some(v4.to_ipv6_mapped().octets()),
            Some(IpAddr::V6(v6)) => Some(v6.octets()),
            None => None,
        };
        // Without an address, the one key rules use for it (1 byte: never one
        // of the 16-byte address keys).
        let budget_key: &[u8] = octets
            .as_ref()
            .map_or(super::identity::NO_ADDRESS, |o| o.as_slice());
        if let Some(limit) = &self.verify_limit
            && let Ok(d) = limit.check_at(budget_key, 1, now)
            && !d.allowed
        {
            return TokenCheck::Throttled(d.retry_after);
        }
        match self.verify(token, now_s) {
            Ok((claims, exp, nbf)) => {
                if let Some(limit) = &self.verify_limit {
                    // Only failures spend the budget.
                    let _ = limit.refund_at(budget_key, 1, now);
                }
                let claims = Arc::new(claims);
                let entry = Cached {
                    token: token.into(),
                    claims: claims.clone(),
                    exp,
                    nbf,
                };
                self.cache.with(
                    fp,
                    u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
                    || entry,
                    |_| (),
                );
                TokenCheck::Valid(claims)
            }
            Err(p) => TokenCheck::Invalid(p),
        }
    }

    fn verify(&self, token: &str, now_s: f64) -> Result<(Claims, f64, Option<f64>), TokenProblem> {
        use jsonwebtoken::errors::ErrorKind as K;
        let header = decode_header(token).map_err(|_| TokenProblem::Malformed)?;
        if !self.allowed.contains(&header.alg) {
            return Err(TokenProblem::AlgorithmNotAllowed);
        }
        // A key configured with a kid serves only that kid; one without serves its
        // algorithm whatever the token's kid. An exact kid match wins.
        let of_alg = || self.keys.iter().filter(|k| k.alg == header.alg);
        let key = of_alg()
            .find(|k| k.kid.is_some() && k.kid == header.kid)
            .or_else(|| of_alg().find(|k| k.kid.is_none()))
            .or_else(|| of_alg().find(|_| header.kid.is_none()))
            .ok_or(TokenProblem::UnknownKey)?;
        let data =
            decode::<Claims>(token, &key.key, &key.validation).map_err(|e| match e.kind() {
                K::InvalidSignature => TokenProblem::BadSignature,
                K::InvalidIssuer => TokenProblem::WrongIssuer,
                K::InvalidAudience => TokenProblem::WrongAudience,
                K::MissingRequiredClaim(_) => TokenProblem::MissingClaim,
                K::InvalidAlgorithm => TokenProblem::AlgorithmNotAllowed,
                K::InvalidClaimFormat(_) => TokenProblem::BadTimeClaim,
                _ => TokenProblem::Malformed,
            })?;
        let claims = data.claims;
        let (exp, nbf) = Self::times(&claims)?;
        self.in_time(exp, nbf, now_s)?;
        if self.required.iter().any(|c| !claims.contains_key(c)) {
            return Err(TokenProblem::MissingClaim);
        }
        Ok((claims, exp, nbf))
    }
}

/// Parses an algorithm name from the policy (`none` is never one).
pub(crate) fn algorithm(name: &str) -> Result<Algorithm, String> {
    if name.trim().eq_ignore_ascii_case("none") {
        return Err("\"none\" is never allowed".into());
    }
    name.trim()
        .parse()
        .map_err(|_| format!("unknown JWT algorithm {name:?}"))
}

impl JwtVerifier {
    /// The verifier of a policy's `[jwt]` section: keys read from files and the
    /// environment (relative to `dir`), each bound to one algorithm.
    pub(super) fn from_config(
        j: &super::config::JwtConfig,
        p: &Path,
        dir: &FsPath,
        source: &Source<'_>,
    ) -> crate::Result<JwtVerifier> {
        let err = |path: &Path, msg: String| source.error(path, msg);
        let mut allowed = Vec::new();
        for (i, a) in j.algorithms.iter().enumerate() {
            allowed.push(algorithm(a).map_err(|m| err(&p.key("algorithms").index(i), m))?);
        }
        if allowed.is_empty() {
            return Err(err(
                &p.key("algorithms"),
                "list at least one algorithm".into(),
            ));
        }
        let mut keys = Vec::new();
        let secret = match (&j.secret_env, &j.secret_file) {
            (Some(_), Some(_)) => return Err(err(&p.key("secret_file"), "give secret_env or secret_file, not both".into())),
            (Some(var), None) => Some((
                "secret_env",
                std::env::var(var).ok().filter(|s| !s.is_empty()).ok_or_else(|| {
                    err(&p.key("secret_env"), format!("environment variable {var} is not set (HMAC secrets are never inline)"))
                })?,
            )),
            (None, Some(file)) => {
                let file = dir.join(file);
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| err(&p.key("secret_file"), format!("cannot read {}: {e}", file.display())))?;
                Some(("secret_file", text.trim_end_matches(['\r', '\n']).to_string()))
            }
            (None, None) => None,
        };
        if let Some((field, secret)) = secret {
            if secret.len() < 32 {
                return Err(err(
                    &p.key(field),
                    "the HMAC secret must be at least 32 bytes".into(),
                ));
            }
            let hmac: Vec<_> = allowed
                .iter()
                .copied()
                .filter(|a| jwt_family_is_hmac(*a))
                .collect();
            if hmac.is_empty() {
                return Err(err(
                    &p.key(field),
                    "a secret needs an HS256/HS384/HS512 algorithm in jwt.algorithms".into(),
                ));
            }
            for alg in hmac {
                keys.push((None, alg, KeySource::Secret(secret.as_bytes().to_vec())));
            }
        }
        for (i, k) in j.keys.iter().enumerate() {
            let kp = p.key("keys").index(i);
            let alg = algorithm(&k.algorithm).map_err(|m| err(&kp.key("algorithm"), m))?;
            if jwt_family_is_hmac(alg) {
                return Err(err(
                    &kp.key("algorithm"),
                    "HMAC keys come from secret_env, not files".into(),
                ));
            }
            let file = dir.join(&k.pem_file);
            let pem = std::fs::read(&file).map_err(|e| {
                err(
                    &kp.key("pem_file"),
                    format!("cannot read key file {}: {e}", file.display()),
                )
            })?;
            keys.push((k.kid.clone(), alg, KeySource::Pem(pem)));
        }
        if let Some(jwks) = &j.jwks_file {
            let file = dir.join(jwks);
            let text = std::fs::read_to_string(&file).map_err(|e| {
                err(
                    &p.key("jwks_file"),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
                .map_err(|e| err(&p.key("jwks_file"), format!("not a JWKS: {e}")))?;
            for (i, key) in set.keys.into_iter().enumerate() {
                if matches!(
                    key.algorithm,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
                ) {
                    return Err(err(
                        &p.key("jwks_file"),
                        format!(
                            "key {i} is a symmetric (kty \"oct\") key: a JWKS file holds public \
                             keys only; give an HMAC secret with secret_env or secret_file"
                        ),
                    ));
                }
                let alg = key
                    .common
                    .key_algorithm
                    .ok_or_else(|| {
                        err(
                            &p.key("jwks_file"),
                            format!("key {i} has no \"alg\": each key must name its algorithm"),
                        )
                    })
                    .and_then(|a| {
                        algorithm(&format!("{a:?}"))
                            .map_err(|m| err(&p.key("jwks_file"), format!("key {i}: {m}")))
                    })?;
                keys.push((
                    key.common.key_id.clone(),
                    alg,
                    KeySource::Jwk(Box::new(key)),
                ));
            }
        }
        let verify_limit = match j.verify_limit.as_deref() {
            None | Some("off") => None,
            Some(q) => Some(
                q.parse::<Quota>()
                    .map_err(|e| err(&p.key("verify_limit"), e.to_string()))?,
            ),
        };
        let reject_invalid = j.on_invalid == super::config::OnInvalid::Reject;
        JwtVerifier::new(JwtSetup {
            allowed,
            issuer: j.issuer.as_ref().map(super::config::OneOrMany::to_vec),
            audience: j.audience.as_ref().map(super::config::OneOrMany::to_vec),
            leeway_s: j.leeway_s,
            required: j.required_claims.clone(),
            header: j.header.clone(),
            keys,
            cache_size: j.cache_size,
            verify_limit,
            reject_invalid,
        })
        .map_err(|m| err(p, m))
    }
}

fn jwt_family_is_hmac(alg: jsonwebtoken::Algorithm) -> bool {
    matches!(
        alg,
        jsonwebtoken::Algorithm::HS256
            | jsonwebtoken::Algorithm::HS384
            | jsonwebtoken::Algorithm::HS512
    )
}
