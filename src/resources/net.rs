//! The network settings of `krun_add_net_unixstream`: where the frames go, the MAC, the
//! requested features and how the guest configures its address.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

/// `NET_FLAG_DHCP_CLIENT` of libkrun.h: the guest configures its interface with DHCP.
pub const NET_FLAG_DHCP_CLIENT: u32 = 1 << 1;
/// Flags `krun_add_net_unixstream` accepts.
pub const NET_FLAGS_SUPPORTED: u32 = NET_FLAG_DHCP_CLIENT;

/// Errors in the network settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetConfigError {
    /// Both a path and an fd, or neither.
    #[error("exactly one of `c_path` and `fd` (>= 0) must be given")]
    Endpoint,
    /// The path is empty.
    #[error("`c_path` is empty")]
    EmptyPath,
    /// A flag this library does not know.
    #[error("unsupported flags {0:#x} (supported: NET_FLAG_DHCP_CLIENT)")]
    Flags(u32),
    /// A second network device.
    #[error("the context already has a network device (one is supported)")]
    Exists,
    /// A multicast or all-zero MAC address.
    #[error("MAC address {0} is multicast or all zero")]
    Mac(String),
}

/// An fd the context owns, shared by the copies `context::update` makes.
#[derive(Debug, Clone)]
pub struct SharedFd(pub Arc<OwnedFd>);

impl PartialEq for SharedFd {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedFd {}

/// Where the network device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEndpoint {
    /// A unix stream socket path, connected at launch.
    Path(PathBuf),
    /// An already connected unix stream socket (the library owns it).
    Fd(SharedFd),
}

/// One network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Where the frames go.
    pub endpoint: NetEndpoint,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// Requested virtio-net feature bits.
    pub features: u32,
    /// `NET_FLAG_DHCP_CLIENT`: the guest asks DHCP; otherwise the host states the addresses.
    pub dhcp: bool,
}

impl NetConfig {
    /// Validates the arguments of `krun_add_net_unixstream` after the C layer converted
    /// them (`fd` is taken over only once this succeeds).
    pub fn check(
        path: Option<&str>,
        fd_given: bool,
        mac: [u8; 6],
        flags: u32,
    ) -> Result<(), NetConfigError> {
        if path.is_some() == fd_given {
            return Err(NetConfigError::Endpoint);
        }
        if path == Some("") {
            return Err(NetConfigError::EmptyPath);
        }
        if flags & !NET_FLAGS_SUPPORTED != 0 {
            return Err(NetConfigError::Flags(flags));
        }
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetConfigError::Mac(
                crate::devices::virtio::net::format_mac(&mac),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];

    #[test]
    fn argument_checks() {
        assert_eq!(NetConfig::check(Some("/s"), false, MAC, 0), Ok(()));
        assert_eq!(
            NetConfig::check(None, true, MAC, NET_FLAG_DHCP_CLIENT),
            Ok(())
        );
        assert_eq!(
            NetConfig::check(Some("/s"), true, MAC, 0),
            Err(NetConfigError::Endpoint)
        );
        assert_eq!(
            NetConfig::check(None, false, MAC, 0),
            Err(NetConfigError::Endpoint)
        );
        assert_eq!(
            NetConfig::check(Some(""), false, MAC, 0),
            Err(NetConfigError::EmptyPath)
        );
        // NET_FLAG_VFKIT (1 << 0) is for unixgram sockets; anything unknown is refused.
        for f in [1, 4, 1 << 31, NET_FLAG_DHCP_CLIENT | 1] {
            assert_eq!(
                NetConfig::check(None, true, MAC, f),
                Err(NetConfigError::Flags(f))
            );
        }
        assert!(matches!(
            NetConfig::check(None, true, [1, 0, 0, 0, 0, 1], 0),
            Err(NetConfigError::Mac(_))
        ));
        assert!(matches!(
            NetConfig::check(None, true, [0; 6], 0),
            Err(NetConfigError::Mac(_))
        ));
    }
}
