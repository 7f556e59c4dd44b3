//! `krun-kbs`: the key broker server and its offline admin commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

use krun_kbs::api::{router, Broker};
use krun_kbs::config::{
    BrokerConfig, DEFAULT_BODY_LIMIT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_SESSIONS,
};
use krun_kbs::db::{
    HostData, MeasurementKind, MinTcb, PoolOptions, PutMode, SevFirmware, SevRequirements,
    SnpRequirements, Store, TeeKind, DEFAULT_DB_TIMEOUT, DEFAULT_POOL_SIZE,
};
use krun_kbs::error_chain;
use krun_kbs::seal::SecretsKey;
use krun_kbs::verify_sev::{LegacySevGeneration, SevTrust};
use krun_kbs::verify_snp::{SnpVerifier, TrustRoot};

/// Key broker for libkrun-sev (reference-kbs protocol and Trustee RCAR 0.4.0).
///
/// Without a subcommand it serves; subcommands edit the database directly.
#[derive(Parser, Debug)]
#[command(name = "krun-kbs", version)]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:8000 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The store: a SQLite database file (created if missing, owner-only; with its
    /// -wal/-shm files), or a PostgreSQL server as postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// (replicas sharing one database serve any step of any session).
    #[arg(long)]
    db: String,
    /// PostgreSQL: most connections in this broker's pool.
    #[arg(long, default_value_t = DEFAULT_POOL_SIZE, value_parser = parse_pool_size)]
    db_pool_size: u32,
    /// Database timeout in milliseconds: connecting to PostgreSQL, waiting for a free pooled
    /// connection, and (SQLite) waiting for another process's write lock.
    #[arg(long, default_value_t = DEFAULT_DB_TIMEOUT.as_millis() as u64, value_parser = parse_timeout)]
    db_timeout_ms: u64,
    /// File with the 32-byte key (raw, or 64 hex digits) that seals workload secrets and
    /// session state at rest (AES-256-GCM). Without it they are stored in plaintext. To
    /// change keys: `krun-kbs --db ... rotate-secrets --old-key-file OLD --new-key-file NEW`.
    #[arg(long)]
    secrets_key_file: Option<PathBuf>,
    /// File holding the admin bearer token (enables the admin API and registration).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Accept buildah's unauthenticated POST /kbs/v0/register_workload for new workload ids
    /// only; an id that exists is answered 409 (replacing it needs the admin token).
    #[arg(long)]
    insecure_registration: bool,
    /// Extra SNP trust root: PEM with a self-signed ARK and optionally its ASK. Repeatable.
    #[arg(long = "trust-root")]
    trust_roots: Vec<PathBuf>,
    /// Extra legacy-SEV ARK in AMD's raw certificate format. Repeatable.
    #[arg(long = "sev-trust-root")]
    sev_trust_roots: Vec<PathBuf>,
    /// Also trust AMD's legacy-SEV ARK of these older generations: naples, rome (comma
    /// separated or repeated). Without it SEV/SEV-ES chains must be rooted in AMD's Milan,
    /// Genoa or Turin ARK (or a --sev-trust-root).
    #[arg(
        long = "allow-sev-generation",
        value_delimiter = ',',
        value_name = "GEN"
    )]
    allow_sev_generations: Vec<LegacySevGeneration>,
    /// Minimum SEV firmware (MAJOR.MINOR.BUILD, as PLATFORM_STATUS reports it) for SEV/SEV-ES
    /// workloads without their own minimum; 0.0.0 is no minimum.
    #[arg(long, value_name = "MAJOR.MINOR.BUILD", default_value_t = SevFirmware::default())]
    min_sev_fw: SevFirmware,
    /// Directory of VCEK certificates named <hex chip id>.{der,pem,crt}.
    #[arg(long)]
    vcek_dir: Option<PathBuf>,
    /// TLS certificate chain (PEM); serves HTTPS together with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Session lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    session_ttl: u64,
    /// Most sessions open at once.
    #[arg(long, default_value_t = DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
    /// Most connections served at once; further clients wait in the listen backlog until
    /// one ends (each connection lives at most 120 s and must send its headers within 10 s).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = parse_positive)]
    max_connections: usize,
    /// Request handlers running at once (signature checks, key agreement, database); further
    /// requests wait their turn. Default: twice the CPUs, at least 4.
    #[arg(long, value_parser = parse_positive)]
    blocking_threads: Option<usize>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Lowest SNP report version accepted for workloads registered by buildah.
    #[arg(long, default_value_t = 2)]
    min_report_version: u32,
    /// Minimum reported SNP TCB (bootloader:tee:snp:microcode SVNs, each compared on its
    /// own) for SNP workloads without their own minimum; 0:0:0:0 is no minimum.
    #[arg(long, value_name = "BL:TEE:SNP:UCODE", default_value_t = MinTcb::default())]
    min_tcb: MinTcb,
    /// Guest bundle directory (libkrun-sev's `$(LIBDIR)/krun-sev`) of the launches this broker
    /// serves. Repeatable. With it the broker accepts launches of workloads registered with
    /// unbound digests (buildah's `krunfw_measurement`): it recomputes their digest from the
    /// launch's host.json (docs/measurement.md, "Unbound digests"). Needs --public-url.
    /// The recomputation uses the PSP model identity in $KRUN_SEV_PSP_MODEL_DIR when set (no
    /// digest depends on it), else generates a throw-away one at start.
    #[arg(long = "bundle", value_name = "DIR", requires = "public_urls")]
    bundles: Vec<PathBuf>,
    /// A URL launches name this broker by (their TEE config's `attestation_url`, e.g.
    /// http://10.0.0.5:8000). Repeatable. Launches of unbound-registered workloads must be
    /// bound to one of them.
    #[arg(long = "public-url", value_name = "URL")]
    public_urls: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage workloads.
    #[command(subcommand)]
    Workload(WorkloadCmd),
    /// Manage a workload's secrets.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Re-seal every stored secret and open session under a new key, in one transaction.
    /// Stop the brokers first (or restart them all with the new key right after): a broker
    /// still running with the old key cannot open what was re-sealed.
    RotateSecrets {
        /// The key the values are sealed with now; omit when they are stored unsealed.
        #[arg(long)]
        old_key_file: Option<PathBuf>,
        /// The key to seal them with.
        #[arg(long, required_unless_present = "unseal")]
        new_key_file: Option<PathBuf>,
        /// Store them unsealed instead (leaving secrets-at-rest sealing).
        #[arg(long, conflicts_with = "new_key_file")]
        unseal: bool,
    },
}

#[derive(Subcommand, Debug)]
enum WorkloadCmd {
    /// Add or replace a workload.
    Add {
        #[arg(long)]
        id: String,
        /// snp; sev or sev-es (SEV-ES, buildah's `sev`); sev-no-es (plain SEV).
        #[arg(long, value_parser = parse_tee)]
        tee: CliTee,
        /// Allowed launch digest in hex. Repeatable.
        #[arg(long = "measurement", required = true)]
        measurements: Vec<String>,
        /// SEV policy word (decimal or 0x hex); default 0x3f (SEV-ES) for --tee sev and
        /// sev-es, 0x3b (no ES bit) for sev-no-es. sev-es needs the ES bit (0x4), sev-no-es
        /// must not have it.
        #[arg(long, value_parser = parse_u32)]
        sev_policy: Option<u32>,
        /// File with the LUKS passphrase (the `key` secret).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        #[arg(long)]
        allow_debug: bool,
        #[arg(long)]
        allow_migration_agent: bool,
        /// SNP: refuse reports whose guest policy allows SMT (bit 16).
        #[arg(long)]
        forbid_smt: bool,
        #[arg(long, default_value_t = 2)]
        min_report_version: u32,
        #[arg(long, default_value_t = 0)]
        max_vmpl: u32,
        /// SNP: minimum reported TCB as bootloader:tee:snp:microcode; replaces the server's
        /// --min-tcb for this workload (0:0:0:0: no minimum). Default: the server's.
        #[arg(long, value_name = "BL:TEE:SNP:UCODE")]
        min_tcb: Option<MinTcb>,
        /// SEV/SEV-ES: minimum firmware as MAJOR.MINOR.BUILD; replaces the server's
        /// --min-sev-fw for this workload (0.0.0: no minimum). Default: the server's.
        #[arg(long, value_name = "MAJOR.MINOR.BUILD")]
        min_sev_fw: Option<SevFirmware>,
        /// SNP: the HOST_DATA reports must carry (64 hex digits; the TEE config's
        /// tee_data.host_data).
        #[arg(long)]
        host_data: Option<HostData>,
        /// The digests leave out the launch's binding (`krunfw_measurement`'s output): the
        /// serving broker needs --bundle to check such launches.
        #[arg(long)]
        unbound: bool,
    },
    /// List workloads as JSON.
    List,
    /// Remove a workload and its secrets.
    Remove { id: String },
}

#[derive(Subcommand, Debug)]
enum SecretCmd {
    /// Store a secret read from a file (name `key` is the LUKS passphrase; RCAR resources use
    /// their path, e.g. `repo/type/tag`).
    Set {
        workload: String,
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove a secret.
    Remove { workload: String, name: String },
}

/// The `--tee` of `workload add`: the stored TEE kind is `sev` for the whole SEV family,
/// and the policy's ES bit (0x4) tells SEV-ES from plain SEV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CliTee {
    /// `sev`: buildah's name, launched as SEV-ES; any policy may be given.
    Sev,
    /// `sev-es`: the policy must have ES.
    SevEs,
    /// `sev-no-es` (buildah's `sev_no_es`): plain SEV; the policy must not have ES.
    SevNoEs,
    Snp,
}

/// SEV policy bit 2: ES (the guest must be SEV-ES).
const SEV_POLICY_ES: u32 = 0x4;

impl CliTee {
    fn kind(self) -> TeeKind {
        match self {
            CliTee::Snp => TeeKind::Snp,
            _ => TeeKind::Sev,
        }
    }

    /// The policy to store: the given one when it fits the TEE, else the default.
    fn sev_policy(self, given: Option<u32>) -> Result<u32, String> {
        let default = krun_kbs::api::DEFAULT_SEV_POLICY;
        match (self, given) {
            (CliTee::SevNoEs, None) => Ok(default & !SEV_POLICY_ES),
            (CliTee::SevNoEs, Some(p)) if p & SEV_POLICY_ES != 0 => Err(format!(
                "--tee sev-no-es (plain SEV) with --sev-policy {p:#x}: the ES bit 0x4 makes \
                 the PSP refuse every plain SEV launch; clear it, or use --tee sev-es"
            )),
            (CliTee::SevEs, Some(p)) if p & SEV_POLICY_ES == 0 => Err(format!(
                "--tee sev-es with --sev-policy {p:#x}: without the ES bit 0x4 the policy \
                 allows a plain SEV launch; set it, or use --tee sev-no-es"
            )),
            (_, Some(p)) => Ok(p),
            (_, None) => Ok(default),
        }
    }
}

fn parse_tee(s: &str) -> Result<CliTee, String> {
    match s {
        "sev" => Ok(CliTee::Sev),
        "sev-es" | "sev_es" => Ok(CliTee::SevEs),
        "sev-no-es" | "sev_no_es" => Ok(CliTee::SevNoEs),
        "snp" | "sev-snp" => Ok(CliTee::Snp),
        _ => Err("expected sev, sev-es, sev-no-es or snp".into()),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_pool_size(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_timeout(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 ms".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_u32(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("database error")]
    Db(#[from] krun_kbs::db::DbError),
    #[error("secrets key")]
    Seal(#[from] krun_kbs::seal::SealError),
    #[error("cannot read an input file")]
    Read(#[source] std::io::Error),
    #[error("trust root is unusable")]
    Trust(#[from] krun_kbs::verify_snp::TrustError),
    #[error("TLS setup failed")]
    Tls(#[from] krun_kbs::serve::ServeError),
    #[error("cannot listen")]
    Listen(#[source] std::io::Error),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("invalid input")]
    Usage(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot load the guest bundle {0}")]
    Bundle(String, #[source] krun_bundle::BundleError),
    #[error("cannot check unbound digests")]
    Unbound(#[from] krun_kbs::unbound::UnboundSetupError),
    #[error("cannot load the PSP model identity named by KRUN_SEV_PSP_MODEL_DIR")]
    ModelIdentity(#[source] krun_sev::tee::TeeError),
}

/// SHA-256 of the SubjectPublicKeyInfo of the first certificate in `pem` (what a launch's
/// `broker_pin` holds).
fn own_pin(pem_path: &std::path::Path) -> Result<[u8; 32], MainError> {
    let pem = read(pem_path)?;
    let cert = openssl::x509::X509::from_pem(&pem)
        .and_then(|c| c.to_der())
        .map_err(|e| MainError::Usage(format!("{}: {e}", pem_path.display()).into()))?;
    let spki = krun_attestation::tls_pin::subject_public_key_info(&cert).ok_or_else(|| {
        MainError::Usage(format!("{}: no public key in the certificate", pem_path.display()).into())
    })?;
    Ok(openssl::sha::sha256(spki))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, MainError> {
    std::fs::read(path).map_err(|e| {
        MainError::Read(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    })
}

fn open_store(cli: &Cli) -> Result<Store, MainError> {
    let store = Store::connect(
        &cli.db,
        PoolOptions {
            size: cli.db_pool_size,
            timeout: Duration::from_millis(cli.db_timeout_ms),
        },
    )?;
    match &cli.secrets_key_file {
        Some(f) => Ok(store.with_secrets_key(SecretsKey::from_file(f)?)),
        None => Ok(store),
    }
}

fn admin(cli: &Cli, cmd: &Command) -> Result<(), MainError> {
    let store = open_store(cli)?;
    match cmd {
        Command::Workload(WorkloadCmd::Add {
            id,
            tee,
            measurements,
            sev_policy,
            passphrase_file,
            allow_debug,
            allow_migration_agent,
            forbid_smt,
            min_report_version,
            max_vmpl,
            min_tcb,
            min_sev_fw,
            host_data,
            unbound,
        }) => {
            let digests = krun_kbs::api::decode_measurements(tee.kind(), measurements)
                .map_err(|r| MainError::Usage(r.detail.into()))?;
            let sev_policy = match tee.kind() {
                TeeKind::Sev => tee
                    .sev_policy(*sev_policy)
                    .map_err(|e| MainError::Usage(e.into()))?,
                TeeKind::Snp => sev_policy.unwrap_or(krun_kbs::api::DEFAULT_SEV_POLICY),
            };
            let w = krun_kbs::db::Workload {
                id: id.clone(),
                tee: tee.kind(),
                sev_policy,
                snp: SnpRequirements {
                    allow_debug: *allow_debug,
                    allow_migration_agent: *allow_migration_agent,
                    forbid_smt: *forbid_smt,
                    min_tcb: *min_tcb,
                    min_report_version: *min_report_version,
                    max_vmpl: *max_vmpl,
                    host_data: *host_data,
                },
                sev: SevRequirements {
                    min_fw: *min_sev_fw,
                },
                measurements: vec![],
                measurement_kind: if *unbound {
                    MeasurementKind::Unbound
                } else {
                    MeasurementKind::Bound
                },
            };
            let passphrase = passphrase_file.as_deref().map(read).transpose()?;
            let passphrase = passphrase.map(Zeroizing::new);
            let key = passphrase
                .as_deref()
                .map(|p| p.strip_suffix(b"\n").unwrap_or(p));
            store.register(&w, &digests, key, PutMode::Replace)?;
        }
        Command::Workload(WorkloadCmd::List) => {
            let mut out = Vec::new();
            for w in store.workloads()? {
                let secrets = store.secret_names(&w.id)?;
                out.push(krun_kbs::api::WorkloadInfo {
                    workload: w,
                    secrets,
                });
            }
            let text = serde_json::to_string_pretty(&out)
                .map_err(|e| MainError::Usage(e.to_string().into()))?;
            println!("{text}");
        }
        Command::Workload(WorkloadCmd::Remove { id }) => {
            if !store.remove_workload(id)? {
                return Err(MainError::Usage(format!("no workload {id}").into()));
            }
        }
        Command::Secret(SecretCmd::Set {
            workload,
            name,
            file,
        }) => {
            let data = Zeroizing::new(read(file)?);
            if !store.put_secret(workload, name, &data)? {
                return Err(MainError::Usage(format!("no workload {workload}").into()));
            }
        }
        Command::RotateSecrets {
            old_key_file,
            new_key_file,
            unseal: _,
        } => {
            let old = old_key_file
                .as_deref()
                .map(SecretsKey::from_file)
                .transpose()?;
            let new = new_key_file
                .as_deref()
                .map(SecretsKey::from_file)
                .transpose()?;
            let n = store.rotate_secrets(old.as_ref(), new.as_ref())?;
            match &new {
                Some(k) => println!("{n} values re-sealed under key id {}", k.id()),
                None => println!("{n} values stored unsealed"),
            }
        }
        Command::Secret(SecretCmd::Remove { workload, name }) => {
            if !store.remove_secret(workload, name)? {
                return Err(MainError::Usage(
                    format!("no secret {name} for {workload}").into(),
                ));
            }
        }
    }
    Ok(())
}

fn serve(cli: &Cli, listen: SocketAddr) -> Result<(), MainError> {
    if cli.bundles.is_empty() && !cli.public_urls.is_empty() {
        return Err(MainError::Usage(
            "--public-url is only used with --bundle".into(),
        ));
    }
    let store = open_store(cli)?;
    tracing::info!(store = store.engine_name(), "store opened");
    // A wrong key (or none) is refused here, not at the first release.
    let unsealed = store.check_sealed()?;
    if !store.seals_secrets() {
        tracing::warn!("no --secrets-key-file: secrets and session state are stored in plaintext");
    } else if unsealed > 0 {
        tracing::warn!(unsealed, "values stored before the secrets key was set are still in plaintext: run rotate-secrets without --old-key-file to seal them");
    }
    let admin_token = match &cli.admin_token_file {
        Some(f) => {
            let raw = Zeroizing::new(read(f)?);
            let token = String::from_utf8_lossy(&raw).trim().to_string();
            if token.is_empty() {
                return Err(MainError::Usage("admin token file is empty".into()));
            }
            Some(Zeroizing::new(token))
        }
        None => None,
    };
    let mut roots = TrustRoot::builtin()?;
    for f in &cli.trust_roots {
        roots.push(TrustRoot::from_pem_file(f)?);
    }
    let sev_arks = cli
        .sev_trust_roots
        .iter()
        .map(|f| read(f))
        .collect::<Result<Vec<_>, _>>()?;
    let config = BrokerConfig {
        admin_token,
        insecure_registration: cli.insecure_registration,
        session_ttl: Duration::from_secs(cli.session_ttl.max(1)),
        max_sessions: cli.max_sessions.max(1),
        body_limit: cli.body_limit,
        default_snp: SnpRequirements {
            min_report_version: cli.min_report_version,
            ..Default::default()
        },
        min_tcb: cli.min_tcb,
        min_sev_fw: cli.min_sev_fw,
        blocking_threads: cli
            .blocking_threads
            .unwrap_or_else(krun_kbs::config::default_blocking_threads),
    };
    let blocking_threads = config.blocking_threads;
    if config.insecure_registration {
        tracing::warn!("unauthenticated workload registration is enabled");
    }
    for generation in &cli.allow_sev_generations {
        tracing::warn!(
            generation = generation.name(),
            "legacy SEV chains rooted in this older AMD generation are trusted"
        );
    }
    let mut broker = Broker::new(
        config,
        store,
        SnpVerifier::new(roots, cli.vcek_dir.clone()),
        SevTrust::new(sev_arks, &cli.allow_sev_generations),
    );
    if !cli.bundles.is_empty() {
        let bundles = cli
            .bundles
            .iter()
            .map(|d| {
                krun_bundle::Bundle::load(d)
                    .map_err(|e| MainError::Bundle(d.display().to_string(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pin = cli.tls_cert.as_deref().map(own_pin).transpose()?;
        // No digest depends on the model identity the verifier computes with; a persisted
        // one named by KRUN_SEV_PSP_MODEL_DIR saves generating one (RSA-4096: minutes on a
        // slow or emulated CPU).
        let verifier = match std::env::var_os(krun_sev::tee::model::MODEL_DIR_ENV) {
            Some(dir) if !dir.is_empty() => {
                let identity = krun_sev::tee::model::load_or_ephemeral(std::path::Path::new(&dir))
                    .map_err(MainError::ModelIdentity)?;
                krun_kbs::unbound::UnboundVerifier::with_identity(
                    bundles,
                    &cli.public_urls,
                    pin,
                    identity,
                )?
            }
            _ => krun_kbs::unbound::UnboundVerifier::new(bundles, &cli.public_urls, pin)?,
        };
        tracing::info!(bundles = cli.bundles.len(), public_urls = ?cli.public_urls, "launches of workloads registered with unbound digests are checked against the bundle");
        broker = broker.with_unbound(verifier);
    }
    let broker = Arc::new(broker);
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(c), Some(k)) => Some(krun_kbs::serve::tls_config(c, k)?),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads)
        .build()
        .map_err(MainError::Runtime)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(MainError::Listen)?;
        let addr = listener.local_addr().map_err(MainError::Listen)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Harnesses read this line to find the port.
        println!("krun-kbs listening on {scheme}://{addr}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, scheme, "serving");
        tokio::spawn(krun_kbs::serve::collect_sessions(broker.clone()));
        krun_kbs::serve::run(listener, router(broker), tls, cli.max_connections).await;
        Ok(())
    })
}

/// `RUST_LOG` (default `info`), with the PostgreSQL client held at `info` whatever it says:
/// at `debug` tokio-postgres logs every statement's parameters, which are session ids,
/// nonces and secrets.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    ["tokio_postgres=info", "postgres=info"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, tracing_subscriber::EnvFilter::add_directive)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(log_filter())
        .init();
    let result = match (&cli.command, cli.listen) {
        (Some(cmd), _) => admin(&cli, cmd),
        (None, Some(listen)) => serve(&cli, listen),
        (None, None) => Err(MainError::Usage("--listen is required to serve".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("krun-kbs: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
