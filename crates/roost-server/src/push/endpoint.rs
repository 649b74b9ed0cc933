//! Which push endpoints the server will call. An endpoint is a URL a client chose, so every
//! request to one is an outbound request the client steers: without these rules the feature
//! would let anyone make the server probe addresses inside its network.
//!
//! - `https://` only; `http://` only to a loopback address, and only with
//!   `push.allow_http_loopback` (tests, a push service on the same host);
//! - no user name or password in the URL;
//! - the host must be one of `push.allowed_hosts` (or a subdomain of one) when that is set;
//! - the addresses the host stands for must be public unless `push.allow_private_addresses`:
//!   literal addresses are checked when the subscription is stored, names when each request
//!   resolves them ([`GuardedResolver`]), so a name that later points inside is refused then.
//!   Loopback is allowed with `allow_http_loopback`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::PushConfig;

/// Longest endpoint URL accepted (push services use well under 1,000 characters).
pub const MAX_ENDPOINT_CHARS: usize = 2048;

/// Address ranges that are not public: private, shared, loopback, link-local, documentation,
/// benchmarking, reserved, multicast, and IPv6's unique-local and site-local ranges.
static NOT_PUBLIC: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    ]
    .iter()
    .filter_map(|range| range.parse().ok())
    .collect()
});

/// Why an endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The rules of `push` in the configuration.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    allowed_hosts: Vec<String>,
    allow_http_loopback: bool,
    allow_private_addresses: bool,
}

impl EndpointPolicy {
    /// The rules the configuration sets.
    pub fn new(config: &PushConfig) -> Self {
        Self {
            allowed_hosts: config.allowed_hosts.iter().map(|host| host.trim_end_matches('.').to_lowercase()).collect(),
            allow_http_loopback: config.allow_http_loopback,
            allow_private_addresses: config.allow_private_addresses,
        }
    }

    /// Checks an endpoint as a subscription names it; returns it parsed.
    pub fn check(&self, endpoint: &str) -> Result<Url, Refused> {
        if endpoint.chars().count() > MAX_ENDPOINT_CHARS {
            return Err(Refused(format!("the endpoint is longer than {MAX_ENDPOINT_CHARS} characters")));
        }
        let url = Url::parse(endpoint).map_err(|err| Refused(format!("the endpoint is not a URL: {err}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused("the endpoint must not carry a user name or password".into()));
        }
        let host = url.host_str().ok_or_else(|| Refused("the endpoint has no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_lowercase();
        let literal: Option<IpAddr> = host.parse().ok();
        let loopback = literal.is_some_and(|ip| canonical(ip).is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if loopback && self.allow_http_loopback => {}
            "http" if self.allow_http_loopback => {
                return Err(Refused("plain http:// endpoints are allowed for loopback addresses only".into()));
            }
            _ => return Err(Refused("the endpoint must be an https:// URL".into())),
        }
        if !self.allowed_hosts.is_empty()
            && !self.allowed_hosts.iter().any(|allowed| host == *allowed || host.ends_with(&format!(".{allowed}")))
        {
            return Err(Refused(format!("{host} is not one of this server's push services")));
        }
        if let Some(ip) = literal {
            if !self.admits(ip) {
                return Err(Refused(format!("{ip} is not a public address")));
            }
        } else if (host == "localhost" || host.ends_with(".localhost"))
            && !(self.allow_http_loopback || self.allow_private_addresses)
        {
            return Err(Refused("localhost is not a public address".into()));
        }
        Ok(url)
    }

    /// Whether a request may go to `ip`.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.allow_private_addresses || ip.is_loopback() && self.allow_http_loopback {
            return true;
        }
        !NOT_PUBLIC.iter().any(|range| range.contains(&ip))
    }
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Resolves names for requests to push services and keeps only the addresses the policy
/// admits: a name that resolves to nothing admitted fails the request before any connection.
pub struct GuardedResolver {
    policy: Arc<EndpointPolicy>,
}

impl GuardedResolver {
    /// A resolver that applies `policy`.
    pub fn new(policy: Arc<EndpointPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let admitted: Vec<SocketAddr> = found.filter(|address| policy.admits(address.ip())).collect();
            if admitted.is_empty() {
                let refused = Refused(format!("{} resolves to no public address", name.as_str()));
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(admitted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(edit: impl FnOnce(&mut PushConfig)) -> EndpointPolicy {
        let mut config = PushConfig::default();
        edit(&mut config);
        EndpointPolicy::new(&config)
    }

    #[test]
    fn only_public_https_endpoints_by_default() {
        let strict = policy(|_| {});
        assert!(strict.check("https://fcm.googleapis.com/fcm/send/abc").is_ok());
        assert!(strict.check("https://93.184.216.34/push").is_ok());
        for refused in [
            "http://push.example.com/x",
            "ftp://push.example.com/x",
            "https://user:secret@push.example.com/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[::ffff:192.168.1.1]/x",
            "https://[fd00::1]/x",
            "https://localhost/x",
            "https://api.localhost/x",
            "http://127.0.0.1:8080/x",
            "not a url",
        ] {
            assert!(strict.check(refused).is_err(), "{refused} must be refused");
        }
        assert!(strict.check(&format!("https://push.example.com/{}", "a".repeat(MAX_ENDPOINT_CHARS))).is_err());
    }

    #[test]
    fn loopback_http_only_when_configured_and_only_for_loopback() {
        let tests = policy(|config| config.allow_http_loopback = true);
        assert!(tests.check("http://127.0.0.1:8080/x").is_ok());
        assert!(tests.check("http://[::1]:8080/x").is_ok());
        assert!(tests.check("http://10.0.0.1/x").is_err());
        assert!(tests.check("http://push.example.com/x").is_err());
        assert!(!tests.admits("10.0.0.1".parse().unwrap()));
        assert!(tests.admits("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn listed_hosts_and_their_subdomains_only_when_listed() {
        let listed = policy(|config| config.allowed_hosts = vec!["push.services.mozilla.com".into()]);
        assert!(listed.check("https://updates.push.services.mozilla.com/wpush/v2/x").is_ok());
        assert!(listed.check("https://push.services.mozilla.com/x").is_ok());
        assert!(listed.check("https://evilpush.services.mozilla.com.example/x").is_err());
        assert!(listed.check("https://fcm.googleapis.com/x").is_err());
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused_when_a_request_goes_out() {
        let strict = GuardedResolver::new(Arc::new(policy(|_| {})));
        let refused = strict.resolve("localhost".parse().unwrap()).await;
        assert!(refused.is_err_and(|err| err.to_string().contains("no public address")));
        let tests = GuardedResolver::new(Arc::new(policy(|config| config.allow_http_loopback = true)));
        let admitted: Vec<SocketAddr> = tests.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!admitted.is_empty() && admitted.iter().all(|address| address.ip().is_loopback()));
    }

    #[test]
    fn private_addresses_when_the_operator_allows_them() {
        let inside = policy(|config| config.allow_private_addresses = true);
        assert!(inside.check("https://10.1.2.3/x").is_ok());
        assert!(inside.admits("192.168.1.1".parse().unwrap()));
    }
}
