//! Where the broker is and how to reach it: the URL, a connector that opens a byte stream
//! (TCP on the host, the VMM-proxied vsock in the guest), and TLS on top for `https://`.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A bidirectional byte stream.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Opens a new stream to the broker (one per HTTP request).
pub trait Connector: Send + Sync {
    fn connect(&self) -> io::Result<Box<dyn Stream>>;
}

/// Any closure returning a stream is a connector (the guest init wraps its vsock connect).
impl<F> Connector for F
where
    F: Fn() -> io::Result<Box<dyn Stream>> + Send + Sync,
{
    fn connect(&self) -> io::Result<Box<dyn Stream>> {
        self()
    }
}

/// TCP with connect, read and write timeouts.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    pub addr: String,
    pub timeout: Duration,
}

impl Connector for TcpConnector {
    fn connect(&self) -> io::Result<Box<dyn Stream>> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
        for addr in self.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(self.timeout))?;
                    s.set_write_timeout(Some(self.timeout))?;
                    s.set_nodelay(true)?;
                    return Ok(Box::new(s));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Errors in a broker URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("broker URL must start with http:// or https://")]
    Scheme,
    #[error("broker URL has no host")]
    Host,
    #[error("broker URL has an invalid port")]
    Port,
    #[error("https broker URLs need the tls feature")]
    NoTls,
}

/// A parsed `http(s)://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (often empty).
    pub prefix: String,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(UrlError::Scheme);
        };
        if tls && !cfg!(feature = "tls") {
            return Err(UrlError::NoTls);
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(UrlError::Host)?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['@', ' ', '/', '?', '#']) {
            return Err(UrlError::Host);
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| UrlError::Port)?,
            None if tls => 443,
            None => 80,
        };
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// `Host` header value.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }

    /// `host:port` for a TCP connector.
    pub fn socket_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// TLS for https brokers (rustls with ring; Mozilla's roots plus caller-supplied CAs).
#[cfg(feature = "tls")]
pub mod tls {
    use std::io;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    use super::Stream;

    /// Errors setting up TLS.
    #[derive(Debug, thiserror::Error)]
    pub enum TlsError {
        #[error("CA certificate PEM is invalid")]
        Pem(#[source] rustls::pki_types::pem::Error),
        #[error("CA certificate is not usable")]
        Ca(#[source] rustls::Error),
        #[error("TLS configuration failed")]
        Config(#[source] rustls::Error),
        #[error("broker host is not a valid TLS server name")]
        ServerName,
    }

    /// Client configuration trusting webpki roots and `extra_ca_pem` (if any).
    pub fn client_config(
        extra_ca_pem: Option<&[u8]>,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.map_err(TlsError::Pem)?)
                    .map_err(TlsError::Ca)?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// Wraps `stream` in a TLS session to `host`.
    pub fn wrap(
        config: &Arc<rustls::ClientConfig>,
        host: &str,
        stream: Box<dyn Stream>,
    ) -> Result<Box<dyn Stream>, io::Error> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, TlsError::ServerName))?;
        let conn = rustls::ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        Ok(Box::new(rustls::StreamOwned::new(conn, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_prefixes_and_ipv6() {
        let u = BrokerUrl::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.prefix.as_str()),
            (false, "127.0.0.1", 8000, "")
        );
        assert_eq!(u.host_header(), "127.0.0.1:8000");
        let u = BrokerUrl::parse("https://kbs.example/base/").unwrap();
        assert_eq!(
            (u.port, u.prefix.as_str(), u.host_header()),
            (443, "/base", "kbs.example".into())
        );
        let u = BrokerUrl::parse("http://[::1]:9/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.socket_addr()),
            ("::1", "[::1]:9".to_string())
        );
        assert_eq!(BrokerUrl::parse("ftp://x"), Err(UrlError::Scheme));
        assert_eq!(BrokerUrl::parse("http://:80"), Err(UrlError::Host));
        assert_eq!(BrokerUrl::parse("http://h:99999"), Err(UrlError::Port));
        assert_eq!(BrokerUrl::parse("http://user@h"), Err(UrlError::Host));
    }
}
