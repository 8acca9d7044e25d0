//! The layer in a real axum server over HTTP: statuses, headers and bodies as a
//! client sees them, trusted proxies, settlement (failed logins, places in
//! flight, the real cost), attacks sent in parallel, and a Redis-backed engine
//! on a single-threaded runtime.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use floodgate::policy::Engine;
use floodgate_tower::{FloodgateBodyLayer, FloodgateCost, FloodgateLayer, TrustedProxies};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const POLICY: &str = r#"
[lists]
deny_api_keys = ["sk_revoked"]

[[rule]]
name = "login"
match = "POST /auth/login"
key = "ip"
algorithm = "fixed_window"
quotas = ["5/hour"]
count = "failures"

[[rule]]
name = "token"
match = "POST /oauth/token"
key = "header:x-client-id"
quotas = ["10/min"]
anonymous = "deny"

[[rule]]
name = "slow"
match = "GET /slow"
key = "ip"
quotas = ["1000/s"]
max_in_flight = 2

[[rule]]
name = "graphql"
match = "POST /graphql"
key = "ip"
algorithm = "fixed_window"
quotas = ["100/hour"]
cost = 10
cost_from = "response"

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
quotas = ["3/min"]
"#;

fn app() -> Router {
    Router::new()
        .route(
            "/auth/login",
            post(|headers: axum::http::HeaderMap| async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                if headers.get("x-password").is_some_and(|p| p == "right") {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
        .route("/oauth/token", post(|| async { "token" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done"
            }),
        )
        .route(
            "/graphql",
            post(|uri: axum::http::Uri| async move {
                let cost: u64 = uri
                    .query()
                    .and_then(|q| q.strip_prefix("cost="))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(10);
                if uri.query().is_some_and(|q| q.contains("header")) {
                    ([("floodgate-cost", "40")], "{}").into_response()
                } else {
                    let mut r = "{}".into_response();
                    r.extensions_mut().insert(FloodgateCost(cost));
                    r
                }
            }),
        )
        .route("/api/{*rest}", get(|| async { "items" }))
        .route("/me", get(|| async { "me" }))
        .route("/export", get(|| async { "me" }))
}

async fn serve(layer: FloodgateLayer) -> SocketAddr {
    serve_router(app().layer(layer)).await
}

/// Serves `app` on a loopback port, with the peer's address as connect info.
async fn serve_router(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

struct Reply {
    status: u16,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The results of spawned tasks, in order (all spawned before any is awaited:
/// they run at once).
async fn joined<T>(tasks: impl IntoIterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let tasks: Vec<_> = tasks.into_iter().collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

fn engine() -> Arc<Engine> {
    Arc::new(Engine::from_toml_str(POLICY).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_and_headers_over_http() {
    let addr = serve(FloodgateLayer::new(engine())).await;
    for left in [2, 1, 0] {
        let r = call(addr, "GET", "/api/items", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "items");
        let rl = r.headers["ratelimit"].to_str().unwrap();
        assert!(rl.contains(&format!("r={left}")), "{rl}");
    }
    let r = call(addr, "GET", "/api/items", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["content-type"], "application/json");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(
        r.body.starts_with("{\"error\":\"rate_limited\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("\"rule\":\"api\""));
    // 403 for a revoked key, 401 without the identity a rule needs.
    assert_eq!(
        call(addr, "GET", "/api/x", &[("x-api-key", "sk_revoked")])
            .await
            .status,
        403
    );
    let r = call(addr, "POST", "/oauth/token", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("unauthorized"), "{}", r.body);
    let r = call(addr, "POST", "/oauth/token", &[("x-client-id", "app-1")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "token"));
    // No rule: no headers.
    let r = call(addr, "GET", "/nothing", &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.headers.get("ratelimit").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_decide_who_the_client_is() {
    let trusted =
        FloodgateLayer::new(engine()).trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap());
    let addr = serve(trusted).await;
    let from = |ip: &'static str| async move {
        call(addr, "GET", "/api/items", &[("x-forwarded-for", ip)])
            .await
            .status
    };
    for _ in 0..3 {
        assert_eq!(from("198.51.100.1").await, 200);
    }
    assert_eq!(from("198.51.100.1").await, 429);
    assert_eq!(
        from("198.51.100.2").await,
        200,
        "another client behind the proxy"
    );
    // Not trusted: the header is anyone's text, and the peer is the client.
    let addr = serve(FloodgateLayer::new(engine())).await;
    for (i, ip) in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]
        .iter()
        .enumerate()
    {
        let s = call(addr, "GET", "/api/items", &[("x-forwarded-for", ip)])
            .await
            .status;
        assert_eq!(s, if i < 3 { 200 } else { 429 }, "{ip}");
    }
}

/// The `code` field of every event logged on this thread while it is set
/// (the layer's warnings).
#[derive(Clone, Default)]
struct Codes(Arc<std::sync::Mutex<Vec<String>>>);

impl Codes {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl tracing::Subscriber for Codes {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Code(Option<String>);
        impl tracing::field::Visit for Code {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "code" {
                    self.0 = Some(value.to_string());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut code = Code(None);
        event.record(&mut code);
        if let Some(c) = code.0 {
            assert_eq!(*event.metadata().level(), tracing::Level::WARN);
            self.0.lock().unwrap().push(c);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The app served without `into_make_service_with_connect_info`: no request
/// carries its peer's address (the usual axum slip).
async fn serve_without_connect_info(layer: FloodgateLayer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app().layer(layer);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Deployments that defeat IP-keyed rules are warned of, once each (one
/// thread: the server's tasks run where the capture is set).
#[tokio::test]
async fn deployments_that_defeat_ip_limits_are_warned_of_once() {
    let codes = Codes::default();
    let _guard = tracing::subscriber::set_default(codes.clone());
    let status = |addr, xff: &'static str| async move {
        call(addr, "GET", "/api/items", &[("x-forwarded-for", xff)])
            .await
            .status
    };
    // No connect info: every client is `-`, one limit for all of them.
    let addr = serve_without_connect_info(FloodgateLayer::new(engine())).await;
    let mut seen = Vec::new();
    for xff in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ] {
        seen.push(status(addr, xff).await);
    }
    assert_eq!(seen, [200, 200, 200, 429]);
    assert_eq!(codes.take(), ["ERR_FG_NO_CLIENT_ADDRESS"]);
    // A loopback peer (a proxy on the same host) sending X-Forwarded-For,
    // not trusted: every client behind it is 127.0.0.1.
    let addr = serve(FloodgateLayer::new(engine())).await;
    for xff in ["198.51.100.5", "198.51.100.6", "198.51.100.7"] {
        assert_eq!(status(addr, xff).await, 200);
    }
    assert_eq!(codes.take(), ["ERR_FG_UNTRUSTED_PROXY"]);
    // Trusted: nothing to say. Turned off: nothing said.
    let trusted =
        FloodgateLayer::new(engine()).trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap());
    let addr = serve(trusted).await;
    assert_eq!(status(addr, "198.51.100.8").await, 200);
    let addr = serve_without_connect_info(FloodgateLayer::new(engine()).validate(false)).await;
    assert_eq!(status(addr, "198.51.100.9").await, 200);
    assert_eq!(codes.take(), Vec::<String>::new());
}

/// A rule keyed by a body field, and no body layer to read it: a request
/// with a body that the rule meets is refused (400: the handler's extractor
/// could read a name the rule never counted) and warned of, once, even with
/// validation off. Requests no such rule meets, and a login with no body (no
/// name for the rule), go on unwarned; so do bodies under a policy without
/// such rules.
#[tokio::test]
async fn a_body_no_layer_read_is_refused_and_warned_of_once() {
    let codes = Codes::default();
    let _guard = tracing::subscriber::set_default(codes.clone());
    let layer = FloodgateLayer::new(Arc::new(Engine::from_toml_str(BODY_POLICY).unwrap()));
    let addr = serve(layer.validate(false)).await;
    assert_eq!(call(addr, "GET", "/api/items", &[]).await.status, 200);
    for _ in 0..4 {
        // No body: no key for the rule, skipped; the handler answers.
        let r = call(addr, "POST", "/auth/login", &[("x-password", "right")]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(codes.take(), Vec::<String>::new());
    let login = br#"{"username":"victim"}"#;
    for chunked in [false, true, false] {
        let (status, body) = post_raw(addr, "application/json", Some(login), chunked).await;
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(codes.take(), ["ERR_FG_NO_BODY"]);
    // A policy without such rules: the same bodies reach the handler (a
    // wrong password, 401), unwarned.
    let plain = serve(FloodgateLayer::new(engine()).validate(false)).await;
    for chunked in [false, true] {
        let (status, body) = post_raw(plain, "application/json", Some(login), chunked).await;
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(codes.take(), Vec::<String>::new());
}

/// A login keyed by the body's username, beside an API keyed by address.
const BODY_POLICY: &str = r#"
[[rule]]
name = "login-user"
match = "POST /auth/login"
key = "body:username"
algorithm = "fixed_window"
quotas = ["3/hour"]

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
quotas = ["100/min"]
"#;

/// An app whose login is keyed by the body's username: the Floodgate layer,
/// and the body layer outside it. The login echoes the body it got.
async fn serve_with_bodies() -> SocketAddr {
    let engine = Arc::new(Engine::from_toml_str(BODY_POLICY).unwrap());
    let app = Router::new()
        .route("/auth/login", post(|body: Bytes| async move { body }))
        .route("/api/{*rest}", get(|| async { "items" }))
        .layer(FloodgateLayer::new(engine.clone()))
        .layer(FloodgateBodyLayer::new(engine));
    serve_router(app).await
}

/// POSTs `body` to `/auth/login` as raw bytes (with its length, or chunked in
/// 1 KiB chunks; `None`: a length only, no bytes): the status and the body
/// of the answer.
async fn post_raw(
    addr: SocketAddr,
    content_type: &str,
    body: Option<&[u8]>,
    chunked: bool,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut request = format!("POST /auth/login HTTP/1.1\r\nHost: app\r\nContent-Type: {content_type}\r\nConnection: close\r\n")
        .into_bytes();
    match body {
        Some(b) if chunked => {
            request.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in b.chunks(1024) {
                request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                request.extend_from_slice(chunk);
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"0\r\n\r\n");
        }
        Some(b) => {
            request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
            request.extend_from_slice(b);
        }
        None => request.extend_from_slice(b"Content-Length: 70000\r\n\r\n"),
    }
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&request).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .unwrap()
}

/// Credential stuffing against a tower service: the username is in the body,
/// spelled as logins compare names, as JSON or a form, with a length or
/// chunked, one body past hyper's first read. The body layer reads it for the
/// Floodgate layer and the handler still gets it whole; no warning.
#[tokio::test]
async fn the_body_layer_keys_logins_on_the_username_in_the_body() {
    let codes = Codes::default();
    let _guard = tracing::subscriber::set_default(codes.clone());
    let addr = serve_with_bodies().await;
    let (form, json) = ("application/x-www-form-urlencoded", "application/json");
    let padded = format!(
        r#"{{"username":" VICTIM ","pad":"{}"}}"#,
        "x".repeat(40_000)
    );
    let attempts: [(&str, String, bool); 5] = [
        (
            json,
            r#"{"username":"victim","password":"1"}"#.into(),
            false,
        ),
        (form, "password=x&username=Victim".into(), true),
        (json, padded, false),
        (form, "username=%20victim%20".into(), false),
        (json, r#"{"username":"vict\u0069m"}"#.into(), true),
    ];
    let mut statuses = Vec::new();
    for (t, b, chunked) in &attempts {
        let (status, echoed) = post_raw(addr, t, Some(b.as_bytes()), *chunked).await;
        if status == 200 {
            assert_eq!(echoed.len(), b.len(), "the handler got the body whole");
            assert_eq!(&echoed, b);
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(
        post_raw(addr, form, Some(b"username=alice"), false).await.0,
        200
    );
    // A username that is no name: refused, never let past the rule.
    let multipart = "multipart/form-data; boundary=XyZ";
    let login = |params: &str| {
        format!("--XyZ\r\nContent-Disposition: form-data; {params}\r\n\r\nVictim\r\n--XyZ--\r\n")
            .into_bytes()
    };
    let utf16: Vec<u8> =
        r#"{"username":"victim"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    for (t, b) in [
        (form, b"username=decoy&username=victim".to_vec()),
        (json, br#"{"username":{"$ne":null}}"#.to_vec()),
        (json, br#"{"username":["victim"]}"#.to_vec()),
        (json, utf16),
        (multipart, login("name*=utf-8''username")),
    ] {
        assert_eq!(post_raw(addr, t, Some(&b), false).await.0, 400, "{b:?}");
    }
    // As multipart/form-data (fetch's FormData): the same name, held.
    let b = login(r#"name="username""#);
    assert_eq!(post_raw(addr, multipart, Some(&b), false).await.0, 429);
    // Past 64 KiB: 413 whole, whether the length says so or the chunks do.
    let big = format!(r#"{{"username":"victim","pad":"{}"}}"#, "x".repeat(70_000));
    for body in [None, Some(big.as_bytes())] {
        let (status, text) = post_raw(addr, json, body, body.is_some()).await;
        assert_eq!(
            (status, text.as_str()),
            (413, r#"{"error":"payload_too_large"}"#)
        );
    }
    // A request no body rule meets is not held for its body.
    assert_eq!(call(addr, "GET", "/api/items", &[]).await.status, 200);
    assert_eq!(codes.take(), Vec::<String>::new());
}

/// The app on a Unix socket (as behind nginx's `proxy_pass http://unix:...`):
/// no request has a peer address. Returns the socket's path.
async fn serve_unix(layer: FloodgateLayer, name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "floodgate-tower-{}-{name}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let app = app().layer(layer);
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service())
            .await
            .unwrap();
    });
    path
}

/// The status of one GET over the Unix socket at `path`, written as raw bytes.
async fn status_over_unix(path: &std::path::Path, target: &str, xff: &str) -> u16 {
    use std::io::{Read, Write};
    let (path, request) = (
        path.to_owned(),
        format!(
            "GET {target} HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
        ),
    );
    tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_server_believes_its_proxy_only_when_unix_is_trusted() {
    // Not trusted: the requests have no client address and share the one key
    // `-` (3/min for all of them), whatever their header says.
    let path = serve_unix(FloodgateLayer::new(engine()), "untrusted").await;
    let mut statuses = Vec::new();
    for ip in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ] {
        statuses.push(status_over_unix(&path, "/api/items", ip).await);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    // `unix:` trusted: the proxy's header names each client.
    let trusted =
        FloodgateLayer::new(engine()).trusted_proxies(TrustedProxies::new(["unix:"]).unwrap());
    let path = serve_unix(trusted, "trusted").await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(status_over_unix(&path, "/api/items", "203.0.113.9, 198.51.100.1").await);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(
        status_over_unix(&path, "/api/items", "198.51.100.2").await,
        200,
        "another client"
    );
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_failed_logins_places_in_flight_and_real_cost() {
    let addr = serve(FloodgateLayer::new(engine())).await;
    let login = |pw: &'static str| async move {
        call(addr, "POST", "/auth/login", &[("x-password", pw)])
            .await
            .status
    };
    for _ in 0..20 {
        assert_eq!(login("right").await, 200, "successes are given back");
    }
    // Credential stuffing: 30 guesses at once, each charged on arrival.
    let statuses = joined((0..30).map(|_| tokio::spawn(login("guess")))).await;
    assert_eq!(count(&statuses, 401), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 25);
    assert_eq!(login("right").await, 429, "the failures used the quota up");
    // Six slow requests at once: two places.
    let replies =
        joined((0..6).map(|_| tokio::spawn(async move { call(addr, "GET", "/slow", &[]).await })))
            .await;
    let mut codes: Vec<u16> = replies.iter().map(|r| r.status).collect();
    codes.sort_unstable();
    assert_eq!(codes, [200, 200, 429, 429, 429, 429]);
    assert!(
        replies
            .iter()
            .filter(|r| r.status == 429)
            .all(|r| r.headers["retry-after"] == "1")
    );
    assert_eq!(
        call(addr, "GET", "/slow", &[]).await.status,
        200,
        "places come back"
    );
    // The real cost, from an extension or the header (which never reaches the client).
    let r = call(addr, "POST", "/graphql?cost=40", &[]).await;
    assert!(r.headers["ratelimit"].to_str().unwrap().contains("r=90"));
    let r = call(addr, "POST", "/graphql?header", &[]).await;
    assert!(r.headers.get("floodgate-cost").is_none());
    assert!(
        r.headers["ratelimit"].to_str().unwrap().contains("r=50"),
        "40 charged by the first: {:?}",
        r.headers["ratelimit"]
    );
    let r = call(addr, "POST", "/graphql?cost=1", &[]).await;
    assert!(
        r.headers["ratelimit"].to_str().unwrap().contains("r=10"),
        "40 by the second: {:?}",
        r.headers["ratelimit"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_answers() {
    let addr = serve(FloodgateLayer::new(engine())).await;
    // 100 KB of headers: answered (or refused by hyper with 431), never a crash.
    let big = "x".repeat(100_000);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = axum::http::Request::builder()
        .uri(format!("http://{addr}/api/items"))
        .header("x-junk", big.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let s = client.request(req).await.map(|r| r.status().as_u16());
    assert!(matches!(s, Ok(200 | 429 | 431) | Err(_)), "{s:?}");
    // Garbage in the path and non-UTF-8 header values: answered.
    let r = call(addr, "GET", "/api/%ff%00%2e%2e/..%2f", &[]).await;
    assert!([200, 429].contains(&r.status), "{}", r.status);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = axum::http::Request::builder()
        .uri(format!("http://{addr}/api/items"))
        .header(
            "x-api-key",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let s = client.request(req).await.unwrap().status().as_u16();
    assert!([200, 429].contains(&s), "{s}");
    // The server still answers.
    assert!([200, 429].contains(&call(addr, "GET", "/api/ok", &[]).await.status));
}

/// A redis-server on a free port, stopped on drop (skipped where none is installed).
struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Redis(child, port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two services (as on two machines) on one Redis, each on a single-threaded
/// runtime: checks and settlements go to the blocking pool, the runtime keeps
/// serving, and the limits are exact across both.
#[test]
fn redis_engines_share_limits_without_blocking_the_runtime() {
    let Some(redis) = Redis::start() else {
        eprintln!("skipped: no redis-server");
        return;
    };
    let text = format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}/\"\ntimeout_ms = 500\n{POLICY}",
        redis.1
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engines = [
            Arc::new(Engine::from_toml_str(&text).unwrap()),
            Arc::new(Engine::from_toml_str(&text).unwrap()),
        ];
        let a = serve(FloodgateLayer::new(engines[0].clone())).await;
        let b = serve(FloodgateLayer::new(engines[1].clone())).await;
        let statuses: Vec<u16> = {
            let mut v = Vec::new();
            for i in 0..5 {
                let addr = if i % 2 == 0 { a } else { b };
                v.push(call(addr, "GET", "/api/items", &[]).await.status);
            }
            v
        };
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
        // Failed logins across both, successes given back (settled on the pool).
        for i in 0..6 {
            let addr = if i % 2 == 0 { a } else { b };
            let s = call(addr, "POST", "/auth/login", &[("x-password", "right")])
                .await
                .status;
            assert_eq!(s, 200);
        }
        // The settlements run on the blocking pool as the bodies end: wait
        // until all six have landed (counted by the engines).
        let settled = |e: &Engine| {
            e.metrics()
                .lines()
                .find_map(|l| l.strip_prefix("floodgate_settled_total "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        for _ in 0..500 {
            if engines.iter().map(|e| settled(e)).sum::<u64>() == 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(engines.iter().map(|e| settled(e)).sum::<u64>(), 6);
        let guesses = (0..12)
            .map(|i| {
                let addr = if i % 2 == 0 { a } else { b };
                tokio::spawn(async move {
                    call(addr, "POST", "/auth/login", &[("x-password", "guess")])
                        .await
                        .status
                })
            })
            .collect::<Vec<_>>();
        let statuses = joined(guesses).await;
        assert_eq!(count(&statuses, 401), 5, "{statuses:?}");
    });
}

// JWT attacks (tests/policies/jwt_attacks.toml, shared with the Python and
// Node tests): GET /me is limited per verified subject (3/min) and per address
// for everyone else (2/min); only RS256 tokens by the issuer's key verify.

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../core/tests/keys");

fn jwt_engine() -> Arc<Engine> {
    let policy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/policies/jwt_attacks.toml"
    ))
    .unwrap()
    .replace("\"rsa_public.pem\"", &format!("\"{KEYS}/rsa_public.pem\""));
    Arc::new(Engine::from_toml_str(&policy).unwrap())
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).unwrap()
}

fn claims(sub: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({"sub": sub, "iss": "https://auth.example.com", "aud": "api", "exp": now + 600})
}

fn b64(data: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A token put together by hand, as an attacker does: its header and claims,
/// and `signature` as it is.
fn by_hand(header: &str, claims: &serde_json::Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header), b64(claims.to_string()))
}

/// `claims` signed with `alg`, `kid` "main" and `key`.
fn signed(
    alg: jsonwebtoken::Algorithm,
    claims: &serde_json::Value,
    key: &jsonwebtoken::EncodingKey,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some("main".into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn issuer_key() -> jsonwebtoken::EncodingKey {
    jsonwebtoken::EncodingKey::from_rsa_pem(&key_file("rsa_private.pem")).unwrap()
}

/// A token by the issuer's key for `sub`, with `over` merged into its claims.
fn issued(sub: &str, over: serde_json::Value) -> String {
    let mut c = claims(sub);
    c.as_object_mut()
        .unwrap()
        .extend(over.as_object().unwrap().clone());
    signed(jsonwebtoken::Algorithm::RS256, &c, &issuer_key())
}

/// Makes a token claiming the subject it is given.
type Maker<'a> = Box<dyn Fn(&str) -> String + 'a>;

/// Tokens an attacker can make without the issuer's key, the i-th claiming
/// `sub(i)`, and issued ones whose claims refuse them.
fn forgeries(sub: impl Fn(usize) -> String) -> Vec<String> {
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::json;
    let real = issued("someone-else", json!({}));
    let signature = real.rsplit('.').next().unwrap().to_string();
    let now = claims("")["exp"].as_u64().unwrap() - 600;
    let confusion = EncodingKey::from_secret(&key_file("rsa_public.pem"));
    let ec = EncodingKey::from_ec_pem(&key_file("ec_private.pem")).unwrap();
    let makers: Vec<Maker> = vec![
        Box::new(|s| by_hand(r#"{"alg":"none","typ":"JWT"}"#, &claims(s), "")),
        Box::new(|s| by_hand(r#"{"alg":"None","kid":"main"}"#, &claims(s), "")),
        Box::new(|s| by_hand(r#"{"alg":"none"}"#, &claims(s), &signature)),
        // Algorithm confusion: HMAC keyed with the public key's PEM.
        Box::new(|s| signed(Algorithm::HS256, &claims(s), &confusion)),
        Box::new(|s| signed(Algorithm::HS256, &claims(s), &EncodingKey::from_secret(b""))),
        Box::new(|s| signed(Algorithm::ES256, &claims(s), &ec)),
        Box::new(|s| signed(Algorithm::PS256, &claims(s), &issuer_key())),
        Box::new(|s| by_hand(r#"{"alg":"RS256","kid":"main"}"#, &claims(s), "")),
        Box::new(|s| by_hand(r#"{"alg":"RS256","kid":"main"}"#, &claims(s), &signature)),
        Box::new(|s| issued(s, json!({"exp": now - 3600}))),
        Box::new(|s| issued(s, json!({"nbf": now + 3600}))),
        Box::new(|s| issued(s, json!({"exp": (now + 600).to_string()}))),
        Box::new(|s| issued(s, json!({"iss": "https://evil.example"}))),
        Box::new(|s| issued(s, json!({"aud": "another-api"}))),
        Box::new(|s| format!("eyJhbGciOiJSUzI1NiJ9.!!!.{s}")),
    ];
    makers
        .iter()
        .enumerate()
        .map(|(i, make)| make(&sub(i)))
        .collect()
}

async fn me(addr: SocketAddr, client: &str, authorization: &str) -> u16 {
    let bearer = format!("Bearer {authorization}");
    call(
        addr,
        "GET",
        "/me",
        &[("x-forwarded-for", client), ("authorization", &bearer)],
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_never_key_a_quota() {
    let layer = FloodgateLayer::new(jwt_engine())
        .trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap());
    let addr = serve(layer).await;
    // Each forgery claims a subject of its own: one keyed on its claim would
    // get a fresh quota. All are anonymous: the address's 2, then 429.
    let mut statuses = Vec::new();
    for token in forgeries(|i| format!("mallory-{i}")) {
        statuses.push(me(addr, "198.18.0.1", &token).await);
    }
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    assert!(statuses[2..].iter().all(|&s| s == 429), "{statuses:?}");

    // Forged and tampered tokens claiming alice, each from an address of its
    // own, never spend alice's 3.
    let victim = issued("alice", serde_json::json!({}));
    let mut alice = vec![me(addr, "198.18.1.1", &victim).await];
    let (signed_part, signature) = victim.rsplit_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    let middle = flipped.len() / 2;
    flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
    let mut tampered = vec![
        format!("{signed_part}.{}", String::from_utf8(flipped).unwrap()),
        format!("{signed_part}."),
        signed_part.to_string(),
    ];
    tampered.extend(forgeries(|_| "alice".into()));
    for (i, token) in tampered.iter().enumerate() {
        me(addr, &format!("198.18.2.{}", i + 1), token).await;
    }
    for _ in 0..3 {
        alice.push(me(addr, "198.18.1.1", &victim).await);
    }
    assert_eq!(alice, [200, 200, 200, 429]);

    // A verified subject has one limit, whatever its address and the
    // scheme's spelling.
    let carol = issued("carol", serde_json::json!({}));
    let mut statuses = Vec::new();
    for (i, spelling) in ["Bearer", "bearer", "BEARER ", "Bearer"].iter().enumerate() {
        let value = format!("{spelling} {carol}");
        let client = format!("198.18.3.{}", i + 1);
        let s = call(
            addr,
            "GET",
            "/me",
            &[("x-forwarded-for", &client), ("authorization", &value)],
        )
        .await;
        statuses.push(s.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}

/// An attacker with an account of its own mints fresh tokens. Were a token
/// past its network's verification budget (5 failed checks a minute) taken
/// for no token, /export (limited per subject, and the app serving only
/// signed-in users) would serve the attacker's account without limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_its_own_verification_budget_never_frees_a_subject_of_its_limit() {
    use serde_json::json;
    let layer = FloodgateLayer::new(jwt_engine())
        .trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap());
    let addr = serve(layer).await;
    let export = |client: &'static str, token: String| async move {
        let bearer = format!("Bearer {token}");
        call(
            addr,
            "GET",
            "/export",
            &[("x-forwarded-for", client), ("authorization", &bearer)],
        )
        .await
    };
    for token in forgeries(|i| format!("mallory-{i}")).into_iter().take(5) {
        export("198.18.4.1", token).await;
    }
    let mut answers = Vec::new();
    for i in 0..4 {
        answers.push(
            export(
                "198.18.4.1",
                issued("mallory", json!({"jti": format!("a{i}")})),
            )
            .await,
        );
    }
    assert!(
        answers.iter().all(|a| a.status == 429),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let wait: u64 = answers[0].headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&wait), "{wait}");
    assert_eq!(
        answers[0].body,
        format!(r#"{{"error":"rate_limited","retry_after":{wait},"rule":null}}"#)
    );
    // From an address with budget left, the same subject's fresh tokens are
    // checked, and held to the subject's 2.
    let mut statuses = Vec::new();
    for i in 0..3 {
        statuses.push(
            export(
                "198.18.4.2",
                issued("mallory", json!({"jti": format!("b{i}")})),
            )
            .await
            .status,
        );
    }
    assert_eq!(statuses, [200, 200, 429]);
}
