//! Broker client: blocking, no async runtime, one connection per request through a
//! [`Connector`]. [`snp`] runs attestation from inside an SNP guest; [`sev`] is the host-side
//! SEV/SEV-ES pre-attestation the VMM drives around LAUNCH_START/MEASURE/SECRET.

pub mod report;
pub mod sev;
pub mod snp;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::{self, HttpError, HttpRequest, HttpResponse};
use crate::transport::{BrokerUrl, Connector, TcpConnector, UrlError};

/// The protocol step a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Auth,
    Attest,
    Key,
    Evidence,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Auth => "auth",
            Step::Attest => "attest",
            Step::Key => "key",
            Step::Evidence => "evidence",
        })
    }
}

/// Client errors; each names its step.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid broker URL")]
    Url(#[source] UrlError),
    #[error("TLS setup failed")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{step}: cannot connect to the key broker")]
    Connect {
        step: Step,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: HTTP exchange with the key broker failed")]
    Http {
        step: Step,
        #[source]
        source: HttpError,
    },
    #[error("{step}: key broker answered HTTP {status}: {message}")]
    Status {
        step: Step,
        status: u16,
        message: String,
    },
    #[error("{step}: key broker answer is invalid")]
    Answer {
        step: Step,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{step}: key broker set no session cookie")]
    NoCookie { step: Step },
    #[error("evidence: cannot get the attestation report")]
    Report(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{step}: TEE key operation failed")]
    Key {
        step: Step,
        #[source]
        source: crate::keys::KeysError,
    },
    #[error("key: the secret cannot be decrypted")]
    Decrypt(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ClientError {
    /// HTTP status of a broker refusal, if that is what this is.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn answer(step: Step, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ClientError::Answer {
            step,
            source: Box::new(e),
        }
    }
}

/// Which broker protocol to speak (the TEE config's `kbs_protocol`, parsed by krun-footer).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KbsProtocol {
    /// virtee/reference-kbs (buildah mkcw images); the default.
    #[default]
    Reference,
    /// Trustee RCAR 0.4.0.
    Rcar,
}

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    pub url: BrokerUrl,
    pub connector: Arc<dyn Connector>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Largest answer accepted.
    pub max_body: usize,
    /// Extra attempts when the broker cannot be reached or is busy (HTTP 503).
    pub retries: u32,
    pub retry_delay: Duration,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("max_body", &self.max_body)
            .field("retries", &self.retries)
            .finish()
    }
}

impl ClientConfig {
    /// A client for `url` reaching the broker through `connector` (the guest's vsock proxy).
    /// `extra_ca_pem` adds trusted CAs for https.
    pub fn new(
        url: &str,
        connector: Arc<dyn Connector>,
        extra_ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let url = BrokerUrl::parse(url).map_err(ClientError::Url)?;
        #[cfg(feature = "tls")]
        let tls = if url.tls {
            Some(
                crate::transport::tls::client_config(extra_ca_pem)
                    .map_err(|e| ClientError::Tls(Box::new(e)))?,
            )
        } else {
            None
        };
        #[cfg(not(feature = "tls"))]
        let _ = extra_ca_pem;
        Ok(ClientConfig {
            url,
            connector,
            #[cfg(feature = "tls")]
            tls,
            max_body: http::DEFAULT_MAX_BODY,
            retries: 4,
            retry_delay: Duration::from_secs(1),
        })
    }

    /// A client for the https `url` that accepts only a broker whose TLS key's
    /// SubjectPublicKeyInfo hashes (SHA-256) to `pin` (`crate::tls_pin`).
    #[cfg(feature = "tls")]
    pub fn pinned(
        url: &str,
        connector: Arc<dyn Connector>,
        pin: [u8; crate::tls_pin::PIN_LEN],
    ) -> Result<Self, ClientError> {
        let mut cfg = Self::new(url, connector, None)?;
        if !cfg.url.tls {
            return Err(ClientError::Tls(
                "a pinned broker key needs an https:// URL".into(),
            ));
        }
        cfg.tls =
            Some(crate::tls_pin::client_config(pin).map_err(|e| ClientError::Tls(Box::new(e)))?);
        Ok(cfg)
    }

    /// A client reaching `url` over TCP directly (the host side), with `timeout` per
    /// connect, read and write.
    pub fn tcp(
        url: &str,
        timeout: Duration,
        extra_ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let parsed = BrokerUrl::parse(url).map_err(ClientError::Url)?;
        let connector = Arc::new(TcpConnector {
            addr: parsed.socket_addr(),
            timeout,
        });
        Self::new(url, connector, extra_ca_pem)
    }

    fn open(&self, step: Step) -> Result<Box<dyn crate::transport::Stream>, ClientError> {
        let stream = self
            .connector
            .connect()
            .map_err(|source| ClientError::Connect { step, source })?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return crate::transport::tls::wrap(tls, &self.url.host, stream)
                .map_err(|source| ClientError::Connect { step, source });
        }
        Ok(stream)
    }

    /// The first step of every flow: POSTs `request` to `/kbs/v0/auth` and returns the
    /// session cookie named `cookie_name` and the parsed challenge.
    fn auth<Q: Serialize, C: serde::de::DeserializeOwned>(
        &self,
        request: &Q,
        cookie_name: &str,
    ) -> Result<(String, C), ClientError> {
        let step = Step::Auth;
        let body = serde_json::to_vec(request).map_err(|e| ClientError::answer(step, e))?;
        let resp = expect_ok(step, self.send(step, "POST", "auth", None, Some(&body))?)?;
        let cookie = resp
            .cookie(cookie_name)
            .ok_or(ClientError::NoCookie { step })?;
        let challenge =
            serde_json::from_slice(&resp.body).map_err(|e| ClientError::answer(step, e))?;
        Ok((cookie, challenge))
    }

    /// One request with bounded retries for unreachable or busy brokers. A request is never
    /// resent once it may have reached the broker, except after a 503 answer.
    fn send(
        &self,
        step: Step,
        method: &str,
        path: &str,
        cookie: Option<(&str, &str)>,
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, ClientError> {
        let full_path = format!("{}/kbs/v0/{path}", self.url.prefix);
        let host = self.url.host_header();
        let cookie_header = cookie.map(|(k, v)| format!("{k}={v}"));
        let mut headers: Vec<(&str, &str)> = vec![("Accept", "application/json")];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        if let Some(c) = &cookie_header {
            headers.push(("Cookie", c));
        }
        let req = HttpRequest {
            method,
            host: &host,
            path: &full_path,
            headers: &headers,
            body,
        };
        let mut attempt = 0;
        loop {
            let result = self.open(step).and_then(|mut stream| {
                http::exchange(&mut stream, &req, self.max_body)
                    .map_err(|source| ClientError::Http { step, source })
            });
            let retry = match &result {
                Err(ClientError::Connect { .. }) => true,
                Ok(r) => r.status == 503,
                Err(_) => false,
            };
            if !retry || attempt >= self.retries {
                return result;
            }
            attempt += 1;
            log::warn!(
                "{step}: key broker unreachable or busy, retrying ({attempt}/{})",
                self.retries
            );
            std::thread::sleep(self.retry_delay);
        }
    }
}

/// Turns a non-200 answer into an error naming the step.
fn expect_ok(step: Step, resp: HttpResponse) -> Result<HttpResponse, ClientError> {
    if resp.status == 200 {
        Ok(resp)
    } else {
        Err(ClientError::Status {
            step,
            status: resp.status,
            message: resp.message(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_broker_is_retried_then_reported_with_the_step() {
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let t = tries.clone();
        let connector = move || -> std::io::Result<Box<dyn crate::transport::Stream>> {
            t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        };
        let mut cfg = ClientConfig::new("http://kbs:1", Arc::new(connector), None).unwrap();
        cfg.retries = 2;
        cfg.retry_delay = Duration::from_millis(1);
        let err = cfg
            .send(Step::Auth, "POST", "auth", None, Some(b"{}"))
            .unwrap_err();
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(err.to_string(), "auth: cannot connect to the key broker");
    }
}
