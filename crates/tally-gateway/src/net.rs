//! The HTTP client every provider call goes through: pooled connections, HTTP/2 where the
//! server offers it (ALPN), rustls, no redirects, and DESIGN's outbound policy applied to
//! every address a host name resolves to at connection time (so a name that resolves to a
//! private address later is refused too) and to literal addresses before sending.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use tally_core::outbound::{OutboundError, OutboundPolicy};

struct PolicyResolver {
    policy: Arc<OutboundPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused = Some(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| format!("{host} has no address"));
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The pooled client, its connect timeout set.
pub fn client(policy: Arc<OutboundPolicy>, connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PolicyResolver { policy }))
        .use_rustls_tls()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Checks a URL against the policy before it is called: its form, and its address when
/// it names one literally (names are checked as they resolve).
pub fn check_url(policy: &OutboundPolicy, url: &str) -> Result<Url, OutboundError> {
    OutboundPolicy::check_url_form(url)?;
    let parsed = Url::parse(url).map_err(|e| OutboundError::InvalidUrl(e.to_string()))?;
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => policy.check(ip.into())?,
        Some(url::Host::Ipv6(ip)) => policy.check(ip.into())?,
        Some(url::Host::Domain(d)) => {
            if let Ok(ip) = d.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                policy.check(ip)?;
            }
        }
        None => return Err(OutboundError::InvalidUrl("must name a host".into())),
    }
    Ok(parsed)
}
