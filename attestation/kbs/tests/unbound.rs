//! Workloads registered with an unbound digest (buildah's `krunfw_measurement`) against the
//! real `krun-kbs` binary started with `--bundle` and `--public-url`: a launch bound to the
//! workload and this broker gets the key with either SNP protocol; an unbound launch, a
//! launch bound elsewhere, a host.json that is not the launch's own and a launch that sends
//! none get nothing. The same for an SEV-ES launch replayed on the PSP model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, OnceLock};

use krun_attestation::client::sev::SevAttestation;
use krun_attestation::client::snp::{self, SnpRequest};
use krun_attestation::reference::{SevBuild, SevCertChain, SevMeasurement, SevVersion};
use krun_attestation::{secret_table, ClientError, KbsProtocol, Step};
use krun_footer::Binding;
use krun_psp_model::{ModelIdentity, OwnerSession, SevGuest, SevMode};
use krun_sev::launch::host_json::{self, LaunchShape};
use krun_sev::launch::{expected_measurement_dump, measurement_of_host_json, MeasureRequest};
use krun_sev::resources::VmResources;
use krun_sev::tee::dump::Update;
use krun_sev::tee::vcpu_model::VcpuModel;
use krun_sev::tee::TeeMode;
use support::*;

fn identity() -> &'static Arc<ModelIdentity> {
    static ID: OnceLock<Arc<ModelIdentity>> = OnceLock::new();
    ID.get_or_init(|| Arc::new(ModelIdentity::generate().unwrap()))
}

fn launch(workload: &str, url: &str, protocol: krun_footer::KbsProtocol, vcpus: u8) -> Vec<u8> {
    let binding = Binding {
        workload_id: workload.into(),
        attestation_url: url.into(),
        kbs_protocol: protocol,
        broker_pin: None,
    };
    let shape = LaunchShape {
        vcpus,
        ram_mib: 512,
        vcpu_model: VcpuModel::default(),
        data_disk: false,
    };
    host_json::build(
        &VmResources::default(),
        TeeMode::Snp,
        &shape,
        Some(&binding),
    )
}

fn digest(kbs: &Kbs, json: &[u8]) -> [u8; 48] {
    let bundle = krun_bundle::Bundle::load(kbs.bundle.as_deref().unwrap()).unwrap();
    measurement_of_host_json(identity(), &bundle, json)
        .unwrap()
        .digest
        .try_into()
        .unwrap()
}

/// One attestation: the report carries `measurement`, the client sends `host_json`.
fn attest(
    kbs: &Kbs,
    ev: &SnpEvidence,
    workload: &str,
    protocol: KbsProtocol,
    measurement: [u8; 48],
    host_json: Option<&[u8]>,
) -> Result<Vec<u8>, ClientError> {
    let mut report = |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ev.report(rd, measurement, LIBKRUN_POLICY))
    };
    let req = SnpRequest {
        workload_id: workload,
        protocol,
        generation: "milan",
        resource_path: None,
        host_json,
    };
    snp::attest(&kbs.client(), &req, &mut report).map(|s| s.to_vec())
}

fn refused(r: Result<Vec<u8>, ClientError>, why: &str) {
    let e = r.expect_err(why);
    assert_eq!(e.status(), Some(401), "{why}: {e}");
}

#[test]
fn a_bound_launch_of_an_unbound_registration_gets_the_key_and_nothing_else_does() {
    use krun_footer::KbsProtocol::{Rcar, Reference};
    let ev = SnpEvidence::new();
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        insecure_registration: true,
        unbound: true,
        capture_log: true,
        ..Default::default()
    }));
    let bound = launch("u1", PUBLIC_URL, Reference, 2);
    let unbound = host_json::unbound(&bound).unwrap();
    let (d_bound, d_unbound) = (digest(&kbs, &bound), digest(&kbs, &unbound));
    assert_ne!(d_bound, d_unbound);
    // What buildah registers: krunfw_measurement's digest, no credentials, no kind.
    let r = kbs.post_json(
        "/kbs/v0/register_workload",
        None,
        buildah_body("u1", &hex::encode(d_unbound), "buildah pw", 15).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.message());

    let ok = attest(
        &kbs,
        &ev,
        "u1",
        KbsProtocol::Reference,
        d_bound,
        Some(&bound),
    );
    assert_eq!(ok.unwrap(), b"buildah pw");
    // The broker URL compares without a trailing slash.
    let slash = launch("u1", &format!("{PUBLIC_URL}/"), Reference, 2);
    let d_slash = digest(&kbs, &slash);
    assert_eq!(
        attest(
            &kbs,
            &ev,
            "u1",
            KbsProtocol::Reference,
            d_slash,
            Some(&slash)
        )
        .unwrap(),
        b"buildah pw"
    );

    // An unbound launch has the registered digest itself, and is never matched directly.
    refused(
        attest(&kbs, &ev, "u1", KbsProtocol::Reference, d_unbound, None),
        "unbound launch, no host.json",
    );
    refused(
        attest(
            &kbs,
            &ev,
            "u1",
            KbsProtocol::Reference,
            d_unbound,
            Some(&unbound),
        ),
        "unbound launch with its host.json",
    );
    // The launch must send its host.json.
    refused(
        attest(&kbs, &ev, "u1", KbsProtocol::Reference, d_bound, None),
        "no host.json",
    );
    // The host.json sent must be the launch's own: its digest is the report's.
    let other_shape = launch("u1", PUBLIC_URL, Reference, 1);
    refused(
        attest(
            &kbs,
            &ev,
            "u1",
            KbsProtocol::Reference,
            d_bound,
            Some(&other_shape),
        ),
        "another launch's host.json",
    );
    // Bound to another broker or another workload: refused even with matching digests.
    for (json, why) in [
        (
            launch("u1", "http://evil.test:8000", Reference, 2),
            "other broker",
        ),
        (launch("u2", PUBLIC_URL, Reference, 2), "other workload"),
        (launch("u1", PUBLIC_URL, Rcar, 2), "other protocol"),
    ] {
        let d = digest(&kbs, &json);
        refused(
            attest(&kbs, &ev, "u1", KbsProtocol::Reference, d, Some(&json)),
            why,
        );
    }
    // A launch of another shape has another unbound digest: not registered.
    let d_other = digest(&kbs, &other_shape);
    refused(
        attest(
            &kbs,
            &ev,
            "u1",
            KbsProtocol::Reference,
            d_other,
            Some(&other_shape),
        ),
        "unregistered shape",
    );
    let log = kbs.log();
    for reason in [
        "sent no host.json",
        "bound to another broker URL",
        "bound to another workload",
        "bound to another broker protocol",
        "not bound to a workload and broker",
        "has no registered digest",
    ] {
        assert!(
            log.contains(reason),
            "missing refusal {reason:?} in:\n{log}"
        );
    }

    // RCAR: the workload comes from the binding; the launch must be bound for RCAR.
    let rcar = launch("u1", PUBLIC_URL, Rcar, 2);
    let d_rcar = digest(&kbs, &rcar);
    assert_eq!(
        attest(&kbs, &ev, "u1", KbsProtocol::Rcar, d_rcar, Some(&rcar)).unwrap(),
        b"buildah pw"
    );
    assert!(attest(&kbs, &ev, "u1", KbsProtocol::Rcar, d_bound, Some(&bound)).is_err());
    assert!(attest(
        &kbs,
        &ev,
        "u1",
        KbsProtocol::Rcar,
        d_unbound,
        Some(&unbound)
    )
    .is_err());
    assert!(attest(&kbs, &ev, "u1", KbsProtocol::Rcar, d_rcar, None).is_err());
}

/// An SEV-ES launch of `req`, replayed on the PSP model with the broker's owner session,
/// sending `host_json` with `/auth`: the launch secret's passphrase, or the refusal.
fn sev_launch(
    kbs: &Kbs,
    req: &MeasureRequest,
    host_json: Option<&[u8]>,
) -> Result<Vec<u8>, ClientError> {
    let id = identity();
    let chain = SevCertChain::from_bytes(id.sev_chain_bytes()).unwrap();
    let b = id.sev_version().build();
    let build = SevBuild {
        version: SevVersion {
            major: b.version.major,
            minor: b.version.minor,
        },
        build: b.build,
    };
    let session = SevAttestation::auth(&kbs.client(), "s1", build, chain, host_json)?;
    let owner = OwnerSession {
        godh_cert: &session.start.cert,
        session: &session.start.session.to_bytes(),
    };
    let mut guest = SevGuest::launch_start(
        id,
        SevMode::SevEs,
        session.start.policy.to_u32(),
        Some(owner),
    )
    .unwrap();
    // The launch's own updates, as the VMM issues them.
    let (_, dump) = expected_measurement_dump(req).unwrap();
    for u in &dump.updates {
        match u {
            Update::Data { bytes, .. } => guest.launch_update_data(bytes).unwrap(),
            Update::Vmsa { bytes } => guest.launch_update_vmsa(bytes).unwrap(),
            _ => {}
        }
    }
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
}

#[test]
fn an_sev_es_launch_bound_to_an_unbound_registration_gets_its_launch_secret() {
    let chain = SevCertChain::from_bytes(identity().sev_chain_bytes()).unwrap();
    let kbs = Kbs::start(KbsOptions {
        insecure_registration: true,
        unbound: true,
        sev_ark: Some(chain.ca.ark.clone()),
        ..Default::default()
    });
    let req = |binding: Option<Binding>| MeasureRequest {
        port_map: Default::default(),
        mode: TeeMode::SevEs,
        vcpus: 1,
        ram_mib: 512,
        bundle_dir: kbs.bundle.clone().unwrap(),
        data_disk: false,
        vcpu_model: VcpuModel::default(),
        binding,
    };
    let binding = |url: &str| Binding {
        workload_id: "s1".into(),
        attestation_url: url.into(),
        kbs_protocol: krun_footer::KbsProtocol::Reference,
        broker_pin: None,
    };
    let unbound = req(None);
    let d_unbound = expected_measurement_dump(&unbound).unwrap().0.digest;
    // buildah --type sev registers krunfw_measurement's SEV-ES digest with policy 0x3f.
    let r = kbs.post_json(
        "/kbs/v0/register_workload",
        None,
        buildah_body("s1", &hex::encode(&d_unbound), "sev pw", 0x3f).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.message());

    let bound = req(Some(binding(PUBLIC_URL)));
    let json = bound.host_json();
    assert_eq!(sev_launch(&kbs, &bound, Some(&json)).unwrap(), b"sev pw");
    // The unbound launch itself, with or without its host.json; the bound one without.
    let attest_refused = |r: Result<Vec<u8>, ClientError>, why: &str| match r {
        Err(ClientError::Status {
            step: Step::Attest,
            status: 401,
            ..
        }) => {}
        other => panic!("{why}: {other:?}"),
    };
    attest_refused(sev_launch(&kbs, &unbound, None), "unbound, no host.json");
    attest_refused(
        sev_launch(&kbs, &unbound, Some(&unbound.host_json())),
        "unbound with its host.json",
    );
    attest_refused(sev_launch(&kbs, &bound, None), "bound, no host.json");
    // Bound elsewhere; and a host.json that is not the launch's.
    let elsewhere = req(Some(binding("http://evil.test:8000")));
    attest_refused(
        sev_launch(&kbs, &elsewhere, Some(&elsewhere.host_json())),
        "other broker",
    );
    attest_refused(
        sev_launch(&kbs, &elsewhere, Some(&json)),
        "another launch's host.json",
    );
}
