//! `krun_set_rlimits` entries: `"RESOURCE=CUR:MAX"`.
//!
//! RESOURCE is a Linux resource number (`7`) or name (`RLIMIT_NOFILE` or `NOFILE`, any case);
//! CUR and MAX are numbers or `unlimited`/`infinity` (RLIM_INFINITY).

/// The Linux resource names, indexed by resource number (asm-generic/resource.h).
const RESOURCE_NAMES: [&str; 16] = [
    "CPU",
    "FSIZE",
    "DATA",
    "STACK",
    "CORE",
    "RSS",
    "NPROC",
    "NOFILE",
    "MEMLOCK",
    "AS",
    "LOCKS",
    "SIGPENDING",
    "MSGQUEUE",
    "NICE",
    "RTPRIO",
    "RTTIME",
];

/// RLIM_INFINITY on Linux.
pub const RLIM_INFINITY: u64 = u64::MAX;

/// Errors in an rlimit entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RlimitError {
    /// Not `RESOURCE=CUR:MAX`.
    #[error("rlimit entry {index} ({entry:?}) is not RESOURCE=CUR:MAX")]
    Malformed {
        /// Position in the array.
        index: usize,
        /// The entry as given.
        entry: String,
    },
    /// An unknown resource name or number.
    #[error("rlimit entry {index} names unknown resource {resource:?}")]
    UnknownResource {
        /// Position in the array.
        index: usize,
        /// The resource as given.
        resource: String,
    },
    /// A soft limit above the hard limit.
    #[error("rlimit entry {index} has a soft limit above its hard limit")]
    SoftAboveHard {
        /// Position in the array.
        index: usize,
    },
}

/// One resource limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// Linux resource number (RLIMIT_*).
    pub resource: u32,
    /// Soft limit.
    pub cur: u64,
    /// Hard limit.
    pub max: u64,
}

impl Rlimit {
    /// Parses every entry of an rlimit array.
    pub fn parse_all<S: AsRef<str>>(entries: &[S]) -> Result<Vec<Rlimit>, RlimitError> {
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| Rlimit::parse(index, entry.as_ref()))
            .collect()
    }

    fn parse(index: usize, entry: &str) -> Result<Rlimit, RlimitError> {
        let malformed = || RlimitError::Malformed {
            index,
            entry: entry.to_owned(),
        };
        let (resource, limits) = entry.split_once('=').ok_or_else(malformed)?;
        let (cur, max) = limits.split_once(':').ok_or_else(malformed)?;
        let resource = parse_resource(resource).ok_or_else(|| RlimitError::UnknownResource {
            index,
            resource: resource.to_owned(),
        })?;
        let cur = parse_limit(cur).ok_or_else(malformed)?;
        let max = parse_limit(max).ok_or_else(malformed)?;
        if cur > max {
            return Err(RlimitError::SoftAboveHard { index });
        }
        Ok(Rlimit { resource, cur, max })
    }

    /// The resource's name without the `RLIMIT_` prefix.
    pub fn resource_name(&self) -> &'static str {
        usize::try_from(self.resource)
            .ok()
            .and_then(|i| RESOURCE_NAMES.get(i))
            .copied()
            .unwrap_or("?")
    }
}

fn parse_resource(s: &str) -> Option<u32> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u32>()
            .ok()
            .filter(|&n| usize::try_from(n).is_ok_and(|n| n < RESOURCE_NAMES.len()));
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("RLIMIT_").unwrap_or(&upper);
    RESOURCE_NAMES
        .iter()
        .position(|&n| n == name)
        .and_then(|i| u32::try_from(i).ok())
}

fn parse_limit(s: &str) -> Option<u64> {
    match s.to_ascii_lowercase().as_str() {
        "unlimited" | "infinity" | "-1" => Some(RLIM_INFINITY),
        digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_and_named_resources() {
        let parsed = Rlimit::parse_all(&[
            "7=1024:4096",
            "RLIMIT_NOFILE=10:20",
            "nproc=unlimited:unlimited",
            "RLIMIT_CORE=0:-1",
            "RLIMIT_RTTIME=1:1",
        ])
        .unwrap();
        assert_eq!(
            parsed,
            vec![
                Rlimit {
                    resource: 7,
                    cur: 1024,
                    max: 4096
                },
                Rlimit {
                    resource: 7,
                    cur: 10,
                    max: 20
                },
                Rlimit {
                    resource: 6,
                    cur: RLIM_INFINITY,
                    max: RLIM_INFINITY
                },
                Rlimit {
                    resource: 4,
                    cur: 0,
                    max: RLIM_INFINITY
                },
                Rlimit {
                    resource: 15,
                    cur: 1,
                    max: 1
                },
            ]
        );
        assert_eq!(parsed[1].resource_name(), "NOFILE");
    }

    #[test]
    fn rejects_bad_entries() {
        for bad in [
            "", "7", "7=", "7=1", "7=1:", "7=:1", "7=a:1", "7=1:2:3", "=1:2", "7=+1:2",
        ] {
            assert!(
                matches!(
                    Rlimit::parse_all(&[bad]),
                    Err(RlimitError::Malformed { .. } | RlimitError::UnknownResource { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            Rlimit::parse_all(&["16=1:1"]),
            Err(RlimitError::UnknownResource { .. })
        ));
        assert!(matches!(
            Rlimit::parse_all(&["RLIMIT_FOO=1:1"]),
            Err(RlimitError::UnknownResource { .. })
        ));
        assert_eq!(
            Rlimit::parse_all(&["7=1:1", "7=5:4"]),
            Err(RlimitError::SoftAboveHard { index: 1 })
        );
    }
}
