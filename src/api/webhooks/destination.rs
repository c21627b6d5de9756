//! Where a webhook may be delivered, checked at delivery time on the address actually
//! connected to.
//!
//! A URL accepted at `api-key create` can later resolve elsewhere (DNS changes, rebinding), so
//! the check runs on every delivery: a literal IP host is checked before sending, and a named
//! host is resolved by [`GuardedResolver`], which hands the HTTP client only addresses that
//! passed, so the connection goes to exactly the address that was checked. Private, loopback,
//! link-local (the cloud metadata service at 169.254.169.254 among them), shared, multicast and
//! reserved ranges are refused unless the operator names the host in
//! `webhooks.allow_private_hosts`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why a destination was refused (recorded as the delivery's `last_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not `https://` (plain `http://` only to an allowed host).
    #[error("destination refused: not https")]
    Scheme,
    /// The host is or resolves to a private, loopback, link-local or reserved address.
    #[error("destination refused: private or reserved address")]
    Private,
    /// The URL has no host or does not parse.
    #[error("destination refused: malformed URL")]
    Malformed,
}

/// The hosts an operator allows to be private (exact host names or IP literals as written in
/// the URL, compared case-insensitively; IPv6 without brackets).
#[derive(Debug, Clone, Default)]
pub struct Allowed(Arc<HashSet<String>>);

impl Allowed {
    /// From `webhooks.allow_private_hosts`.
    pub fn new(hosts: &[String]) -> Self {
        Self(Arc::new(
            hosts
                .iter()
                .map(|h| h.trim().trim_matches(['[', ']']).to_ascii_lowercase())
                .collect(),
        ))
    }

    fn contains(&self, host: &str) -> bool {
        self.0
            .contains(&host.trim_matches(['[', ']']).to_ascii_lowercase())
    }
}

/// Checks a URL before sending: scheme, and a literal IP host's range. A named host is checked
/// when it is resolved ([`GuardedResolver`]).
pub fn check_url(url: &reqwest::Url, allowed: &Allowed) -> Result<(), Refused> {
    let host = url.host_str().ok_or(Refused::Malformed)?;
    let allow = allowed.contains(host);
    match url.scheme() {
        "https" => {}
        "http" if allow => {}
        _ => return Err(Refused::Scheme),
    }
    match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) if !allow && !is_public(ip) => Err(Refused::Private),
        _ => Ok(()),
    }
}

/// A public unicast address: not private, loopback, link-local, shared (CGNAT), multicast,
/// documentation, benchmarking or reserved; IPv6 forms that embed an IPv4 address are judged
/// by that address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) and the deprecated IPv4-compatible form carry an IPv4 address.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) || s[..6] == [0; 6] {
        let o = ip.octets();
        let v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
        return !ip.is_unspecified() && !ip.is_loopback() && public_v4(v4);
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0] == 0x2001 && s[1] == 0x0db8))
}

/// Resolves named hosts for the webhook client and drops every address [`is_public`] refuses
/// (all of them for an allowed host pass): the client connects only to addresses that were
/// checked, so a DNS answer that changes between check and connect cannot slip through.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allowed: Allowed,
}

impl GuardedResolver {
    /// With the operator's allow-list.
    pub fn new(allowed: Allowed) -> Self {
        Self { allowed }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allow = self.allowed.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(RefusedResolution) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A named host that resolved only to refused addresses.
#[derive(Debug, thiserror::Error)]
#[error("destination refused: the host resolves only to private or reserved addresses")]
pub struct RefusedResolution;

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str, allowed: &[&str]) -> Option<Refused> {
        let allowed = Allowed::new(&allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        check_url(&reqwest::Url::parse(url).unwrap(), &allowed).err()
    }

    #[test]
    fn private_and_metadata_destinations_are_refused_unless_allowed() {
        for url in [
            "https://169.254.169.254/latest/meta-data",
            "https://10.1.2.3/hook",
            "https://127.0.0.1:5432/",
            "https://[::1]/",
            "https://[fd00:ec2::254]/",
            "https://[::ffff:10.0.0.1]/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://192.168.1.1/",
            "https://172.16.0.1/",
            "https://[fe80::1]/",
        ] {
            assert_eq!(refused(url, &[]), Some(Refused::Private), "{url}");
        }
        assert_eq!(
            refused("http://localhost:5672/", &[]),
            Some(Refused::Scheme)
        );
        assert_eq!(refused("ftp://example.org/", &[]), Some(Refused::Scheme));
        assert_eq!(refused("https://8.8.8.8/hook", &[]), None);
        assert_eq!(refused("https://[2606:4700::1111]/", &[]), None);
        assert_eq!(refused("https://hooks.example.org/x", &[]), None);
        assert_eq!(refused("http://127.0.0.1:9/x", &["127.0.0.1"]), None);
        assert_eq!(refused("http://[::1]:9/x", &["::1"]), None);
        assert_eq!(
            refused("http://127.0.0.2:9/x", &["127.0.0.1"]),
            Some(Refused::Scheme)
        );
    }
}
