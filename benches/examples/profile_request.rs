//! Where does check_request's time go? Times variants of one policy.
use floodgate::policy::{Engine, Request};
use std::time::{Duration, Instant};
fn main() {
    let ips: Vec<std::net::IpAddr> = (0..10_000u32)
        .map(|i| std::net::IpAddr::from((0x6440_0000u32 | i).to_be_bytes()))
        .collect();
    for (name, extra) in [
        ("draft-10", ""),
        ("no headers", "[settings]\nheaders = \"none\"\n"),
    ] {
        let e = Engine::from_toml_str(&format!("{extra}[[rule]]\nname = \"a\"\nmatch = \"/api/**\"\nquotas = [\"1000000/s\"]\nkey = \"ip\"\n")).unwrap();
        let at = Duration::from_secs(1_700_000_000);
        let t = Instant::now();
        for i in 0..std::env::args()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1_000_000usize)
        {
            let req = Request {
                method: "GET",
                path: "/api/items",
                client_ip: Some(ips[i % ips.len()]),
                headers: &[],
                body: None,
            };
            std::hint::black_box(e.check_request_at(&req, at).unwrap());
        }
        println!(
            "{name}: {:.0} ns",
            t.elapsed().as_nanos() as f64
                / std::env::args()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1_000_000usize) as f64
        );
    }
}
