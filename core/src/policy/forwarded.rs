//! The client's address behind trusted proxies, by the rules every front end
//! follows (the Python middleware's `_web.py` is the same algorithm): the socket
//! peer is the client, unless the peer is one of the trusted proxies. Then
//! exactly one forwarding header is read, the one the proxy sets
//! (`X-Forwarded-For` by default; `Forwarded` for RFC 7239 `for=`), never
//! another: a proxy that only appends to `X-Forwarded-For` passes a client's own
//! `Forwarded` header through untouched. Every copy of that header is read in
//! order, the hops are walked from the right skipping trusted proxies, and the
//! first untrusted hop is the client. A hop that names no address (`unknown`,
//! an obfuscated `_node`, garbage a trusted proxy passed on) becomes a stable
//! address of its own in the reserved `100::/8` block, derived from its text
//! (BLAKE2b, 7 bytes, as in Python), so such clients are neither unlimited nor
//! folded onto the proxy's address.
//!
//! A peer without an address is a Unix-domain socket (uvicorn's `--uds`,
//! gunicorn's `unix:` bind, a Unix listener): the proxy in front of such a
//! server is trusted only when the list names `unix:` (nginx's
//! `set_real_ip_from unix:`), never implicitly; otherwise such a request has no
//! client address (the engine's one `-` key in IP-keyed rules).

use std::net::{IpAddr, Ipv6Addr};

use blake2::Blake2bVar;
use blake2::digest::{Update, VariableOutput};
use ipnet::IpNet;

use super::ipset::IpSet;
use crate::error::{Error, Result};

/// Whether `ip` is where a reverse proxy usually sits: loopback, a private
/// network (RFC 1918, IPv6 unique local), link-local or carrier-grade NAT
/// (`100.64.0.0/10`); IPv4-mapped IPv6 as its IPv4. A front end warns of a
/// forwarding header from such a peer that no trusted proxy covers (every
/// client behind it would be the proxy's address): the one list the tower
/// layer, the Python package and the Node package warn by.
pub fn is_proxy_address(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (b & 0xc0) == 64)
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// Which proxies to believe, and the header they write.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    /// Searched at each hop, as the address lists are.
    nets: IpSet,
    /// `unix:` was listed: a peer without an address is a trusted proxy.
    unix: bool,
    /// Lower case.
    header: String,
}

impl TrustedProxies {
    /// Proxies at these addresses or networks (`"10.0.0.0/8"`, `"::1"`), and
    /// `"unix:"` for a proxy that connects over a Unix-domain socket (a peer
    /// without an address); an empty list trusts none (the peer is always the
    /// client). The header is `x-forwarded-for` until [`header`](Self::header)
    /// says otherwise.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for an entry that is no address or network.
    pub fn new<I, S>(trusted: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut unix = false;
        let mut nets = Vec::new();
        for t in trusted {
            let t = t.as_ref().trim();
            if t.eq_ignore_ascii_case(UNIX) {
                unix = true;
                continue;
            }
            let net = t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| Error::InvalidOption {
                    option: "trusted_proxies",
                    problem: "each entry must be an IP address or network (10.0.0.0/8, ::1), or unix: for a Unix socket",
                })?;
            nets.push(net.trunc());
        }
        Ok(Self {
            nets: IpSet::new(nets),
            unix,
            header: "x-forwarded-for".into(),
        })
    }

    /// The forwarding header the proxies set: `x-forwarded-for` (default),
    /// `forwarded` (RFC 7239), or another such as `x-real-ip`.
    #[must_use]
    pub fn header(mut self, name: &str) -> Self {
        self.header = name.trim().to_ascii_lowercase();
        self
    }

    /// The forwarding header's name, lower case (a front end passes its
    /// values to [`client_ip`](Self::client_ip)).
    pub fn header_name(&self) -> &str {
        &self.header
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && !self.unix
    }

    /// Whether `unix:` was listed: a peer without an address (a Unix-domain
    /// socket) is a trusted proxy.
    pub fn trusts_unix_socket(&self) -> bool {
        self.unix
    }

    /// Whether a request's peer is a trusted proxy: an address in the list,
    /// or no address (`None`, a Unix socket) when `unix:` is listed.
    pub fn trusts_peer(&self, peer: Option<IpAddr>) -> bool {
        peer.map_or(self.unix, |ip| self.trusts(ip.to_canonical()))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.contains(ip)
    }

    /// The client of a request from `peer` whose forwarding header (the one
    /// named by [`header_name`](Self::header_name)) had these values, in the
    /// order received.
    pub fn client_ip<'h>(&self, peer: IpAddr, values: impl IntoIterator<Item = &'h str>) -> IpAddr {
        self.client_ip_from(peer, values, self.header == "forwarded")
    }

    /// [`client_ip`](Self::client_ip) with the header's syntax given: `for=`
    /// pairs of RFC 7239 `Forwarded` (`forwarded`), or comma-separated
    /// addresses. For front ends that name the header per call.
    pub fn client_ip_from<'h>(
        &self,
        peer: IpAddr,
        values: impl IntoIterator<Item = &'h str>,
        forwarded: bool,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        self.walk(values, forwarded).unwrap_or(peer)
    }

    /// [`client_ip_from`](Self::client_ip_from) for a peer that may have no
    /// address (`None`: a Unix-domain socket). Such a peer's forwarding header
    /// is read only when `unix:` is trusted, and gives the first untrusted hop;
    /// `None` when it is not trusted or names only trusted hops (the request
    /// then has no client address).
    pub fn client_ip_of<'h>(
        &self,
        peer: Option<IpAddr>,
        values: impl IntoIterator<Item = &'h str>,
        forwarded: bool,
    ) -> Option<IpAddr> {
        match peer {
            Some(peer) => Some(self.client_ip_from(peer, values, forwarded)),
            None if self.unix => self.walk(values, forwarded),
            None => None,
        }
    }

    /// The first untrusted hop of the header's values, from the right.
    fn walk<'h>(
        &self,
        values: impl IntoIterator<Item = &'h str>,
        forwarded: bool,
    ) -> Option<IpAddr> {
        let mut hops: Vec<&str> = Vec::new();
        for value in values {
            if forwarded {
                for pair in value.split([',', ';']) {
                    if let Some((k, v)) = pair.split_once('=')
                        && k.trim().eq_ignore_ascii_case("for")
                    {
                        hops.push(v);
                    }
                }
            } else {
                hops.extend(value.split(','));
            }
        }
        for hop in hops.iter().rev() {
            match hop_ip(hop) {
                Some(ip) if self.trusts(ip) => {}
                Some(ip) => return Some(ip),
                None => return Some(opaque(hop)),
            }
        }
        None
    }
}

/// The entry that trusts a Unix-domain socket's peer (as nginx's
/// `set_real_ip_from unix:` does).
const UNIX: &str = "unix:";

/// An address as peers and forwarding headers write it: `203.0.113.7`,
/// `203.0.113.7:443`, `[2001:db8::1]:443`, `fe80::1%eth0`, `::ffff:192.0.2.5`.
fn hop_ip(text: &str) -> Option<IpAddr> {
    address_text(text)
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The address in an address as peers and forwarding headers write it: quotes
/// (RFC 7239), brackets, a port (`203.0.113.7:443`, `[2001:db8::1]:443`: one
/// colon is a port, an IPv6 address has two or more) and a zone dropped.
pub(super) fn address_text(text: &str) -> &str {
    let text = text.trim().trim_matches('"');
    let text = if let Some(rest) = text.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else if text.matches(':').count() == 1 {
        text.split(':').next().unwrap_or_default()
    } else {
        text
    };
    text.split('%').next().unwrap_or_default()
}

/// A stable address in `100::/8` for a hop that names none.
fn opaque(hop: &str) -> IpAddr {
    let text = hop.trim().trim_matches('"').to_lowercase();
    let mut digest = [0u8; 7];
    if let Ok(mut h) = Blake2bVar::new(digest.len()) {
        h.update(text.as_bytes());
        let _ = h.finalize_variable(&mut digest);
    }
    let mut bytes = [0u8; 16];
    bytes[0] = 1;
    bytes[1..8].copy_from_slice(&digest);
    IpAddr::V6(Ipv6Addr::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn proxy_addresses_are_loopback_private_link_local_and_cgnat() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_proxy_address(ip(a)), "{a}");
        }
        for a in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "192.0.2.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_proxy_address(ip(a)), "{a}");
        }
    }

    #[test]
    fn the_peer_is_the_client_unless_it_is_trusted() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("203.0.113.7"), ["198.51.100.1"]),
            ip("203.0.113.7")
        );
        let t = TrustedProxies::new(["10.0.0.0/8", "::1"]).ok();
        let t = t.as_ref();
        let client =
            |peer: &str, values: &[&str]| t.map(|t| t.client_ip(ip(peer), values.iter().copied()));
        // An untrusted peer's header is ignored: anyone can send one.
        assert_eq!(client("203.0.113.7", &["1.2.3.4"]), Some(ip("203.0.113.7")));
        // From the right, skipping trusted hops; every copy of the header, in order.
        assert_eq!(
            client("10.0.0.1", &["1.2.3.4, 198.51.100.9", "10.0.0.2"]),
            Some(ip("198.51.100.9"))
        );
        assert_eq!(
            client("::1", &["[2001:db8::1]:443"]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            client("10.0.0.1", &["203.0.113.7:8080"]),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client("10.0.0.1", &["::ffff:192.0.2.5"]),
            Some(ip("192.0.2.5"))
        );
        assert_eq!(
            client("::ffff:10.0.0.1", &["192.0.2.5"]),
            Some(ip("192.0.2.5"))
        );
        // Only trusted hops: the peer.
        assert_eq!(client("10.0.0.1", &["10.1.1.1"]), Some(ip("10.0.0.1")));
        assert_eq!(client("10.0.0.1", &[]), Some(ip("10.0.0.1")));
    }

    #[test]
    fn forwarded_reads_for_and_nothing_else() {
        let t = TrustedProxies::new(["10.0.0.0/8"]).map(|t| t.header("Forwarded"));
        let t = t.as_ref().ok();
        let got = t.map(|t| {
            t.client_ip(
                ip("10.0.0.1"),
                ["for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\""],
            )
        });
        assert_eq!(got, Some(ip("2001:db8:cafe::17")));
        // X-Forwarded-For is not read when the proxy writes Forwarded.
        assert_eq!(t.map(|t| t.header_name()), Some("forwarded"));
    }

    #[test]
    fn a_hop_without_an_address_is_an_opaque_address_of_its_own() {
        let t = TrustedProxies::new(["10.0.0.0/8"]).ok();
        let t = t.as_ref();
        let a = t.map(|t| t.client_ip(ip("10.0.0.1"), ["unknown"]));
        let b = t.map(|t| t.client_ip(ip("10.0.0.1"), [" \"UNKNOWN\" "]));
        let c = t.map(|t| t.client_ip(ip("10.0.0.1"), ["_hidden"]));
        assert_eq!(a, b, "stable, case-insensitive");
        assert_ne!(a, c);
        // The same address the Python middleware derives:
        // hashlib.blake2b(b"unknown", digest_size=7) = eb80afd1e2fe84.
        assert_eq!(a, Some(ip("1eb:80af:d1e2:fe84::")));
        assert!(matches!(a, Some(IpAddr::V6(v)) if v.octets()[0] == 1));
    }

    #[test]
    fn a_unix_socket_peer_is_trusted_only_when_unix_is_listed() {
        let hops = ["198.51.100.1, 203.0.113.7", "10.0.0.2"];
        // Not listed: the header of a peer without an address is not read.
        let ips = TrustedProxies::new(["10.0.0.0/8"]).ok();
        assert_eq!(
            ips.as_ref().map(TrustedProxies::trusts_unix_socket),
            Some(false)
        );
        assert_eq!(ips.and_then(|t| t.client_ip_of(None, hops, false)), None);
        let unix = TrustedProxies::new(["10.0.0.0/8", " UNIX: "]).ok();
        let unix = unix.as_ref();
        assert_eq!(unix.map(TrustedProxies::trusts_unix_socket), Some(true));
        assert_eq!(unix.map(TrustedProxies::is_empty), Some(false));
        // Listed: from the right, skipping trusted hops, as for a trusted address.
        assert_eq!(
            unix.and_then(|t| t.client_ip_of(None, hops, false)),
            Some(ip("203.0.113.7"))
        );
        let forwarded = ["for=192.0.2.60;proto=https"];
        assert_eq!(
            unix.and_then(|t| t.client_ip_of(None, forwarded, true)),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(unix.map(|t| t.trusts_peer(None)), Some(true));
        assert_eq!(
            unix.map(|t| t.trusts_peer(Some(ip("::ffff:10.1.2.3")))),
            Some(true)
        );
        assert_eq!(
            unix.map(|t| t.trusts_peer(Some(ip("192.0.2.1")))),
            Some(false)
        );
        // Nothing but trusted hops, or no header: still no address.
        assert_eq!(
            unix.and_then(|t| t.client_ip_of(None, ["10.1.1.1"], false)),
            None
        );
        assert_eq!(unix.and_then(|t| t.client_ip_of(None, [], false)), None);
        // `unix:` alone trusts no address: an addressed peer is the client.
        let only = TrustedProxies::new(["unix:"]).ok();
        assert_eq!(
            only.as_ref()
                .and_then(|t| t.client_ip_of(Some(ip("10.0.0.1")), hops, false)),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            only.and_then(|t| t.client_ip_of(None, hops, false)),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "example.com",
            "",
            "unix",
            "unix:/run/app.sock",
        ] {
            assert!(TrustedProxies::new([bad]).is_err(), "{bad:?}");
        }
    }
}
