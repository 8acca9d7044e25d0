//! Requests from front ends: the list of headers a policy reads, and a request
//! whose parts the caller owns ([`OwnedRequest`]), for bindings that convert
//! from their language's values or hand the request to another thread. Every
//! front end builds its request here, so the client address is parsed, and bad
//! input reported, one way.

use std::net::IpAddr;
use std::time::Duration;

use super::{Policy, Request, Verdict, parse_client_ip};
use crate::error::Result;

/// Headers decided without a heap allocation for the borrowed view.
const STACK_HEADERS: usize = 16;

/// A request with owned parts. Build it with [`OwnedRequest::new`], add the
/// headers the engine reads ([`Engine::request_headers`](super::Engine::request_headers); others are ignored
/// anyway), and decide it with [`Engine::check_owned`](super::Engine::check_owned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedRequest {
    /// HTTP method.
    pub method: String,
    /// Request target as received.
    pub path: String,
    /// The client's address, parsed.
    pub client_ip: Option<IpAddr>,
    /// Header (name, value) pairs; names in any case. A repeated header is
    /// several pairs (the first is the one read) or one value joined with `, `.
    pub headers: Vec<(String, String)>,
    /// The whole body, for rules keyed by a body field (see [`Request::body`]).
    pub body: Option<Vec<u8>>,
}

impl OwnedRequest {
    /// A request without headers. `client_ip` is text as front ends get it
    /// (`::ffff:a.b.c.d` and zone ids accepted; see [`parse_client_ip`]).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`](crate::Error::InvalidRequest) with field
    /// `client_ip` for text that is no IP address.
    pub fn new(
        method: impl Into<String>,
        path: impl Into<String>,
        client_ip: Option<&str>,
    ) -> Result<Self> {
        Ok(Self {
            method: method.into(),
            path: path.into(),
            client_ip: client_ip.map(parse_client_ip).transpose()?,
            headers: Vec::new(),
            body: None,
        })
    }

    /// Adds a header.
    pub fn header(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Runs `f` on the borrowed view of this request (on the stack for up to 16
    /// headers).
    pub fn with_view<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        let view = |headers: &[(&str, &str)]| {
            f(&Request {
                method: &self.method,
                path: &self.path,
                client_ip: self.client_ip,
                headers,
                body: self.body.as_deref(),
            })
        };
        if self.headers.len() <= STACK_HEADERS {
            let mut refs = [("", ""); STACK_HEADERS];
            for (slot, (k, v)) in refs.iter_mut().zip(&self.headers) {
                *slot = (k.as_str(), v.as_str());
            }
            view(refs.get(..self.headers.len()).unwrap_or_default())
        } else {
            let refs: Vec<(&str, &str)> = self
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            view(&refs)
        }
    }
}

impl Policy {
    /// See [`Engine::reads_body`](super::Engine::reads_body).
    pub(super) fn reads_body(&self, method: &str, path: &str) -> bool {
        if !self.reads_body {
            return false;
        }
        // Most requests of a policy with such a rule (a login's POST) are
        // told by their method alone, before the path is normalised.
        let mut rules = self
            .rules
            .iter()
            .filter(|r| r.key.reads_body() && r.matcher.takes_method(method))
            .peekable();
        if rules.peek().is_none() {
            return false;
        }
        let path = super::path::normalize(path, !self.case_sensitive_paths);
        let segments = super::matcher::segments(&path);
        rules.any(|r| r.matcher.matches(method, &segments))
    }

    /// Reads, once each, the body fields that the rules a `method` request
    /// with these path `segments` meets key on. `Err` if the body is
    /// ambiguous for one (named twice; a list, an object or a boolean; an
    /// encoding or a multipart shape the frameworks' parsers read differently;
    /// a type given twice or a compressed body: see `super::body`): such a
    /// request is refused (400), since the app could read a name the rule
    /// does not count.
    pub(super) fn read_body_fields<'a>(
        &'a self,
        method: &str,
        segments: &[&str],
        headers: &[(&str, &str)],
        body: Option<&'a [u8]>,
    ) -> std::result::Result<super::body::ReadFields<'a>, ()> {
        let mut read = super::body::ReadFields::new();
        let Some(body) = body else {
            return Ok(read);
        };
        let content_type = super::body::content_type(headers)?;
        for rule in &self.rules {
            if !rule.key.reads_body() || !rule.matcher.matches(method, segments) {
                continue;
            }
            for name in rule.key.body_fields() {
                if read.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                match super::body::field(body, content_type, name) {
                    super::body::Field::Ambiguous => return Err(()),
                    value => read.push((name, value)),
                }
            }
        }
        Ok(read)
    }

    /// Decides an [`OwnedRequest`] now, or at `now` (Unix time) as
    /// [`check_request_at`](Engine::check_request_at).
    ///
    /// # Errors
    /// As [`check_request`](Engine::check_request).
    pub fn check_owned(&self, request: &OwnedRequest, now: Option<Duration>) -> Result<Verdict> {
        request.with_view(|req| match now {
            Some(t) => self.check_request_at(req, t),
            None => self.check_request(req),
        })
    }

    /// Decides an [`OwnedRequest`] now, as
    /// [`check_request_async`](Engine::check_request_async): for a front end
    /// that hands the request to a tokio task.
    ///
    /// # Errors
    /// As [`check_request`](Engine::check_request).
    pub async fn check_owned_async(&self, request: &OwnedRequest) -> Result<Verdict> {
        let headers: smallvec::SmallVec<[(&str, &str); STACK_HEADERS]> = request
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let req = Request {
            method: &request.method,
            path: &request.path,
            client_ip: request.client_ip,
            headers: &headers,
            body: request.body.as_deref(),
        };
        self.check_request_async(&req).await
    }
}

/// The header names a policy reads, lower case, each once, in a stable order.
pub(super) fn read_headers<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let name = name.trim().to_ascii_lowercase();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}
