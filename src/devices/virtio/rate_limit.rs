//! Rate-limited warnings for events the guest triggers (a refused request, a malformed
//! packet): logged at most once per interval per call site, with a count of what was held
//! back, so a guest cannot make the VMM write log lines as fast as it submits bad buffers.

use std::time::Duration;

/// Interval of [`guest_warn!`]: one line per call site every 5 s.
pub const GUEST_WARN_INTERVAL: Duration = Duration::from_secs(5);

/// A log line at most once per interval, counting what it held back (guest- or
/// host-triggered events that must not flood the log).
#[derive(Debug)]
pub struct RateLimitedLog {
    interval: std::time::Duration,
    target: &'static str,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// At most one line per `interval`, logged with `target` (the caller's `module_path!()`).
    pub const fn new(interval: std::time::Duration, target: &'static str) -> Self {
        RateLimitedLog {
            interval,
            target,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now; `Some(n)` with the number of lines held back since
    /// the last one.
    pub fn admit(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Logs `msg` as a warning unless a line was logged less than the interval ago; returns
    /// whether it logged.
    pub fn warn(&mut self, msg: std::fmt::Arguments<'_>) -> bool {
        match self.admit() {
            None => false,
            Some(0) => {
                log::warn!(target: self.target, "{msg}");
                true
            }
            Some(n) => {
                log::warn!(target: self.target, "{msg} ({n} similar messages suppressed)");
                true
            }
        }
    }
}

/// `log::warn!` for a guest-triggered event, through a per-call-site [`RateLimitedLog`]
/// with [`GUEST_WARN_INTERVAL`] (process-wide: one VM per process).
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMIT: std::sync::Mutex<$crate::devices::virtio::rate_limit::RateLimitedLog> =
            std::sync::Mutex::new($crate::devices::virtio::rate_limit::RateLimitedLog::new(
                $crate::devices::virtio::rate_limit::GUEST_WARN_INTERVAL,
                module_path!(),
            ));
        // Logged here, so the line keeps the caller's module as its target.
        let admitted = LIMIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit();
        match admitted {
            None => {}
            Some(0) => log::warn!($($arg)+),
            Some(n) => log::warn!("{} ({n} similar messages suppressed)", format_args!($($arg)+)),
        }
    }};
}
pub(crate) use guest_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_holds_back_repeats() {
        let mut r = RateLimitedLog::new(std::time::Duration::from_secs(3600), module_path!());
        assert!(r.warn(format_args!("x")));
        assert!(!r.warn(format_args!("x")));
        assert!(!r.warn(format_args!("x")));
        assert_eq!(r.suppressed, 2);
        let mut r = RateLimitedLog::new(std::time::Duration::ZERO, module_path!());
        assert!(r.warn(format_args!("x")));
        assert!(r.warn(format_args!("x")));
    }

    #[test]
    fn guest_warn_logs_once_per_interval_per_site() {
        // The macro's limiter is per call site: a loop hits one site.
        fn site() -> bool {
            static LIMIT: std::sync::Mutex<RateLimitedLog> =
                std::sync::Mutex::new(RateLimitedLog::new(GUEST_WARN_INTERVAL, module_path!()));
            LIMIT.lock().unwrap().warn(format_args!("refused"))
        }
        let logged = (0..1000).filter(|_| site()).count();
        assert_eq!(logged, 1);
        guest_warn!("compiles with arguments {}", 1);
    }
}
