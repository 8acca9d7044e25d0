//! The tower layer's cost per request: an axum router with the layer against
//! the same router without it, in one process and one run (criterion groups
//! side by side). The requests go through the router in process (no socket),
//! so the ratio is the layer's share of what a request costs axum itself; over
//! HTTP the denominator only grows. See benches/README.md.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use floodgate::policy::Engine;
use floodgate_tower::{ClientAddr, FloodgateLayer};
use tower::ServiceExt;

const POLICY: &str = r#"
[[rule]]
name = "api"
match = "/api/**"
key = "ip"
quotas = ["1000000/s"]
"#;

const LIFECYCLE: &str = r#"
[[rule]]
name = "api"
match = "/api/**"
key = "ip"
quotas = ["1000000/s"]
count = "failures"
max_in_flight = 100
"#;

fn router() -> Router {
    Router::new().route("/api/items", get(|| async { "items" }))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let peers: Vec<SocketAddr> = (0..10_000u32)
        .map(|i| SocketAddr::from(((0x6440_0000u32 | i).to_be_bytes(), 40_000)))
        .collect();
    let mut g = c.benchmark_group("tower");
    let apps = [
        ("bare axum handler", router()),
        (
            "with FloodgateLayer",
            router().layer(FloodgateLayer::new(Arc::new(
                Engine::from_toml_str(POLICY).unwrap(),
            ))),
        ),
        (
            "with FloodgateLayer, settled (count failures, max_in_flight)",
            router().layer(FloodgateLayer::new(Arc::new(
                Engine::from_toml_str(LIFECYCLE).unwrap(),
            ))),
        ),
    ];
    for (name, app) in apps {
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % peers.len();
                let mut req = axum::http::Request::get("/api/items")
                    .body(Body::empty())
                    .unwrap();
                req.extensions_mut().insert(ClientAddr(peers[i]));
                let res = rt.block_on(app.clone().oneshot(req)).unwrap();
                // The body is sent (and a settlement made) as a server would.
                let body = rt
                    .block_on(axum::body::to_bytes(res.into_body(), 64))
                    .unwrap();
                black_box(body);
            })
        });
    }
    g.finish();
}

/// The same apps over HTTP on loopback (hyper client, keep-alive), one request
/// at a time: what a client waits for, socket and HTTP parsing included.
fn over_http(c: &mut Criterion) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("tower over HTTP");
    let apps = [
        ("bare axum handler", router()),
        (
            "with FloodgateLayer",
            router().layer(FloodgateLayer::new(Arc::new(
                Engine::from_toml_str(POLICY).unwrap(),
            ))),
        ),
    ];
    for (name, app) in apps {
        let addr = rt.block_on(async {
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
        });
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
        let uri: axum::http::Uri = format!("http://{addr}/api/items").parse().unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let res = client.get(uri.clone()).await.unwrap();
                    black_box(res.into_body().collect().await.unwrap().to_bytes())
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, over_http);
criterion_main!(benches);
