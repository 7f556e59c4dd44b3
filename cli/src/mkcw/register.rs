//! `krun-sev mkcw --register`: computes the launch measurement the image will have (the same
//! computation as `krun-sev measure`) and registers the workload with the key broker through
//! the buildah-compatible `POST /kbs/v0/register_workload`, with the admin token as a bearer
//! token when one is given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use krun_attestation::http::{self, HttpRequest};
use krun_attestation::reference::{
    MeasurementKind, PolicyFlags, RegisterWorkload, SevPolicy, SevVersion,
};
use krun_attestation::transport::{BrokerUrl, Connector, Stream, TcpConnector, UrlError};
use krun_sev::launch::{self, MeasureRequest};
use krun_sev::resources::TeeConfig;
use krun_sev::tee::vcpu_model::VcpuModel;
use krun_sev::tee::TeeMode;
use zeroize::{Zeroize, Zeroizing};

/// Connect, read and write timeout of the registration request.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest broker answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// Errors while registering a workload.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The library could not compute the measurement.
    #[error("cannot compute the launch measurement")]
    Measure(#[source] launch::LaunchError),
    /// The broker URL is malformed.
    #[error("invalid key broker URL {url}")]
    Url {
        /// The URL given.
        url: String,
        /// Why.
        #[source]
        source: UrlError,
    },
    /// The admin token file cannot be read or is empty.
    #[error("cannot read the admin token from {0}")]
    Token(String, #[source] std::io::Error),
    /// The registration body cannot be encoded.
    #[error("cannot encode the registration")]
    Encode(#[source] serde_json::Error),
    /// The passphrase is not text (the registration body is JSON text).
    #[error("the passphrase is not UTF-8 text; the broker registration carries it as text")]
    PassphraseNotText,
    /// TLS setup for an https broker failed.
    #[error("cannot set up TLS for the key broker")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker cannot be reached.
    #[error("cannot connect to the key broker at {url}")]
    Connect {
        /// The broker URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the registration request to {url} failed")]
    Http {
        /// The broker URL.
        url: String,
        /// Why.
        #[source]
        source: http::HttpError,
    },
    /// The broker answered with an error status.
    #[error("the key broker refused the registration: HTTP {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The broker's reason.
        message: String,
    },
}

/// Where and how to register.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    /// Broker base URL (`http(s)://host[:port][/prefix]`).
    pub kbs_url: &'a str,
    /// File holding the admin bearer token.
    pub admin_token_file: Option<&'a Path>,
    /// Guest bundle the measurement is computed over.
    pub bundle: PathBuf,
    /// Extra CA certificates (PEM) trusted for an https broker.
    pub ca_pem: Option<Vec<u8>>,
}

/// What the image will measure as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedLaunch {
    /// Lowercase hex digest.
    pub measurement: String,
    /// The vCPU model the launch presents.
    pub vcpu_model: VcpuModel,
    /// The launch type.
    pub mode: TeeMode,
}

/// The measurement a launch of the image will have: the one `krun-sev measure
/// --tee-config` prints for its TEE config, binding included, on any machine.
pub fn expected_launch(
    config: &TeeConfig,
    reg: &Registration<'_>,
) -> Result<ExpectedLaunch, RegisterError> {
    let req = MeasureRequest::from_tee_config(config, reg.bundle.clone(), false)
        .map_err(RegisterError::Measure)?;
    let m = launch::expected_measurement(&req).map_err(RegisterError::Measure)?;
    Ok(ExpectedLaunch {
        measurement: m.digest_hex(),
        vcpu_model: req.vcpu_model,
        mode: req.mode,
    })
}

/// The guest policy registered with the workload, as buildah sends it (sev 1.x serde form):
/// SEV-ES 63, plain SEV 59, SNP 15 (which brokers ignore for SNP).
pub fn policy_json(mode: TeeMode) -> Result<String, RegisterError> {
    let flags = match mode {
        TeeMode::SevEs => 63,
        TeeMode::Sev => 59,
        TeeMode::Snp => 15,
    };
    let policy = SevPolicy {
        flags: PolicyFlags(flags),
        minfw: SevVersion { major: 0, minor: 0 },
    };
    serde_json::to_string(&policy).map_err(RegisterError::Encode)
}

/// The warning for a registration over plain `http://`: the body carries the passphrase
/// and the request the admin token, both readable and changeable by anyone on the path.
/// `None` for `https://` (and for a URL that does not parse; registering reports that).
pub fn cleartext_warning(reg: &Registration<'_>) -> Option<String> {
    let url = BrokerUrl::parse(reg.kbs_url).ok()?;
    if url.tls {
        return None;
    }
    let what = if reg.admin_token_file.is_some() {
        "the admin token and the disk passphrase travel"
    } else {
        "the disk passphrase travels"
    };
    Some(format!(
        "mkcw: warning: registering over plain http ({}): {what} in clear; anyone on the \
         network path can read them or change the registration. Use an https:// broker URL \
         (--kbs-ca-file for a private CA) unless the broker is on this machine",
        reg.kbs_url
    ))
}

pub(crate) fn read_token(path: &Path) -> Result<Zeroizing<String>, RegisterError> {
    let shown = || path.display().to_string();
    let mut raw = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| RegisterError::Token(shown(), e))?,
    );
    let token = Zeroizing::new(raw.trim().to_owned());
    raw.zeroize();
    if token.is_empty() {
        return Err(RegisterError::Token(
            shown(),
            std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        ));
    }
    Ok(token)
}

fn open(url: &BrokerUrl, reg: &Registration<'_>) -> Result<Box<dyn Stream>, RegisterError> {
    let connect = |source| RegisterError::Connect {
        url: reg.kbs_url.to_owned(),
        source,
    };
    let stream = TcpConnector {
        addr: url.socket_addr(),
        timeout: TIMEOUT,
    }
    .connect()
    .map_err(connect)?;
    if url.tls {
        let tls = krun_attestation::transport::tls::client_config(reg.ca_pem.as_deref())
            .map_err(|e| RegisterError::Tls(Box::new(e)))?;
        return krun_attestation::transport::tls::wrap(&tls, &url.host, stream).map_err(connect);
    }
    Ok(stream)
}

/// POSTs the registration. The passphrase only exists in zeroized buffers here.
pub fn register(
    reg: &Registration<'_>,
    workload_id: &str,
    launch: &ExpectedLaunch,
    passphrase: &[u8],
) -> Result<(), RegisterError> {
    let url = BrokerUrl::parse(reg.kbs_url).map_err(|source| RegisterError::Url {
        url: reg.kbs_url.to_owned(),
        source,
    })?;
    let token = reg.admin_token_file.map(read_token).transpose()?;
    let mut body = RegisterWorkload {
        workload_id: workload_id.to_owned(),
        launch_measurement: launch.measurement.clone(),
        passphrase: std::str::from_utf8(passphrase)
            .map_err(|_| RegisterError::PassphraseNotText)?
            .to_owned(),
        tee_config: policy_json(launch.mode)?,
        // `krun-sev measure`'s digest covers the binding: the broker matches it directly.
        measurement_kind: Some(MeasurementKind::Bound),
    };
    let json = serde_json::to_vec(&body).map(Zeroizing::new);
    body.passphrase.zeroize();
    let json = json.map_err(RegisterError::Encode)?;
    let auth = token.map(|t| Zeroizing::new(format!("Bearer {}", t.as_str())));
    let path = format!("{}/kbs/v0/register_workload", url.prefix);
    let host = url.host_header();
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let mut stream = open(&url, reg)?;
    let resp = http::exchange(
        &mut stream,
        &HttpRequest {
            method: "POST",
            host: &host,
            path: &path,
            headers: &headers,
            body: Some(&json),
        },
        MAX_ANSWER,
    )
    .map_err(|source| RegisterError::Http {
        url: reg.kbs_url.to_owned(),
        source,
    })?;
    // buildah treats 200 and 202 as success.
    if matches!(resp.status, 200 | 202) {
        Ok(())
    } else {
        Err(RegisterError::Refused {
            status: resp.status,
            message: resp.message(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_buildahs() {
        let p: SevPolicy = serde_json::from_str(&policy_json(TeeMode::SevEs).unwrap()).unwrap();
        assert_eq!(p.to_u32(), 63);
        let p: SevPolicy = serde_json::from_str(&policy_json(TeeMode::Sev).unwrap()).unwrap();
        assert_eq!(p.to_u32(), 59);
        assert!(!p.flags.contains(PolicyFlags::ENCRYPTED_STATE));
        assert_eq!(
            policy_json(TeeMode::Snp).unwrap(),
            r#"{"flags":{"bits":15},"minfw":{"major":0,"minor":0}}"#
        );
    }

    #[test]
    fn plain_http_registration_is_warned_about() {
        let reg = Registration {
            kbs_url: "http://kbs.example:8000",
            admin_token_file: Some(Path::new("/token")),
            bundle: PathBuf::from("/nonexistent"),
            ca_pem: None,
        };
        let warning = cleartext_warning(&reg).unwrap();
        assert!(
            warning.contains("the admin token and the disk passphrase travel in clear"),
            "{warning}"
        );
        let no_token = Registration {
            admin_token_file: None,
            ..reg.clone()
        };
        assert!(cleartext_warning(&no_token)
            .unwrap()
            .contains("the disk passphrase travels in clear"));
        let tls = Registration {
            kbs_url: "https://kbs.example:8443",
            ..reg
        };
        assert_eq!(cleartext_warning(&tls), None);
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "  secret-token\n").unwrap();
        assert_eq!(read_token(&f).unwrap().as_str(), "secret-token");
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(read_token(&f), Err(RegisterError::Token(..))));
        assert!(matches!(
            read_token(&dir.path().join("missing")),
            Err(RegisterError::Token(..))
        ));
    }

    #[test]
    fn unreachable_broker_is_a_connect_error() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let reg = Registration {
            kbs_url: &url,
            admin_token_file: None,
            bundle: PathBuf::from("/nonexistent"),
            ca_pem: None,
        };
        let launch = ExpectedLaunch {
            measurement: "00".repeat(32),
            vcpu_model: VcpuModel::Milan,
            mode: TeeMode::SevEs,
        };
        let err = register(&reg, "w", &launch, b"pw").unwrap_err();
        assert!(matches!(err, RegisterError::Connect { .. }), "{err:?}");
        let bad = Registration {
            kbs_url: "ftp://x",
            ..reg
        };
        assert!(matches!(
            register(&bad, "w", &launch, b"pw"),
            Err(RegisterError::Url { .. })
        ));
    }
}
