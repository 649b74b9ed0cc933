//! Which address a request came from, when reverse proxies stand in front of roostd.
//!
//! Per-address rate limits key on the client's address. Behind a proxy the TCP peer is the
//! proxy, so every client would share one bucket; the proxy says who its client was in
//! `X-Forwarded-For` (or, configured so, the standard `Forwarded` header of RFC 7239, its `for=`
//! parameters). Anyone can send these headers, so the configured one is believed only from the
//! proxies the operator listed, and read from the right: each hop appends the address it
//! received the request from, so the first address (from the right) that is not a listed proxy is
//! the client. Entries to its left were written by the client itself and prove nothing. Only one
//! header is read: a proxy that appends to one passes the other through as the client wrote it.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One entry of `trusted_proxies`: an address (`10.0.0.7`) or a network (`10.0.0.0/8`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProxyRange(IpNet);

impl std::fmt::Debug for ProxyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl ProxyRange {
    fn contains(&self, address: IpAddr) -> bool {
        self.0.contains(&address)
    }
}

impl FromStr for ProxyRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        text.parse::<IpAddr>()
            .map(|address| Self(IpNet::from(address.to_canonical())))
            .map_err(|_| format!("{text:?} is neither an IP address nor a network such as 10.0.0.0/8"))
    }
}

impl Serialize for ProxyRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProxyRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The header the trusted proxies write the client's address into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1` (nginx, HAProxy, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The client's address: the TCP `peer` unless it is a trusted proxy, in which case the
/// rightmost address of `header` that is not one. An entry that is not an address ends the walk
/// at the last trusted hop, so a garbled header can only put its sender in that proxy's bucket,
/// never in someone else's.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[ProxyRange], header: ForwardedHeader) -> IpAddr {
    let mut client = peer.to_canonical();
    if trusted.is_empty() {
        return client;
    }
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    // Several header lines are one list, in order.
    let hops: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|hop| match header {
            ForwardedHeader::XForwardedFor => hop,
            ForwardedHeader::Forwarded => for_parameter(hop).unwrap_or(""),
        })
        .collect();
    for hop in hops.iter().rev() {
        if !trusted.iter().any(|range| range.contains(client)) {
            break;
        }
        match parse_hop(hop) {
            Some(address) => client = address,
            None => break,
        }
    }
    client
}

/// The `for=` value of one `Forwarded` element (`for=192.0.2.60;proto=https`,
/// `for="[2001:db8::1]:4711"`), unquoted; `None` when it has none.
fn for_parameter(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"'))
    })
}

/// `203.0.113.7`, `2001:db8::1`, or either with a port (`203.0.113.7:4711`, `[2001:db8::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let address = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(address.to_canonical())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a client writes in the header, the address found is the peer's or one the
        /// header names, and only a listed proxy's header is read at all.
        #[test]
        fn the_client_is_the_peer_or_an_address_the_header_names(
            lines in prop::collection::vec(
                prop_oneof![any::<String>(), "[0-9a-f:.\\[\\], ]{0,40}", "(10\\.0\\.0\\.[0-9]{1,3}, ?){0,3}[0-9.]{7,15}"],
                0..3,
            ),
            peer in prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), Just(ip("10.0.0.1"))],
        ) {
            let mut headers = HeaderMap::new();
            for line in &lines {
                if let Ok(value) = HeaderValue::from_str(line) {
                    headers.append("x-forwarded-for", value);
                }
            }
            let named: Vec<IpAddr> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .filter_map(parse_hop)
                .collect();
            prop_assert_eq!(client_address_xff(peer, &headers, &[]), peer);
            let trusted = ranges(&["10.0.0.0/8"]);
            let client = client_address_xff(peer, &headers, &trusted);
            if trusted[0].contains(peer) {
                prop_assert!(client == peer || named.contains(&client), "{client} from {lines:?}");
            } else {
                prop_assert_eq!(client, peer);
            }
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|_| unreachable!("test address"))
    }

    fn ranges(list: &[&str]) -> Vec<ProxyRange> {
        list.iter().map(|text| text.parse().unwrap_or_else(|_| unreachable!("test range"))).collect()
    }

    fn client_address_xff(peer: IpAddr, headers: &HeaderMap, trusted: &[ProxyRange]) -> IpAddr {
        client_address(peer, headers, trusted, ForwardedHeader::XForwardedFor)
    }

    #[test]
    fn the_standard_header_is_read_when_configured_and_only_then() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let mut headers = HeaderMap::new();
        headers.append(
            "forwarded",
            HeaderValue::from_static(r#"for=198.51.100.9;proto=https, for="[2001:db8:cafe::17]:4711";by=10.0.0.2"#),
        );
        headers.append("forwarded", HeaderValue::from_static("For=203.0.113.5, for=10.0.0.3"));
        headers.append("x-forwarded-for", HeaderValue::from_static("192.0.2.200"));
        let read = |header| client_address(ip("10.0.0.1"), &headers, &trusted, header);
        // From the right: 10.0.0.3 is a listed proxy, so the client is 203.0.113.5.
        assert_eq!(read(ForwardedHeader::Forwarded), ip("203.0.113.5"));
        assert_eq!(read(ForwardedHeader::XForwardedFor), ip("192.0.2.200"));
        // An element without `for=` (or an obfuscated `for=_hidden`) ends the walk.
        let mut hidden = HeaderMap::new();
        hidden.append("forwarded", HeaderValue::from_static("for=198.51.100.9, for=_hidden, proto=http"));
        assert_eq!(client_address(ip("10.0.0.1"), &hidden, &trusted, ForwardedHeader::Forwarded), ip("10.0.0.1"));
        // From a peer that is not listed, neither header counts.
        assert_eq!(
            client_address(ip("203.0.113.9"), &headers, &trusted, ForwardedHeader::Forwarded),
            ip("203.0.113.9")
        );
    }

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap_or_else(|_| unreachable!()));
        }
        headers
    }

    #[test]
    fn the_header_is_ignored_from_anyone_not_listed() {
        let headers = forwarded(&["198.51.100.1"]);
        assert_eq!(client_address_xff(ip("203.0.113.9"), &headers, &[]), ip("203.0.113.9"));
        assert_eq!(client_address_xff(ip("203.0.113.9"), &headers, &ranges(&["10.0.0.0/8"])), ip("203.0.113.9"));
    }

    #[test]
    fn a_listed_proxy_is_believed_and_the_walk_stops_at_the_first_stranger() {
        let trusted = ranges(&["10.0.0.0/8", "192.0.2.5"]);
        // client -> 192.0.2.5 (edge) -> 10.1.1.1 (inner) -> roostd; the client forged the first.
        let headers = forwarded(&["1.1.1.1, 198.51.100.7", "192.0.2.5"]);
        assert_eq!(client_address_xff(ip("10.1.1.1"), &headers, &trusted), ip("198.51.100.7"));
        // One proxy, no header: the proxy itself.
        assert_eq!(client_address_xff(ip("10.1.1.1"), &HeaderMap::new(), &trusted), ip("10.1.1.1"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_read() {
        let trusted = ranges(&["127.0.0.1"]);
        let cases = [
            ("203.0.113.7:4711", "203.0.113.7"),
            ("[2001:db8::1]:80", "2001:db8::1"),
            ("[2001:db8::2]", "2001:db8::2"),
        ];
        for (hop, client) in cases {
            assert_eq!(client_address_xff(ip("::ffff:127.0.0.1"), &forwarded(&[hop]), &trusted), ip(client), "{hop}");
        }
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_trusted_hop() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let headers = forwarded(&["198.51.100.7, unknown, 10.2.2.2"]);
        assert_eq!(client_address_xff(ip("10.1.1.1"), &headers, &trusted), ip("10.2.2.2"));
    }

    #[test]
    fn ranges_parse_addresses_and_networks_and_refuse_the_rest() {
        assert_eq!(ranges(&["10.1.2.3/8"]), ranges(&["10.0.0.0/8"]));
        assert!("::ffff:10.0.0.1".parse::<ProxyRange>().is_ok_and(|range| range.contains(ip("10.0.0.1"))));
        assert!("proxy.internal".parse::<ProxyRange>().is_err());
        assert!("10.0.0.0/33".parse::<ProxyRange>().is_err());
    }
}
