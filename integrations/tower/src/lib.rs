//! A [`tower`](https://docs.rs/tower) layer that asks a Floodgate policy
//! engine about every request, for Rust services on axum, hyper or tonic.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//!
//! use axum::{Router, routing::get};
//! use floodgate::policy::Engine;
//! use floodgate_tower::FloodgateLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Arc::new(Engine::from_path("policy.toml")?);
//! let app = Router::new()
//!     .route("/api/items", get(|| async { "items" }))
//!     .layer(FloodgateLayer::new(engine));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // ConnectInfo gives the layer the client's address.
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! **The client's address** is the socket peer, read from the request's
//! extensions: axum's `ConnectInfo<SocketAddr>` (feature `axum`, on by
//! default), a [`ClientAddr`] a hyper or tonic server inserts, or a bare
//! `SocketAddr`. Behind a proxy, [`FloodgateLayer::trusted_proxies`] applies
//! the rules every Floodgate front end shares ([`TrustedProxies`]): the
//! forwarding header is believed only from those proxies. A request without a
//! peer address (a server on a Unix socket) has no client address, so it meets
//! IP-keyed rules on the one key `-`, unless `"unix:"` is among the trusted
//! proxies: then its proxy's header names the client.
//!
//! **Warnings.** Within its first 1,000 requests the layer warns once each,
//! through [`tracing`](https://docs.rs/tracing) at WARN (field `code`), of
//! two deployments that defeat every IP-keyed rule: requests that arrive with
//! no client address (`ERR_FG_NO_CLIENT_ADDRESS`: axum served without
//! `into_make_service_with_connect_info`, a hyper server that inserts no
//! [`ClientAddr`], a Unix socket whose proxy is not trusted), where all
//! clients share one key; and a forwarding header from a private or loopback
//! peer that is not a trusted proxy (`ERR_FG_UNTRUSTED_PROXY`), where all
//! clients behind that proxy share its address. The Python and Node
//! middleware warn of the same. [`FloodgateLayer::validate`] turns them off.
//!
//! **Request bodies.** A rule keyed by a body field (`key = "body:username"`)
//! needs [`FloodgateBodyLayer`] outside this layer: it reads the body of the
//! requests such a rule meets and passes it in (a [`ReadBody`] extension),
//! for services whose request body is made from bytes (axum's `Body`).
//! Without it a request with a body that such a rule meets is refused (400:
//! the handler's extractor could read a name the rule never counted) and
//! warned of once (`ERR_FG_NO_BODY`, whatever `validate` says).
//!
//! **Answers.** A denial is answered here, without calling the service: the
//! verdict's status (429, 403, 401), its headers (`Retry-After`, `RateLimit`,
//! `RateLimit-Policy`, `WWW-Authenticate`) and the engine's JSON body. An
//! allowed response gets the rate-limit headers added. A request the engine
//! cannot use (an unparsable method) is 400.
//!
//! **Settlement** (rules with `count`, `cost_from = "response"` or
//! `max_in_flight`): the response body is wrapped, and the verdict settled when
//! the body has been sent (with the response's status), when it fails (500) or
//! when it is dropped unsent (499: the client went away). The real cost comes
//! from a [`FloodgateCost`] response extension or the `Floodgate-Cost` response
//! header, which is removed.
//!
//! **Redis.** On an engine whose rules live in Redis ([`Engine::may_block`]),
//! checks and settlements run on tokio's blocking pool, so a slow Redis never
//! stalls the runtime's workers; in memory and shared memory they run inline
//! (a few hundred nanoseconds).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
pub use floodgate::policy::TrustedProxies;
use floodgate::policy::{
    Engine, MAX_BODY_BYTES, OwnedRequest, RESPONSE_HEADERS, Request, Settle, Settlement, Verdict,
    VerdictBuf, denial_body, is_proxy_address,
};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use smallvec::SmallVec;

/// The client's socket address, as a request extension (for servers that do
/// not use axum's `ConnectInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The real cost of a request, set by the handler as a response extension,
/// for rules with `cost_from = "response"` (or the `Floodgate-Cost` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodgateCost(pub u64);

/// The response header a handler may set to report the real cost (removed
/// before the response leaves).
pub const COST_HEADER: &str = "floodgate-cost";

/// Builds [`Floodgate`] services around an engine.
#[derive(Debug, Clone)]
pub struct FloodgateLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
#[doc(hidden)]
pub struct Shared {
    engine: Arc<Engine>,
    proxies: TrustedProxies,
    forwarded: Option<HeaderName>,
    /// The request headers the policy reads (the rest cannot change a verdict).
    wanted: Box<[HeaderName]>,
    /// Every header a verdict may carry, parsed once.
    names: [HeaderName; RESPONSE_HEADERS.len()],
    blocking: bool,
    /// Whether to warn of the deployments that defeat IP-keyed rules.
    validate: bool,
    /// Requests left to look at for them (0: done, or off).
    validate_left: AtomicU32,
    warned_no_address: AtomicBool,
    warned_untrusted: AtomicBool,
    /// Whether the policy may key a rule on a body field: it then reads the
    /// content type, and a reload cannot add a header to read. False spares
    /// every request the body test below.
    bodies: bool,
    /// Whether a request met a rule keyed by a body field (warned once).
    warned_no_body: AtomicBool,
    /// The forwarding header an untrusted proxy would have set.
    proxy_header: HeaderName,
}

/// Requests the layer looks at for a deployment to warn of.
const CHECKED_REQUESTS: u32 = 1000;

const NO_ADDRESS: &str = "floodgate: ERR_FG_NO_CLIENT_ADDRESS: requests reach the Floodgate layer \
    without a client address, so all of them share each IP-keyed limit as one client (`-`). With \
    axum, serve with `into_make_service_with_connect_info::<SocketAddr>()`; with hyper or tonic, \
    insert a `floodgate_tower::ClientAddr` extension; behind a proxy on a Unix socket, trust it: \
    `TrustedProxies::new([\"unix:\"])`.";

const UNTRUSTED_PROXY: &str = "floodgate: ERR_FG_UNTRUSTED_PROXY: a request from a private or \
    loopback address carried a forwarding header, but no trusted proxy covers that address: every \
    client behind that proxy is its address, and they share each IP-keyed limit. Trust the proxy \
    with `FloodgateLayer::trusted_proxies`.";

const NO_BODY: &str = "floodgate: ERR_FG_NO_BODY: a request met a rule keyed by a field of the \
    request body (`key = \"body:...\"`), but no FloodgateBodyLayer read its body: such requests \
    are refused (400), since the handler could read a name the rule never counted. Add \
    `FloodgateBodyLayer::new(engine)` outside the FloodgateLayer (with axum, the `.layer(...)` \
    after it), or key the rule on what the layer sees.";

thread_local! {
    /// The verdict buffer of this thread: an allowed request allocates no
    /// verdict strings once it has grown (see `VerdictBuf`).
    static VERDICT: std::cell::RefCell<VerdictBuf> = std::cell::RefCell::new(VerdictBuf::new());
}

/// The verdict's response headers (up to 5), on the stack.
type ResponseHeaders = SmallVec<[(HeaderName, HeaderValue); 5]>;

/// What the layer does with a request, decided before the service runs.
enum Decided {
    /// Call the service, add these headers, settle this after the response.
    Allow {
        headers: ResponseHeaders,
        settlement: Option<Settlement>,
    },
    /// Answer with this, without calling the service.
    Answer {
        status: http::StatusCode,
        headers: ResponseHeaders,
        body: String,
    },
}

impl FloodgateLayer {
    /// A layer over `engine`, trusting no proxy.
    pub fn new(engine: impl Into<Arc<Engine>>) -> Self {
        Self::build(engine.into(), TrustedProxies::default(), true)
    }

    /// Believe the forwarding header from these proxies only (see
    /// [`TrustedProxies`]).
    #[must_use]
    pub fn trusted_proxies(self, proxies: TrustedProxies) -> Self {
        Self::build(self.shared.engine.clone(), proxies, self.shared.validate)
    }

    /// Whether to warn of a deployment that defeats IP-keyed rules (default
    /// true; see the crate's documentation, "Warnings").
    #[must_use]
    pub fn validate(self, on: bool) -> Self {
        Self::build(self.shared.engine.clone(), self.shared.proxies.clone(), on)
    }

    fn build(engine: Arc<Engine>, proxies: TrustedProxies, validate: bool) -> Self {
        let wanted: Box<[HeaderName]> = engine
            .request_headers()
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let forwarded = (!proxies.is_empty())
            .then(|| HeaderName::from_bytes(proxies.header_name().as_bytes()).ok())
            .flatten();
        let proxy_header = forwarded
            .clone()
            .unwrap_or(HeaderName::from_static("x-forwarded-for"));
        Self {
            shared: Arc::new(Shared {
                validate,
                validate_left: AtomicU32::new(if validate { CHECKED_REQUESTS } else { 0 }),
                warned_no_address: AtomicBool::new(false),
                warned_untrusted: AtomicBool::new(false),
                warned_no_body: AtomicBool::new(false),
                bodies: wanted.contains(&CONTENT_TYPE),
                proxy_header,
                blocking: engine.may_block(),
                engine,
                proxies,
                forwarded,
                wanted,
                names: RESPONSE_HEADERS
                    .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap_or(CONTENT_TYPE)),
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for FloodgateLayer {
    type Service = Floodgate<S>;

    fn layer(&self, inner: S) -> Floodgate<S> {
        Floodgate {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`FloodgateLayer`] makes.
#[derive(Debug, Clone)]
pub struct Floodgate<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The peer's address from the request's extensions.
fn peer(ext: &http::Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(c) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(c.0.ip());
    }
    ext.get::<ClientAddr>()
        .map(|c| c.0.ip())
        .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip))
}

/// The request target as sent: path and query string, undecoded (the engine
/// decodes it as the router does).
fn target<B>(req: &http::Request<B>) -> &str {
    req.uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |p| p.as_str())
}

/// A header value as text, if it is UTF-8 (the engine reads text).
fn text(v: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(v.as_bytes()).ok()
}

impl Shared {
    /// Looks at one of the first requests for a deployment to warn of (each
    /// warning once; none once both are given or the requests are done).
    fn validate<B>(&self, req: &http::Request<B>) {
        let left = self.validate_left.load(Ordering::Relaxed);
        if left == 0 {
            return;
        }
        // Approximate under concurrency, which is all a count of requests to
        // look at needs.
        self.validate_left.store(left - 1, Ordering::Relaxed);
        let peer = peer(req.extensions());
        let trusted = self.proxies.trusts_peer(peer);
        if peer.is_none() && !trusted && !self.warned_no_address.swap(true, Ordering::Relaxed) {
            tracing::warn!(code = "ERR_FG_NO_CLIENT_ADDRESS", "{NO_ADDRESS}");
        }
        if peer.is_some_and(is_proxy_address)
            && !trusted
            && req.headers().contains_key(&self.proxy_header)
            && !self.warned_untrusted.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(code = "ERR_FG_UNTRUSTED_PROXY", "{UNTRUSTED_PROXY}");
        }
        if self.warned_no_address.load(Ordering::Relaxed)
            && self.warned_untrusted.load(Ordering::Relaxed)
        {
            self.validate_left.store(0, Ordering::Relaxed);
        }
    }

    /// Whether `req` has a body that a rule keyed by a body field needs and
    /// no [`FloodgateBodyLayer`] read: refused (400), since the handler's
    /// extractor could read a name the rule never counted. Warned of once.
    /// (One flag for a policy without such rules; the policy is asked last.)
    fn unread_body<B>(&self, req: &http::Request<B>) -> bool {
        let unread = self.bodies
            && has_body(req)
            && req.extensions().get::<ReadBody>().is_none()
            && self.engine.reads_body(req.method().as_str(), target(req));
        if unread && !self.warned_no_body.swap(true, Ordering::Relaxed) {
            tracing::warn!(code = "ERR_FG_NO_BODY", "{NO_BODY}");
        }
        unread
    }

    /// The client's address; `None` without a peer address (a Unix-domain
    /// socket), unless `unix:` is trusted and its proxy names the client.
    fn client_ip<B>(&self, req: &http::Request<B>) -> Option<IpAddr> {
        let peer = peer(req.extensions());
        match &self.forwarded {
            Some(name) => self.proxies.client_ip_of(
                peer,
                req.headers().get_all(name).iter().filter_map(text),
                self.proxies.header_name() == "forwarded",
            ),
            None => peer.map(|p| p.to_canonical()),
        }
    }

    /// Decides `req` on this thread, into the thread's verdict buffer.
    fn decide<B>(&self, req: &http::Request<B>) -> Decided {
        let run = |buf: &mut VerdictBuf| match self.check_into(req, buf) {
            Ok(()) => self.decided(buf.verdict()),
            Err(_) => bad_request(),
        };
        VERDICT.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => run(&mut buf),
            // Re-entered (a service deciding inside a settlement): a fresh buffer.
            Err(_) => run(&mut VerdictBuf::new()),
        })
    }

    /// The request headers the policy reads, as text (a value that is not
    /// UTF-8 cannot match anything the engine reads).
    fn wanted_headers<'r, B>(
        &'r self,
        req: &'r http::Request<B>,
    ) -> impl Iterator<Item = (&'r str, &'r str)> + 'r {
        self.wanted.iter().flat_map(move |name| {
            req.headers()
                .get_all(name)
                .iter()
                .filter_map(move |v| Some((name.as_str(), text(v)?)))
        })
    }

    /// What to do with a verdict.
    fn decided(&self, v: &Verdict) -> Decided {
        let headers = v
            .headers
            .iter()
            .filter_map(|(name, value)| {
                let n = RESPONSE_HEADERS
                    .iter()
                    .position(|h| h == name)
                    .and_then(|i| self.names.get(i).cloned())
                    .or_else(|| HeaderName::from_bytes(name.as_bytes()).ok())?;
                Some((n, HeaderValue::from_str(value).ok()?))
            })
            .collect();
        if v.allowed {
            Decided::Allow {
                headers,
                settlement: v.settlement.clone(),
            }
        } else {
            Decided::Answer {
                status: http::StatusCode::from_u16(v.status)
                    .unwrap_or(http::StatusCode::TOO_MANY_REQUESTS),
                headers,
                body: v.body(),
            }
        }
    }

    fn check_into<B>(&self, req: &http::Request<B>, out: &mut VerdictBuf) -> floodgate::Result<()> {
        // On the stack for the usual few (API key, Authorization).
        let headers: SmallVec<[(&str, &str); 8]> = self.wanted_headers(req).collect();
        self.engine.check_request_into(
            &Request {
                method: req.method().as_str(),
                path: target(req),
                client_ip: self.client_ip(req),
                headers: &headers,
                body: req.extensions().get::<ReadBody>().map(|b| &b.0[..]),
            },
            None,
            out,
        )
    }

    /// The request's parts, owned, for a check on the blocking pool.
    fn owned<B>(&self, req: &http::Request<B>) -> OwnedRequest {
        OwnedRequest {
            method: req.method().as_str().to_owned(),
            path: target(req).to_owned(),
            client_ip: self.client_ip(req),
            headers: self
                .wanted_headers(req)
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            body: req.extensions().get::<ReadBody>().map(|b| b.0.to_vec()),
        }
    }
}

/// Whether a request has a body: a length other than 0, chunks, or (HTTP/2
/// and later, where a body needs no length) no length at all.
fn has_body<B>(req: &http::Request<B>) -> bool {
    let headers = req.headers();
    match headers.get(http::header::CONTENT_LENGTH) {
        Some(length) => length.as_bytes() != b"0",
        None => {
            headers.contains_key(http::header::TRANSFER_ENCODING)
                || req.version() >= http::Version::HTTP_2
        }
    }
}

/// The answer to a request the engine cannot use.
fn bad_request() -> Decided {
    Decided::Answer {
        status: http::StatusCode::BAD_REQUEST,
        headers: ResponseHeaders::new(),
        body: denial_body(400, std::time::Duration::ZERO, None),
    }
}

/// An answer made here (a denial, a bad request), without the service.
fn answer<B>(
    status: http::StatusCode,
    headers: ResponseHeaders,
    body: String,
) -> http::Response<FloodgateBody<B>> {
    let mut res = http::Response::new(FloodgateBody::denied(body));
    *res.status_mut() = status;
    let map = res.headers_mut();
    for (n, v) in headers {
        map.insert(n, v);
    }
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Floodgate<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes>,
{
    type Response = http::Response<FloodgateBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let shared = self.shared.clone();
        if shared.validate_left.load(Ordering::Relaxed) > 0 {
            shared.validate(&req);
        }
        if shared.unread_body(&req) {
            return ResponseFuture::Answered {
                res: Some(answer(
                    http::StatusCode::BAD_REQUEST,
                    ResponseHeaders::new(),
                    denial_body(400, std::time::Duration::ZERO, None),
                )),
            };
        }
        if !shared.blocking {
            // In memory: decided here, and the service's future is polled in
            // place (no box, no task).
            return match shared.decide(&req) {
                Decided::Allow {
                    headers,
                    settlement,
                } => ResponseFuture::Called {
                    fut: self.inner.call(req),
                    headers: Some(headers),
                    settlement,
                    shared,
                },
                Decided::Answer {
                    status,
                    headers,
                    body,
                } => ResponseFuture::Answered {
                    res: Some(answer(status, headers, body)),
                },
            };
        }
        // On Redis: the check runs on the blocking pool, then the service. The
        // service that was made ready is the one called (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::Blocking {
            fut: Box::pin(async move {
                let owned = shared.owned(&req);
                let engine = shared.engine.clone();
                let decided = match tokio::task::spawn_blocking(move || {
                    owned.with_view(|r| engine.check_request(r))
                })
                .await
                {
                    Ok(Ok(v)) => shared.decided(&v),
                    _ => bad_request(),
                };
                match decided {
                    Decided::Allow {
                        headers,
                        settlement,
                    } => {
                        let res = inner.call(req).await?;
                        Ok(finish(res, headers, settlement, &shared))
                    }
                    Decided::Answer {
                        status,
                        headers,
                        body,
                    } => Ok(answer(status, headers, body)),
                }
            }),
        }
    }
}

/// The service's response with the verdict's headers, its body wrapped to
/// settle once sent.
fn finish<B: Body>(
    res: http::Response<B>,
    headers: ResponseHeaders,
    settlement: Option<Settlement>,
    shared: &Arc<Shared>,
) -> http::Response<FloodgateBody<B>> {
    let (mut parts, body) = res.into_parts();
    for (n, v) in headers {
        parts.headers.insert(n, v);
    }
    let pending = settlement.map(|s| {
        let header_cost = parts
            .headers
            .remove(COST_HEADER)
            .and_then(|c| text(&c).and_then(|t| t.trim().parse::<u64>().ok()));
        let cost = parts
            .extensions
            .get::<FloodgateCost>()
            .map(|c| c.0)
            .or(header_cost);
        Pending {
            shared: shared.clone(),
            settlement: Some(s),
            status: parts.status.as_u16(),
            cost,
        }
    });
    http::Response::from_parts(parts, FloodgateBody::inner(body, pending))
}

/// A boxed future of the Redis path.
type Boxed<B, E> =
    Pin<Box<dyn Future<Output = Result<http::Response<FloodgateBody<B>>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of a [`Floodgate`] service's response.
    #[project = FutureProjected]
    pub enum ResponseFuture<F, B, E> {
        /// Decided in memory: the service's own future, polled in place.
        Called {
            #[pin]
            fut: F,
            headers: Option<ResponseHeaders>,
            settlement: Option<Settlement>,
            shared: Arc<Shared>,
        },
        /// Answered by the layer.
        Answered {
            res: Option<http::Response<FloodgateBody<B>>>,
        },
        /// Passed on untouched (the body layer, for a request no body rule
        /// meets).
        Passed {
            #[pin]
            fut: F,
        },
        /// On Redis: the check on the blocking pool, then the service.
        Blocking {
            fut: Boxed<B, E>,
        },
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<FloodgateBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FutureProjected::Called {
                fut,
                headers,
                settlement,
                shared,
            } => {
                let res = std::task::ready!(fut.poll(cx))?;
                Poll::Ready(Ok(finish(
                    res,
                    headers.take().unwrap_or_default(),
                    settlement.take(),
                    shared,
                )))
            }
            FutureProjected::Answered { res } => match res.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending, // polled after completion: never again
            },
            FutureProjected::Passed { fut } => {
                let res = std::task::ready!(fut.poll(cx))?;
                Poll::Ready(Ok(res.map(|b| FloodgateBody::inner(b, None))))
            }
            FutureProjected::Blocking { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// The body a [`FloodgateBodyLayer`] read, as a request extension: what the
/// [`Floodgate`] service inside it passes to the engine as
/// [`Request::body`]. (Set only by the body layer: a client cannot send an
/// extension.)
#[derive(Debug, Clone)]
pub struct ReadBody(pub Bytes);

/// Reads the whole body of the requests that a rule keyed by a body field
/// meets (`key = "body:username"`, [`Engine::reads_body`]), for the
/// [`FloodgateLayer`] inside it, and gives the service a body made of the
/// same bytes. A body over [`MAX_BODY_BYTES`] is answered 413
/// (`{"error":"payload_too_large"}`) rather than checked on a part; a body
/// that fails to arrive, 400. Other requests pass untouched, never held for
/// their body.
///
/// The service's request body must be rebuildable from bytes (`From<Bytes>`:
/// axum's `Body`, `Full<Bytes>`...); a hyper `Incoming` service cannot use it.
/// With axum, add it after the Floodgate layer, so that it runs first:
///
/// ```ignore
/// let app = Router::new()
///     .route("/auth/login", post(login))
///     .layer(FloodgateLayer::new(engine.clone()))
///     .layer(FloodgateBodyLayer::new(engine));
/// ```
#[derive(Debug, Clone)]
pub struct FloodgateBodyLayer {
    engine: Arc<Engine>,
}

impl FloodgateBodyLayer {
    /// A body layer for the requests `engine`'s body rules meet.
    pub fn new(engine: impl Into<Arc<Engine>>) -> Self {
        Self {
            engine: engine.into(),
        }
    }
}

impl<S> tower_layer::Layer<S> for FloodgateBodyLayer {
    type Service = FloodgateBodyService<S>;

    fn layer(&self, inner: S) -> FloodgateBodyService<S> {
        FloodgateBodyService {
            inner,
            engine: self.engine.clone(),
        }
    }
}

/// The service [`FloodgateBodyLayer`] makes.
#[derive(Debug, Clone)]
pub struct FloodgateBodyService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for FloodgateBodyService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = http::Response<FloodgateBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        if !self.engine.reads_body(req.method().as_str(), target(&req)) {
            return ResponseFuture::Passed {
                fut: self.inner.call(req),
            };
        }
        let too_large = || {
            answer(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                ResponseHeaders::new(),
                denial_body(413, std::time::Duration::ZERO, None),
            )
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| text(v)?.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return ResponseFuture::Answered {
                res: Some(too_large()),
            };
        }
        // The service that was made ready is the one called (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::Blocking {
            fut: Box::pin(async move {
                let (mut parts, body) = req.into_parts();
                let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) if e.is::<LengthLimitError>() => return Ok(too_large()),
                    // The client's body broke off or was malformed.
                    Err(_) => {
                        return Ok(answer(
                            http::StatusCode::BAD_REQUEST,
                            ResponseHeaders::new(),
                            denial_body(400, std::time::Duration::ZERO, None),
                        ));
                    }
                };
                parts.extensions.insert(ReadBody(bytes.clone()));
                let res = inner
                    .call(http::Request::from_parts(parts, ReqBody::from(bytes)))
                    .await?;
                Ok(res.map(|b| FloodgateBody::inner(b, None)))
            }),
        }
    }
}

/// A verdict to settle once the response is over.
#[derive(Debug)]
struct Pending {
    shared: Arc<Shared>,
    settlement: Option<Settlement>,
    status: u16,
    cost: Option<u64>,
}

impl Pending {
    fn settle(&mut self, status: u16) {
        let Some(s) = self.settlement.take() else {
            return;
        };
        let outcome = Settle {
            status,
            cost: self.cost,
        };
        let engine = self.shared.engine.clone();
        let run = move || {
            // Already settled (by the handler) or a store that cannot answer:
            // the charge stands.
            let _ = engine.settle_settlement(Some(&s), outcome, None);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if self.shared.blocking => drop(rt.spawn_blocking(run)),
            _ => run(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Dropped before the body ended: the client went away (as nginx logs it).
        self.settle(499);
    }
}

pin_project_lite::pin_project! {
    /// A response body: the service's (settled when it ends), or a denial's JSON.
    #[project = Projected]
    pub enum FloodgateBody<B> {
        /// The service's body.
        Inner {
            #[pin]
            body: B,
            pending: Option<Pending>,
        },
        /// A denial's JSON.
        Denied {
            #[pin]
            body: Full<Bytes>,
        },
    }
}

impl<B> std::fmt::Debug for FloodgateBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inner { .. } => f.write_str("FloodgateBody::Inner"),
            Self::Denied { .. } => f.write_str("FloodgateBody::Denied"),
        }
    }
}

impl<B> FloodgateBody<B> {
    fn inner(body: B, mut pending: Option<Pending>) -> Self
    where
        B: Body,
    {
        if body.is_end_stream()
            && let Some(p) = pending.as_mut()
        {
            // Nothing to send but the head: the server may never poll it.
            let status = p.status;
            p.settle(status);
        }
        Self::Inner { body, pending }
    }

    fn denied(json: String) -> Self {
        Self::Denied {
            body: Full::new(Bytes::from(json)),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for FloodgateBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            Projected::Inner { mut body, pending } => {
                let frame = std::task::ready!(body.as_mut().poll_frame(cx));
                if let Some(p) = pending.as_mut() {
                    let status = p.status;
                    match &frame {
                        None => p.settle(status),
                        Some(Err(_)) => p.settle(500),
                        // The last frame: the server may not poll again.
                        Some(Ok(_)) if body.is_end_stream() => p.settle(status),
                        Some(Ok(_)) => {}
                    }
                }
                Poll::Ready(frame)
            }
            Projected::Denied { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner { body, .. } => body.is_end_stream(),
            Self::Denied { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body, .. } => body.size_hint(),
            Self::Denied { body } => body.size_hint(),
        }
    }
}
