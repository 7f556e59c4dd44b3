//! Host settings: the guest bundle directory, the backend, the PSP model's identity directory,
//! the log filter. The host decides them, never the container: they are captured once, when
//! the library is loaded (`lib.rs`'s constructor), from the environment of the process that
//! loads it and from a host configuration file. crun replaces the environment with the OCI
//! `process.env` (which the image author controls) before it calls `krun_start_enter`; what
//! the environment says then is ignored (docs/crun-podman.md, "Host settings").
//!
//! Precedence: the loading process's environment, then the configuration file, then the
//! built-in defaults.
//!
//! The configuration file (`/etc/krun-sev.conf`, or the path in `KRUN_SEV_CONFIG`) has one
//! `key = value` per line; blank lines and lines starting with `#` are ignored; the value is
//! the rest of the line with surrounding spaces removed (no quoting, no inline comments):
//!
//! | key | value | environment variable |
//! |---|---|---|
//! | `bundle_dir` | absolute path of the guest bundle | `KRUN_SEV_BUNDLE_DIR` |
//! | `backend` | `hardware` or `model` | `KRUN_SEV_BACKEND` |
//! | `model_dir` | absolute path of the PSP model's identity | `KRUN_SEV_PSP_MODEL_DIR` |
//! | `log_level` | `off`, `error`, `warn`, `info`, `debug`, `trace` or 0..=5 | `RUST_LOG` (env_logger syntax) |
//! | `passt` | absolute path of passt, or `none` | `KRUN_SEV_PASST` |
//! | `seccomp` | `on` (default) or `off` | `KRUN_SEV_SECCOMP` |
//!
//! `passt` is the program the library starts for a VM whose caller configured no network
//! (`launch::net`); by default the first `passt` on the loading process's `PATH`. `none`
//! turns that default network off.
//!
//! `seccomp = off` turns the VMM's per-thread seccomp filters off, for debugging only
//! (docs/hardening.md); the launch then logs a warning. A value other than `on` or `off`
//! is a problem line and the filters stay on.
//!
//! A line that cannot be used is reported as an error (logged at the first C API call) and
//! skipped; the rest of the file still applies. A bad `backend` makes every launch fail
//! instead of falling back.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Names another configuration file than [`DEFAULT_CONFIG_FILE`].
pub const CONFIG_ENV: &str = "KRUN_SEV_CONFIG";
/// The host configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/krun-sev.conf";
/// The guest bundle directory.
pub const BUNDLE_DIR_ENV: &str = krun_bundle::BUNDLE_DIR_ENV;
/// The backend.
pub const BACKEND_ENV: &str = "KRUN_SEV_BACKEND";
/// The PSP model's identity directory.
pub const MODEL_DIR_ENV: &str = "KRUN_SEV_PSP_MODEL_DIR";
/// The log filter (env_logger syntax).
pub const LOG_ENV: &str = "RUST_LOG";
/// The passt binary (or `none`).
pub const PASST_ENV: &str = "KRUN_SEV_PASST";
/// `off` turns the VMM's seccomp filters off (debugging only).
pub const SECCOMP_ENV: &str = crate::vmm::seccomp::SECCOMP_ENV;
/// Where the launch writes its updates for the test oracles (environment only).
pub const DUMP_ENV: &str = crate::tee::dump::DUMP_ENV;
/// Default identity directory of the PSP model.
pub const DEFAULT_MODEL_DIR: &str = "/var/lib/krun-sev/psp-model";

/// A configuration file larger than this is refused.
const MAX_CONFIG_LEN: u64 = 64 * 1024;

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The host configuration file.
    ConfigFile,
    /// The environment of the process that loaded the library, when it loaded it.
    Environment,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "built-in default",
            Source::ConfigFile => "configuration file",
            Source::Environment => "environment at load",
        })
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// Its origin.
    pub source: Source,
}

/// The backend as configured; checked when a launch selects it, so a bad value fails the
/// launch instead of falling back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// `hardware`: /dev/sev and KVM's SEV ioctls.
    Hardware,
    /// `model`: the PSP model (testing only).
    Model,
    /// Any other value, as given.
    Invalid(String),
}

impl BackendChoice {
    fn parse(value: &str) -> Self {
        match value {
            "hardware" => BackendChoice::Hardware,
            "model" => BackendChoice::Model,
            other => BackendChoice::Invalid(other.to_owned()),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendChoice::Hardware => f.write_str("hardware"),
            BackendChoice::Model => f.write_str("model"),
            BackendChoice::Invalid(v) => write!(f, "{v:?} (invalid)"),
        }
    }
}

/// Which passt the library starts when the caller configured no network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasstChoice {
    /// This binary.
    Path(PathBuf),
    /// `none`: no default network.
    Off,
    /// Not set and no `passt` on `PATH`.
    NotFound,
}

impl PasstChoice {
    fn parse(value: &str) -> Result<Self, String> {
        if value == "none" {
            return Ok(PasstChoice::Off);
        }
        absolute(value)
            .map(PasstChoice::Path)
            .map_err(|e| format!("`passt`: {e} (an absolute path or none)"))
    }
}

impl fmt::Display for PasstChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasstChoice::Path(p) => write!(f, "{}", p.display()),
            PasstChoice::Off => f.write_str("none"),
            PasstChoice::NotFound => f.write_str("not found"),
        }
    }
}

/// The settings in effect for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// The configuration file consulted (it may not exist).
    pub config_file: PathBuf,
    /// The guest bundle directory.
    pub bundle_dir: Setting<PathBuf>,
    /// The backend.
    pub backend: Setting<BackendChoice>,
    /// The PSP model's identity directory.
    pub model_dir: Setting<PathBuf>,
    /// The log filter (env_logger syntax) that overrides `krun_set_log_level`, if any.
    pub log_filter: Option<Setting<String>>,
    /// The passt for VMs without a configured network.
    pub passt: Setting<PasstChoice>,
    /// Whether the VMM installs its seccomp filters (`true` unless turned off).
    pub seccomp: Setting<bool>,
    /// `KRUN_SEV_DUMP_UPDATES` (test oracles only).
    pub dump_updates: Option<PathBuf>,
    /// What was wrong with the configuration file, one line each; logged as errors.
    pub problems: Vec<String>,
}

/// The values a configuration file sets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// `bundle_dir`.
    pub bundle_dir: Option<PathBuf>,
    /// `backend`.
    pub backend: Option<BackendChoice>,
    /// `model_dir`.
    pub model_dir: Option<PathBuf>,
    /// `log_level`, as a level name.
    pub log_level: Option<String>,
    /// `passt`.
    pub passt: Option<PasstChoice>,
    /// `seccomp`.
    pub seccomp: Option<bool>,
}

/// Parses a configuration file's text. Lines that cannot be used are skipped and described
/// in the second value (`line N: what`); the others still apply.
pub fn parse_config(text: &str) -> (ConfigFile, Vec<String>) {
    let mut cfg = ConfigFile::default();
    let mut problems = Vec::new();
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let n = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            problems.push(format!("line {n}: expected `key = value`"));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            problems.push(format!("line {n}: `{key}` has no value"));
            continue;
        }
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            problems.push(format!(
                "line {n}: `{key}` is already set on line {first}; this line is ignored"
            ));
            continue;
        }
        let applied = match key {
            "bundle_dir" => absolute(value).map(|p| cfg.bundle_dir = Some(p)),
            "model_dir" => absolute(value).map(|p| cfg.model_dir = Some(p)),
            "backend" => match BackendChoice::parse(value) {
                BackendChoice::Invalid(v) => {
                    // Kept: a launch then fails instead of falling back to another backend.
                    cfg.backend = Some(BackendChoice::Invalid(v.clone()));
                    Err(format!(
                        "`backend` is {v:?}, not \"hardware\" or \"model\"; launches fail until it is fixed"
                    ))
                }
                choice => {
                    cfg.backend = Some(choice);
                    Ok(())
                }
            },
            "log_level" => log_level(value).map(|l| cfg.log_level = Some(l.to_owned())),
            "passt" => PasstChoice::parse(value).map(|p| cfg.passt = Some(p)),
            "seccomp" => on_off(value).map(|v| cfg.seccomp = Some(v)),
            other => Err(format!(
                "unknown key `{other}` (known: bundle_dir, backend, model_dir, log_level, passt, seccomp)"
            )),
        };
        match applied {
            Ok(()) => seen.push((key, n)),
            Err(what) => {
                if key == "backend" {
                    seen.push((key, n));
                }
                problems.push(format!("line {n}: {what}"));
            }
        }
    }
    (cfg, problems)
}

fn absolute(value: &str) -> Result<PathBuf, String> {
    if value.starts_with('/') {
        Ok(PathBuf::from(value))
    } else {
        Err(format!("{value:?} is not an absolute path"))
    }
}

/// A `seccomp` value: `on` or `off`.
fn on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!(
            "`seccomp` is {other:?}, not on or off; the filters stay on"
        )),
    }
}

/// A `log_level` value as the level name env_logger syntax uses.
fn log_level(value: &str) -> Result<&'static str, String> {
    const NAMES: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let lower = value.to_ascii_lowercase();
    if let Some(name) = NAMES.iter().find(|n| **n == lower) {
        return Ok(name);
    }
    match value.parse::<usize>() {
        Ok(i) if i < NAMES.len() => Ok(NAMES[i]),
        _ => Err(format!(
            "`log_level` is {value:?}, not off, error, warn, info, debug, trace or 0..=5"
        )),
    }
}

/// Reads the configuration file at `path`: `Ok(None)` when it does not exist and `required`
/// is false (the default path need not exist).
fn read_config(path: &Path, required: bool) -> Result<Option<String>, String> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.len() > MAX_CONFIG_LEN {
        return Err(format!("{shown} is larger than {MAX_CONFIG_LEN} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| format!("{shown} is not UTF-8"))
}

fn non_empty(value: Option<OsString>) -> Option<OsString> {
    value.filter(|v| !v.is_empty())
}

/// The settings from `env` (a lookup in the loading process's environment) and the
/// configuration file it names (or the default one), with the built-in defaults under them.
pub fn capture(env: &dyn Fn(&str) -> Option<OsString>, default_bundle: &Path) -> HostSettings {
    let (config_file, required) = match non_empty(env(CONFIG_ENV)) {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    let mut problems = Vec::new();
    let file = match read_config(&config_file, required) {
        Ok(Some(text)) => {
            let (cfg, lines) = parse_config(&text);
            let shown = config_file.display();
            problems.extend(lines.into_iter().map(|l| format!("{shown} {l}")));
            cfg
        }
        Ok(None) => ConfigFile::default(),
        Err(e) => {
            problems.push(format!("{e}; using the environment and the defaults"));
            ConfigFile::default()
        }
    };
    let pick = |env_value: Option<OsString>, file_value: Option<PathBuf>, default: &Path| match (
        non_empty(env_value),
        file_value,
    ) {
        (Some(v), _) => Setting {
            value: PathBuf::from(v),
            source: Source::Environment,
        },
        (None, Some(v)) => Setting {
            value: v,
            source: Source::ConfigFile,
        },
        (None, None) => Setting {
            value: default.to_path_buf(),
            source: Source::Default,
        },
    };
    let bundle_dir = pick(env(BUNDLE_DIR_ENV), file.bundle_dir, default_bundle);
    let model_dir = pick(
        env(MODEL_DIR_ENV),
        file.model_dir,
        Path::new(DEFAULT_MODEL_DIR),
    );
    let backend = match (non_empty(env(BACKEND_ENV)), file.backend) {
        (Some(v), _) => Setting {
            value: BackendChoice::parse(&v.to_string_lossy()),
            source: Source::Environment,
        },
        (None, Some(v)) => Setting {
            value: v,
            source: Source::ConfigFile,
        },
        (None, None) => Setting {
            value: BackendChoice::Hardware,
            source: Source::Default,
        },
    };
    let env_log = non_empty(env(LOG_ENV))
        .map(|v| v.to_string_lossy().trim().to_owned())
        .filter(|v| !v.is_empty());
    let log_filter = match (env_log, file.log_level) {
        (Some(v), _) => Some(Setting {
            value: v,
            source: Source::Environment,
        }),
        (None, Some(v)) => Some(Setting {
            value: v,
            source: Source::ConfigFile,
        }),
        (None, None) => None,
    };
    let passt = match (non_empty(env(PASST_ENV)), file.passt) {
        (Some(v), _) => match PasstChoice::parse(&v.to_string_lossy()) {
            Ok(p) => Setting {
                value: p,
                source: Source::Environment,
            },
            Err(e) => {
                problems.push(format!("{PASST_ENV}: {e}; no default network"));
                Setting {
                    value: PasstChoice::Off,
                    source: Source::Environment,
                }
            }
        },
        (None, Some(v)) => Setting {
            value: v,
            source: Source::ConfigFile,
        },
        (None, None) => Setting {
            value: crate::launch::net::find_passt(env("PATH").as_deref())
                .map_or(PasstChoice::NotFound, PasstChoice::Path),
            source: Source::Default,
        },
    };
    let seccomp = match (non_empty(env(SECCOMP_ENV)), file.seccomp) {
        (Some(v), _) => {
            let v = v.to_string_lossy();
            Setting {
                value: on_off(&v).unwrap_or_else(|e| {
                    problems.push(format!("{SECCOMP_ENV}: {e}"));
                    true
                }),
                source: Source::Environment,
            }
        }
        (None, Some(v)) => Setting {
            value: v,
            source: Source::ConfigFile,
        },
        (None, None) => Setting {
            value: true,
            source: Source::Default,
        },
    };
    HostSettings {
        config_file,
        bundle_dir,
        backend,
        model_dir,
        log_filter,
        passt,
        seccomp,
        dump_updates: non_empty(env(DUMP_ENV)).map(PathBuf::from),
        problems,
    }
}

static HOST: OnceLock<HostSettings> = OnceLock::new();

/// The settings of this process, captured on first use: when the library is loaded (its
/// constructor calls this), or for a program linking the crate statically, at its first use.
pub fn host() -> &'static HostSettings {
    HOST.get_or_init(|| {
        capture(
            &|name| std::env::var_os(name),
            Path::new(crate::launch::guest::DEFAULT_BUNDLE_DIR),
        )
    })
}

impl HostSettings {
    /// One line for the log: each setting with its origin.
    pub fn summary(&self) -> String {
        let log = match &self.log_filter {
            Some(s) => format!("{:?} ({})", s.value, s.source),
            None => "krun_set_log_level".to_owned(),
        };
        format!(
            "host settings (configuration file {}): bundle directory {} ({}), backend {} ({}), PSP model identity {} ({}), log filter {}, passt {} ({}), seccomp {} ({})",
            self.config_file.display(),
            self.bundle_dir.value.display(),
            self.bundle_dir.source,
            self.backend.value,
            self.backend.source,
            self.model_dir.value.display(),
            self.model_dir.source,
            log,
            self.passt.value,
            self.passt.source,
            if self.seccomp.value { "on" } else { "off" },
            self.seccomp.source
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    const DEFAULT_BUNDLE: &str = "/usr/lib/krun-sev";

    fn capture_with(pairs: &[(&str, &str)]) -> HostSettings {
        capture(&env_of(pairs), Path::new(DEFAULT_BUNDLE))
    }

    #[test]
    fn parses_every_key_with_comments_and_spaces() {
        let (cfg, problems) = parse_config(
            "# host settings\n\n  bundle_dir = /opt/krun sev/bundle  \nbackend=model\nmodel_dir =/var/lib/m\nlog_level = INFO\n",
        );
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(cfg.bundle_dir, Some(PathBuf::from("/opt/krun sev/bundle")));
        assert_eq!(cfg.backend, Some(BackendChoice::Model));
        assert_eq!(cfg.model_dir, Some(PathBuf::from("/var/lib/m")));
        assert_eq!(cfg.log_level.as_deref(), Some("info"));
        assert_eq!(
            parse_config("log_level = 4").0.log_level.as_deref(),
            Some("debug")
        );
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let (cfg, problems) = parse_config(
            "bundle_dir\nbundle_dir = relative/dir\ncolour = blue\nlog_level = loud\nmodel_dir =\nbundle_dir = /b\nbundle_dir = /c\nbackend = modle\n\u{0}=\u{0}\n",
        );
        assert_eq!(
            problems,
            vec![
                "line 1: expected `key = value`",
                "line 2: \"relative/dir\" is not an absolute path",
                "line 3: unknown key `colour` (known: bundle_dir, backend, model_dir, log_level, passt, seccomp)",
                "line 4: `log_level` is \"loud\", not off, error, warn, info, debug, trace or 0..=5",
                "line 5: `model_dir` has no value",
                "line 7: `bundle_dir` is already set on line 6; this line is ignored",
                "line 8: `backend` is \"modle\", not \"hardware\" or \"model\"; launches fail until it is fixed",
                "line 9: unknown key `\u{0}` (known: bundle_dir, backend, model_dir, log_level, passt, seccomp)",
            ]
        );
        // The usable line applies; a bad backend is kept so the launch fails.
        assert_eq!(cfg.bundle_dir, Some(PathBuf::from("/b")));
        assert_eq!(cfg.backend, Some(BackendChoice::Invalid("modle".into())));
        assert_eq!(cfg.log_level, None);
        assert_eq!(cfg.model_dir, None);
    }

    #[test]
    fn defaults_without_file_or_environment() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.conf");
        // The default file may be absent; a file named by KRUN_SEV_CONFIG must exist.
        let s = capture_with(&[(CONFIG_ENV, missing.to_str().unwrap())]);
        assert_eq!(s.bundle_dir.value, PathBuf::from(DEFAULT_BUNDLE));
        assert_eq!(s.bundle_dir.source, Source::Default);
        assert_eq!(s.backend.value, BackendChoice::Hardware);
        assert_eq!(s.model_dir.value, PathBuf::from(DEFAULT_MODEL_DIR));
        assert_eq!(s.log_filter, None);
        assert_eq!(s.problems.len(), 1);
        assert!(
            s.problems[0].starts_with("cannot read "),
            "{:?}",
            s.problems
        );
        assert!(s.problems[0].contains("none.conf"));
    }

    #[test]
    fn environment_at_load_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("krun-sev.conf");
        std::fs::write(
            &conf,
            "bundle_dir = /file/bundle\nbackend = model\nmodel_dir = /file/model\nlog_level = debug\n",
        )
        .unwrap();
        let c = conf.to_str().unwrap();
        let file_only = capture_with(&[(CONFIG_ENV, c)]);
        assert_eq!(file_only.problems, Vec::<String>::new());
        assert_eq!(file_only.config_file, conf);
        assert_eq!(
            file_only.bundle_dir,
            Setting {
                value: PathBuf::from("/file/bundle"),
                source: Source::ConfigFile
            }
        );
        assert_eq!(file_only.backend.value, BackendChoice::Model);
        assert_eq!(file_only.model_dir.value, PathBuf::from("/file/model"));
        assert_eq!(
            file_only.log_filter,
            Some(Setting {
                value: "debug".into(),
                source: Source::ConfigFile
            })
        );
        let env = capture_with(&[
            (CONFIG_ENV, c),
            (BUNDLE_DIR_ENV, "/env/bundle"),
            (BACKEND_ENV, "hardware"),
            (MODEL_DIR_ENV, "/env/model"),
            (LOG_ENV, "krun_sev=trace"),
        ]);
        assert_eq!(env.bundle_dir.value, PathBuf::from("/env/bundle"));
        assert_eq!(env.bundle_dir.source, Source::Environment);
        assert_eq!(env.backend.value, BackendChoice::Hardware);
        assert_eq!(env.backend.source, Source::Environment);
        assert_eq!(env.model_dir.value, PathBuf::from("/env/model"));
        assert_eq!(
            env.log_filter.as_ref().map(|s| s.value.as_str()),
            Some("krun_sev=trace")
        );
        // Empty variables count as unset.
        let empty = capture_with(&[(CONFIG_ENV, c), (BUNDLE_DIR_ENV, ""), (LOG_ENV, " ")]);
        assert_eq!(empty.bundle_dir.source, Source::ConfigFile);
        assert_eq!(empty.log_filter.unwrap().source, Source::ConfigFile);
        // An unknown backend in the environment is kept too, and fails the launch.
        let bad = capture_with(&[(BACKEND_ENV, "Model")]);
        assert_eq!(bad.backend.value, BackendChoice::Invalid("Model".into()));
        assert!(bad
            .summary()
            .contains("backend \"Model\" (invalid) (environment at load)"));
    }

    #[test]
    fn unreadable_files_are_errors_not_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let s = capture_with(&[(CONFIG_ENV, dir.path().to_str().unwrap())]);
        assert_eq!(s.problems.len(), 1);
        assert!(s.problems[0]
            .ends_with("is not a regular file; using the environment and the defaults"));
        let binary = dir.path().join("bin.conf");
        std::fs::write(&binary, [0xff, 0xfe, b'\n']).unwrap();
        let s = capture_with(&[(CONFIG_ENV, binary.to_str().unwrap())]);
        assert!(s.problems[0].contains("is not UTF-8"), "{:?}", s.problems);
        let big = dir.path().join("big.conf");
        std::fs::write(&big, vec![b'#'; 70 * 1024]).unwrap();
        let s = capture_with(&[(CONFIG_ENV, big.to_str().unwrap())]);
        assert!(s.problems[0].contains("larger than"), "{:?}", s.problems);
        assert_eq!(s.bundle_dir.source, Source::Default);
    }

    #[test]
    fn passt_setting() {
        let dir = tempfile::tempdir().unwrap();
        // Default: the first executable `passt` on the loading process's PATH.
        let bin = dir.path().join("passt");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", dir.path().display());
        let s = capture_with(&[("PATH", path.as_str())]);
        assert_eq!(s.passt.value, PasstChoice::Path(bin.clone()));
        assert_eq!(s.passt.source, Source::Default);
        assert_eq!(
            capture_with(&[("PATH", "/nonexistent")]).passt.value,
            PasstChoice::NotFound
        );
        // The file, then the environment.
        let conf = dir.path().join("c.conf");
        std::fs::write(&conf, "passt = none\n").unwrap();
        let c = conf.to_str().unwrap();
        let s = capture_with(&[(CONFIG_ENV, c), ("PATH", path.as_str())]);
        assert_eq!(
            s.passt,
            Setting {
                value: PasstChoice::Off,
                source: Source::ConfigFile
            }
        );
        let s = capture_with(&[(CONFIG_ENV, c), (PASST_ENV, "/opt/passt")]);
        assert_eq!(s.passt.value, PasstChoice::Path("/opt/passt".into()));
        assert!(s
            .summary()
            .contains("passt /opt/passt (environment at load)"));
        // A relative path turns the default network off, with a problem line.
        let s = capture_with(&[(PASST_ENV, "passt"), ("PATH", path.as_str())]);
        assert_eq!(s.passt.value, PasstChoice::Off);
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        let (cfg, problems) = parse_config("passt = bin/passt\n");
        assert_eq!(cfg.passt, None);
        assert_eq!(
            problems,
            vec![
                "line 1: `passt`: \"bin/passt\" is not an absolute path (an absolute path or none)"
            ]
        );
    }

    #[test]
    fn seccomp_setting() {
        assert!(capture_with(&[]).seccomp.value);
        assert_eq!(capture_with(&[]).seccomp.source, Source::Default);
        let off = capture_with(&[(SECCOMP_ENV, "off")]);
        assert_eq!(
            off.seccomp,
            Setting {
                value: false,
                source: Source::Environment
            }
        );
        assert!(off.summary().contains("seccomp off (environment at load)"));
        // Anything but on/off keeps the filters on, with a problem line.
        let bad = capture_with(&[(SECCOMP_ENV, "0")]);
        assert!(bad.seccomp.value);
        assert_eq!(
            bad.problems,
            vec!["KRUN_SEV_SECCOMP: `seccomp` is \"0\", not on or off; the filters stay on"]
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("c.conf");
        std::fs::write(&conf, "seccomp = off\n").unwrap();
        let c = conf.to_str().unwrap();
        let s = capture_with(&[(CONFIG_ENV, c)]);
        assert!(!s.seccomp.value);
        assert_eq!(s.seccomp.source, Source::ConfigFile);
        // The environment at load wins over the file.
        assert!(
            capture_with(&[(CONFIG_ENV, c), (SECCOMP_ENV, "on")])
                .seccomp
                .value
        );
        let (cfg, problems) = parse_config("seccomp = yes\n");
        assert_eq!(cfg.seccomp, None);
        assert_eq!(
            problems,
            vec!["line 1: `seccomp` is \"yes\", not on or off; the filters stay on"]
        );
    }

    #[test]
    fn file_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("c.conf");
        std::fs::write(&conf, "bundle_dir = /x\nnope\n").unwrap();
        let s = capture_with(&[(CONFIG_ENV, conf.to_str().unwrap())]);
        assert_eq!(
            s.problems,
            vec![format!("{} line 2: expected `key = value`", conf.display())]
        );
        assert_eq!(s.bundle_dir.value, PathBuf::from("/x"));
    }
}
