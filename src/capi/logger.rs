//! The library's logger: `krun_set_log_level` picks the level unless the host set a log filter
//! (`RUST_LOG` when the library was loaded, or `log_level` in the host configuration file;
//! `crate::settings`), which wins. Errors are written at every level. Every line goes to
//! stderr with the prefix `[libkrun-sev LEVEL target]`.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use log::{LevelFilter, Log, Metadata, Record};

/// Level used until `krun_set_log_level` is called: failures and warnings (for example the
/// PSP model's "memory is not encrypted") are visible by default.
const DEFAULT_LEVEL: LevelFilter = LevelFilter::Warn;

struct KrunLogger {
    level: AtomicUsize,
    env: Option<env_filter::Filter>,
}

impl KrunLogger {
    fn level(&self) -> LevelFilter {
        match self.level.load(Ordering::Relaxed) {
            0 => LevelFilter::Off,
            1 => LevelFilter::Error,
            2 => LevelFilter::Warn,
            3 => LevelFilter::Info,
            4 => LevelFilter::Debug,
            _ => LevelFilter::Trace,
        }
    }
}

impl Log for KrunLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Errors are always shown: a failure is never silent, whatever the level asked.
        if metadata.level() == log::Level::Error {
            return true;
        }
        match &self.env {
            Some(filter) => filter.enabled(metadata),
            None => metadata.level() <= self.level(),
        }
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Some(filter) = &self.env {
            if record.level() != log::Level::Error && !filter.matches(record) {
                return;
            }
        }
        write_line(record.level(), record.target(), &record.args().to_string());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// One line on stderr, prefixed; one write per line so concurrent vCPU and device threads do
/// not interleave.
fn write_line(level: log::Level, target: &str, message: &str) {
    let line = format!("[libkrun-sev {level} {target}] {message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Writes `lines` as warnings on stderr whatever the level (the PSP model's "memory is not
/// encrypted"), through the embedding program's logger if it installed one.
pub(crate) fn always_warn(lines: &[&str]) {
    ensure_logger();
    let ours = INSTALLED.get().copied().unwrap_or(false);
    for line in lines {
        if ours {
            write_line(log::Level::Warn, module_path!(), line);
        } else {
            log::warn!("{line}");
        }
    }
}

/// The one line on stderr that says why the launch failed, whatever the level and whichever
/// logger is installed, before the process exits with the launch-failure status.
pub(crate) fn launch_failed(reason: &str) {
    write_line(
        log::Level::Error,
        "krun_sev::capi",
        &format!("krun_start_enter: {reason}"),
    );
}

static LOGGER: OnceLock<KrunLogger> = OnceLock::new();

fn logger() -> &'static KrunLogger {
    LOGGER.get_or_init(|| {
        let env = crate::settings::host()
            .log_filter
            .as_ref()
            .map(|spec| env_filter::Builder::new().parse(&spec.value).build());
        KrunLogger {
            level: AtomicUsize::new(DEFAULT_LEVEL as usize),
            env,
        }
    })
}

/// Whether our logger is the `log` crate's logger (set once, at the first C API call).
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the logger on first use, then reports what was wrong with the host's
/// configuration file.
pub(crate) fn ensure_logger() {
    let logger = logger();
    let mut first = false;
    INSTALLED.get_or_init(|| {
        first = true;
        // Fails only if the embedding program installed its own logger; records then go to
        // that logger and only the max level set here applies.
        let ok = log::set_logger(logger).is_ok();
        log::set_max_level(effective_max(logger));
        ok
    });
    if first {
        for problem in &crate::settings::host().problems {
            log::error!("host settings: {problem}");
        }
    }
}

fn effective_max(logger: &KrunLogger) -> LevelFilter {
    let max = match &logger.env {
        Some(filter) => filter.filter(),
        None => logger.level(),
    };
    max.max(LevelFilter::Error)
}

/// Maps `krun_set_log_level`'s 0..=5 to a level filter.
pub(crate) fn level_from_c(level: u32) -> Option<LevelFilter> {
    Some(match level {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        5 => LevelFilter::Trace,
        _ => return None,
    })
}

/// Sets the level; a no-op for the filter when the host set one.
pub(crate) fn set_level(level: LevelFilter) {
    ensure_logger();
    let logger = logger();
    logger.level.store(level as usize, Ordering::Relaxed);
    log::set_max_level(effective_max(logger));
}

/// The level currently in force (for tests).
#[cfg(test)]
pub(crate) fn current_level() -> LevelFilter {
    logger().level()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_c_levels() {
        assert_eq!(level_from_c(0), Some(LevelFilter::Off));
        assert_eq!(level_from_c(3), Some(LevelFilter::Info));
        assert_eq!(level_from_c(5), Some(LevelFilter::Trace));
        assert_eq!(level_from_c(6), None);
    }

    #[test]
    fn setting_twice_changes_the_level() {
        set_level(LevelFilter::Debug);
        assert_eq!(current_level(), LevelFilter::Debug);
        set_level(LevelFilter::Error);
        assert_eq!(current_level(), LevelFilter::Error);
    }
}
