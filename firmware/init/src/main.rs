//! The guest's /init (issue 5): obtain the disk key, open the LUKS root disk, switch into it,
//! run the workload as a child, report its exit status to the host, power off.
//!
//! Every step that can fail names itself in the message printed before the VM stops; the
//! status byte on port 0xf4 is then [`exit::INIT_FAILURE_STATUS`] (see [`exit`] for the
//! whole convention). Inputs: `/krun/host.json` ([`host_config`]), `/krun/secret`
//! ([`secret_table`]), the KRUN footer of `/dev/vda` ([`footer`]) and `/.krun_config.json`
//! inside the disk ([`workload_config`]).

mod attest_broker;
#[cfg(test)]
mod c_probe;
mod console;
mod dm;
mod exec_plan;
mod exit;
mod footer;
mod host_config;
mod key_source;
mod listen_announce;
mod lockdown;
mod luks_unlock;
mod mounts;
mod net;
mod portfwd;
mod rlimits;
mod secret_table;
mod snp_report;
mod supervisor;
mod sys;
mod unlock;
mod users;
mod vsock;
mod workload_config;

use std::collections::BTreeSet;
use std::path::Path;

use host_config::{HostConfig, PortMapMode};
use key_source::{AttestationContext, KeySource};
use snp_report::{PspModelReports, ReportSource, SevGuestDevice};
use unlock::DiskUnlocker;
use workload_config::{WorkloadConfig, WorkloadConfigError};

/// Name of the dm-crypt mapping (`/dev/mapper/krunroot`).
const MAPPING_NAME: &str = "krunroot";
/// Where the decrypted root is mounted before the switch.
const NEW_ROOT: &str = "/newroot";

/// Unwraps a step's result or stops the VM naming the step.
fn step<T, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    name: &str,
    result: Result<T, E>,
) -> T {
    result.unwrap_or_else(|err| exit::fatal(name, &*err.into()))
}

fn main() {
    console::announce_start();
    std::panic::set_hook(Box::new(|info| {
        log_error!("internal error: {info}");
        exit::power_off(exit::INIT_FAILURE_STATUS);
    }));
    step("early mounts", mounts::mount_all(&mounts::early_mounts()));
    let mut host = step(
        "reading /krun/host.json",
        HostConfig::load(Path::new(host_config::HOST_CONFIG_PATH)),
    );
    match &host.binding {
        Some(b) => log!(
            "launch: tee {:?}, bound to workload {} at {}{}",
            host.tee,
            b.workload_id,
            b.attestation_url,
            if b.broker_pin.is_some() {
                " (pinned key)"
            } else {
                ""
            }
        ),
        None => log!("launch: tee {:?}, no key broker", host.tee),
    }

    let root_disk = Path::new(footer::ROOT_DISK);
    // The footer is parsed by the same code as the host's krun_set_tee_config_file, which
    // refused the same JSON before launch had it been invalid: in a confidential launch a
    // footer that fails here was changed behind the library's back.
    let tee_config = match footer::read_tee_config(root_disk) {
        Ok(cfg) => cfg,
        Err(err) if host.tee.is_confidential() => exit::fatal("reading the root disk footer", &err),
        Err(err) => {
            log_warn!(
                "ignoring the root disk footer: {}",
                console::error_chain(&err)
            );
            None
        }
    };
    if tee_config.is_none() {
        log_warn!("the root disk has no KRUN footer");
    }

    let source = step(
        "choosing the key source",
        key_source::select(&host, tee_config.as_ref()),
    );
    let root_device = if source == KeySource::Unencrypted {
        // Only reachable without a TEE: a confidential launch always needs a key source.
        let is_luks = step(
            "reading the root disk",
            luks_unlock::has_luks_magic(root_disk),
        );
        if is_luks {
            exit::fatal(
                "choosing the key source",
                &key_source::KeySourceError::NoKeySource,
            );
        }
        log_warn!("no TEE and no passphrase: mounting the unencrypted root disk");
        root_disk.to_path_buf()
    } else {
        unlock_root(source, &mut host, tee_config.as_ref(), root_disk)
    };
    step(
        "mounting the root file system",
        mounts::mount_root(&root_device, Path::new(NEW_ROOT)),
    );
    step(
        "switching to the root file system",
        mounts::switch_root(Path::new(NEW_ROOT)),
    );

    let root = Path::new("/");
    step(
        "mounting /proc, /sys, /dev and friends",
        mounts::mount_all(&mounts::container_mounts(root)),
    );
    step("creating /dev symlinks", mounts::dev_symlinks(root));
    if host.tee.is_confidential() {
        step(
            "removing attestation devices",
            lockdown::remove_attestation_devices(&root.join("dev")),
        );
    }
    step("bringing up the loopback interface", net::loopback_up());
    // The network is optional: a workload that does not need it still starts.
    match net::configure(root) {
        Ok(Some(configured)) => log!("network: {configured}"),
        Ok(None) => {}
        Err(err) => log_warn!("network: {}", console::error_chain(&err)),
    }

    let workload = match WorkloadConfig::load(Path::new(workload_config::WORKLOAD_CONFIG_PATH)) {
        Err(WorkloadConfigError::Read(e))
            if e.kind() == std::io::ErrorKind::NotFound && host.exec.is_some() =>
        {
            WorkloadConfig::default()
        }
        other => step("reading /.krun_config.json", other),
    };
    let users = users::UserDb::load(root);
    let plan = step(
        "preparing the workload",
        exec_plan::build(&workload, &host, &users, root),
    );
    if let Some(name) = &plan.hostname {
        step("setting the hostname", set_hostname(name));
    }
    // Like Docker: a WorkingDir the image lacks is created.
    step(
        "creating the working directory",
        std::fs::create_dir_all(&plan.cwd),
    );

    if host.tee.is_confidential() {
        step(
            "dropping the capabilities that reach attestation",
            lockdown::drop_capabilities(),
        );
    }
    step("blocking signals", supervisor::block_signals());
    start_port_forwarding(&host.port_map);

    // SAFETY: getpid cannot fail.
    let reap = if unsafe { libc::getpid() } == 1 {
        supervisor::Reap::All
    } else {
        supervisor::Reap::WorkloadOnly
    };
    let status = step("running the workload", supervisor::run(&plan, reap));
    log!("workload exited with status {status}");
    exit::power_off(status);
}

/// Obtains the passphrase, opens the LUKS root disk and maps it with dm-crypt; returns the
/// decrypted device.
fn unlock_root(
    source: KeySource,
    host: &mut HostConfig,
    tee_config: Option<&footer::TeeConfig>,
    root_disk: &Path,
) -> std::path::PathBuf {
    let passphrase = {
        let broker = attest_broker::AttestationClient::over_vsock();
        // A guest without SNP has no /dev/sev-guest: that is the PSP model's launch, whose
        // reports carry the model's signature, which a broker with AMD's roots refuses. A
        // host cannot hide the device from a real SNP guest (the measured kernel creates it).
        let mut evidence: Box<dyn ReportSource> =
            if Path::new(snp_report::SEV_GUEST_DEVICE).exists() {
                Box::new(SevGuestDevice)
            } else {
                log!(
                    "no {}: asking the PSP model's report service",
                    snp_report::SEV_GUEST_DEVICE
                );
                Box::new(PspModelReports::new(|| {
                    vsock::VsockStream::connect(vsock::HOST_CID, vsock::PSP_MODEL_REPORT_PORT)
                }))
            };
        let mut ctx = AttestationContext {
            broker: &broker,
            evidence: evidence.as_mut(),
        };
        step(
            "obtaining the disk key",
            key_source::obtain(
                source,
                host,
                tee_config,
                Path::new(secret_table::SECRET_PATH),
                &mut ctx,
            ),
        )
    };
    // Zeroized on drop; nothing later needs it.
    host.dev_passphrase = None;
    if host.tee.is_confidential() {
        step(
            "closing the attestation channels",
            lockdown::close_attestation_channels(),
        );
    }
    if source == KeySource::DevPassphrase {
        log_warn!("using the development passphrase from host.json (not a confidential launch)");
    }

    let target = step(
        "unlocking the LUKS root disk",
        luks_unlock::LuksUnlocker::for_this_guest().unlock(root_disk, &passphrase),
    );
    drop(passphrase);
    let read_only = step("reading the root disk", sys::is_read_only(root_disk));
    let mapped = step(
        "creating the dm-crypt device",
        dm::create_crypt(MAPPING_NAME, root_disk, &target, read_only),
    );
    drop(target);
    let (major, minor) = (libc::major(mapped.dev), libc::minor(mapped.dev));
    log!(
        "root disk unlocked: {} ({major}:{minor})",
        mapped.path.display()
    );
    mapped.path
}

fn set_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, alive for the call.
    sys::check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(|_| ())
}

/// Starts the vsock 1024 listener (unless no port is forwarded) and, for a NULL port map,
/// the LISTEN/UNLISTEN announcer. Failing to listen is logged, not fatal: the workload
/// still runs, only unreachable from the host.
fn start_port_forwarding(mode: &PortMapMode) {
    let policy = match mode {
        PortMapMode::AllListening => portfwd::PortPolicy::Any,
        PortMapMode::Only(ports) if ports.is_empty() => return,
        PortMapMode::Only(ports) => {
            portfwd::PortPolicy::Only(ports.iter().copied().collect::<BTreeSet<_>>())
        }
    };
    match vsock::VsockListener::bind(vsock::PORT_FORWARD_PORT) {
        Ok(listener) => {
            std::thread::spawn(move || portfwd::serve(listener, policy));
        }
        Err(err) => {
            log_warn!("port forwarding unavailable: cannot listen on vsock port 1024: {err}")
        }
    }
    if *mode == PortMapMode::AllListening {
        std::thread::spawn(listen_announce::run);
    }
}
