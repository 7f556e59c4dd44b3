//! The network settings the host sends on vsock port 1029 (docs/interfaces.md, "Network").
//!
//! The host is untrusted: the JSON is read with a size bound, parsed into a strict shape
//! (unknown keys ignored) and every value is checked before it touches an interface.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

/// The most bytes the host may send.
pub const MAX_CONFIG_LEN: usize = 4096;
/// MTU when the host names none.
pub const DEFAULT_MTU: u32 = 1500;
/// Smallest MTU IPv4 allows (RFC 791).
const MIN_MTU: u32 = 68;
/// Largest MTU virtio-net can carry.
const MAX_MTU: u32 = 65535;
/// resolv.conf's MAXNS: more nameservers are ignored by the resolver anyway.
pub const MAX_NAMESERVERS: usize = 3;
/// More `dns` entries than this is not a plausible configuration.
const MAX_DNS_ENTRIES: usize = 16;

/// Errors in the host's network settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading the settings failed.
    #[error("cannot read the network settings")]
    Read(#[source] std::io::Error),
    /// More than [`MAX_CONFIG_LEN`] bytes.
    #[error("the network settings are longer than {MAX_CONFIG_LEN} bytes")]
    TooLong,
    /// Not JSON of the expected shape.
    #[error("the network settings are not valid JSON of the expected shape")]
    Json(#[source] serde_json::Error),
    /// A value is out of range or inconsistent.
    #[error("invalid network setting: {0}")]
    Invalid(&'static str),
}

/// Validated network settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address the host gave the device.
    pub mac: [u8; 6],
    /// Interface MTU.
    pub mtu: u32,
    /// DHCP or stated addresses.
    pub mode: Mode,
}

/// How the interface gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Ask the DHCP server (passt).
    Dhcp,
    /// The addresses the host states.
    Static(Ipv4Settings),
}

/// An IPv4 address, its prefix, the default gateway and nameservers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Settings {
    /// The interface address.
    pub address: Ipv4Addr,
    /// Prefix length, 1..=32.
    pub prefix_len: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// At most [`MAX_NAMESERVERS`] nameservers.
    pub dns: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct RawConfig {
    dhcp: bool,
    mac: String,
    mtu: Option<u32>,
    ipv4: Option<RawIpv4>,
    dns: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawIpv4 {
    address: String,
    prefix_len: u8,
    gateway: Option<String>,
}

/// Reads at most [`MAX_CONFIG_LEN`] bytes from `reader` (until EOF) and parses them.
pub fn read(reader: impl Read) -> Result<NetConfig, ConfigError> {
    let mut buf = Vec::with_capacity(1024);
    let limit = u64::try_from(MAX_CONFIG_LEN + 1).unwrap_or(u64::MAX);
    reader
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(ConfigError::Read)?;
    if buf.len() > MAX_CONFIG_LEN {
        return Err(ConfigError::TooLong);
    }
    parse(&buf)
}

/// Parses and validates the settings.
pub fn parse(bytes: &[u8]) -> Result<NetConfig, ConfigError> {
    if bytes.len() > MAX_CONFIG_LEN {
        return Err(ConfigError::TooLong);
    }
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(ConfigError::Json)?;
    let mac = parse_mac(&raw.mac).ok_or(ConfigError::Invalid("mac is not a unicast MAC"))?;
    let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(ConfigError::Invalid("mtu is outside 68..=65535"));
    }
    let mode = if raw.dhcp {
        if raw.ipv4.is_some() || raw.dns.is_some() {
            return Err(ConfigError::Invalid("ipv4 or dns given together with dhcp"));
        }
        Mode::Dhcp
    } else {
        let ipv4 = raw
            .ipv4
            .ok_or(ConfigError::Invalid("neither dhcp nor ipv4"))?;
        Mode::Static(static_settings(ipv4, raw.dns.unwrap_or_default())?)
    };
    Ok(NetConfig { mac, mtu, mode })
}

fn static_settings(raw: RawIpv4, dns: Vec<String>) -> Result<Ipv4Settings, ConfigError> {
    let address: Ipv4Addr = raw
        .address
        .parse()
        .map_err(|_| ConfigError::Invalid("ipv4.address is not an IPv4 address"))?;
    if !usable_host_address(address) {
        return Err(ConfigError::Invalid(
            "ipv4.address is not a unicast address",
        ));
    }
    if !(1..=32).contains(&raw.prefix_len) {
        return Err(ConfigError::Invalid("ipv4.prefix_len is outside 1..=32"));
    }
    let gateway = raw
        .gateway
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .ok()
                .filter(|g| usable_host_address(*g) && *g != address)
                .ok_or(ConfigError::Invalid(
                    "ipv4.gateway is not a unicast IPv4 address",
                ))
        })
        .transpose()?;
    if dns.len() > MAX_DNS_ENTRIES {
        return Err(ConfigError::Invalid("too many dns entries"));
    }
    let mut servers = Vec::new();
    for entry in &dns {
        let ip: IpAddr = entry
            .parse()
            .map_err(|_| ConfigError::Invalid("a dns entry is not an IP address"))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(ConfigError::Invalid("a dns entry is not a unicast address"));
        }
        servers.push(ip);
    }
    servers.truncate(MAX_NAMESERVERS);
    Ok(Ipv4Settings {
        address,
        prefix_len: raw.prefix_len,
        gateway,
        dns: servers,
    })
}

/// An address an interface or a gateway can have: not 0.0.0.0, broadcast, multicast,
/// loopback or in 0.0.0.0/8.
pub fn usable_host_address(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_loopback()
        || ip.octets()[0] == 0)
}

/// `aa:bb:cc:dd:ee:ff` (hex, either case) of a unicast, non-zero MAC.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() || mac == [0; 6] || mac[0] & 1 != 0 {
        return None;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(json: &str) -> String {
        match parse(json.as_bytes()) {
            Err(ConfigError::Invalid(what)) => what.to_string(),
            other => panic!("{json}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn dhcp_settings_parse() {
        let cfg = parse(br#"{"dhcp": true, "mac": "5a:94:ef:e4:0c:ee", "mtu": 65520}"#).unwrap();
        assert_eq!(cfg.mac, [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee]);
        assert_eq!(cfg.mtu, 65520);
        assert_eq!(cfg.mode, Mode::Dhcp);
        // mtu defaults, unknown keys are ignored.
        let cfg = parse(br#"{"dhcp": true, "mac": "5A:94:EF:E4:0C:EE", "future": [1]}"#).unwrap();
        assert_eq!(cfg.mtu, DEFAULT_MTU);
    }

    #[test]
    fn static_settings_parse() {
        let cfg = parse(
            br#"{"dhcp": false, "mac": "02:00:00:00:00:01", "mtu": 1500,
                 "ipv4": {"address": "192.168.1.20", "prefix_len": 24, "gateway": "192.168.1.1"},
                 "dns": ["192.168.1.1", "fd00::1", "10.0.0.1", "10.0.0.2"]}"#,
        )
        .unwrap();
        let Mode::Static(s) = cfg.mode else {
            panic!("not static")
        };
        assert_eq!(s.address, Ipv4Addr::new(192, 168, 1, 20));
        assert_eq!(s.prefix_len, 24);
        assert_eq!(s.gateway, Some(Ipv4Addr::new(192, 168, 1, 1)));
        // Only the first three nameservers are kept.
        assert_eq!(s.dns.len(), MAX_NAMESERVERS);
        assert_eq!(s.dns[1], "fd00::1".parse::<IpAddr>().unwrap());
        // No gateway, no dns.
        let cfg = parse(
            br#"{"dhcp": false, "mac": "02:00:00:00:00:01",
                 "ipv4": {"address": "10.0.2.15", "prefix_len": 32}}"#,
        )
        .unwrap();
        let Mode::Static(s) = cfg.mode else {
            panic!("not static")
        };
        assert_eq!(s.gateway, None);
        assert!(s.dns.is_empty());
    }

    #[test]
    fn hostile_settings_are_refused() {
        const MAC: &str = r#""mac": "02:00:00:00:00:01""#;
        for json in [
            "",
            "null",
            "[]",
            "{",
            r#"{"dhcp": "yes", "mac": "02:00:00:00:00:01"}"#,
            r#"{"mac": "02:00:00:00:00:01"}"#,
            r#"{"dhcp": true}"#,
            r#"{"dhcp": true, "mac": "02:00:00:00:00:01", "mtu": -1}"#,
            r#"{"dhcp": true, "mac": "02:00:00:00:00:01", "mtu": 4294967296}"#,
            r#"{"dhcp": false, "mac": "02:00:00:00:00:01", "ipv4": {"address": "1.2.3.4", "prefix_len": 300}}"#,
        ] {
            assert!(
                matches!(parse(json.as_bytes()), Err(ConfigError::Json(_))),
                "{json}"
            );
        }
        for mac in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
            "2:0:0:0:0:1",
            "+2:00:00:00:00:01",
            "02-00-00-00-00-01",
        ] {
            let json = format!(r#"{{"dhcp": true, "mac": "{mac}"}}"#);
            assert!(invalid(&json).contains("mac"), "{mac}");
        }
        for mtu in [0, 67, 65536] {
            let json = format!(r#"{{"dhcp": true, {MAC}, "mtu": {mtu}}}"#);
            assert!(invalid(&json).contains("mtu"), "{mtu}");
        }
        let stat =
            |ipv4: &str, dns: &str| format!(r#"{{"dhcp": false, {MAC}, "ipv4": {ipv4}{dns}}}"#);
        for (json, what) in [
            (format!(r#"{{"dhcp": false, {MAC}}}"#), "neither"),
            (
                format!(r#"{{"dhcp": true, {MAC}, "dns": ["1.1.1.1"]}}"#),
                "together",
            ),
            (
                stat(r#"{"address": "0.0.0.0", "prefix_len": 24}"#, ""),
                "address",
            ),
            (
                stat(r#"{"address": "224.0.0.1", "prefix_len": 24}"#, ""),
                "address",
            ),
            (
                stat(r#"{"address": "127.0.0.1", "prefix_len": 8}"#, ""),
                "address",
            ),
            (
                stat(r#"{"address": "255.255.255.255", "prefix_len": 32}"#, ""),
                "address",
            ),
            (
                stat(r#"{"address": "fd00::2", "prefix_len": 64}"#, ""),
                "address",
            ),
            (
                stat(r#"{"address": "10.0.0.2 ", "prefix_len": 24}"#, ""),
                "address",
            ),
            (
                stat(r#"{"address": "10.0.0.2", "prefix_len": 0}"#, ""),
                "prefix_len",
            ),
            (
                stat(r#"{"address": "10.0.0.2", "prefix_len": 33}"#, ""),
                "prefix_len",
            ),
            (
                stat(
                    r#"{"address": "10.0.0.2", "prefix_len": 24, "gateway": "10.0.0.2"}"#,
                    "",
                ),
                "gateway",
            ),
            (
                stat(
                    r#"{"address": "10.0.0.2", "prefix_len": 24, "gateway": "x"}"#,
                    "",
                ),
                "gateway",
            ),
            (
                stat(
                    r#"{"address": "10.0.0.2", "prefix_len": 24}"#,
                    r#", "dns": ["nameserver 1.1.1.1"]"#,
                ),
                "dns",
            ),
            (
                stat(
                    r#"{"address": "10.0.0.2", "prefix_len": 24}"#,
                    r#", "dns": ["1.1.1.1\noptions x"]"#,
                ),
                "dns",
            ),
            (
                stat(
                    r#"{"address": "10.0.0.2", "prefix_len": 24}"#,
                    r#", "dns": ["0.0.0.0"]"#,
                ),
                "dns",
            ),
            (
                stat(
                    r#"{"address": "10.0.0.2", "prefix_len": 24}"#,
                    &format!(r#", "dns": [{}]"#, vec![r#""1.1.1.1""#; 17].join(",")),
                ),
                "dns",
            ),
        ] {
            assert!(invalid(&json).contains(what), "{json}: want {what}");
        }
    }

    #[test]
    fn reading_is_bounded() {
        let ok = br#"{"dhcp": true, "mac": "02:00:00:00:00:01"}"#;
        assert!(read(&ok[..]).is_ok());
        // Padding with whitespace up to the limit is fine, one byte more is not.
        let mut padded = ok.to_vec();
        padded.resize(MAX_CONFIG_LEN, b' ');
        assert!(read(&padded[..]).is_ok());
        padded.push(b' ');
        assert!(matches!(read(&padded[..]), Err(ConfigError::TooLong)));
        // An endless stream is cut off, not read into memory.
        assert!(matches!(
            read(std::io::repeat(b' ')),
            Err(ConfigError::TooLong)
        ));
    }
}
