//! PROXY protocol v1 and v2 (HAProxy's spec) on the mail listeners, accepted only
//! from `proxy_protocol.trusted_proxies`.
//!
//! The header is read byte-exactly (the first 12 bytes decide the version; v2 has
//! a length field, v1 ends at CRLF within 107 bytes), so not one byte of the
//! client's own protocol is consumed. Parsing is the `ppp` crate's. A peer that
//! is trusted must send a header; a peer that is not is never asked for one, so
//! it cannot choose the address postern logs and forwards.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1's longest header (spec §2.1).
pub const V1_MAX: usize = 107;
/// v2 headers postern accepts, TLVs included.
pub const V2_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY header from a trusted proxy")]
    Missing,
    #[error("malformed PROXY header")]
    Malformed,
    #[error("PROXY header too long")]
    TooLong,
    #[error("timed out waiting for the PROXY header")]
    Timeout,
    #[error("connection failed while reading the PROXY header: {0}")]
    Io(std::io::Error),
}

// Not `#[from]`: that would also make the I/O error the `source`, and a printed
// chain would show it twice.
impl From<std::io::Error> for ProxyError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

/// Which peers may send a header.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address for a connection from `peer`: read from the PROXY header
/// when `peer` is a trusted proxy, `peer` itself otherwise. A `LOCAL`/`UNKNOWN`
/// header (health checks) keeps the proxy's own address.
pub async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &TrustedProxies,
    limit: Duration,
) -> Result<SocketAddr, ProxyError> {
    if !trusted.trusts(peer.ip()) {
        return Ok(peer);
    }
    let header = tokio::time::timeout(limit, read_header(stream))
        .await
        .map_err(|_| ProxyError::Timeout)??;
    Ok(parse(&header)?.unwrap_or(peer))
}

async fn read_header(stream: &mut TcpStream) -> Result<Vec<u8>, ProxyError> {
    let mut header = Vec::with_capacity(16);
    loop {
        match frame(&header)? {
            Framing::Complete(_) => return Ok(header),
            Framing::Need(more) => {
                let start = header.len();
                header.resize(start + more, 0);
                stream.read_exact(&mut header[start..]).await?;
            }
        }
    }
}

/// How far a PROXY header has arrived, from the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Read exactly this many more bytes (never past the header's end, so none
    /// of the client's own protocol is consumed).
    Need(usize),
    /// The header is the first this many bytes.
    Complete(usize),
}

/// The framing of a PROXY header, without I/O: the first 12 bytes decide the
/// version; v2 carries its length (at most [`V2_MAX`] in all), v1 ends at CRLF
/// within [`V1_MAX`] bytes. `buf` holds what was read so far.
pub fn frame(buf: &[u8]) -> Result<Framing, ProxyError> {
    if buf.len() < V2_SIGNATURE.len() {
        // Both versions start with at least 12 bytes (`PROXY UNKNOWN\r\n` has 15).
        return Ok(Framing::Need(V2_SIGNATURE.len() - buf.len()));
    }
    if buf.starts_with(V2_SIGNATURE) {
        let Some(fixed) = buf.get(12..16) else {
            return Ok(Framing::Need(16 - buf.len()));
        };
        let total = 16 + usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if total > V2_MAX {
            return Err(ProxyError::TooLong);
        }
        return Ok(if buf.len() >= total {
            Framing::Complete(total)
        } else {
            Framing::Need(total - buf.len())
        });
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::Missing);
    }
    if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
        // The shortest v1 header (`PROXY UNKNOWN\r\n`) is 15 bytes: a line
        // ending inside the 12 bytes read at once is no header, and the bytes
        // after it belong to the client.
        if end + 2 < V2_SIGNATURE.len() {
            return Err(ProxyError::Malformed);
        }
        return Ok(Framing::Complete(end + 2));
    }
    if buf.len() >= V1_MAX {
        return Err(ProxyError::TooLong);
    }
    Ok(Framing::Need(1))
}

/// The source address a complete header carries (`None`: LOCAL / UNKNOWN).
pub fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    if header.starts_with(V2_SIGNATURE) {
        let parsed = v2::Header::try_from(header).map_err(|_| ProxyError::Malformed)?;
        if parsed.command == v2::Command::Local {
            return Ok(None);
        }
        return Ok(match parsed.addresses {
            v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
        });
    }
    let parsed = v1::Header::try_from(header).map_err(|_| ProxyError::Malformed)?;
    Ok(match parsed.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_carry_the_client_address() {
        assert_eq!(
            parse(b"PROXY TCP4 192.0.2.9 10.0.0.1 50000 143\r\n").unwrap(),
            Some("192.0.2.9:50000".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 993\r\n").unwrap(),
            Some("[2001:db8::7]:4000".parse().unwrap())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), None);
        let v2 = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "198.51.100.4:6000".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:993".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&v2).unwrap(),
            Some("198.51.100.4:6000".parse().unwrap())
        );
    }

    #[test]
    fn framing_reads_exactly_the_header() {
        let v1 = b"PROXY TCP4 192.0.2.9 10.0.0.1 50000 143\r\n";
        assert_eq!(frame(b"").unwrap(), Framing::Need(12));
        assert_eq!(frame(&v1[..12]).unwrap(), Framing::Need(1));
        assert_eq!(frame(v1).unwrap(), Framing::Complete(v1.len()));
        let mut with_more = v1.to_vec();
        with_more.extend_from_slice(b"a001 CAPABILITY\r\n");
        assert_eq!(frame(&with_more).unwrap(), Framing::Complete(v1.len()));
        assert!(matches!(
            frame(b"GET / HTTP/1.1\r\n"),
            Err(ProxyError::Missing)
        ));
        assert!(matches!(
            frame(&[b"PROXY ".as_slice(), &[b'x'; V1_MAX]].concat()),
            Err(ProxyError::TooLong)
        ));
        // Found by fuzzing: a line shorter than 12 bytes is refused, not framed
        // past its end.
        assert!(matches!(
            frame(b"PROXY 143\r\na"),
            Err(ProxyError::Malformed)
        ));
        let mut v2 = V2_SIGNATURE.to_vec();
        assert_eq!(frame(&v2).unwrap(), Framing::Need(4));
        v2.extend_from_slice(&[0x21, 0x11, 0, 12]);
        assert_eq!(frame(&v2).unwrap(), Framing::Need(12));
        v2.extend_from_slice(&[0; 12]);
        assert_eq!(frame(&v2).unwrap(), Framing::Complete(28));
        v2[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(frame(&v2), Err(ProxyError::TooLong)));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse(b"PROXY TCP4 nope\r\n"),
            Err(ProxyError::Malformed)
        ));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x99, 0x11, 0, 0]);
        assert!(matches!(parse(&v2), Err(ProxyError::Malformed)));
    }

    #[test]
    fn trust_is_by_network_including_mapped_addresses() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(trusted.trusts("10.1.2.3".parse().unwrap()));
        assert!(trusted.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!trusted.trusts("192.0.2.1".parse().unwrap()));
        assert!(!TrustedProxies::default().trusts("127.0.0.1".parse().unwrap()));
    }
}
