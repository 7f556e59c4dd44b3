//! End to end with the project's PSP model as the platform: its SNP launch digest and signed
//! reports, and its legacy-SEV LAUNCH_START/MEASURE/SECRET, against the real `krun-kbs`
//! configured with the model's roots by hand. A broker with AMD's roots only refuses them.

// Helpers outside #[test] fns unwrap too: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use krun_attestation::client::sev::SevAttestation;
use krun_attestation::client::snp::{self, SnpRequest};
use krun_attestation::reference::{SevBuild, SevCertChain, SevMeasurement, SevVersion};
use krun_attestation::{secret_table, ClientError, KbsProtocol, Step};
use krun_psp_model::{ModelIdentity, OwnerSession, SevGuest, SevMode, SnpGuest, SnpLaunchFinish};
use support::*;

fn status(e: &ClientError) -> (Step, u16) {
    match e {
        ClientError::Status { step, status, .. } => (*step, *status),
        other => panic!("unexpected error {other}"),
    }
}

/// A launched SNP guest: one measured page, libkrun's policy.
fn snp_guest(identity: &Arc<ModelIdentity>, page: u8) -> SnpGuest {
    let mut guest = SnpGuest::launch_start(identity.clone(), LIBKRUN_POLICY, [0; 16]).unwrap();
    guest.update_normal(0x10_0000, &[page; 4096]).unwrap();
    guest
        .launch_finish(SnpLaunchFinish {
            id_block: None,
            author_key_en: false,
            host_data: [0; 32],
        })
        .unwrap();
    guest
}

#[test]
fn snp_guest_of_the_model_attests_with_both_protocols() {
    let identity = Arc::new(ModelIdentity::generate().unwrap());
    let guest = snp_guest(&identity, 0xa5);
    let tampered = snp_guest(&identity, 0x5a);

    let dir = tempfile::tempdir().unwrap();
    let vcek = format!("{}.pem", hex::encode(identity.snp_platform().chip_id));
    std::fs::write(dir.path().join(vcek), identity.vcek_pem().unwrap()).unwrap();
    let root = [
        identity.snp_ark_pem().unwrap(),
        identity.snp_ask_pem().unwrap(),
    ]
    .concat();
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        trust_root_pem: Some(root),
        vcek_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    kbs.register(
        "model-w",
        &hex::encode(guest.launch_digest()),
        "model passphrase",
        15,
    );
    let amd_only = Kbs::start(KbsOptions {
        admin_token: true,
        vcek_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    amd_only.register(
        "model-w",
        &hex::encode(guest.launch_digest()),
        "model passphrase",
        15,
    );

    for protocol in [KbsProtocol::Reference, KbsProtocol::Rcar] {
        let req = SnpRequest {
            workload_id: "model-w",
            protocol,
            generation: "milan",
            resource_path: None,
            host_json: None,
        };
        let mut report =
            |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
                Ok(guest.report(&rd, 0)?.to_vec())
            };
        let secret = snp::attest(&kbs.client(), &req, &mut report).unwrap();
        assert_eq!(secret.as_slice(), b"model passphrase", "{protocol:?}");
        let err = snp::attest(&amd_only.client(), &req, &mut report).unwrap_err();
        assert_eq!(
            status(&err),
            (Step::Attest, 401),
            "AMD roots refuse the model: {err}"
        );

        let mut other =
            |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
                Ok(tampered.report(&rd, 0)?.to_vec())
            };
        let err = snp::attest(&kbs.client(), &req, &mut other).unwrap_err();
        assert_eq!(
            status(&err),
            (Step::Attest, 401),
            "other launch digest: {err}"
        );
        // A report requested at VMPL 1 is refused (workloads require VMPL 0).
        let mut vmpl1 =
            |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
                Ok(guest.report(&rd, 1)?.to_vec())
            };
        let err = snp::attest(&kbs.client(), &req, &mut vmpl1).unwrap_err();
        assert_eq!(status(&err), (Step::Attest, 401), "VMPL 1: {err}");
    }
}

#[test]
fn sev_es_guest_of_the_model_gets_its_launch_secret() {
    let identity = ModelIdentity::generate().unwrap();
    let chain = SevCertChain::from_bytes(identity.sev_chain_bytes()).unwrap();
    let b = identity.sev_version().build();
    let build = SevBuild {
        version: SevVersion {
            major: b.version.major,
            minor: b.version.minor,
        },
        build: b.build,
    };
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        sev_ark: Some(chain.ca.ark.clone()),
        ..Default::default()
    });
    let data = [0x42u8; 8192];
    let vmsa = [0x17u8; 4096];
    let digest = openssl::sha::sha256(&[data.as_slice(), &vmsa].concat());
    kbs.register(
        "sev-model",
        &hex::encode(digest),
        "sev model passphrase",
        63,
    );

    let launch = |contents: &[u8]| -> Result<Vec<u8>, ClientError> {
        let session = SevAttestation::auth(&kbs.client(), "sev-model", build, chain.clone(), None)?;
        let owner = OwnerSession {
            godh_cert: &session.start.cert,
            session: &session.start.session.to_bytes(),
        };
        let mut guest = SevGuest::launch_start(
            &identity,
            SevMode::SevEs,
            session.start.policy.to_u32(),
            Some(owner),
        )
        .unwrap();
        guest.launch_update_data(contents).unwrap();
        guest.launch_update_vmsa(&vmsa).unwrap();
        let m = guest.launch_measure().unwrap();
        session.attest(&SevMeasurement::from_bytes(&m.to_bytes()).unwrap())?;
        let packet = session.key()?;
        let plain = guest
            .launch_secret(
                &packet.header_bytes(),
                packet.ciphertext.len(),
                &packet.ciphertext,
            )
            .unwrap();
        Ok(secret_table::passphrase(&plain).unwrap().to_vec())
    };
    assert_eq!(launch(&data).unwrap(), b"sev model passphrase");
    let err = launch(&[0u8; 8192]).unwrap_err();
    assert_eq!(status(&err), (Step::Attest, 401), "{err}");
}
