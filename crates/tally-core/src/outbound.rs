//! The one policy every outbound request goes through (DESIGN: outbound requests):
//! provider base URLs, connection tests and, later, scrape targets and webhooks. Private,
//! loopback, link-local (cloud metadata included), carrier-grade NAT, multicast and
//! unspecified addresses are refused unless an allow-list names them; a deployment can also
//! refuse every public address (tests and CI allow loopback only, so no fuzzed URL leaves
//! the machine). The policy judges addresses: callers apply it to a URL's literal address
//! and to every address its host name resolves to, at connection time.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    allow: Vec<IpNet>,
    allow_public: bool,
}

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("{0}")]
    InvalidUrl(String),
    #[error("{ip} is not an allowed destination ({why}); the outbound allow-list can permit it")]
    Refused { ip: IpAddr, why: &'static str },
}

impl Default for OutboundPolicy {
    /// Public addresses only.
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            allow_public: true,
        }
    }
}

impl OutboundPolicy {
    /// `allow`: CIDR blocks or single addresses permitted even though they are restricted;
    /// `allow_public`: whether other public addresses may be called.
    pub fn new(allow: &[String], allow_public: bool) -> Result<Self, String> {
        let allow = allow
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("'{s}' is not an IP address or CIDR block"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            allow,
            allow_public,
        })
    }

    /// Loopback only: what tests and CI run with.
    pub fn loopback_only() -> Self {
        Self::new(&["127.0.0.0/8".into(), "::1/128".into()], false).unwrap_or_default()
    }

    /// Whether `ip` may be connected to.
    pub fn check(&self, ip: IpAddr) -> Result<(), OutboundError> {
        let ip = canonical(ip);
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if let Some(why) = restricted(ip) {
            return Err(OutboundError::Refused { ip, why });
        }
        if !self.allow_public {
            return Err(OutboundError::Refused {
                ip,
                why: "public addresses are not allowed by this server's configuration",
            });
        }
        Ok(())
    }

    /// Checks a base URL's form: http or https, a host, no credentials in it, no fragment
    /// (a query is kept: Azure-style deployments name their `api-version` there). Its
    /// addresses are checked when it is connected to.
    pub fn check_url_form(url: &str) -> Result<(), OutboundError> {
        let bad = |m: &str| Err(OutboundError::InvalidUrl(m.to_owned()));
        let Some((scheme, rest)) = url.split_once("://") else {
            return bad("must be an absolute http:// or https:// URL");
        };
        if !matches!(scheme, "http" | "https") {
            return bad("must use http or https");
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.is_empty() {
            return bad("must name a host");
        }
        if authority.contains('@') {
            return bad("must not carry credentials; store them as the credential's key");
        }
        if rest.contains('#') {
            return bad("must not have a fragment");
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("must not contain spaces or control characters");
        }
        Ok(())
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn restricted(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private network")
            } else if v4.is_link_local() {
                Some("link-local, where cloud metadata services answer")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("carrier-grade NAT")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_broadcast() || v4.is_multicast() || o[0] >= 240 {
                Some("broadcast, multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("unique local (private) network, where cloud metadata services answer")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn restricted_addresses_are_refused_by_default() {
        let p = OutboundPolicy::default();
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.check(ip(a)).is_err(), "{a} must be refused");
        }
        assert!(p.check(ip("93.184.216.34")).is_ok());
        assert!(p.check(ip("2606:4700::1111")).is_ok());
    }

    #[test]
    fn loopback_only_refuses_public_and_private_but_allows_loopback() {
        let p = OutboundPolicy::loopback_only();
        assert!(p.check(ip("127.0.0.1")).is_ok());
        assert!(p.check(ip("::1")).is_ok());
        assert!(p.check(ip("8.8.8.8")).is_err());
        assert!(p.check(ip("10.0.0.1")).is_err());
        assert!(p.check(ip("169.254.169.254")).is_err());
    }

    #[test]
    fn the_allow_list_takes_blocks_and_single_addresses() {
        let p = OutboundPolicy::new(&["10.0.0.0/8".into(), "192.168.1.7".into()], true).unwrap();
        assert!(p.check(ip("10.9.9.9")).is_ok());
        assert!(p.check(ip("192.168.1.7")).is_ok());
        assert!(p.check(ip("192.168.1.8")).is_err());
        assert!(OutboundPolicy::new(&["nope".into()], true).is_err());
    }

    #[test]
    fn url_forms() {
        assert!(OutboundPolicy::check_url_form("https://api.openai.com/v1").is_ok());
        assert!(OutboundPolicy::check_url_form("http://127.0.0.1:8000").is_ok());
        for bad in [
            "ftp://x",
            "api.openai.com",
            "https://",
            "https://user:pw@host/",
            "https://host/#a",
            "https://ho st/",
        ] {
            assert!(OutboundPolicy::check_url_form(bad).is_err(), "{bad}");
        }
    }
}
