//! The exported `krun_*` functions. See `include/libkrun.h` for the contract of each.

use std::ffi::{c_char, c_int};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use super::strings::{str_arg, str_array};
use super::{context, error_chain, guarded, logger, CapiError};
use crate::launch;
use crate::resources::net::NET_FLAG_DHCP_CLIENT;
use crate::resources::{
    inherited_env, validate_env, DiskConfig, ExecConfig, MachineConfig, NetConfig, NetConfigError,
    NetEndpoint, PortMap, Rlimit, SharedFd,
};

/// Sets the log level: 0 off, 1 error (errors are shown at every level), 2 warn, 3 info,
/// 4 debug, 5 trace. The host's log filter (`RUST_LOG` when the library was loaded, or
/// `log_level` in the host configuration file), when set, takes precedence.
#[no_mangle]
pub extern "C" fn krun_set_log_level(level: u32) -> i32 {
    guarded("krun_set_log_level", || {
        let filter = logger::level_from_c(level).ok_or(CapiError::LogLevel(level))?;
        logger::set_level(filter);
        Ok(0)
    })
}

/// Creates a configuration context and returns its ID (>= 0).
#[no_mangle]
pub extern "C" fn krun_create_ctx() -> i32 {
    guarded("krun_create_ctx", || {
        let id = context::create()?;
        log::info!("{}", crate::settings::host().summary());
        // Map the guest bundle while the host's filesystem is visible (crun enters the
        // container before krun_start_enter), if it was not mapped when the library was
        // loaded; a missing bundle is reported at launch. The same for the PSP model's
        // identity.
        crate::launch::guest::map_bundle();
        crate::tee::model::prepare();
        i32::try_from(id).map_err(|_| CapiError::TooManyContexts)
    })
}

/// Frees a context.
#[no_mangle]
pub extern "C" fn krun_free_ctx(ctx_id: u32) -> i32 {
    guarded("krun_free_ctx", || context::free(ctx_id).map(|()| 0))
}

/// Sets the vCPU count and RAM size. A TEE config's `cpus`/`ram_mib` override these at launch.
#[no_mangle]
pub extern "C" fn krun_set_vm_config(ctx_id: u32, num_vcpus: u8, ram_mib: u32) -> i32 {
    guarded("krun_set_vm_config", || {
        let machine = MachineConfig::new(u32::from(num_vcpus), u64::from(ram_mib))
            .map_err(CapiError::Resources)?;
        context::update(ctx_id, |r| {
            r.machine = machine;
            Ok(0)
        })
    })
}

/// Not available in libkrun-sev: the root is always an encrypted disk image. `root_path` is
/// not read.
#[no_mangle]
pub extern "C" fn krun_set_root(ctx_id: u32, root_path: *const c_char) -> i32 {
    let _ = root_path;
    guarded("krun_set_root", || {
        context::get(ctx_id)?;
        Err(CapiError::NotSupported(
            "not available in libkrun-sev: a confidential guest boots from an encrypted disk image; use krun_set_root_disk",
        ))
    })
}

/// Not available in libkrun-sev: the host cannot share directories with a confidential guest.
/// `mapped_volumes` is not read.
#[no_mangle]
pub extern "C" fn krun_set_mapped_volumes(
    ctx_id: u32,
    mapped_volumes: *const *const c_char,
) -> i32 {
    let _ = mapped_volumes;
    guarded("krun_set_mapped_volumes", || {
        context::get(ctx_id)?;
        Err(CapiError::NotSupported(
            "not available in libkrun-sev: a confidential guest cannot share host directories",
        ))
    })
}

/// Sets the raw disk image that becomes the guest's `/dev/vda` (read-write).
///
/// # Safety
///
/// `disk_path` must be NULL or a valid NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn krun_set_root_disk(ctx_id: u32, disk_path: *const c_char) -> i32 {
    guarded("krun_set_root_disk", || {
        // SAFETY: the caller's contract above.
        let path = unsafe { str_arg(disk_path, "disk_path") }?;
        let disk = disk_config(path)?;
        context::update(ctx_id, |r| {
            r.root_disk = Some(disk);
            Ok(0)
        })
    })
}

/// Sets the raw disk image that becomes the guest's `/dev/vdb` (read-write).
///
/// # Safety
///
/// `disk_path` must be NULL or a valid NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn krun_set_data_disk(ctx_id: u32, disk_path: *const c_char) -> i32 {
    guarded("krun_set_data_disk", || {
        // SAFETY: the caller's contract above.
        let path = unsafe { str_arg(disk_path, "disk_path") }?;
        let disk = disk_config(path)?;
        context::update(ctx_id, |r| {
            r.data_disk = Some(disk);
            Ok(0)
        })
    })
}

fn disk_config(path: &str) -> Result<DiskConfig, CapiError> {
    if path.is_empty() {
        return Err(CapiError::Resources(
            crate::resources::ResourcesError::Empty("disk_path"),
        ));
    }
    Ok(DiskConfig {
        path: PathBuf::from(path),
        read_only: false,
    })
}

/// Sets the TCP ports forwarded from the host into the guest (`"HOST:GUEST"` entries).
/// NULL exposes every port the guest listens on; an empty array exposes none.
///
/// # Safety
///
/// `port_map` must be NULL or a NULL-terminated array of valid NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn krun_set_port_map(ctx_id: u32, port_map: *const *const c_char) -> i32 {
    guarded("krun_set_port_map", || {
        // SAFETY: the caller's contract above.
        let entries = unsafe { str_array(port_map, "port_map") }?;
        let map = match entries {
            None => PortMap::ExposeListening,
            Some(entries) => PortMap::parse(&entries).map_err(CapiError::PortMap)?,
        };
        context::update(ctx_id, |r| {
            r.port_map = map;
            Ok(0)
        })
    })
}

/// Sets the workload's resource limits (`"RESOURCE=CUR:MAX"` entries).
///
/// # Safety
///
/// `rlimits` must be NULL or a NULL-terminated array of valid NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn krun_set_rlimits(ctx_id: u32, rlimits: *const *const c_char) -> i32 {
    guarded("krun_set_rlimits", || {
        // SAFETY: the caller's contract above.
        let entries =
            unsafe { str_array(rlimits, "rlimits") }?.ok_or(CapiError::NullPointer("rlimits"))?;
        let parsed = Rlimit::parse_all(&entries).map_err(CapiError::Rlimit)?;
        context::update(ctx_id, |r| {
            r.rlimits = parsed;
            Ok(0)
        })
    })
}

/// Sets the workload's working directory inside the guest.
///
/// # Safety
///
/// `workdir_path` must be NULL or a valid NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn krun_set_workdir(ctx_id: u32, workdir_path: *const c_char) -> i32 {
    guarded("krun_set_workdir", || {
        // SAFETY: the caller's contract above.
        let workdir = unsafe { str_arg(workdir_path, "workdir_path") }?;
        if workdir.is_empty() {
            return Err(CapiError::Resources(
                crate::resources::ResourcesError::Empty("workdir_path"),
            ));
        }
        let workdir = workdir.to_owned();
        context::update(ctx_id, |r| {
            r.workdir = Some(workdir);
            Ok(0)
        })
    })
}

/// Sets the executable, its arguments and (unless `envp` is NULL, meaning the caller's
/// environment) its environment.
///
/// # Safety
///
/// `exec_path` must be NULL or a valid NUL-terminated string; `argv` and `envp` must be NULL
/// or NULL-terminated arrays of valid NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn krun_set_exec(
    ctx_id: u32,
    exec_path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> i32 {
    guarded("krun_set_exec", || {
        // SAFETY: the caller's contract above.
        let path = unsafe { str_arg(exec_path, "exec_path") }?;
        if path.is_empty() {
            return Err(CapiError::Resources(
                crate::resources::ResourcesError::Empty("exec_path"),
            ));
        }
        // SAFETY: the caller's contract above.
        let args = unsafe { str_array(argv, "argv") }?.unwrap_or_default();
        // SAFETY: the caller's contract above.
        let env = env_or_inherited(unsafe { str_array(envp, "envp") }?)?;
        let exec = ExecConfig {
            path: path.to_owned(),
            args,
        };
        context::update(ctx_id, |r| {
            r.exec = Some(exec);
            r.env = Some(env);
            Ok(0)
        })
    })
}

/// Sets the workload's environment; NULL means the caller's environment.
///
/// # Safety
///
/// `envp` must be NULL or a NULL-terminated array of valid NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn krun_set_env(ctx_id: u32, envp: *const *const c_char) -> i32 {
    guarded("krun_set_env", || {
        // SAFETY: the caller's contract above.
        let env = env_or_inherited(unsafe { str_array(envp, "envp") }?)?;
        context::update(ctx_id, |r| {
            r.env = Some(env);
            Ok(0)
        })
    })
}

fn env_or_inherited(env: Option<Vec<String>>) -> Result<Vec<String>, CapiError> {
    let env = env.unwrap_or_else(inherited_env);
    validate_env(&env).map_err(CapiError::Resources)?;
    Ok(env)
}

/// Adds the virtio-net device: frames go to a unix stream socket in passt/QEMU stream framing.
/// Exactly one of `c_path` (a socket path, connected at launch) and `fd` (an already
/// connected socket; the library owns it once this returns 0) must be given; `c_mac` is the
/// guest's 6-byte MAC; `features` are virtio-net feature bits (ANDed with what the device
/// supports); `flags` is 0 or `NET_FLAG_DHCP_CLIENT`. One device per context.
///
/// # Safety
///
/// `c_path` must be NULL or a valid NUL-terminated string; `c_mac` must be NULL or point to
/// 6 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn krun_add_net_unixstream(
    ctx_id: u32,
    c_path: *const c_char,
    fd: c_int,
    c_mac: *const u8,
    features: u32,
    flags: u32,
) -> i32 {
    guarded("krun_add_net_unixstream", || {
        let path = if c_path.is_null() {
            None
        } else {
            // SAFETY: the caller's contract above.
            Some(unsafe { str_arg(c_path, "c_path") }?)
        };
        if c_mac.is_null() {
            return Err(CapiError::NullPointer("c_mac"));
        }
        let mut mac = [0u8; 6];
        // SAFETY: the caller's contract above: `c_mac` points to 6 readable bytes.
        unsafe { std::ptr::copy_nonoverlapping(c_mac, mac.as_mut_ptr(), 6) };
        NetConfig::check(path, fd >= 0, mac, flags).map_err(CapiError::Net)?;
        context::update(ctx_id, |r| {
            if r.net.is_some() {
                return Err(CapiError::Net(NetConfigError::Exists));
            }
            let endpoint = match path {
                Some(p) => NetEndpoint::Path(PathBuf::from(p)),
                // SAFETY: `fd >= 0` and the caller hands it over (libkrun's contract); it is
                // taken only here, after every check passed, so a failed call leaves it to
                // the caller.
                None => NetEndpoint::Fd(SharedFd(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }))),
            };
            log::info!(
                "network: {} MAC {} features {features:#x}, {}",
                match &endpoint {
                    NetEndpoint::Path(p) => format!("socket {}", p.display()),
                    NetEndpoint::Fd(_) => format!("fd {fd}"),
                },
                crate::devices::virtio::net::format_mac(&mac),
                if flags & NET_FLAG_DHCP_CLIENT != 0 {
                    "guest uses DHCP"
                } else {
                    "host states the addresses"
                }
            );
            r.net = Some(NetConfig {
                endpoint,
                mac,
                features,
                dhcp: flags & NET_FLAG_DHCP_CLIENT != 0,
            });
            Ok(0)
        })
    })
}

/// Reads and validates the TEE config file; its `cpus`/`ram_mib` override
/// `krun_set_vm_config` at launch.
///
/// # Safety
///
/// `filepath` must be NULL or a valid NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn krun_set_tee_config_file(ctx_id: u32, filepath: *const c_char) -> i32 {
    guarded("krun_set_tee_config_file", || {
        // SAFETY: the caller's contract above.
        let path = unsafe { str_arg(filepath, "filepath") }?;
        // Fail on an unknown context before touching the file.
        context::get(ctx_id)?;
        let path = PathBuf::from(path);
        let config = crate::resources::tee_config::load_file(&path).map_err(|source| {
            CapiError::TeeConfig {
                path: path.display().to_string(),
                source,
            }
        })?;
        log::debug!(
            "TEE config {}: tee={} cpus={} ram_mib={} attestation_url={:?}",
            path.display(),
            config.tee.as_str(),
            config.cpus,
            config.ram_mib,
            config.attestation_url
        );
        context::update(ctx_id, |r| {
            r.tee_config = Some((path, config));
            Ok(0)
        })
    })
}

/// Starts the microVM. Returns (a negative errno) only when the context cannot launch: an
/// unknown context, no TEE config, a missing or unusable disk; the context is kept. Once the
/// launch has begun the process ends: with the workload's status when it ran, else with
/// [`launch::LAUNCH_FAILURE_STATUS`] (125) and the reason on one line of stderr (backend,
/// bundle, attestation, VM failures), the same under crun, podman and `krun-sev run`.
#[no_mangle]
pub extern "C" fn krun_start_enter(ctx_id: u32) -> i32 {
    guarded("krun_start_enter", || {
        let plan = launch::plan(context::get(ctx_id)?).map_err(CapiError::Launch)?;
        // The context is consumed once the launch begins, as libkrun does.
        context::take(ctx_id)?;
        match launch::start(plan) {
            Ok(never) => match never {},
            Err(e) => {
                logger::launch_failed(&error_chain(&CapiError::Launch(e)));
                std::process::exit(i32::from(launch::LAUNCH_FAILURE_STATUS));
            }
        }
    })
}
