//! The server under test: a `ws://` URL whose host must be a loopback address.
//!
//! Hostnames other than `localhost` are refused without any DNS lookup, so no traffic of this
//! tool can ever leave the machine.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::http::Uri;

#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given (used for the upgrade request).
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL '{url}': {e}"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some(other) => {
                return Err(format!(
                    "unsupported scheme '{other}': only ws:// (plain, loopback) is supported"
                ))
            }
            None => return Err(format!("URL '{url}' has no scheme (ws://...)")),
        }
        let ip = loopback_host(&uri, url)?;
        let port = uri.port_u16().unwrap_or(80);
        Ok(Target {
            url: url.to_owned(),
            addr: SocketAddr::new(ip, port),
        })
    }

    /// The local address a device's connection binds, when several source addresses are used.
    pub fn source_for(&self, index: usize, source_ips: u8) -> Option<IpAddr> {
        if source_ips <= 1 || !self.addr.is_ipv4() {
            return None;
        }
        let last = 1 + (index % source_ips as usize) as u8;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    /// Opens the TCP connection (no-delay on), bound to `source` when given.
    pub async fn connect_tcp(&self, source: Option<IpAddr>) -> io::Result<TcpStream> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(src) = source {
            bind_address_no_port(&socket);
            socket.bind(SocketAddr::new(src, 0))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// The host of `url` (any scheme: `ws://`, `nats://`, `redis://`), which must be a loopback
/// address or `localhost`; nothing is resolved.
pub fn require_loopback(url: &str) -> Result<IpAddr, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid URL '{url}': {e}"))?;
    loopback_host(&uri, url)
}

fn loopback_host(uri: &Uri, url: &str) -> Result<IpAddr, String> {
    let host = uri
        .host()
        .ok_or_else(|| format!("URL '{url}' has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| {
            format!("host '{host}' is not an IP address: only loopback addresses or 'localhost' are allowed")
        })?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "refusing target {ip}: only loopback addresses (127.0.0.0/8, ::1) may be targets"
        ));
    }
    Ok(ip)
}

/// `IP_BIND_ADDRESS_NO_PORT`: with bind-before-connect, let the kernel pick the port at connect
/// time (per destination) rather than at bind time, so ports are not exhausted per address.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd, a pointer to a c_int and its size; failure is harmless (the
    // kernel then picks the port at bind time).
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_socket: &TcpSocket) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_only() {
        assert!(Target::parse("ws://127.0.0.1:8080/ws").is_ok());
        assert!(Target::parse("ws://127.3.4.5:9/ws").is_ok());
        assert!(Target::parse("ws://localhost:8080/ws").is_ok());
        assert!(Target::parse("ws://[::1]:8080/ws").is_ok());
        for bad in [
            "ws://10.0.0.1:8080/ws",
            "ws://192.168.1.2/ws",
            "ws://8.8.8.8/ws",
            "ws://example.com/ws",
            "wss://127.0.0.1/ws",
            "http://127.0.0.1/ws",
            "127.0.0.1:8080",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn source_addresses_round_robin() {
        let t = Target::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(t.source_for(0, 1), None);
        assert_eq!(t.source_for(0, 4), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(t.source_for(5, 4), Some("127.0.0.2".parse().unwrap()));
    }
}
