//! Where the disk passphrase comes from, decided by the (measured) launch kind:
//!
//! | host.json `tee` | source |
//! |---|---|
//! | `sev`, `sev-es` | the LAUNCH_SECRET table in `/krun/secret` ([`crate::secret_table`]) |
//! | `snp` | in-guest attestation with the broker and workload of host.json's measured `binding`: a report from /dev/sev-guest, or from the PSP model's service (vsock 1026) in a guest without SNP, handed to a [`KeyBroker`] that talks to the broker through the VMM's proxy on vsock 1025 |
//! | `none` | `dev_passphrase` from host.json (refused by [`crate::host_config`] in any other mode) |
//!
//! The footer's `tee` must agree with a confidential launch: an image made for SNP is not
//! opened by an SEV launch and vice versa (the broker would refuse anyway; failing here gives
//! the user a clear message). The footer is host-controlled, so the broker and workload come
//! from the measured binding only; a footer naming another broker or workload is refused, so
//! that a host cannot make the guest talk to a broker the launch was not measured for.

use std::path::Path;

use krun_footer::{Binding, TeeKind as FooterKind};
use zeroize::Zeroizing;

use crate::footer::TeeConfig;
use crate::host_config::{HostConfig, TeeKind};
use crate::secret_table::{self, SecretTableError};
use crate::snp_report::ReportSource;

/// SNP generation hint when `tee_data` has no `gen` (buildah hard-codes "milan"); the footer
/// parser has already limited `gen` to the generations brokers know.
const DEFAULT_GENERATION: &str = "milan";

/// The passphrase, wiped on drop.
pub type Passphrase = Zeroizing<Vec<u8>>;

/// What a key broker client needs from the init.
pub struct BrokerRequest<'a> {
    /// The measured binding: the only broker asked, for the only workload's key.
    pub binding: &'a Binding,
    /// SNP generation hint for the broker (the footer's `tee_data.gen`, default milan).
    pub generation: &'a str,
    /// Produces SNP reports over the client's REPORT_DATA.
    pub evidence: &'a mut dyn ReportSource,
    /// The measured host.json, for a broker that recomputes the launch digest.
    pub host_json: &'a [u8],
}

impl std::fmt::Debug for BrokerRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerRequest")
            .field("binding", self.binding)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// An attestation client that turns evidence into the disk passphrase; it reaches the
/// broker itself (in the guest: through the VMM's proxy on vsock port 1025).
pub trait KeyBroker {
    /// Attests and returns the passphrase released for `binding.workload_id`.
    fn fetch_passphrase(
        &self,
        request: BrokerRequest<'_>,
    ) -> Result<Passphrase, Box<dyn std::error::Error + Send + Sync>>;
}

/// Errors from obtaining the passphrase.
#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    /// A source that yields no passphrase was asked for one.
    #[error("no key source: a launch without a TEE needs dev_passphrase in /krun/host.json")]
    NoKeySource,
    /// SNP needs the footer's workload_id and broker URL.
    #[error("the root disk has no KRUN footer, which SNP attestation needs")]
    NoFooter,
    /// The image was made for another TEE.
    #[error("the image was made for another TEE than this launch")]
    TeeMismatch,
    /// SNP attestation needs the broker and workload the launch was measured for.
    #[error("the launch is not bound to a key broker (its TEE config has no attestation_url)")]
    NotBound,
    /// The host-controlled footer names another broker or workload than the measured launch.
    #[error("the root disk footer names workload {footer_workload:?} at {footer_url}, but this launch was measured for workload {bound_workload:?} at {bound_url} (with the same protocol and broker key): refusing a configuration the launch was not measured for")]
    BindingMismatch {
        /// What the footer says.
        footer_workload: String,
        footer_url: String,
        /// What host.json says.
        bound_workload: String,
        bound_url: String,
    },
    /// The SEV launch secret is unusable.
    #[error("cannot take the passphrase from the launch secret")]
    LaunchSecret(#[source] SecretTableError),
    /// The key broker client failed.
    #[error("attestation with the key broker failed")]
    Broker(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The passphrase is empty.
    #[error("the key source returned an empty passphrase")]
    Empty,
}

/// The source chosen for this launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// SEV/SEV-ES LAUNCH_SECRET table.
    LaunchSecret,
    /// SNP attestation.
    Attestation,
    /// Development passphrase from host.json.
    DevPassphrase,
    /// No TEE and no passphrase: the root disk is plain ext4 (never in a confidential launch).
    Unencrypted,
}

/// Picks the source for the launch and checks the footer agrees with it.
pub fn select(host: &HostConfig, footer: Option<&TeeConfig>) -> Result<KeySource, KeySourceError> {
    if host.tee.is_confidential() {
        check_binding(host.binding.as_ref(), footer)?;
    }
    let footer_tee = footer.map(|f| f.tee);
    match host.tee {
        TeeKind::None if host.dev_passphrase.is_some() => Ok(KeySource::DevPassphrase),
        TeeKind::None => Ok(KeySource::Unencrypted),
        // The footer's sev, sev-es and sev-no-es are all SEV-family images: the host decides
        // ES from its own copy of the config, and the measurement shows which one ran.
        TeeKind::Sev | TeeKind::SevEs => match footer_tee {
            None => Ok(KeySource::LaunchSecret),
            Some(t) if t.is_sev_family() => Ok(KeySource::LaunchSecret),
            Some(_) => Err(KeySourceError::TeeMismatch),
        },
        TeeKind::Snp => match footer_tee {
            None => Err(KeySourceError::NoFooter),
            Some(FooterKind::Snp) if host.binding.is_none() => Err(KeySourceError::NotBound),
            Some(FooterKind::Snp) => Ok(KeySource::Attestation),
            Some(_) => Err(KeySourceError::TeeMismatch),
        },
    }
}

/// The footer must describe the launch the measurement describes: the same binding (or, in
/// a launch without a broker, none).
fn check_binding(
    bound: Option<&Binding>,
    footer: Option<&TeeConfig>,
) -> Result<(), KeySourceError> {
    let Some(footer) = footer else {
        return Ok(());
    };
    // A footer whose pin does not parse has been refused by the footer parser already.
    let footer_binding = Binding::from_tee_config(footer).ok().flatten();
    if footer_binding.as_ref() == bound {
        return Ok(());
    }
    let url_and_id = |b: Option<&Binding>| {
        b.map_or((String::new(), "(no broker)".to_owned()), |b| {
            (b.workload_id.clone(), b.attestation_url.clone())
        })
    };
    let (footer_workload, footer_url) = url_and_id(footer_binding.as_ref());
    let (bound_workload, bound_url) = url_and_id(bound);
    Err(KeySourceError::BindingMismatch {
        footer_workload,
        footer_url,
        bound_workload,
        bound_url,
    })
}

/// What [`obtain`] needs for the SNP path.
pub struct AttestationContext<'a> {
    /// The broker client.
    pub broker: &'a dyn KeyBroker,
    /// The evidence source chosen by host.json's `psp_model`.
    pub evidence: &'a mut dyn ReportSource,
}

impl std::fmt::Debug for AttestationContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttestationContext")
    }
}

/// Obtains the passphrase from `source`.
pub fn obtain(
    source: KeySource,
    host: &HostConfig,
    footer: Option<&TeeConfig>,
    secret_path: &Path,
    attestation: &mut AttestationContext<'_>,
) -> Result<Passphrase, KeySourceError> {
    let pass = match source {
        KeySource::Unencrypted => return Err(KeySourceError::NoKeySource),
        KeySource::DevPassphrase => Zeroizing::new(
            host.dev_passphrase
                .as_ref()
                .ok_or(KeySourceError::NoKeySource)?
                .as_bytes()
                .to_vec(),
        ),
        KeySource::LaunchSecret => {
            secret_table::take_passphrase(secret_path).map_err(KeySourceError::LaunchSecret)?
        }
        KeySource::Attestation => {
            let binding = host.binding.as_ref().ok_or(KeySourceError::NotBound)?;
            let generation = footer
                .and_then(TeeConfig::generation)
                .unwrap_or(DEFAULT_GENERATION);
            attestation
                .broker
                .fetch_passphrase(BrokerRequest {
                    binding,
                    generation,
                    evidence: &mut *attestation.evidence,
                    host_json: &host.text,
                })
                .map_err(KeySourceError::Broker)?
        }
    };
    if pass.is_empty() {
        return Err(KeySourceError::Empty);
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snp_report::SnpReportError;

    fn footer(tee: FooterKind) -> TeeConfig {
        TeeConfig {
            workload_id: "w".into(),
            cpus: 1,
            ram_mib: 512,
            tee,
            tee_data: serde_json::Map::new(),
            attestation_url: "http://broker".into(),
            kbs_protocol: krun_footer::KbsProtocol::Reference,
        }
    }

    fn host(tee: TeeKind, dev: Option<&str>) -> HostConfig {
        let binding = tee.is_confidential().then(|| {
            Binding::from_tee_config(&footer(FooterKind::Snp))
                .unwrap()
                .unwrap()
        });
        HostConfig {
            tee,
            binding,
            dev_passphrase: dev.map(|d| Zeroizing::new(d.into())),
            ..HostConfig::default()
        }
    }

    #[test]
    fn a_footer_naming_another_broker_or_workload_is_refused() {
        let launch = host(TeeKind::Snp, None);
        let other_broker = TeeConfig {
            attestation_url: "http://evil".into(),
            ..footer(FooterKind::Snp)
        };
        let other_workload = TeeConfig {
            workload_id: "y".into(),
            ..footer(FooterKind::Snp)
        };
        let no_broker = TeeConfig {
            attestation_url: String::new(),
            ..footer(FooterKind::Snp)
        };
        for f in [&other_broker, &other_workload, &no_broker] {
            let err = select(&launch, Some(f)).unwrap_err();
            assert!(
                matches!(err, KeySourceError::BindingMismatch { .. }),
                "{err}"
            );
        }
        assert!(err_text(select(&launch, Some(&other_broker))).contains("http://evil"));
        // SEV: the same check (the key came for the measured binding).
        let sev = host(TeeKind::SevEs, None);
        assert!(select(&sev, Some(&other_workload)).is_err());
        // An SNP launch measured without a broker cannot attest.
        let unbound = HostConfig {
            binding: None,
            ..launch.clone()
        };
        assert!(matches!(
            select(&unbound, Some(&no_broker)),
            Err(KeySourceError::NotBound)
        ));
    }

    fn err_text<T>(r: Result<T, KeySourceError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn selection_follows_the_launch_kind() {
        let snp = footer(FooterKind::Snp);
        assert_eq!(
            select(&host(TeeKind::None, Some("p")), Some(&snp)).unwrap(),
            KeySource::DevPassphrase
        );
        assert_eq!(
            select(&host(TeeKind::None, None), None).unwrap(),
            KeySource::Unencrypted
        );
        for tee in [TeeKind::Sev, TeeKind::SevEs] {
            for kind in [FooterKind::Sev, FooterKind::SevEs, FooterKind::SevNoEs] {
                assert_eq!(
                    select(&host(tee, None), Some(&footer(kind))).unwrap(),
                    KeySource::LaunchSecret
                );
            }
            assert_eq!(
                select(&host(tee, None), None).unwrap(),
                KeySource::LaunchSecret
            );
            assert!(matches!(
                select(&host(tee, None), Some(&snp)),
                Err(KeySourceError::TeeMismatch)
            ));
        }
        assert_eq!(
            select(&host(TeeKind::Snp, None), Some(&snp)).unwrap(),
            KeySource::Attestation
        );
        assert!(matches!(
            select(&host(TeeKind::Snp, None), None),
            Err(KeySourceError::NoFooter)
        ));
        for kind in [FooterKind::Sev, FooterKind::SevEs, FooterKind::SevNoEs] {
            assert!(matches!(
                select(&host(TeeKind::Snp, None), Some(&footer(kind))),
                Err(KeySourceError::TeeMismatch)
            ));
        }
    }

    struct FixedReport;
    impl ReportSource for FixedReport {
        fn report(&mut self, data: &[u8; 64], _vmpl: u32) -> Result<Vec<u8>, SnpReportError> {
            let mut r = vec![0u8; 1184];
            r[0x50..0x90].copy_from_slice(data);
            Ok(r)
        }
    }

    /// A broker that asks for a report over a nonce and "releases" a key, bound to the
    /// workload id, when the report binds the nonce.
    struct EchoBroker;
    impl KeyBroker for EchoBroker {
        fn fetch_passphrase(
            &self,
            req: BrokerRequest<'_>,
        ) -> Result<Passphrase, Box<dyn std::error::Error + Send + Sync>> {
            let nonce = [7u8; 64];
            let report = req.evidence.report(&nonce, 0)?;
            if report[0x50..0x90] != nonce {
                return Err("report does not bind the nonce".into());
            }
            Ok(Zeroizing::new(
                format!("key-for-{}", req.binding.workload_id).into_bytes(),
            ))
        }
    }

    fn run(
        source: KeySource,
        host: &HostConfig,
        footer: Option<&TeeConfig>,
        secret: &Path,
    ) -> Result<Passphrase, KeySourceError> {
        let mut evidence = FixedReport;
        let mut ctx = AttestationContext {
            broker: &EchoBroker,
            evidence: &mut evidence,
        };
        obtain(source, host, footer, secret, &mut ctx)
    }

    #[test]
    fn each_source_yields_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        let dev = host(TeeKind::None, Some("dev-pass"));
        assert_eq!(
            run(KeySource::DevPassphrase, &dev, None, &secret)
                .unwrap()
                .as_slice(),
            b"dev-pass"
        );

        let mut slot = b"injected".to_vec();
        slot.resize(4096, 0);
        std::fs::write(&secret, &slot).unwrap();
        let sev = host(TeeKind::Sev, None);
        assert_eq!(
            run(KeySource::LaunchSecret, &sev, None, &secret)
                .unwrap()
                .as_slice(),
            b"injected"
        );
        assert!(!secret.exists());
        assert!(matches!(
            run(KeySource::LaunchSecret, &sev, None, &secret),
            Err(KeySourceError::LaunchSecret(_))
        ));

        let snp = host(TeeKind::Snp, None);
        let f = footer(FooterKind::Snp);
        assert_eq!(
            run(KeySource::Attestation, &snp, Some(&f), &secret)
                .unwrap()
                .as_slice(),
            b"key-for-w"
        );
    }

    #[test]
    fn empty_dev_passphrase_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dev = host(TeeKind::None, Some(""));
        assert!(matches!(
            run(KeySource::DevPassphrase, &dev, None, &dir.path().join("s")),
            Err(KeySourceError::Empty)
        ));
    }
}
