//! Combining the image's config, the host's (measured) launch settings and the rootfs user
//! database into exactly what is executed.
//!
//! Precedence: host.json `exec_path`/`args` replace the image's argv (runtime-spec
//! `process.args`, else `Entrypoint ++ Cmd`); env is the image's, then host.json's (a
//! host entry replaces the image's entry of the same name), then defaults for PATH, HOME
//! (the user's passwd home, else `/`) and TERM (`xterm`) when still unset; workdir and
//! hostname from host.json, else the image; rlimits from the image, then host.json per
//! resource. The init's own environment (which the kernel fills from its command line) is
//! never passed on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::host_config::HostConfig;
use crate::rlimits::Rlimit;
use crate::users::UserDb;
use crate::workload_config::{UserSpec, WorkloadConfig};

/// PATH when neither image nor host set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// TERM when neither image nor host set one.
pub const DEFAULT_TERM: &str = "xterm";

/// Errors from building the plan.
#[derive(Debug, thiserror::Error)]
pub enum ExecPlanError {
    /// Neither the image nor the host names a program.
    #[error(
        "no command to run: the image config has no Entrypoint/Cmd and the host gave no exec_path"
    )]
    NoCommand,
    /// A user name not in the rootfs /etc/passwd.
    #[error("user {name} is not in the image's /etc/passwd")]
    UnknownUser {
        /// The name.
        name: String,
    },
    /// A group name not in the rootfs /etc/group.
    #[error("group {name} is not in the image's /etc/group")]
    UnknownGroup {
        /// The name.
        name: String,
    },
}

/// Everything the supervisor needs to start the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPlan {
    /// The file to execute (argv[0] resolved through PATH when it has no `/`).
    pub program: PathBuf,
    /// The argument vector, argv[0] first.
    pub argv: Vec<String>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
    /// Hostname to set.
    pub hostname: Option<String>,
}

struct ResolvedUser {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    home: String,
}

fn resolve_user(spec: Option<&UserSpec>, db: &UserDb) -> Result<ResolvedUser, ExecPlanError> {
    let home_of = |uid: u32| {
        db.user_by_uid(uid)
            .map_or_else(|| "/".to_string(), |e| e.home.clone())
    };
    let (uid, gid, groups) = match spec {
        None => (
            0,
            0,
            db.user_by_uid(0)
                .map(|e| db.supplementary_groups(&e.name))
                .unwrap_or_default(),
        ),
        Some(UserSpec::Ids {
            uid,
            gid,
            additional_gids,
        }) => (*uid, *gid, additional_gids.clone()),
        Some(UserSpec::Text(text)) => {
            let (user, group) = match text.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (text.as_str(), None),
            };
            let entry = match user.parse::<u32>() {
                Ok(uid) => db.user_by_uid(uid),
                Err(_) => {
                    Some(
                        db.user_by_name(user)
                            .ok_or_else(|| ExecPlanError::UnknownUser {
                                name: user.to_string(),
                            })?,
                    )
                }
            };
            let uid = entry.map_or_else(|| user.parse::<u32>().unwrap_or(0), |e| e.uid);
            let gid = match group {
                Some(g) => match g.parse::<u32>() {
                    Ok(gid) => gid,
                    Err(_) => db
                        .group_by_name(g)
                        .ok_or_else(|| ExecPlanError::UnknownGroup {
                            name: g.to_string(),
                        })?,
                },
                // Like runc: a uid without a passwd entry runs with gid 0.
                None => entry.map_or(0, |e| e.gid),
            };
            let groups = entry
                .map(|e| db.supplementary_groups(&e.name))
                .unwrap_or_default();
            (uid, gid, groups)
        }
    };
    Ok(ResolvedUser {
        uid,
        gid,
        groups,
        home: home_of(uid),
    })
}

/// Sets or replaces `KEY=...` entries of `overrides` in `env`, keeping positions.
fn merge_env(env: &mut Vec<String>, overrides: &[String]) {
    for entry in overrides {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        match env
            .iter_mut()
            .find(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
        {
            Some(slot) => slot.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|e| e.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

/// argv[0] searched in PATH inside `root`; a name with `/`, or one not found, is returned
/// as is (exec then fails with ENOENT, reported as status 127).
pub fn resolve_program(argv0: &str, path: &str, root: &Path) -> PathBuf {
    if argv0.contains('/') {
        return PathBuf::from(argv0);
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(argv0);
        let inside = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        if let Ok(meta) = std::fs::metadata(&inside) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return candidate;
            }
        }
    }
    PathBuf::from(argv0)
}

/// Builds the plan; `root` is where the workload's `/` is (`/` after the switch).
pub fn build(
    cfg: &WorkloadConfig,
    host: &HostConfig,
    users: &UserDb,
    root: &Path,
) -> Result<ExecPlan, ExecPlanError> {
    let argv: Vec<String> = match (&host.exec, &cfg.args) {
        (Some((path, args)), _) => std::iter::once(path.clone())
            .chain(args.iter().cloned())
            .collect(),
        (None, Some(args)) => args.clone(),
        (None, None) => cfg
            .entrypoint
            .iter()
            .flatten()
            .chain(cfg.cmd.iter().flatten())
            .cloned()
            .collect(),
    };
    let Some(argv0) = argv.first().filter(|a| !a.is_empty()) else {
        return Err(ExecPlanError::NoCommand);
    };
    let user = resolve_user(cfg.user.as_ref(), users)?;
    let mut env = cfg.env.clone();
    merge_env(&mut env, &host.env);
    for (key, value) in [
        ("PATH", DEFAULT_PATH),
        ("HOME", user.home.as_str()),
        ("TERM", DEFAULT_TERM),
    ] {
        if env_value(&env, key).is_none() {
            env.push(format!("{key}={value}"));
        }
    }
    let program = resolve_program(argv0, env_value(&env, "PATH").unwrap_or(DEFAULT_PATH), root);
    let cwd = PathBuf::from(
        host.workdir
            .as_deref()
            .or(cfg.workdir.as_deref())
            .unwrap_or("/"),
    );
    let mut rlimits = cfg.rlimits.clone();
    for r in &host.rlimits {
        rlimits.retain(|x| x.resource != r.resource);
        rlimits.push(*r);
    }
    Ok(ExecPlan {
        program,
        argv,
        env,
        cwd,
        uid: user.uid,
        gid: user.gid,
        groups: user.groups,
        rlimits,
        hostname: host.hostname.clone().or_else(|| cfg.hostname.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::{parse_group, parse_passwd};

    fn db() -> UserDb {
        UserDb {
            passwd: parse_passwd(
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n",
            ),
            groups: parse_group("root:x:0:\nwheel:x:10:root,app\napp:x:1001:\nstaff:x:50:\n"),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn buildah_cfg() -> WorkloadConfig {
        WorkloadConfig::parse(include_bytes!("../testdata/oci-image-config.json")).unwrap()
    }

    #[test]
    fn buildah_image_runs_entrypoint_plus_cmd_as_its_user() {
        let dir = tempfile::tempdir().unwrap();
        let users = UserDb {
            passwd: parse_passwd("app:x:1000:1001::/home/app:/bin/sh\n"),
            groups: parse_group("app:x:1001:\nwheel:x:10:app\n"),
        };
        let plan = build(&buildah_cfg(), &HostConfig::default(), &users, dir.path()).unwrap();
        assert_eq!(
            plan.argv,
            s(&["/usr/bin/server", "--listen", "8080", "--verbose"])
        );
        assert_eq!(plan.program, PathBuf::from("/usr/bin/server"));
        assert_eq!(
            plan.env,
            s(&[
                "APP_MODE=prod",
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "HOME=/home/app",
                "TERM=xterm"
            ])
        );
        assert_eq!(plan.cwd, PathBuf::from("/srv/app"));
        assert_eq!(
            (plan.uid, plan.gid, plan.groups.clone()),
            (1000, 1001, vec![10])
        );
        assert_eq!(plan.hostname, None);
    }

    #[test]
    fn host_settings_override_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostConfig::parse(
            br#"{"exec_path":"/bin/other","args":["a"],"env":["APP_MODE=dev","NEW=1"],
                "workdir":"/tmp","hostname":"vm","rlimits":["NOFILE=10:20"]}"#,
        )
        .unwrap();
        let mut cfg = buildah_cfg();
        cfg.rlimits = vec![
            Rlimit::new(libc::RLIMIT_NOFILE, 1, 2).unwrap(),
            Rlimit::new(libc::RLIMIT_CORE, 0, 0).unwrap(),
        ];
        cfg.user = None;
        let plan = build(&cfg, &host, &db(), dir.path()).unwrap();
        assert_eq!(plan.argv, s(&["/bin/other", "a"]));
        assert_eq!(
            plan.env,
            s(&[
                "APP_MODE=dev",
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "NEW=1",
                "HOME=/root",
                "TERM=xterm"
            ])
        );
        assert_eq!(plan.cwd, PathBuf::from("/tmp"));
        assert_eq!(plan.hostname.as_deref(), Some("vm"));
        assert_eq!(
            plan.rlimits,
            vec![
                Rlimit::new(libc::RLIMIT_CORE, 0, 0).unwrap(),
                Rlimit::new(libc::RLIMIT_NOFILE, 10, 20).unwrap()
            ]
        );
        assert_eq!((plan.uid, plan.gid, plan.groups), (0, 0, vec![10]));
    }

    #[test]
    fn runtime_spec_args_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WorkloadConfig::parse(include_bytes!("../testdata/crun-spec.json")).unwrap();
        let plan = build(&cfg, &HostConfig::default(), &UserDb::default(), dir.path()).unwrap();
        assert_eq!(plan.argv, s(&["sh"]));
        assert_eq!(plan.env[2], "HOME=/");
        assert_eq!(plan.hostname.as_deref(), Some("crun"));
    }

    #[test]
    fn user_strings() {
        let users = db();
        let r = |t: &str| resolve_user(Some(&UserSpec::Text(t.into())), &users);
        let u = r("app").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups, u.home.as_str()),
            (1000, 1001, vec![10], "/home/app")
        );
        let u = r("app:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        let u = r("1000:7").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        let u = r("4242").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups, u.home.as_str()),
            (4242, 0, vec![], "/")
        );
        assert!(matches!(r("ghost"), Err(ExecPlanError::UnknownUser { .. })));
        assert!(matches!(
            r("app:ghosts"),
            Err(ExecPlanError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn program_is_found_in_path_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        let exe = dir.path().join("usr/bin/tool");
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("bin/tool"), b"not executable").unwrap();
        assert_eq!(
            resolve_program("tool", "/bin:/usr/bin", dir.path()),
            PathBuf::from("/usr/bin/tool")
        );
        assert_eq!(
            resolve_program("missing", "/bin:/usr/bin", dir.path()),
            PathBuf::from("missing")
        );
        assert_eq!(
            resolve_program("./rel", "/bin", dir.path()),
            PathBuf::from("./rel")
        );
    }

    #[test]
    fn empty_command_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WorkloadConfig {
            cmd: Some(vec![]),
            ..WorkloadConfig::default()
        };
        assert!(matches!(
            build(&cfg, &HostConfig::default(), &db(), dir.path()),
            Err(ExecPlanError::NoCommand)
        ));
    }
}
