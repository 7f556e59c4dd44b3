//! The guest's /init (issue 5): obtain the disk key, open the LUKS root disk, switch into it,
//! run the workload as a child, report its exit status to the host, power off.
//!
//! Every step that can fail names itself in the message printed before the VM stops; the
//! status byte on port 0xf4 is then [`exit::INIT_FAILURE_STATUS`].

// Modules are wired into main() step by step; the allowance goes when the flow is complete.
#![allow(dead_code)]

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

use std::path::Path;

use host_config::HostConfig;

fn main() {
    console::announce_start();
    std::panic::set_hook(Box::new(|info| {
        log!("internal error: {info}");
        exit::power_off(exit::INIT_FAILURE_STATUS);
    }));
    if let Err(err) = mounts::mount_all(&mounts::early_mounts()) {
        exit::fatal("early mounts", &err);
    }
    let host = match HostConfig::load(Path::new(host_config::HOST_CONFIG_PATH)) {
        Ok(h) => h,
        Err(err) => exit::fatal("reading /krun/host.json", &err),
    };
    log!("launch: tee {:?}, psp model {}", host.tee, host.psp_model);
    exit::power_off(0);
}
