//! [`KeyBroker`] backed by the `krun-attestation` client: SNP attestation with the key
//! broker of the launch's measured binding, speaking its `kbs_protocol` (reference-kbs, as
//! in buildah's images; RCAR for Trustee), reached through the VMM's proxy on vsock port
//! 1025. With a `broker_pin` the TLS session must end at a broker holding that key.

use std::sync::Arc;

use krun_attestation::client::snp::{self, SnpRequest};
use krun_attestation::transport::{Connector, Stream};
use krun_attestation::{ClientConfig, KbsProtocol};

use crate::key_source::{BrokerRequest, KeyBroker, Passphrase};
use crate::vsock::{VsockStream, ATTESTATION_PROXY_PORT, HOST_CID};

/// The guest's broker client.
pub struct AttestationClient {
    connector: Arc<dyn Connector>,
}

impl std::fmt::Debug for AttestationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttestationClient")
    }
}

impl AttestationClient {
    /// A client whose connections go to the host's attestation proxy.
    pub fn over_vsock() -> Self {
        let connect = || -> std::io::Result<Box<dyn Stream>> {
            Ok(Box::new(VsockStream::connect(
                HOST_CID,
                ATTESTATION_PROXY_PORT,
            )?))
        };
        AttestationClient {
            connector: Arc::new(connect),
        }
    }

    /// A client using `connector`.
    #[cfg(test)]
    pub fn with_connector(connector: Arc<dyn Connector>) -> Self {
        AttestationClient { connector }
    }
}

impl KeyBroker for AttestationClient {
    fn fetch_passphrase(
        &self,
        req: BrokerRequest<'_>,
    ) -> Result<Passphrase, Box<dyn std::error::Error + Send + Sync>> {
        let binding = req.binding;
        let protocol = match binding.kbs_protocol {
            krun_footer::KbsProtocol::Reference => KbsProtocol::Reference,
            krun_footer::KbsProtocol::Rcar => KbsProtocol::Rcar,
        };
        let cfg = match &binding.broker_pin {
            #[cfg(feature = "tls")]
            Some(pin) => {
                ClientConfig::pinned(&binding.attestation_url, self.connector.clone(), *pin)?
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => {
                return Err(
                    "the launch pins the broker's TLS key, but this init was built without TLS"
                        .into(),
                )
            }
            None => ClientConfig::new(&binding.attestation_url, self.connector.clone(), None)?,
        };
        let request = SnpRequest {
            workload_id: &binding.workload_id,
            protocol,
            generation: req.generation,
            resource_path: None,
            host_json: (!req.host_json.is_empty()).then_some(req.host_json),
        };
        let evidence = req.evidence;
        let mut get_report =
            |data: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
                Ok(evidence.report(&data, 0)?)
            };
        Ok(snp::attest(&cfg, &request, &mut get_report)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::footer::TeeConfig;
    use crate::snp_report::{ReportSource, SnpReportError};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    struct NoReports;
    impl ReportSource for NoReports {
        fn report(&mut self, _: &[u8; 64], _: u32) -> Result<Vec<u8>, SnpReportError> {
            Err(SnpReportError::Size)
        }
    }

    const HOST_JSON: &[u8] = br#"{"format":1,"tee":"snp"}"#;

    /// A config through the shared parser, as the init gets it from the footer.
    fn tee(url: &str, protocol: Option<&str>) -> TeeConfig {
        let protocol = protocol.map_or(String::new(), |p| format!(r#","kbs_protocol":"{p}""#));
        let json = format!(
            r#"{{"workload_id":"wl-123","cpus":1,"ram_mib":512,"tee":"snp","tee_data":"{{\"gen\":\"genoa\"}}","attestation_url":"{url}"{protocol}}}"#
        );
        TeeConfig::parse(json.as_bytes()).unwrap()
    }

    fn binding(cfg: &TeeConfig) -> krun_footer::Binding {
        krun_footer::Binding::from_tee_config(cfg).unwrap().unwrap()
    }

    /// A broker that refuses `/auth` with 401 and hands back what it received.
    fn refusing_broker() -> (AttestationClient, std::thread::JoinHandle<(String, String)>) {
        let (client_end, server_end) = UnixStream::pair().unwrap();
        let slot = Mutex::new(Some(client_end));
        let connect = move || -> std::io::Result<Box<dyn Stream>> {
            let s = slot
                .lock()
                .unwrap()
                .take()
                .ok_or_else(|| std::io::Error::other("one connection"))?;
            Ok(Box::new(s))
        };
        let server = std::thread::spawn(move || {
            let mut r = BufReader::new(server_end.try_clone().unwrap());
            let mut request_line = String::new();
            r.read_line(&mut request_line).unwrap();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let answer = "no such workload";
            let mut w = server_end;
            write!(w, "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len()).unwrap();
            (request_line, String::from_utf8(body).unwrap())
        });
        (AttestationClient::with_connector(Arc::new(connect)), server)
    }

    #[test]
    fn reference_auth_goes_through_the_connector_with_the_workload_id() {
        let (client, server) = refusing_broker();
        let cfg = tee("http://broker.example:8000", None);
        let err = client
            .fetch_passphrase(BrokerRequest {
                binding: &binding(&cfg),
                generation: "genoa",
                evidence: &mut NoReports,
                host_json: HOST_JSON,
            })
            .unwrap_err();
        let (line, body) = server.join().unwrap();
        assert_eq!(line, "POST /kbs/v0/auth HTTP/1.1\r\n");
        assert!(body.contains("wl-123"), "{body}");
        // The measured host.json travels with the request, for a broker that recomputes
        // the launch digest.
        let req: krun_attestation::reference::Request = serde_json::from_str(&body).unwrap();
        let snp: krun_attestation::reference::SnpRequest =
            serde_json::from_str(&req.extra_params).unwrap();
        assert_eq!(
            snp.host_json.as_deref(),
            Some(krun_attestation::reference::encode_host_json(HOST_JSON).as_str())
        );
        let client_err = err.downcast_ref::<krun_attestation::ClientError>().unwrap();
        assert_eq!(client_err.status(), Some(401));
    }

    #[test]
    fn rcar_is_selected_by_kbs_protocol() {
        let (client, server) = refusing_broker();
        let cfg = tee("http://broker.example:8080", Some("rcar"));
        let err = client
            .fetch_passphrase(BrokerRequest {
                binding: &binding(&cfg),
                generation: "genoa",
                evidence: &mut NoReports,
                host_json: HOST_JSON,
            })
            .unwrap_err();
        let (line, body) = server.join().unwrap();
        assert_eq!(line, "POST /kbs/v0/auth HTTP/1.1\r\n");
        let req: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            req["extra-params"][krun_attestation::rcar::HOST_JSON_PARAM].as_str(),
            Some(krun_attestation::reference::encode_host_json(HOST_JSON).as_str())
        );
        // RCAR's auth request names the protocol version and the TEE, not the workload.
        assert!(
            body.contains("\"version\"") && body.contains("snp"),
            "{body}"
        );
        assert!(!body.contains("wl-123"), "{body}");
        assert!(err
            .downcast_ref::<krun_attestation::ClientError>()
            .is_some());
    }
}
