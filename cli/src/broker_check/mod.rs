//! `krun-sev broker-check`: drives a key broker with evidence made by the PSP model (SNP
//! reports, or SEV and SEV-ES launches run in the model), the genuine flow once (the key must
//! be released) and then each case of [`cases::CASES`] or [`cases::SEV_CASES`], the binding
//! and unbound-registration cases, [`cases::SEV_ES_CASES`] or [`cases::UNBOUND_SNP_CASES`],
//! and [`cases::BODY_CASES`], over raw HTTP so any broker speaking the reference-kbs protocol
//! or Trustee's RCAR can be checked. With an admin token it registers the workloads itself
//! (krun-kbs's admin API); with a bundle it computes bound and unbound digests (and SEV
//! launches) of the bundle for the binding cases. Prints case / expected / observed /
//! verdict; exits 1 when any verdict is wrong. See docs/broker-check.md.

mod cases;
mod sev_launch;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use krun_attestation::http::{self, HttpRequest, HttpResponse};
use krun_attestation::keys::{rcar_report_data, reference_report_data, TeeKey};
use krun_attestation::reference::{SevBuild, SevCertChain, SevChallenge, SevStart, SevVersion};
use krun_attestation::transport::{tls, BrokerUrl, Connector, Stream, TcpConnector};
use krun_attestation::{rcar, reference, KbsProtocol};
use krun_psp_model::{ModelIdentity, SnpReportFields};
use krun_sev::tee::model;
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;

/// libkrun's SNP guest policy: SMT allowed plus the must-be-one bit 17.
pub const LIBKRUN_POLICY: u64 = 0x30000;

/// The TEE whose evidence is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TeeArg {
    /// SEV-SNP: signed attestation reports.
    Snp,
    /// SEV-ES: the pre-attestation of the launch (LAUNCH_MEASURE, LAUNCH_SECRET); reference
    /// protocol only.
    SevEs,
    /// Plain SEV (no ES: no VMSA is measured), pre-attested as SEV-ES is; reference
    /// protocol only. Also `sev-no-es`, the name mkcw and TEE configs use (their `sev` is
    /// SEV-ES, buildah's meaning).
    #[value(alias = "sev-no-es")]
    Sev,
}

impl TeeArg {
    /// SEV or SEV-ES: pre-attestation of the launch.
    pub fn is_sev(self) -> bool {
        matches!(self, TeeArg::Sev | TeeArg::SevEs)
    }
}

/// The broker protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    /// virtee/reference-kbs (krun-kbs, reference-kbs).
    Reference,
    /// Trustee RCAR 0.4.0 (krun-kbs, Trustee's KBS).
    Rcar,
}

/// Arguments of `krun-sev broker-check`.
#[derive(Debug, clap::Args)]
pub struct BrokerCheckArgs {
    /// The broker, http://host:port[/prefix] (https:// uses the system's CAs).
    #[arg(long)]
    broker: String,
    #[arg(long, value_enum)]
    protocol: ProtocolArg,
    #[arg(long, value_enum, default_value = "snp")]
    tee: TeeArg,
    /// A workload registered with --measurement (bound), a key, and default requirements
    /// (registered, and replaced, by broker-check itself with --admin-token-file).
    #[arg(long)]
    workload_id: String,
    /// The workload's registered SNP launch digest (96 hex digits). SEV and SEV-ES launches
    /// are broker-check's own (a fixed page, or the bundle's launch with --bundle): given
    /// here, it must be that launch's digest (the error says which).
    #[arg(long)]
    measurement: Option<String>,
    /// The guest bundle the workload launches with: broker-check then computes the
    /// workload's digest itself (SEV/SEV-ES: launches the bundle in the model), bound to
    /// --workload-id, --public-url and --protocol (docs/threat-model.md "Binding"), and runs
    /// the binding cases with launches bound elsewhere or unbound. Register that digest
    /// (--admin-token-file does, and registers ID-unbound with the unbound digest too).
    #[arg(long)]
    bundle: Option<std::path::PathBuf>,
    /// The URL launches name the broker by (its --public-url behind a proxy), in the binding
    /// of the digests --bundle computes; default --broker.
    #[arg(long)]
    public_url: Option<String>,
    /// vCPUs of the launch whose digest --bundle computes.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// RAM in MiB of the launch whose digest --bundle computes.
    #[arg(long, default_value_t = 512)]
    ram_mib: u32,
    /// A file holding the broker's admin token (krun-kbs's admin API): broker-check then
    /// registers --workload-id and the other workload itself, with the requirements the
    /// minimum-TCB and minimum-firmware cases need. Without it those cases are skipped.
    #[arg(long)]
    admin_token_file: Option<std::path::PathBuf>,

    /// Another workload's id, asked for from a session attested as --workload-id (default
    /// "<workload-id>-other"; it need not exist, a broker must refuse either way).
    #[arg(long)]
    other_workload_id: Option<String>,
    /// Under each table row, say what the case changes, why it must be refused and what it
    /// rests on (always in the JSON).
    #[arg(long)]
    explain: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds per connect, read and write.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// Errors that stop the check before any case runs.
#[derive(Debug, thiserror::Error)]
pub enum BrokerCheckError {
    #[error("invalid broker URL")]
    Url(#[source] krun_attestation::transport::UrlError),
    #[error("TLS setup failed")]
    Tls(#[source] tls::TlsError),
    #[error("--tee snp needs --measurement (96 hex digits) or --bundle")]
    Measurement,
    #[error("--measurement is not the digest of broker-check's SEV/SEV-ES launch: register and give {0}")]
    SevMeasurement(String),
    #[error(
        "RCAR 0.4.0 carries no SEV or SEV-ES evidence (its attestation runs in the guest after \
         launch; SEV pre-attestation needs LAUNCH_START parameters before it and a LAUNCH_SECRET \
         packet, which RCAR has no message for): use --protocol reference with --tee sev or sev-es"
    )]
    RcarSev,
    #[error("this needs --bundle")]
    NoBundle,
    #[error("cannot read the admin token")]
    Token(#[source] crate::mkcw::register::RegisterError),
    #[error("cannot load the bundle {0}")]
    Bundle(String, #[source] krun_bundle::BundleError),
    #[error("the launch digest of --bundle has an unexpected length")]
    BundleTee,
    #[error("cannot compute the launch digest of the bundle")]
    Digest(#[source] krun_sev::launch::LaunchError),
    #[error("--measurement is not the digest of the bound launch of --bundle, {0}")]
    BoundMeasurement(String),
    #[error("cannot get random bytes for a passphrase")]
    Random(#[source] std::io::Error),
    #[error("cannot register workload {id}: {observed}")]
    Register { id: String, observed: String },
    #[error("cannot load or create the PSP model identity in {0}")]
    Identity(String, #[source] krun_sev::tee::TeeError),
    #[error("cannot write the results")]
    Output(#[source] std::io::Error),
}

/// What a case expects of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key is released (and decrypts with the TEE key).
    Released,
    /// Some request of the case is refused with a 4xx status and no key is released.
    Refused,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The key was released and decrypted.
    Released,
    /// A request got a non-200 answer.
    Status {
        step: &'static str,
        status: u16,
        message: String,
    },
    /// The connection failed or the answer was not HTTP.
    Transport { step: &'static str, error: String },
    /// The broker answered 200 but the answer is unusable (for example the key does not
    /// decrypt).
    BadAnswer { step: &'static str, error: String },
    /// The broker never offered what the case needs (for example it chose a policy that
    /// forbids what the case tries): a refusal before any request could carry it.
    Prevented { step: &'static str, why: String },
    /// The case cannot run here (reason).
    Skipped(String),
}

impl Observed {
    fn text(&self) -> String {
        match self {
            Observed::Released => "released".into(),
            Observed::Status {
                step,
                status,
                message,
            } => format!("{step}: HTTP {status} {message}"),
            Observed::Transport { step, error } => format!("{step}: {error}"),
            Observed::BadAnswer { step, error } => format!("{step}: bad answer: {error}"),
            Observed::Prevented { step, why } => format!("{step}: {why}"),
            Observed::Skipped(why) => format!("skipped: {why}"),
        }
    }
}

/// Verdict: "ok", "WRONG" or "skipped".
fn verdict(expect: Expect, observed: &Observed, closed_ok: bool) -> &'static str {
    match (expect, observed) {
        (_, Observed::Skipped(_)) => "skipped",
        (Expect::Released, Observed::Released) => "ok",
        (Expect::Refused, Observed::Status { status, .. }) if (400..500).contains(status) => "ok",
        (Expect::Refused, Observed::Prevented { .. }) => "ok",
        // Closing the connection on an oversized body is a refusal too.
        (Expect::Refused, Observed::Transport { .. }) if closed_ok => "ok",
        _ => "WRONG",
    }
}

/// Everything the cases share.
pub struct Ctx {
    url: BrokerUrl,
    connector: Arc<dyn Connector>,
    pub protocol: KbsProtocol,
    pub workload_id: String,
    pub other_workload_id: String,
    pub measurement: [u8; 48],
    pub tee: TeeArg,
    pub identity: Arc<ModelIdentity>,
    /// The bundle and launch shape of --bundle, for the binding cases.
    pub launch: Option<(
        krun_bundle::Bundle,
        krun_sev::launch::host_json::LaunchShape,
    )>,
    pub broker: String,
    /// The directory of --bundle.
    pub bundle_dir: Option<std::path::PathBuf>,
    /// SEV/SEV-ES with --bundle: the workload's own launch (bound to it and the broker URL
    /// of the bindings, --public-url or --broker).
    pub sev_own: Option<sev_launch::SevImage>,
    /// Whether the unbound workload is registered, or why not (the reason its cases are
    /// skipped).
    pub unbound_registered: Result<(), String>,
    /// `Bearer <token>` for the admin API, when given.
    admin_auth: Option<zeroize::Zeroizing<String>>,
    /// A second identity whose ARK no broker trusts; made on first use.
    other: std::sync::OnceLock<Result<ModelIdentity, String>>,
    /// The reference protocol's two RSA TEE keys; made on first use.
    rsa: std::sync::OnceLock<Vec<Result<TeeKey, String>>>,
}

/// Which host.json a launch flow sends with `/auth`.
pub enum Sent {
    /// The measured launch's own.
    Own,
    /// None.
    Nothing,
    /// Another launch's: bound to this binding, or unbound.
    Of(Option<krun_footer::Binding>),
}

/// A session opened by `/auth`.
pub struct Session {
    /// `name=value` for the Cookie header.
    pub cookie: String,
    pub nonce: String,
    /// SEV-ES: the LAUNCH_START parameters the broker chose.
    pub sev: Option<SevStart>,
}

/// The evidence a case sends: the TEE key and the `/attest` body.
pub struct Evidence {
    pub key: TeeKey,
    pub body: Vec<u8>,
}

/// A step's failure, as a case's observation.
type Step<T> = Result<T, Observed>;

impl Ctx {
    /// One raw request to `/kbs/v0/<path>`.
    pub fn send(
        &self,
        step: &'static str,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        body: Option<&[u8]>,
    ) -> Step<HttpResponse> {
        self.send_auth(step, method, path, cookie, None, body)
    }

    /// [`Ctx::send`] with an Authorization header.
    fn send_auth(
        &self,
        step: &'static str,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        authorization: Option<&str>,
        body: Option<&[u8]>,
    ) -> Step<HttpResponse> {
        let full = format!("{}/kbs/v0/{path}", self.url.prefix);
        let host = self.url.host_header();
        let mut headers: Vec<(&str, &str)> = vec![("Accept", "application/json")];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        if let Some(c) = cookie {
            headers.push(("Cookie", c));
        }
        if let Some(a) = authorization {
            headers.push(("Authorization", a));
        }
        let req = HttpRequest {
            method,
            host: &host,
            path: &full,
            headers: &headers,
            body,
        };
        let transport = |error: String| Observed::Transport { step, error };
        let mut stream = self
            .connector
            .connect()
            .map_err(|e| transport(format!("cannot connect: {e}")))?;
        http::exchange(&mut stream, &req, http::DEFAULT_MAX_BODY)
            .map_err(|e| transport(error_chain(&e)))
    }

    /// An admin request with the token; a non-200 answer is the observation. Skipped
    /// without --admin-token-file.
    pub fn admin(
        &self,
        step: &'static str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Step<HttpResponse> {
        let auth = self.admin_auth.as_ref().ok_or_else(|| {
            Observed::Skipped("needs --admin-token-file (the broker's admin API)".into())
        })?;
        let resp = self.send_auth(step, method, path, None, Some(auth.as_str()), Some(body))?;
        if resp.status == 200 {
            Ok(resp)
        } else {
            Err(Observed::Status {
                step,
                status: resp.status,
                message: resp.message(),
            })
        }
    }

    /// `Some(skipped)` when broker-check did not register the workloads itself, so the
    /// requirements a case rests on are unknown.
    pub fn unregistered(&self) -> Option<Observed> {
        self.admin_auth.is_none().then(|| {
            Observed::Skipped(
                "needs --admin-token-file: broker-check registers the requirement it tests".into(),
            )
        })
    }

    /// [`Ctx::send`] that turns a non-200 answer into the observation.
    pub fn send_ok(
        &self,
        step: &'static str,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        body: Option<&[u8]>,
    ) -> Step<HttpResponse> {
        let resp = self.send(step, method, path, cookie, body)?;
        if resp.status == 200 {
            Ok(resp)
        } else {
            Err(Observed::Status {
                step,
                status: resp.status,
                message: resp.message(),
            })
        }
    }

    /// The `/auth` body of this protocol for this TEE.
    pub fn auth_body(&self) -> Vec<u8> {
        if self.tee.is_sev() {
            let host_json = self.sev_own.as_ref().map(|i| i.host_json.as_slice());
            return self.sev_auth_body(&self.workload_id, self.sev_build(), host_json);
        }
        self.snp_auth_body(None)
    }

    /// The launch type of --tee.
    pub fn tee_mode(&self) -> krun_sev::tee::TeeMode {
        match self.tee {
            TeeArg::Snp => krun_sev::tee::TeeMode::Snp,
            TeeArg::SevEs => krun_sev::tee::TeeMode::SevEs,
            TeeArg::Sev => krun_sev::tee::TeeMode::Sev,
        }
    }

    /// The binding of a launch to `(workload, url)` with this protocol and no TLS pin.
    pub fn binding(&self, (workload, url): (&str, &str)) -> krun_footer::Binding {
        krun_footer::Binding {
            workload_id: workload.into(),
            attestation_url: url.into(),
            kbs_protocol: match self.protocol {
                KbsProtocol::Reference => krun_footer::KbsProtocol::Reference,
                KbsProtocol::Rcar => krun_footer::KbsProtocol::Rcar,
            },
            broker_pin: None,
        }
    }

    /// The SNP `/auth` body, sending the launch's measured host.json when given (krun-kbs's
    /// extension; docs/measurement.md "Unbound digests").
    pub fn snp_auth_body(&self, host_json: Option<&[u8]>) -> Vec<u8> {
        self.snp_auth_body_for(&self.workload_id, host_json)
    }

    /// [`Ctx::snp_auth_body`] naming `workload` (the reference protocol names it at `/auth`).
    fn snp_auth_body_for(&self, workload: &str, host_json: Option<&[u8]>) -> Vec<u8> {
        let v = match self.protocol {
            KbsProtocol::Reference => {
                let extra = serde_json::to_string(&reference::SnpRequest {
                    workload_id: workload.into(),
                    host_json: host_json.map(reference::encode_host_json),
                })
                .unwrap_or_default();
                serde_json::to_value(reference::Request {
                    version: reference::PROTOCOL_VERSION.into(),
                    tee: reference::Tee::Snp,
                    extra_params: extra,
                })
            }
            KbsProtocol::Rcar => {
                serde_json::to_value(rcar::auth_request(rcar::Tee::Snp, host_json))
            }
        };
        v.map(|v| v.to_string().into_bytes()).unwrap_or_default()
    }

    fn cookie_name(&self) -> &'static str {
        match self.protocol {
            KbsProtocol::Reference => reference::SESSION_COOKIE,
            KbsProtocol::Rcar => rcar::SESSION_COOKIE,
        }
    }

    /// The measured host.json of a launch of --bundle bound to `(workload, url)` with this
    /// protocol, or unbound; `None` without --bundle.
    pub fn host_json(&self, binding: Option<(&str, &str)>) -> Option<Vec<u8>> {
        self.host_json_of(binding.map(|b| self.binding(b)).as_ref())
    }

    /// [`Ctx::host_json`] with `binding` as given.
    pub fn host_json_of(&self, binding: Option<&krun_footer::Binding>) -> Option<Vec<u8>> {
        let (_, shape) = self.launch.as_ref()?;
        Some(krun_sev::launch::host_json::build(
            &krun_sev::resources::VmResources::default(),
            self.tee_mode(),
            shape,
            binding,
        ))
    }

    /// The SNP launch digest of --bundle with `host_json`.
    pub fn launch_digest(&self, host_json: &[u8]) -> Result<[u8; 48], BrokerCheckError> {
        let bundle = self
            .launch
            .as_ref()
            .map(|(b, _)| b)
            .ok_or(BrokerCheckError::BundleTee)?;
        krun_sev::launch::measurement_of_host_json(&self.identity, bundle, host_json)
            .map_err(BrokerCheckError::Digest)?
            .digest
            .try_into()
            .map_err(|_| BrokerCheckError::BundleTee)
    }

    /// The genuine flow of `workload` (its key asked for; the reference `/auth` names it),
    /// but for the launch of --bundle bound to `measured` (or unbound): the evidence carries
    /// that launch's digest, and `/auth` sends the host.json `sent` says. Skipped without
    /// --bundle.
    pub fn launch_flow(
        &self,
        workload: &str,
        measured: Option<krun_footer::Binding>,
        sent: Sent,
    ) -> Observed {
        if self.launch.is_none() {
            return Observed::Skipped(
                "needs --bundle: the launches of other bindings are made from the bundle".into(),
            );
        }
        if self.tee.is_sev() {
            return self.sev_launch_flow(workload, measured, sent);
        }
        let run = || -> Step<Observed> {
            let skipped = |e: BrokerCheckError| Observed::Skipped(error_chain(&e));
            let json = self
                .host_json_of(measured.as_ref())
                .ok_or(BrokerCheckError::NoBundle)
                .map_err(skipped)?;
            let digest = self.launch_digest(&json).map_err(skipped)?;
            let sent = match sent {
                Sent::Own => Some(json),
                Sent::Nothing => None,
                Sent::Of(other) => self.host_json_of(other.as_ref()),
            };
            let session = self.auth_with(&self.snp_auth_body_for(workload, sent.as_deref()))?;
            let ev = self.evidence(&session, |f| f.measurement = digest)?;
            self.attest(&session, &ev.body)?;
            Ok(self.key(&session, workload, &ev.key))
        };
        run().unwrap_or_else(|o| o)
    }

    /// The workload broker-check registers with the *unbound* digest of --bundle's launch.
    pub fn unbound_workload_id(&self) -> String {
        format!("{}-unbound", self.workload_id)
    }

    /// `Some(skipped)` unless the unbound workload is registered.
    pub fn unbound_skip(&self) -> Option<Observed> {
        self.unbound_registered
            .as_ref()
            .err()
            .map(|why| Observed::Skipped(why.clone()))
    }

    /// The platform's SEV firmware build, as the model reports it.
    pub fn sev_build(&self) -> SevBuild {
        let v = self.identity.sev_version();
        SevBuild {
            version: SevVersion {
                major: v.api_major,
                minor: v.api_minor,
            },
            build: v.build,
        }
    }

    /// The reference `/auth` body of a SEV/SEV-ES launch of `workload` on a platform
    /// claiming `build`, sending the launch's measured host.json when given.
    pub fn sev_auth_body(
        &self,
        workload: &str,
        build: SevBuild,
        host_json: Option<&[u8]>,
    ) -> Vec<u8> {
        let chain = match SevCertChain::from_bytes(self.identity.sev_chain_bytes()) {
            Ok(c) => c,
            Err(_) => return Vec::new(),
        };
        let sev = reference::SevRequest {
            build,
            chain,
            workload_id: workload.into(),
            host_json: host_json.map(reference::encode_host_json),
        };
        let req = serde_json::to_string(&sev).map(|extra| reference::Request {
            version: reference::PROTOCOL_VERSION.into(),
            tee: reference::Tee::Sev,
            extra_params: extra,
        });
        req.and_then(|r| serde_json::to_vec(&r)).unwrap_or_default()
    }

    /// `/auth`: a new session and its nonce.
    pub fn auth(&self) -> Step<Session> {
        self.auth_with(&self.auth_body())
    }

    /// `/auth` with `body`.
    pub fn auth_with(&self, body: &[u8]) -> Step<Session> {
        let resp = self.send_ok("auth", "POST", "auth", None, Some(body))?;
        let bad = |error: String| Observed::BadAnswer {
            step: "auth",
            error,
        };
        let value = resp
            .cookie(self.cookie_name())
            .ok_or_else(|| bad(format!("no {} cookie", self.cookie_name())))?;
        let (nonce, sev) = match self.protocol {
            KbsProtocol::Reference => {
                let c = serde_json::from_slice::<reference::Challenge>(&resp.body)
                    .map_err(|e| bad(e.to_string()))?;
                let sev = if self.tee.is_sev() {
                    let s: SevChallenge = serde_json::from_str(&c.extra_params)
                        .map_err(|e| bad(format!("SEV extra-params: {e}")))?;
                    s.start.validate().map_err(|e| bad(e.to_string()))?;
                    Some(s.start)
                } else {
                    None
                };
                (c.nonce, sev)
            }
            KbsProtocol::Rcar => serde_json::from_slice::<rcar::Challenge>(&resp.body)
                .map(|c| (c.nonce, None))
                .map_err(|e| bad(e.to_string()))?,
        };
        Ok(Session {
            cookie: format!("{}={value}", self.cookie_name()),
            nonce,
            sev,
        })
    }

    /// A TEE key of this protocol and the REPORT_DATA binding it to `nonce`.
    pub fn key_and_binding(&self, nonce: &str) -> Step<(TeeKey, [u8; 64])> {
        self.nth_key_and_binding(0, nonce)
    }

    /// [`Ctx::key_and_binding`] with another key than that one.
    pub fn other_key_and_binding(&self, nonce: &str) -> Step<(TeeKey, [u8; 64])> {
        self.nth_key_and_binding(1, nonce)
    }

    /// RSA key `i` (0 or 1), made once: RSA-2048 generation takes seconds, and the brokers
    /// see a new nonce every session anyway. EC keys are fresh each time.
    fn rsa_key(&self, i: usize) -> Result<TeeKey, String> {
        let keys = self.rsa.get_or_init(|| {
            (0..2)
                .map(|_| TeeKey::generate_rsa().map_err(|e| e.to_string()))
                .collect()
        });
        match keys.get(i) {
            Some(Ok(TeeKey::Rsa(k))) => Ok(TeeKey::Rsa(k.clone())),
            Some(Err(e)) => Err(e.clone()),
            _ => Err("no RSA key".into()),
        }
    }

    fn nth_key_and_binding(&self, i: usize, nonce: &str) -> Step<(TeeKey, [u8; 64])> {
        let failed = |error: String| Observed::Skipped(format!("TEE key: {error}"));
        match self.protocol {
            KbsProtocol::Reference => {
                let key = self.rsa_key(i).map_err(failed)?;
                let pk = key.reference_pubkey().map_err(|e| failed(e.to_string()))?;
                Ok((key, reference_report_data(nonce, &pk)))
            }
            KbsProtocol::Rcar => {
                let key = TeeKey::generate_ec();
                let data = rcar_report_data(nonce, &key.rcar_pubkey(), "")
                    .map_err(|e| failed(e.to_string()))?;
                Ok((key, data))
            }
        }
    }

    /// The genuine report fields for REPORT_DATA `data`.
    pub fn fields(&self, data: [u8; 64]) -> SnpReportFields {
        SnpReportFields::new(&self.identity, data, self.measurement, LIBKRUN_POLICY)
    }

    /// `fields` signed by `identity`.
    pub fn sign(&self, identity: &ModelIdentity, fields: &SnpReportFields) -> Step<Vec<u8>> {
        identity
            .sign_snp_report(fields)
            .map(|r| r.to_vec())
            .map_err(|e| Observed::Skipped(format!("cannot sign the report: {e}")))
    }

    /// The untrusted second identity.
    pub fn other_identity(&self) -> Step<&ModelIdentity> {
        self.other
            .get_or_init(|| ModelIdentity::generate().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Observed::Skipped(format!("cannot generate an identity: {e}")))
    }

    /// The `/attest` body carrying `report` (raw bytes) for `key` and `nonce`, with the
    /// certificates `certs` (empty: the broker uses its own VCEK).
    pub fn attest_body(
        &self,
        key: &TeeKey,
        nonce: &str,
        report: &[u8],
        certs: &[CertTableEntry],
    ) -> Step<Vec<u8>> {
        let bad = |error: String| Observed::Skipped(format!("cannot encode the evidence: {error}"));
        match self.protocol {
            KbsProtocol::Reference => {
                let evidence = reference::SnpAttestation {
                    gen: "milan".into(),
                    report: hex::encode(report),
                    cert_chain: serde_json::to_string(certs).map_err(|e| bad(e.to_string()))?,
                };
                let att = reference::Attestation {
                    tee_pubkey: key.reference_pubkey().map_err(|e| bad(e.to_string()))?,
                    tee_evidence: serde_json::to_string(&evidence)
                        .map_err(|e| bad(e.to_string()))?,
                };
                serde_json::to_vec(&att).map_err(|e| bad(e.to_string()))
            }
            KbsProtocol::Rcar => {
                let parsed = parse_report(report).map_err(bad)?;
                let evidence = rcar::SnpEvidence {
                    attestation_report: parsed,
                    cert_chain: (!certs.is_empty()).then(|| certs.to_vec()),
                };
                let value = serde_json::to_value(&evidence).map_err(|e| bad(e.to_string()))?;
                self.rcar_attest_body(key, nonce, value)
            }
        }
    }

    /// An RCAR `/attest` body with `primary_evidence` as given.
    pub fn rcar_attest_body(
        &self,
        key: &TeeKey,
        nonce: &str,
        primary_evidence: serde_json::Value,
    ) -> Step<Vec<u8>> {
        let att = rcar::Attestation {
            init_data: None,
            runtime_data: rcar::RuntimeData {
                nonce: nonce.to_string(),
                tee_pubkey: key.rcar_pubkey(),
            },
            tee_evidence: rcar::CompositeEvidence {
                primary_evidence,
                additional_evidence: String::new(),
            },
        };
        serde_json::to_vec(&att)
            .map_err(|e| Observed::Skipped(format!("cannot encode the evidence: {e}")))
    }

    /// Genuine evidence for `session`, with `change` applied to the report fields.
    pub fn evidence(
        &self,
        session: &Session,
        change: impl FnOnce(&mut SnpReportFields),
    ) -> Step<Evidence> {
        let (key, data) = self.key_and_binding(&session.nonce)?;
        let mut fields = self.fields(data);
        change(&mut fields);
        let report = self.sign(&self.identity, &fields)?;
        let body = self.attest_body(&key, &session.nonce, &report, &[])?;
        Ok(Evidence { key, body })
    }

    /// `/attest` with `body` in `session`.
    pub fn attest(&self, session: &Session, body: &[u8]) -> Step<HttpResponse> {
        self.send_ok(
            "attest",
            "POST",
            "attest",
            Some(&session.cookie),
            Some(body),
        )
    }

    /// The key path of `workload` in this protocol.
    pub fn key_path(&self, workload: &str) -> String {
        match self.protocol {
            KbsProtocol::Reference => format!("key/{workload}"),
            KbsProtocol::Rcar => format!("resource/default/key/{workload}"),
        }
    }

    /// `GET` of `workload`'s key in `session`; a non-200 answer is the observation.
    pub fn fetch_key(&self, session: &Session, workload: &str) -> Step<HttpResponse> {
        self.send_ok(
            "key",
            "GET",
            &self.key_path(workload),
            Some(&session.cookie),
            None,
        )
    }

    /// Asks for `workload`'s key in `session`; released only when it decrypts with `key`
    /// into a non-empty secret (never printed).
    pub fn key(&self, session: &Session, workload: &str, key: &TeeKey) -> Observed {
        let resp = match self.fetch_key(session, workload) {
            Ok(r) => r,
            Err(o) => return o,
        };
        let bad = |error: String| Observed::BadAnswer { step: "key", error };
        let secret = match self.protocol {
            KbsProtocol::Reference => serde_json::from_slice::<String>(&resp.body)
                .map_err(|e| e.to_string())
                .and_then(|h| hex::decode(h.trim()).map_err(|e| e.to_string()))
                .and_then(|ct| key.decrypt_pkcs1(&ct).map_err(|e| e.to_string())),
            KbsProtocol::Rcar => rcar::decrypt_jwe(&resp.body, key).map_err(|e| error_chain(&e)),
        };
        match secret {
            Ok(s) if !s.is_empty() => Observed::Released,
            Ok(_) => bad("the released secret is empty".into()),
            Err(e) => bad(format!("released, but does not decrypt: {e}")),
        }
    }

    /// The whole flow with evidence changed by `change`: auth, attest, key.
    pub fn flow(&self, change: impl FnOnce(&mut SnpReportFields)) -> Observed {
        self.flow_as(&self.workload_id, change)
    }

    /// [`Ctx::flow`] for `workload` (SNP).
    pub fn flow_as(&self, workload: &str, change: impl FnOnce(&mut SnpReportFields)) -> Observed {
        let run = || -> Step<Observed> {
            let session = self.auth_with(&self.snp_auth_body_for(workload, None))?;
            let ev = self.evidence(&session, change)?;
            self.attest(&session, &ev.body)?;
            Ok(self.key(&session, workload, &ev.key))
        };
        run().unwrap_or_else(|o| o)
    }

    /// The third workload broker-check registers for SNP: the workload's requirements and
    /// SMT forbidden.
    pub fn no_smt_workload_id(&self) -> String {
        format!("{}-nosmt", self.workload_id)
    }

    /// The digest of [`Ctx::no_smt_workload_id`]: its own (RCAR finds the workload by the
    /// digest), the launch of --bundle bound to it, else the workload's with one bit changed.
    pub fn no_smt_digest(&self) -> Result<[u8; 48], BrokerCheckError> {
        match self.host_json(Some((&self.no_smt_workload_id(), &self.broker))) {
            Some(json) => self.launch_digest(&json),
            None => {
                let mut digest = self.measurement;
                digest[47] ^= 2;
                Ok(digest)
            }
        }
    }

    /// Auth, then attest with `body` made from the session, then the key.
    pub fn flow_with_body(&self, make: impl FnOnce(&Session) -> Step<Evidence>) -> Observed {
        let run = || -> Step<Observed> {
            let session = self.auth()?;
            let ev = make(&session)?;
            self.attest(&session, &ev.body)?;
            Ok(self.key(&session, &self.workload_id, &ev.key))
        };
        run().unwrap_or_else(|o| o)
    }

    /// A certificate table carrying `identity`'s VCEK and ASK (DER).
    pub fn cert_table(&self, identity: &ModelIdentity) -> Step<Vec<CertTableEntry>> {
        let chain = identity.snp_chain();
        let der = |c: &sev::certs::snp::Certificate| {
            c.to_der()
                .map_err(|e| Observed::Skipped(format!("cannot encode a certificate: {e}")))
        };
        Ok(vec![
            CertTableEntry::new(CertType::VCEK, der(&chain.vek)?),
            CertTableEntry::new(CertType::ASK, der(&chain.ca.ask)?),
            CertTableEntry::new(CertType::ARK, der(&chain.ca.ark)?),
        ])
    }
}

/// Parses a raw report for RCAR evidence; a version below 2 (which the `sev` crate refuses
/// to parse) is parsed as version 3 (the model's layout) and the version put back afterwards.
fn parse_report(raw: &[u8]) -> Result<sev::firmware::guest::AttestationReport, String> {
    let version = raw
        .get(..4)
        .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
        .ok_or("report is too short")?;
    let mut bytes = raw.to_vec();
    if version < 2 {
        bytes[..4].copy_from_slice(&3u32.to_le_bytes());
    }
    let mut parsed = sev::firmware::guest::AttestationReport::from_bytes(&bytes)
        .map_err(|e| format!("cannot parse the report: {e}"))?;
    parsed.version = version;
    Ok(parsed)
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A passphrase for the workloads broker-check registers: 32 random hex digits.
fn random_passphrase() -> Result<String, BrokerCheckError> {
    let mut buf = [0u8; 16];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() != Some(buf.len()) {
        return Err(BrokerCheckError::Random(std::io::Error::last_os_error()));
    }
    Ok(hex::encode(buf))
}

/// Registers (replacing) the workload and the other workload through krun-kbs's admin API
/// (`POST /kbs/v0/admin/workloads`), with bound digests and the requirements the
/// minimum-TCB and minimum-firmware cases rest on: the model platform's own TCB or firmware.
/// With --bundle also the unbound workload, with the same requirements and the unbound
/// digest; a refusal of that one only skips its cases (the answer says why), since a broker
/// may rightly refuse unbound digests it cannot check.
fn register(ctx: &Ctx) -> Result<Result<(), String>, BrokerCheckError> {
    let (tee, requirements, main, other) = match ctx.tee {
        TeeArg::Snp => {
            let t = ctx.identity.snp_platform().tcb;
            let snp = serde_json::json!({ "min_tcb": {
                "bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode,
            }});
            let other = match ctx.host_json(Some((&ctx.other_workload_id, &ctx.broker))) {
                Some(json) => ctx.launch_digest(&json)?,
                None => {
                    let mut other = ctx.measurement;
                    other[47] ^= 1;
                    other
                }
            };
            (
                "snp",
                ("snp", snp),
                hex::encode(ctx.measurement),
                hex::encode(other),
            )
        }
        TeeArg::SevEs | TeeArg::Sev => {
            let v = ctx.identity.sev_version();
            let fw = format!("{}.{}.{}", v.api_major, v.api_minor, v.build);
            (
                "sev",
                ("sev", serde_json::json!({ "min_fw": fw })),
                hex::encode(ctx.sev_own_digest()),
                hex::encode(ctx.sev_other_digest()?),
            )
        }
    };
    let mut workloads = vec![
        (ctx.workload_id.clone(), main, false),
        (ctx.other_workload_id.clone(), other, false),
    ];
    if ctx.tee == TeeArg::Snp {
        workloads.push((
            ctx.no_smt_workload_id(),
            hex::encode(ctx.no_smt_digest()?),
            true,
        ));
    }
    let spec_of = |id: &str, digest: &str, kind: &str| -> Result<_, BrokerCheckError> {
        let mut spec = serde_json::json!({
            "id": id,
            "tee": tee,
            "measurements": [digest],
            "measurement_kind": kind,
            "passphrase": random_passphrase()?,
        });
        spec[requirements.0] = requirements.1.clone();
        if ctx.tee.is_sev() {
            spec["sev_policy"] = sev_launch::registered_policy(ctx.sev_mode()).into();
        }
        Ok(spec)
    };
    for (id, digest, forbid_smt) in &workloads {
        let mut spec = spec_of(id, digest, "bound")?;
        if *forbid_smt {
            spec[requirements.0]["forbid_smt"] = true.into();
        }
        let body = zeroize::Zeroizing::new(spec.to_string().into_bytes());
        if let Some(p) = spec.get_mut("passphrase") {
            *p = serde_json::Value::Null;
        }
        ctx.admin("register", "POST", "admin/workloads", &body)
            .map_err(|o| BrokerCheckError::Register {
                id: id.clone(),
                observed: o.text(),
            })?;
    }
    if ctx.launch.is_none() {
        return Ok(Err(
            "needs --bundle: the unbound digest is computed from the bundle".into(),
        ));
    }
    let unbound = if ctx.tee.is_sev() {
        hex::encode(ctx.sev_image(None)?.digest)
    } else {
        let json = ctx.host_json(None).ok_or(BrokerCheckError::NoBundle)?;
        hex::encode(ctx.launch_digest(&json)?)
    };
    let mut spec = spec_of(&ctx.unbound_workload_id(), &unbound, "unbound")?;
    let body = zeroize::Zeroizing::new(spec.to_string().into_bytes());
    if let Some(p) = spec.get_mut("passphrase") {
        *p = serde_json::Value::Null;
    }
    Ok(ctx
        .admin("register", "POST", "admin/workloads", &body)
        .map(|_| ())
        .map_err(|o| format!("the broker refused the unbound registration ({})", o.text())))
}

/// One result row.
#[derive(Debug, serde::Serialize)]
struct Row {
    case: &'static str,
    expected: &'static str,
    observed: String,
    verdict: &'static str,
    changes: &'static str,
    why: &'static str,
    rests_on: &'static str,
}

/// Runs the command.
pub fn broker_check(args: &BrokerCheckArgs) -> Result<ExitCode, BrokerCheckError> {
    let url = BrokerUrl::parse(&args.broker).map_err(BrokerCheckError::Url)?;
    let mut measurement = [0u8; 48];
    match args.tee {
        TeeArg::Snp if args.bundle.is_some() => {}
        TeeArg::Snp => hex::decode_to_slice(
            args.measurement.as_deref().unwrap_or_default().trim(),
            &mut measurement,
        )
        .map_err(|_| BrokerCheckError::Measurement)?,
        // SEV/SEV-ES: the digest is that of broker-check's own launch, checked below.
        TeeArg::SevEs | TeeArg::Sev if args.protocol == ProtocolArg::Rcar => {
            return Err(BrokerCheckError::RcarSev);
        }
        TeeArg::SevEs | TeeArg::Sev => {}
    }
    let admin_auth = args
        .admin_token_file
        .as_deref()
        .map(crate::mkcw::register::read_token)
        .transpose()
        .map_err(BrokerCheckError::Token)?
        .map(|t| zeroize::Zeroizing::new(format!("Bearer {}", t.as_str())));
    let dir = model::identity_dir();
    let identity = model::load_or_create(&dir)
        .map_err(|e| BrokerCheckError::Identity(dir.display().to_string(), e))?;
    let timeout = Duration::from_secs(args.timeout);
    let tcp = TcpConnector {
        addr: url.socket_addr(),
        timeout,
    };
    let connector: Arc<dyn Connector> = if url.tls {
        let config = tls::client_config(None).map_err(BrokerCheckError::Tls)?;
        let host = url.host.clone();
        Arc::new(move || -> std::io::Result<Box<dyn Stream>> {
            tls::wrap(&config, &host, tcp.connect()?)
        })
    } else {
        Arc::new(tcp)
    };
    let launch = match &args.bundle {
        Some(dir) => Some((
            krun_bundle::Bundle::load(dir)
                .map_err(|e| BrokerCheckError::Bundle(dir.display().to_string(), e))?,
            krun_sev::launch::host_json::LaunchShape {
                vcpus: args.vcpus,
                ram_mib: args.ram_mib,
                vcpu_model: Default::default(),
                data_disk: false,
            },
        )),
        None => None,
    };
    let mut ctx = Ctx {
        launch,
        bundle_dir: args.bundle.clone(),
        sev_own: None,
        unbound_registered: Err(
            "needs --bundle and --admin-token-file: broker-check registers the unbound digest"
                .into(),
        ),
        broker: args
            .public_url
            .clone()
            .unwrap_or_else(|| args.broker.clone()),
        connector,
        url,
        protocol: match args.protocol {
            ProtocolArg::Reference => KbsProtocol::Reference,
            ProtocolArg::Rcar => KbsProtocol::Rcar,
        },
        workload_id: args.workload_id.clone(),
        other_workload_id: args
            .other_workload_id
            .clone()
            .unwrap_or_else(|| format!("{}-other", args.workload_id)),
        measurement,
        tee: args.tee,
        identity,
        admin_auth,
        other: std::sync::OnceLock::new(),
        rsa: std::sync::OnceLock::new(),
    };
    if ctx.tee.is_sev() {
        if ctx.launch.is_some() {
            let own = ctx.binding((&ctx.workload_id, &ctx.broker));
            ctx.sev_own = Some(ctx.sev_image(Some(own))?);
        }
        let own = hex::encode(ctx.sev_own_digest());
        if let Some(m) = &args.measurement {
            if !m.trim().eq_ignore_ascii_case(&own) {
                return Err(BrokerCheckError::SevMeasurement(own));
            }
        }
    } else if let Some(json) = ctx.host_json(Some((&ctx.workload_id, &ctx.broker))) {
        let bound = ctx.launch_digest(&json)?;
        if let Some(m) = &args.measurement {
            if !m.trim().eq_ignore_ascii_case(&hex::encode(bound)) {
                return Err(BrokerCheckError::BoundMeasurement(hex::encode(bound)));
            }
        }
        ctx.measurement = bound;
    }
    if ctx.admin_auth.is_some() {
        ctx.unbound_registered = register(&ctx)?;
    }
    let tee_cases = match args.tee {
        TeeArg::Snp => cases::CASES,
        TeeArg::SevEs => cases::SEV_CASES,
        TeeArg::Sev => cases::SEV_CASES,
    };
    let tee_only: &[&[cases::Case]] = match args.tee {
        TeeArg::SevEs => &[cases::SEV_ES_CASES],
        TeeArg::Snp => &[cases::UNBOUND_SNP_CASES],
        TeeArg::Sev => &[],
    };
    let lists = [tee_cases, cases::BINDING_CASES, cases::UNBOUND_CASES]
        .into_iter()
        .chain(tee_only.iter().copied())
        .chain([cases::BODY_CASES]);

    let mut rows = Vec::new();
    for case in lists.flatten() {
        let observed = (case.run)(&ctx);
        let verdict = verdict(case.expect, &observed, case.closed_ok);
        rows.push(Row {
            case: case.name,
            expected: match case.expect {
                Expect::Released => "released",
                Expect::Refused => "refused",
            },
            observed: observed.text(),
            verdict,
            changes: case.changes,
            why: case.why,
            rests_on: case.rests_on,
        });
    }
    let wrong = rows.iter().filter(|r| r.verdict == "WRONG").count();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({ "cases": rows, "wrong": wrong });
        writeln!(out, "{v}").map_err(BrokerCheckError::Output)?;
    } else {
        let width = rows.iter().map(|r| r.case.len()).max().unwrap_or(4);
        writeln!(
            out,
            "{:width$}  {:8}  {:7}  observed",
            "case", "expected", "verdict"
        )
        .map_err(BrokerCheckError::Output)?;
        for r in &rows {
            writeln!(
                out,
                "{:width$}  {:8}  {:7}  {}",
                r.case, r.expected, r.verdict, r.observed
            )
            .map_err(BrokerCheckError::Output)?;
            if args.explain {
                writeln!(
                    out,
                    "    changes: {}\n    why: {}\n    rests on: {}",
                    r.changes, r.why, r.rests_on
                )
                .map_err(BrokerCheckError::Output)?;
            }
        }
        writeln!(out, "{wrong} wrong of {} cases", rows.len()).map_err(BrokerCheckError::Output)?;
    }
    Ok(if wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
