//! Resource limits: names, the krun_set_rlimits string form, and applying them.

/// Resource type of `setrlimit` on glibc.
pub type Resource = libc::__rlimit_resource_t;

/// Errors from parsing or applying a rlimit.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    /// Not `RESOURCE=SOFT:HARD`.
    #[error("rlimit must have the form RESOURCE=SOFT:HARD")]
    Syntax,
    /// A resource name or number the kernel does not know.
    #[error("unknown rlimit resource")]
    UnknownResource,
    /// A value that is neither a number nor "unlimited".
    #[error("invalid rlimit value")]
    Value,
    /// The soft limit is above the hard limit.
    #[error("rlimit soft limit exceeds the hard limit")]
    SoftAboveHard,
}

const NAMES: [(&str, Resource); 16] = [
    ("CPU", libc::RLIMIT_CPU),
    ("FSIZE", libc::RLIMIT_FSIZE),
    ("DATA", libc::RLIMIT_DATA),
    ("STACK", libc::RLIMIT_STACK),
    ("CORE", libc::RLIMIT_CORE),
    ("RSS", libc::RLIMIT_RSS),
    ("NPROC", libc::RLIMIT_NPROC),
    ("NOFILE", libc::RLIMIT_NOFILE),
    ("MEMLOCK", libc::RLIMIT_MEMLOCK),
    ("AS", libc::RLIMIT_AS),
    ("LOCKS", libc::RLIMIT_LOCKS),
    ("SIGPENDING", libc::RLIMIT_SIGPENDING),
    ("MSGQUEUE", libc::RLIMIT_MSGQUEUE),
    ("NICE", libc::RLIMIT_NICE),
    ("RTPRIO", libc::RLIMIT_RTPRIO),
    ("RTTIME", libc::RLIMIT_RTTIME),
];

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// The `RLIMIT_*` number.
    pub resource: Resource,
    /// Soft limit (`RLIM_INFINITY` for unlimited).
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

impl Rlimit {
    /// Builds a limit, checking `soft <= hard`.
    pub fn new(resource: Resource, soft: u64, hard: u64) -> Result<Self, RlimitError> {
        if soft > hard {
            return Err(RlimitError::SoftAboveHard);
        }
        Ok(Rlimit {
            resource,
            soft,
            hard,
        })
    }

    /// Parses krun_set_rlimits' `RESOURCE=SOFT:HARD` (RESOURCE a number or a name).
    pub fn parse_krun(text: &str) -> Result<Self, RlimitError> {
        let (resource, values) = text.split_once('=').ok_or(RlimitError::Syntax)?;
        let (soft, hard) = values.split_once(':').ok_or(RlimitError::Syntax)?;
        Self::new(
            resource_from_name(resource)?,
            parse_value(soft)?,
            parse_value(hard)?,
        )
    }
}

/// `RLIMIT_NOFILE`, `NOFILE`, `nofile` or `7`.
pub fn resource_from_name(name: &str) -> Result<Resource, RlimitError> {
    let name = name.trim();
    if let Ok(n) = name.parse::<Resource>() {
        return NAMES
            .iter()
            .find(|(_, r)| *r == n)
            .map(|(_, r)| *r)
            .ok_or(RlimitError::UnknownResource);
    }
    let upper = name.to_ascii_uppercase();
    let short = upper.strip_prefix("RLIMIT_").unwrap_or(&upper);
    NAMES
        .iter()
        .find(|(n, _)| *n == short)
        .map(|(_, r)| *r)
        .ok_or(RlimitError::UnknownResource)
}

fn parse_value(text: &str) -> Result<u64, RlimitError> {
    match text.trim() {
        "unlimited" | "infinity" | "-1" => Ok(libc::RLIM_INFINITY),
        t => t.parse::<u64>().map_err(|_| RlimitError::Value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(
            resource_from_name("RLIMIT_NOFILE").unwrap(),
            libc::RLIMIT_NOFILE
        );
        assert_eq!(resource_from_name("nofile").unwrap(), libc::RLIMIT_NOFILE);
        assert_eq!(resource_from_name("7").unwrap(), libc::RLIMIT_NOFILE);
        assert_eq!(
            resource_from_name("RLIMIT_RTTIME").unwrap(),
            libc::RLIMIT_RTTIME
        );
        assert!(resource_from_name("16").is_err());
        assert!(resource_from_name("RLIMIT_BOGUS").is_err());
    }

    #[test]
    fn krun_strings_parse() {
        let l = Rlimit::parse_krun("6=100:200").unwrap();
        assert_eq!((l.resource, l.soft, l.hard), (libc::RLIMIT_NPROC, 100, 200));
        let l = Rlimit::parse_krun("RLIMIT_CORE=0:unlimited").unwrap();
        assert_eq!((l.soft, l.hard), (0, libc::RLIM_INFINITY));
        for bad in ["7", "7=1", "7=a:b", "7=10:5", "99=1:1", "=1:1"] {
            assert!(Rlimit::parse_krun(bad).is_err(), "{bad} accepted");
        }
    }
}
