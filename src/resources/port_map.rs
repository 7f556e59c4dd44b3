//! `krun_set_port_map` entries: `"HOST_PORT:GUEST_PORT"`.

use std::collections::HashSet;

/// Errors in a port map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortMapError {
    /// An entry that is not `HOST:GUEST` with two ports in 1..=65535.
    #[error("port map entry {index} ({entry:?}) is not HOST_PORT:GUEST_PORT with ports 1-65535")]
    Malformed {
        /// Position in the array.
        index: usize,
        /// The entry as given.
        entry: String,
    },
    /// The same host port appears twice.
    #[error("port map entry {index} repeats host port {port}")]
    DuplicateHostPort {
        /// Position in the array.
        index: usize,
        /// The repeated port.
        port: u16,
    },
}

/// One forwarded TCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// Port the host listens on.
    pub host: u16,
    /// Port inside the guest the connection goes to.
    pub guest: u16,
}

/// Which guest ports the host exposes.
///
/// NULL (or never calling `krun_set_port_map`) and an empty list mean different things, so
/// they are different variants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PortMap {
    /// Expose every TCP port the guest listens on, under the same port number.
    #[default]
    ExposeListening,
    /// Expose exactly these ports; an empty list exposes nothing.
    Explicit(Vec<PortMapping>),
}

impl PortMap {
    /// Parses the entries of a non-NULL port map array.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, PortMapError> {
        let mut seen = HashSet::new();
        let mut mappings = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref();
            let mapping = parse_entry(entry).ok_or_else(|| PortMapError::Malformed {
                index,
                entry: entry.to_owned(),
            })?;
            if !seen.insert(mapping.host) {
                return Err(PortMapError::DuplicateHostPort {
                    index,
                    port: mapping.host,
                });
            }
            mappings.push(mapping);
        }
        Ok(PortMap::Explicit(mappings))
    }
}

fn parse_entry(entry: &str) -> Option<PortMapping> {
    let (host, guest) = entry.split_once(':')?;
    Some(PortMapping {
        host: parse_port(host)?,
        guest: parse_port(guest)?,
    })
}

fn parse_port(s: &str) -> Option<u16> {
    // `u16::from_str` accepts a leading '+', which is not a port number.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_entries() {
        assert_eq!(
            PortMap::parse(&["8080:80", "65535:1"]),
            Ok(PortMap::Explicit(vec![
                PortMapping {
                    host: 8080,
                    guest: 80
                },
                PortMapping {
                    host: 65535,
                    guest: 1
                },
            ]))
        );
        assert_eq!(PortMap::parse::<&str>(&[]), Ok(PortMap::Explicit(vec![])));
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            "", "80", ":80", "80:", "80:80:80", "0:80", "80:0", "65536:80", "+80:80", " 80:80",
            "a:b", "-1:80", "80:8o",
        ] {
            assert!(
                matches!(
                    PortMap::parse(&["1:1", bad]),
                    Err(PortMapError::Malformed { index: 1, .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn rejects_duplicate_host_ports() {
        assert_eq!(
            PortMap::parse(&["8080:80", "8081:80", "8080:81"]),
            Err(PortMapError::DuplicateHostPort {
                index: 2,
                port: 8080
            })
        );
    }
}
