//! The SSRF guard: which addresses a delivery may reach, checked on every
//! address the resolver returns so that a name rebinding to an internal
//! address is refused at connect time too.

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub(super) enum ResolveError {
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} resolved to no addresses")]
    NoAddresses { host: String },
    #[error("{host} resolves only to blocked addresses, e.g. {addr} ({reason})")]
    Blocked {
        host: String,
        addr: IpAddr,
        reason: &'static str,
    },
}

/// Resolves with the system resolver and drops every address the guard
/// refuses. The connector only dials what this returns.
pub(super) struct GuardedResolver {
    pub(super) guard: Arc<Guard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| ResolveError::Lookup {
                    host: host.clone(),
                    source,
                })?;
            let mut allowed: Vec<SocketAddr> = Vec::new();
            let mut refused = None;
            for addr in found {
                match guard.check(addr.ip()) {
                    Ok(()) => allowed.push(addr),
                    Err(reason) => refused = Some((addr.ip(), reason)),
                }
            }
            if allowed.is_empty() {
                let err = match refused {
                    Some((addr, reason)) => ResolveError::Blocked { host, addr, reason },
                    None => ResolveError::NoAddresses { host },
                };
                return Err(err.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The SSRF guard: special-purpose ranges are refused unless allowed.
#[derive(Debug, Default)]
pub(super) struct Guard {
    pub(super) allowed: Vec<IpNet>,
}

impl Guard {
    pub(super) fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// `Err(reason)` when the address may not be contacted.
    pub(super) fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match ip {
            IpAddr::V4(v4) => blocked_v4(v4).map_or(Ok(()), Err),
            IpAddr::V6(v6) => match classify_v6(v6) {
                V6Class::Global => Ok(()),
                V6Class::Blocked(reason) => Err(reason),
                // The packet ends up at the embedded IPv4 address.
                V6Class::Embeds(v4) => self.check(IpAddr::V4(v4)),
            },
        }
    }
}

/// IPv4 special-purpose ranges (IANA registry) that a webhook must not reach.
const BLOCKED_V4: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "\"this network\" 0.0.0.0/8"),
    (0x0A00_0000, 8, "private 10.0.0.0/8"),
    (
        0x6440_0000,
        10,
        "shared address space (CGNAT) 100.64.0.0/10",
    ),
    (0x7F00_0000, 8, "loopback 127.0.0.0/8"),
    (
        0xA9FE_0000,
        16,
        "link-local 169.254.0.0/16 (cloud metadata)",
    ),
    (0xAC10_0000, 12, "private 172.16.0.0/12"),
    (0xC000_0000, 24, "IETF protocol assignments 192.0.0.0/24"),
    (0xC000_0200, 24, "documentation 192.0.2.0/24"),
    (0xC058_6300, 24, "6to4 relay anycast 192.88.99.0/24"),
    (0xC0A8_0000, 16, "private 192.168.0.0/16"),
    (0xC612_0000, 15, "benchmarking 198.18.0.0/15"),
    (0xC633_6400, 24, "documentation 198.51.100.0/24"),
    (0xCB00_7100, 24, "documentation 203.0.113.0/24"),
    (0xE000_0000, 4, "multicast 224.0.0.0/4"),
    (0xF000_0000, 4, "reserved 240.0.0.0/4 (incl. broadcast)"),
];

/// IPv6 ranges inside global unicast 2000::/3 that are not reachable targets.
const BLOCKED_V6_GLOBAL: &[(u128, u8, &str)] = &[
    (0x2001_0db8 << 96, 32, "documentation 2001:db8::/32"),
    (
        0x2001 << 112,
        23,
        "IETF protocol assignments 2001::/23 (Teredo, benchmarking)",
    ),
    (0x3fff << 112, 20, "documentation 3fff::/20"),
];

fn v4_in(value: u32, base: u32, len: u8) -> bool {
    let shift = 32u32.saturating_sub(len.into());
    value.checked_shr(shift).unwrap_or(0) == base.checked_shr(shift).unwrap_or(0)
}

fn v6_in(value: u128, base: u128, len: u8) -> bool {
    let shift = 128u32.saturating_sub(len.into());
    value.checked_shr(shift).unwrap_or(0) == base.checked_shr(shift).unwrap_or(0)
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let value = u32::from(ip);
    BLOCKED_V4
        .iter()
        .find(|(base, len, _)| v4_in(value, *base, *len))
        .map(|(_, _, reason)| *reason)
}

enum V6Class {
    Global,
    Blocked(&'static str),
    Embeds(Ipv4Addr),
}

fn classify_v6(ip: Ipv6Addr) -> V6Class {
    let value = u128::from(ip);
    let v4_low = Ipv4Addr::from((value & 0xFFFF_FFFF) as u32);
    if ip.is_unspecified() {
        return V6Class::Blocked("unspecified ::");
    }
    if ip.is_loopback() {
        return V6Class::Blocked("loopback ::1");
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (deprecated compatible).
    if value >> 32 == 0xFFFF || value >> 32 == 0 {
        return V6Class::Embeds(v4_low);
    }
    // NAT64 well-known prefix: a gateway forwards to the embedded address.
    if v6_in(value, 0x0064_ff9b << 96, 96) {
        return V6Class::Embeds(v4_low);
    }
    if v6_in(value, 0x2002 << 112, 16) {
        // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        return V6Class::Embeds(Ipv4Addr::from(((value >> 80) & 0xFFFF_FFFF) as u32));
    }
    if !v6_in(value, 0x2000 << 112, 3) {
        return V6Class::Blocked(match ip.segments()[0] {
            0xfc00..=0xfdff => "unique local fc00::/7 (incl. AWS metadata fd00:ec2::254)",
            0xfe80..=0xfebf => "link-local fe80::/10",
            0xfec0..=0xfeff => "site-local fec0::/10",
            0xff00..=0xffff => "multicast ff00::/8",
            _ => "not global unicast (outside 2000::/3)",
        });
    }
    BLOCKED_V6_GLOBAL
        .iter()
        .find(|(base, len, _)| v6_in(value, *base, *len))
        .map_or(V6Class::Global, |(_, _, reason)| V6Class::Blocked(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn guard(allowed: &[&str]) -> Guard {
        Guard::new(allowed.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_special_purpose_ranges() {
        let g = guard(&[]);
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.100.100.200",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.170",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "100::1",
            // Embedded IPv4 forms of blocked addresses.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:0a00:0001::1",
            "2002:7f00:0001::",
        ] {
            assert!(g.check(ip(addr)).is_err(), "{addr} should be blocked");
        }
    }

    #[test]
    fn permits_public_addresses() {
        let g = guard(&[]);
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert_eq!(g.check(ip(addr)), Ok(()), "{addr} should be allowed");
        }
    }

    #[test]
    fn allow_list_opens_ranges() {
        let g = guard(&["127.0.0.0/8", "10.0.0.0/8", "fd00::/8"]);
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "::ffff:127.0.0.1",
            "64:ff9b::a01:203",
            "fd00:ec2::254",
        ] {
            assert_eq!(g.check(ip(addr)), Ok(()), "{addr} should be allowed");
        }
        for addr in ["::1", "169.254.169.254", "192.168.0.1", "fc00::1"] {
            assert!(g.check(ip(addr)).is_err(), "{addr} should still be blocked");
        }
    }

    #[tokio::test]
    async fn resolver_drops_blocked_addresses() {
        let blocked = GuardedResolver {
            guard: Arc::new(guard(&[])),
        };
        let err = blocked
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .err()
            .expect("localhost must be refused");
        assert!(
            matches!(
                err.downcast_ref::<ResolveError>(),
                Some(ResolveError::Blocked { .. })
            ),
            "{err}"
        );

        let open = GuardedResolver {
            guard: Arc::new(guard(&["127.0.0.0/8"])),
        };
        let addrs: Vec<_> = open
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()));
    }
}
