//! `krun-sev mkcw`: build an encrypted confidential-workload disk image laid out like
//! buildah mkcw's: LUKS (LUKS1 with luksy's 4040-sector payload offset by default) over an
//! ext4 file system holding the root file system and `/.krun_config.json`, then padding and
//! the "KRUN" footer with the TEE config; plus the same TEE config as `krun-sev.json`.

mod ext4;
mod image_config;
mod oci;
pub(crate) mod register;
mod rootfs;

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use krun_luks::format::{
    benchmark_pbkdf2, format_luks1, format_luks2, write_encrypted, FormatError, Luks1Options,
    Luks2Options,
};
use krun_luks::{HashAlg, Kdf};
use krun_sev::resources::{footer_bytes, KbsProtocol, TeeConfig, TeeKind};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use self::ext4::{Ext4Error, ExtraFile};
use self::image_config::{ImageConfigError, ProcessConfig};
use self::register::{ExpectedLaunch, RegisterError, Registration};
use self::rootfs::RootfsError;

/// TEE types `mkcw` builds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TeeArg {
    /// SEV-ES ("sev" in the config, what buildah's --type sev writes).
    Sev,
    /// SEV-ES, always.
    SevEs,
    /// Plain SEV without encrypted state.
    SevNoEs,
    /// SEV-SNP.
    Snp,
}

/// LUKS header versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LuksArg {
    /// LUKS1, payload at 4040 sectors (buildah/luksy layout).
    Luks1,
    /// LUKS2 (cryptsetup layout, PBKDF2 keyslot).
    Luks2,
}

/// Arguments of `krun-sev mkcw`.
#[derive(Debug, clap::Args)]
pub struct MkcwArgs {
    /// The root file system: a directory or a tar archive.
    rootfs: PathBuf,
    /// Output directory; receives disk.img and krun-sev.json.
    out_dir: PathBuf,
    /// TEE type.
    #[arg(long, value_enum)]
    tee: TeeArg,
    /// vCPUs of the workload (measured).
    #[arg(long, default_value_t = 2)]
    cpus: u8,
    /// RAM of the workload in MiB (measured).
    #[arg(long, default_value_t = 512)]
    ram_mib: u32,
    /// Key broker URL stored in the config.
    #[arg(long)]
    attestation_url: Option<String>,
    /// Key broker protocol.
    #[arg(long, value_parser = ["reference", "rcar"], default_value = "reference")]
    kbs_protocol: String,
    /// Workload ID (default: 32 random bytes in hex).
    #[arg(long)]
    workload_id: Option<String>,
    /// LUKS passphrase on the command line, as buildah's --passphrase. Discouraged: other
    /// users of the machine can read it (ps, /proc/PID/cmdline) and shell history keeps it;
    /// mkcw prints a warning. Use --passphrase-file. Default: 32 random bytes in hex, written
    /// to OUT_DIR/passphrase, or with --register only sent to the broker.
    #[arg(long, conflicts_with = "passphrase_file")]
    passphrase: Option<String>,
    /// Read the LUKS passphrase from this file, or from standard input with `-` (trailing
    /// newlines removed).
    #[arg(long, value_name = "FILE|-")]
    passphrase_file: Option<PathBuf>,
    /// SEV/SEV-ES: the platform's full certificate chain (`sevctl export --full`) that the
    /// VMM sends to the broker on SEV hardware, recorded as tee_data.vendor_chain (a path on
    /// the host that runs the workload; buildah uses /sev.chain inside the image).
    #[arg(long)]
    vendor_chain: Option<String>,
    /// AMD EPYC generation recorded in tee_data.gen: the vCPU model the launch presents
    /// (measured; SEV hardware must be this generation) and the SNP generation hint.
    #[arg(long, alias = "snp-gen", value_parser = ["milan", "genoa", "turin"], default_value = "milan")]
    gen: String,
    /// Pin the key broker's TLS key: the SHA-256 of its certificate's SubjectPublicKeyInfo
    /// (64 hex digits, e.g. from `openssl x509 -pubkey -noout | openssl pkey -pubin
    /// -outform der | sha256sum`), recorded as tee_data.attestation_server_pubkey. Needs
    /// an https --attestation-url; the guest then talks only to a broker holding that key.
    #[arg(long)]
    broker_pin: Option<String>,
    /// Entrypoint, one argument per flag.
    #[arg(long = "entrypoint", allow_hyphen_values = true)]
    entrypoint: Vec<String>,
    /// Command, one argument per flag (appended to the entrypoint).
    #[arg(long = "cmd", allow_hyphen_values = true)]
    cmd: Vec<String>,
    /// Environment entry NAME=VALUE, repeatable.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<String>,
    /// User (uid[:gid] or name).
    #[arg(long)]
    user: Option<String>,
    /// LUKS version.
    #[arg(long, value_enum, default_value = "luks1")]
    luks: LuksArg,
    /// PBKDF2 iterations for the keyslot (default: benchmarked to about 1 s, as luksy does).
    #[arg(long)]
    pbkdf2_iterations: Option<u32>,
    /// Extra free space in percent of the root file system's size.
    #[arg(long, default_value_t = 25)]
    slop_percent: u64,
    /// Register the workload (ID, launch measurement, passphrase, policy) with the key
    /// broker before encrypting, as buildah mkcw does. The measurement follows
    /// KRUN_SEV_BACKEND (model or hardware) like the launch will.
    #[arg(long)]
    register: bool,
    /// Key broker URL to register with (default: --attestation-url).
    #[arg(long, requires = "register")]
    kbs_url: Option<String>,
    /// File holding the broker's admin token, sent as a bearer token.
    #[arg(long, requires = "register")]
    admin_token_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for an https broker.
    #[arg(long, requires = "register")]
    kbs_ca_file: Option<PathBuf>,
    /// Guest bundle the measurement is computed over (default: $KRUN_SEV_BUNDLE_DIR, else
    /// the install location).
    #[arg(long, requires = "register")]
    bundle: Option<PathBuf>,
    /// Also write the workload as an OCI image archive (an image-spec image layout in a
    /// tar) that `podman load -i FILE` takes: one layer with buildah mkcw's root file system
    /// (/entrypoint, /krun-sev.json, /disk.img, /tmp), Entrypoint ["/entrypoint"].
    #[arg(long, value_name = "FILE")]
    oci_archive: Option<PathBuf>,
    /// Also write the same image as an OCI image layout directory (absent or empty).
    #[arg(long, value_name = "DIR")]
    oci: Option<PathBuf>,
    /// Image name recorded for --oci-archive and --oci (org.opencontainers.image.ref.name).
    #[arg(long, value_name = "NAME[:TAG]", default_value = oci::DEFAULT_TAG)]
    tag: String,
}

/// Errors of `krun-sev mkcw`.
#[derive(Debug, thiserror::Error)]
pub enum MkcwError {
    /// Bad combination of options.
    #[error("{0}")]
    Usage(String),
    /// Invalid workload settings.
    #[error("invalid workload settings")]
    Process(#[source] ImageConfigError),
    /// The root file system could not be staged.
    #[error("cannot read the root file system")]
    Rootfs(#[source] RootfsError),
    /// The ext4 image could not be made.
    #[error("cannot make the ext4 file system")]
    Ext4(#[source] Ext4Error),
    /// LUKS formatting or encryption failed.
    #[error("cannot encrypt the disk image")]
    Luks(#[source] FormatError),
    /// The TEE config is invalid.
    #[error("invalid TEE config")]
    TeeConfig(#[source] krun_sev::resources::TeeConfigError),
    /// A file could not be written.
    #[error("cannot write {0}")]
    Io(String, #[source] std::io::Error),
    /// An input could not be read.
    #[error("cannot read {0}")]
    Read(String, #[source] std::io::Error),
    /// The random generator failed.
    #[error("random number generator failed")]
    Random(#[source] std::io::Error),
    /// Registration with the key broker failed.
    #[error("cannot register the workload with the key broker")]
    Register(#[source] RegisterError),
    /// The OCI image could not be written.
    #[error("cannot write the OCI image")]
    Oci(#[source] oci::OciError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MkcwError + '_ {
    move |e| MkcwError::Io(path.display().to_string(), e)
}

fn random_hex(bytes: usize) -> Result<Zeroizing<String>, MkcwError> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(MkcwError::Random)?;
    let mut out = Zeroizing::new(String::with_capacity(bytes * 2));
    for b in buf.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// The TEE config written to the footer and to krun-sev.json.
fn tee_config(args: &MkcwArgs, workload_id: String) -> Result<TeeConfig, MkcwError> {
    let mut tee_data = Map::new();
    let tee = match args.tee {
        TeeArg::Sev => TeeKind::Sev,
        TeeArg::SevEs => TeeKind::SevEs,
        TeeArg::SevNoEs => TeeKind::SevNoEs,
        TeeArg::Snp => TeeKind::Snp,
    };
    if tee == TeeKind::Snp {
        if args.vendor_chain.is_some() {
            return Err(MkcwError::Usage(
                "--vendor-chain is for SEV and SEV-ES (SNP reports carry their own chain)".into(),
            ));
        }
        tee_data.insert("gen".into(), Value::from(args.gen.clone()));
    } else {
        let chain = args.vendor_chain.clone().unwrap_or_default();
        tee_data.insert("vendor_chain".into(), Value::from(chain));
        // buildah writes no gen for SEV: Milan is the default vCPU model.
        if args.gen != "milan" {
            tee_data.insert("gen".into(), Value::from(args.gen.clone()));
        }
    }
    tee_data.insert(
        "attestation_server_pubkey".into(),
        Value::from(args.broker_pin.clone().unwrap_or_default()),
    );
    let config = TeeConfig {
        workload_id,
        cpus: args.cpus,
        ram_mib: args.ram_mib,
        tee,
        tee_data,
        attestation_url: args.attestation_url.clone().unwrap_or_default(),
        kbs_protocol: if args.kbs_protocol == "rcar" {
            KbsProtocol::Rcar
        } else {
            KbsProtocol::Reference
        },
    };
    // Round-trip through the parser the library uses, so mkcw never writes a config that
    // krun_set_tee_config_file would refuse.
    krun_sev::resources::tee_config::load_json(config.to_json().as_bytes())
        .map_err(MkcwError::TeeConfig)
}

/// Warning printed for `--passphrase`.
const PASSPHRASE_ARG_WARNING: &str = "mkcw: warning: --passphrase puts the passphrase on the \
    command line, where other users of this machine can read it (ps, /proc/PID/cmdline) and \
    shell history keeps it; use --passphrase-file FILE, or --passphrase-file - to read it from \
    standard input";

/// Reads a passphrase from `file`, or from standard input for `-`; trailing newlines go.
fn read_passphrase(file: &Path) -> Result<Zeroizing<Vec<u8>>, MkcwError> {
    let stdin = file.as_os_str() == "-";
    let mut bytes = Zeroizing::new(Vec::new());
    if stdin {
        let input = std::io::stdin();
        if std::io::IsTerminal::is_terminal(&input) {
            eprintln!("mkcw: reading the passphrase from standard input (end with Ctrl-D)");
        }
        std::io::Read::read_to_end(&mut input.lock(), &mut bytes)
            .map_err(|e| MkcwError::Read("the passphrase from standard input".into(), e))?;
    } else {
        // Read into the zeroized buffer directly (fs::read would leave its own copy).
        File::open(file)
            .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut bytes))
            .map_err(|e| MkcwError::Read(file.display().to_string(), e))?;
    }
    while bytes.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        let what = if stdin {
            "the passphrase on standard input".to_string()
        } else {
            file.display().to_string()
        };
        return Err(MkcwError::Usage(format!("{what} is empty")));
    }
    Ok(bytes)
}

fn passphrase(args: &MkcwArgs, out_dir: &Path) -> Result<Zeroizing<Vec<u8>>, MkcwError> {
    if let Some(p) = &args.passphrase {
        eprintln!("{PASSPHRASE_ARG_WARNING}");
        return Ok(Zeroizing::new(p.as_bytes().to_vec()));
    }
    if let Some(file) = &args.passphrase_file {
        return read_passphrase(file);
    }
    let generated = random_hex(32)?;
    if args.register {
        // The broker is the only holder: nothing is written next to the image.
        eprintln!("mkcw: generated a passphrase; it goes to the key broker only");
        return Ok(Zeroizing::new(generated.as_bytes().to_vec()));
    }
    let path = out_dir.join("passphrase");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(generated.as_bytes()))
        .map_err(io_err(&path))?;
    eprintln!(
        "mkcw: generated a passphrase; it is in {} (mode 0600): register it with the key broker, then delete it",
        path.display()
    );
    Ok(Zeroizing::new(generated.as_bytes().to_vec()))
}

/// Builds the image; returns the TEE config written.
pub fn mkcw(args: &MkcwArgs) -> Result<TeeConfig, MkcwError> {
    if args.attestation_url.is_none() && args.passphrase.is_none() && args.passphrase_file.is_none()
    {
        return Err(MkcwError::Usage(
            "give --attestation-url (the broker releases the key) or --passphrase/--passphrase-file".into(),
        ));
    }
    let process = ProcessConfig {
        entrypoint: args.entrypoint.clone(),
        cmd: args.cmd.clone(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
    };
    let krun_config = process.to_image_config().map_err(MkcwError::Process)?;
    let oci_targets = oci_targets(args)?;
    fs::create_dir_all(&args.out_dir).map_err(io_err(&args.out_dir))?;
    let workload_id = match &args.workload_id {
        Some(id) => id.clone(),
        None => random_hex(32)?.to_string(),
    };
    let config = tee_config(args, workload_id)?;
    let registration = registration(args)?;
    if let Some(reg) = &registration {
        if let Some(warning) = register::cleartext_warning(reg) {
            eprintln!("{warning}");
        }
    }
    // Measured first: a missing bundle or bad backend setting fails before the slow steps.
    let expected = match &registration {
        Some(reg) => Some(expected_launch(&config, reg)?),
        None => None,
    };
    let pass = passphrase(args, &args.out_dir)?;

    let work = tempfile::Builder::new()
        .prefix(".mkcw-")
        .tempdir_in(&args.out_dir)
        .map_err(io_err(&args.out_dir))?;
    let root = rootfs::stage(&args.rootfs, work.path()).map_err(MkcwError::Rootfs)?;
    let size = ext4::image_size(
        ext4::tree_size(&root).map_err(MkcwError::Ext4)?,
        args.slop_percent,
    );
    eprintln!("mkcw: making a {} MiB ext4 file system", size >> 20);
    let plain = work.path().join("plain.img");
    ext4::make_image(
        &root,
        &plain,
        size,
        &[ExtraFile {
            name: ".krun_config.json",
            contents: &krun_config,
            mode: 0o600,
        }],
    )
    .map_err(MkcwError::Ext4)?;

    let volume = match args.luks {
        LuksArg::Luks1 => {
            let opts = Luks1Options {
                keyslot_iterations: iterations(args, HashAlg::Sha256, 64),
                ..Luks1Options::default()
            };
            format_luks1(&pass, &opts)
        }
        LuksArg::Luks2 => {
            let opts = Luks2Options {
                kdf: Kdf::Pbkdf2 {
                    hash: HashAlg::Sha256,
                    iterations: iterations(args, HashAlg::Sha256, 64),
                },
                ..Luks2Options::default()
            };
            format_luks2(&pass, &opts)
        }
    }
    .map_err(MkcwError::Luks)?;
    // Registered after mkfs and before encryption, as buildah does: a refused registration
    // stops the build before the slow step.
    if let (Some(reg), Some(expected)) = (&registration, &expected) {
        register::register(reg, &config.workload_id, expected, &pass)
            .map_err(MkcwError::Register)?;
        eprintln!(
            "mkcw: registered workload {} with the key broker at {}",
            config.workload_id, reg.kbs_url
        );
    }
    drop(pass);

    let disk = args.out_dir.join("disk.img");
    let started = Instant::now();
    // Owner-only like buildah's image, also when an earlier run left a wider mode.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&disk)
        .map_err(io_err(&disk))?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io_err(&disk))?;
    let mut out = BufWriter::new(file);
    let input = BufReader::new(File::open(&plain).map_err(io_err(&plain))?);
    let mut last_report = Instant::now();
    write_encrypted(&volume, input, &mut out, &mut |done| {
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("mkcw: encrypted {} of {} MiB", done >> 20, size >> 20);
            last_report = Instant::now();
        }
    })
    .map_err(MkcwError::Luks)?;
    let mut file = out
        .into_inner()
        .map_err(|e| MkcwError::Io(disk.display().to_string(), e.into_error()))?;
    let len = file.seek(SeekFrom::End(0)).map_err(io_err(&disk))?;
    let json = config.to_json();
    file.write_all(&footer_bytes(json.as_bytes(), len, 4096))
        .and_then(|()| file.sync_all())
        .map_err(io_err(&disk))?;
    eprintln!(
        "mkcw: encrypted in {:.1} s; wrote {}",
        started.elapsed().as_secs_f64(),
        disk.display()
    );

    let cfg_path = args.out_dir.join("krun-sev.json");
    fs::write(&cfg_path, json.as_bytes()).map_err(io_err(&cfg_path))?;
    eprintln!("mkcw: wrote {}", cfg_path.display());
    for target in &oci_targets {
        let workload = oci::Workload {
            krun_sev_json: json.as_bytes(),
            disk: &disk,
        };
        let manifest = oci::write(target, &args.tag, &workload).map_err(MkcwError::Oci)?;
        let (what, path) = match target {
            oci::Target::Archive(p) => ("OCI archive", p),
            oci::Target::Dir(p) => ("OCI layout", p),
        };
        eprintln!(
            "mkcw: wrote {what} {} (image {}, manifest {manifest})",
            path.display(),
            oci::normalize_tag(&args.tag).map_err(MkcwError::Oci)?
        );
    }
    Ok(config)
}

/// The OCI outputs asked for; the image name is checked before the slow steps.
fn oci_targets(args: &MkcwArgs) -> Result<Vec<oci::Target>, MkcwError> {
    let mut targets = Vec::new();
    if let Some(file) = &args.oci_archive {
        targets.push(oci::Target::Archive(file.clone()));
    }
    if let Some(dir) = &args.oci {
        targets.push(oci::Target::Dir(dir.clone()));
    }
    if !targets.is_empty() {
        oci::normalize_tag(&args.tag).map_err(MkcwError::Oci)?;
    }
    Ok(targets)
}

/// The registration settings, when `--register` is given.
fn registration(args: &MkcwArgs) -> Result<Option<Registration<'_>>, MkcwError> {
    if !args.register {
        return Ok(None);
    }
    let kbs_url = args
        .kbs_url
        .as_deref()
        .or(args.attestation_url.as_deref())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            MkcwError::Usage("--register needs --kbs-url or --attestation-url".into())
        })?;
    let ca_pem = match &args.kbs_ca_file {
        Some(f) => Some(fs::read(f).map_err(|e| MkcwError::Read(f.display().to_string(), e))?),
        None => None,
    };
    Ok(Some(Registration {
        kbs_url,
        admin_token_file: args.admin_token_file.as_deref(),
        bundle: args
            .bundle
            .clone()
            .unwrap_or_else(krun_sev::launch::guest::bundle_dir),
        ca_pem,
    }))
}

fn expected_launch(
    config: &TeeConfig,
    reg: &Registration<'_>,
) -> Result<ExpectedLaunch, MkcwError> {
    let expected = register::expected_launch(config, reg).map_err(MkcwError::Register)?;
    eprintln!(
        "mkcw: launch measurement ({}, {} vCPUs, {} MiB, vCPU model {}, bound to workload {} at {}): {}",
        expected.mode.host_json_name(),
        config.cpus,
        config.ram_mib,
        expected.vcpu_model.name(),
        config.workload_id,
        config.attestation_url,
        expected.measurement
    );
    Ok(expected)
}

fn iterations(args: &MkcwArgs, hash: HashAlg, key_len: usize) -> u32 {
    args.pbkdf2_iterations
        .unwrap_or_else(|| benchmark_pbkdf2(hash, key_len, Duration::from_secs(1)))
}
