//! The client a limit or a penalty counts: a network, not an address.

use std::fmt;
use std::net::IpAddr;

/// The network a client address stands for: the address itself for IPv4
/// (and IPv4-mapped IPv6), its /64 for IPv6, as one host usually holds a
/// whole /64. Limits and login penalties count by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn new(ip: IpAddr) -> Self {
        Self(match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut segments = v6.segments();
                    segments[4..].fill(0);
                    IpAddr::V6(segments.into())
                }
            },
        })
    }

    /// The network's first address (the address itself for IPv4).
    pub fn network(&self) -> IpAddr {
        self.0
    }
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        Self::new(ip)
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_itself_and_ipv6_its_slash_64() {
        let key = |s: &str| ClientKey::new(s.parse().unwrap());
        assert_eq!(key("192.0.2.9"), key("::ffff:192.0.2.9"));
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:2"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:1::1"));
        assert_eq!(key("2001:db8::7").to_string(), "2001:db8::/64");
        assert_eq!(key("192.0.2.9").to_string(), "192.0.2.9");
    }
}
