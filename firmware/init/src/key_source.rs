//! Where the disk passphrase comes from, decided by the (measured) launch kind:
//!
//! | host.json `tee` | source |
//! |---|---|
//! | `sev`, `sev-es` | the LAUNCH_SECRET table in `/krun/secret` ([`crate::secret_table`]) |
//! | `snp` | in-guest attestation: a report from /dev/sev-guest, or from the PSP model's service (vsock 1026) when `psp_model` is set, handed to a [`KeyBroker`] that talks to the broker through the VMM's proxy on vsock 1025 |
//! | `none` | `dev_passphrase` from host.json (refused by [`crate::host_config`] in any other mode) |
//!
//! The footer's `tee` must agree with a confidential launch: an image made for SNP is not
//! opened by an SEV launch and vice versa (the broker would refuse anyway; failing here gives
//! the user a clear message).

use std::path::Path;

use krun_footer::TeeKind as FooterKind;
use zeroize::Zeroizing;

use crate::footer::TeeConfig;
use crate::host_config::{HostConfig, TeeKind};
use crate::secret_table::{self, SecretTableError};
use crate::snp_report::ReportSource;

/// The passphrase, wiped on drop.
pub type Passphrase = Zeroizing<Vec<u8>>;

/// What a key broker client needs from the init.
pub struct BrokerRequest<'a> {
    /// The footer's TEE config (workload_id, tee_data, attestation_url, kbs_protocol).
    pub tee_config: &'a TeeConfig,
    /// Produces SNP reports over the client's REPORT_DATA.
    pub evidence: &'a mut dyn ReportSource,
}

impl std::fmt::Debug for BrokerRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerRequest")
            .field("tee_config", self.tee_config)
            .finish_non_exhaustive()
    }
}

/// An attestation client that turns evidence into the disk passphrase; it reaches the
/// broker itself (in the guest: through the VMM's proxy on vsock port 1025).
pub trait KeyBroker {
    /// Attests and returns the passphrase released for `tee_config.workload_id`.
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
            Some(FooterKind::Snp) => Ok(KeySource::Attestation),
            Some(_) => Err(KeySourceError::TeeMismatch),
        },
    }
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
            let tee_config = footer.ok_or(KeySourceError::NoFooter)?;
            attestation
                .broker
                .fetch_passphrase(BrokerRequest {
                    tee_config,
                    evidence: &mut *attestation.evidence,
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
        HostConfig {
            tee,
            dev_passphrase: dev.map(|d| Zeroizing::new(d.into())),
            ..HostConfig::default()
        }
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
                format!("key-for-{}", req.tee_config.workload_id).into_bytes(),
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
