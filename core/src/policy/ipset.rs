//! The address lists (`lists.allow_ips`, `lists.deny_ips`, and the trusted
//! proxies of `forwarded.rs`, at each hop), looked up on every
//! request: sorted, disjoint ranges per address family, searched in
//! logarithmic time. Scanned network by network (`IpNet::contains` each,
//! about 25 instructions per network by callgrind) a blocklist of 10,000
//! networks cost every request ~18.5 µs; searched, ~25 ns over no list
//! (benches/README.md).

use std::net::IpAddr;

use ipnet::IpNet;

/// A set of networks. An address is in it when a network of its own family
/// holds it (an IPv4 network never holds an IPv6 address, nor the reverse, as
/// with `IpNet::contains`).
#[derive(Debug, Clone, Default)]
pub(crate) struct IpSet {
    /// Inclusive ranges `(first, last)`, sorted and disjoint.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    /// The set of `nets` (host bits in a network's address are ignored, as
    /// `IpNet::contains` ignores them). `IpNet::aggregate` merges them into
    /// sorted, disjoint networks per family; each becomes its range.
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        let mut set = Self::default();
        for net in IpNet::aggregate(&nets) {
            match net {
                IpNet::V4(n) => set
                    .v4
                    .push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => set
                    .v6
                    .push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        set
    }

    /// Whether the set holds no network.
    pub(crate) fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether a network of the set holds `ip`.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => within(&self.v4, u32::from(a)),
            IpAddr::V6(a) => within(&self.v6, u128::from(a)),
        }
    }
}

/// Whether one of the sorted, disjoint `ranges` holds `x`: the last range
/// starting at or before `x` is the only one that can.
fn within<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|r| r.0 <= x);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|r| x <= r.1)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn nets(items: &[&str]) -> Vec<IpNet> {
        items
            .iter()
            .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
            .collect()
    }

    #[test]
    fn edges_families_and_overlaps() {
        let set = IpSet::new(nets(&[
            "192.0.2.0/24",
            "192.0.2.128/25",
            "10.1.2.3/16",
            "0.0.0.0/32",
            "255.255.255.255/32",
            "2001:db8::/32",
            "::ffff:198.51.100.0/120",
        ]));
        for (ip, held) in [
            ("192.0.2.0", true),
            ("192.0.2.255", true),
            ("192.0.3.0", false),
            ("192.0.1.255", false),
            ("10.1.0.0", true),
            ("10.1.255.255", true),
            ("10.2.0.0", false),
            ("0.0.0.0", true),
            ("0.0.0.1", false),
            ("255.255.255.255", true),
            ("255.255.255.254", false),
            ("2001:db8::1", true),
            ("2001:db9::", false),
            // A mapped IPv6 network holds only IPv6 addresses, as
            // `IpNet::contains` does (requests come canonical: unmapped).
            ("198.51.100.7", false),
            ("::ffff:198.51.100.7", true),
        ] {
            let addr: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
            assert_eq!(set.contains(addr), held, "{ip}");
        }
        assert!(!set.is_empty());
        let empty = IpSet::new(Vec::new());
        assert!(empty.is_empty() && !empty.contains(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    fn v4_net() -> impl Strategy<Value = IpNet> {
        // Few distinct high bits, so networks overlap and nest often.
        (0u32..8, any::<u32>(), 0u8..=32).prop_map(|(top, low, prefix)| {
            let addr = Ipv4Addr::from((top << 29) | (low >> 3));
            IpNet::V4(ipnet::Ipv4Net::new(addr, prefix).unwrap_or_else(|e| panic!("{e}")))
        })
    }

    fn v6_net() -> impl Strategy<Value = IpNet> {
        (0u128..8, any::<u128>(), 0u8..=128).prop_map(|(top, low, prefix)| {
            let addr = Ipv6Addr::from((top << 125) | (low >> 3));
            IpNet::V6(ipnet::Ipv6Net::new(addr, prefix).unwrap_or_else(|e| panic!("{e}")))
        })
    }

    proptest! {
        /// The set answers as scanning the networks with `IpNet::contains`,
        /// for addresses anywhere and at every network's edges.
        #[test]
        fn answers_as_the_scan(
            list in prop::collection::vec(prop_oneof![v4_net(), v6_net()], 0..40),
            probes in prop::collection::vec(
                prop_oneof![
                    (0u32..8, any::<u32>()).prop_map(|(t, l)| IpAddr::from(Ipv4Addr::from((t << 29) | (l >> 3)))),
                    (0u128..8, any::<u128>()).prop_map(|(t, l)| IpAddr::from(Ipv6Addr::from((t << 125) | (l >> 3)))),
                ],
                0..40,
            ),
        ) {
            let set = IpSet::new(list.clone());
            let edges = list.iter().flat_map(|n| {
                let (first, last) = (n.network(), n.broadcast());
                let next = match last {
                    IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
                    IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
                };
                let before = match first {
                    IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_sub(1))),
                    IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_sub(1))),
                };
                [first, last, next, before]
            });
            for ip in probes.into_iter().chain(edges) {
                let scanned = list.iter().any(|n| n.contains(&ip));
                prop_assert_eq!(set.contains(ip), scanned, "{}", ip);
            }
        }
    }
}
