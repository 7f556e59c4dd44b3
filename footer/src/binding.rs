//! The launch binding: which workload a confidential launch is for and which key broker it
//! trusts. The library writes it into the measured `/krun/host.json` (so it is part of the
//! launch digest a broker registers), and the guest init takes the broker and workload from
//! there, never from the host-controlled footer (docs/threat-model.md, "Binding").
//!
//! ```json
//! "binding": {"workload_id": "…", "attestation_url": "https://kbs.example:8443",
//!             "kbs_protocol": "reference", "broker_pin": "<64 hex>"}
//! ```
//!
//! `broker_pin` is present only when the TEE config's `tee_data.attestation_server_pubkey`
//! names one: the SHA-256 of the DER SubjectPublicKeyInfo of the broker's TLS certificate,
//! written as 64 hex digits (optionally prefixed `sha256:`). A pin needs an `https://` URL.

use serde_json::{json, Map, Value};

use crate::tee_config::{KbsProtocol, TeeConfig, TeeConfigError};

/// Length of a broker pin (SHA-256).
pub const PIN_LEN: usize = 32;

/// The broker and workload a launch is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The workload the broker releases the key of.
    pub workload_id: String,
    /// The broker's base URL.
    pub attestation_url: String,
    /// The protocol spoken with it.
    pub kbs_protocol: KbsProtocol,
    /// SHA-256 of the broker's TLS SubjectPublicKeyInfo, when pinned.
    pub broker_pin: Option<[u8; PIN_LEN]>,
}

/// Errors reading a binding from host.json.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// Not an object, a key missing or of the wrong type.
    #[error("launch binding field `{0}` is missing or invalid")]
    Field(&'static str),
}

impl Binding {
    /// The binding a TEE config asks for: `None` without `attestation_url` (no broker, so
    /// nothing to bind).
    pub fn from_tee_config(cfg: &TeeConfig) -> Result<Option<Binding>, TeeConfigError> {
        if cfg.attestation_url.is_empty() {
            return Ok(None);
        }
        let broker_pin = cfg.broker_pin()?;
        Ok(Some(Binding {
            workload_id: cfg.workload_id.clone(),
            attestation_url: cfg.attestation_url.clone(),
            kbs_protocol: cfg.kbs_protocol,
            broker_pin,
        }))
    }

    /// The JSON object written into host.json (serde_json orders keys, so equal bindings
    /// give equal bytes).
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("workload_id".into(), json!(self.workload_id));
        m.insert("attestation_url".into(), json!(self.attestation_url));
        m.insert("kbs_protocol".into(), json!(self.kbs_protocol.as_str()));
        if let Some(pin) = &self.broker_pin {
            m.insert("broker_pin".into(), json!(hex(pin)));
        }
        Value::Object(m)
    }

    /// Reads the object [`Binding::to_value`] writes.
    pub fn from_value(v: &Value) -> Result<Binding, BindingError> {
        let obj = v.as_object().ok_or(BindingError::Field("binding"))?;
        let text = |key: &'static str| -> Result<String, BindingError> {
            obj.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(BindingError::Field(key))
        };
        let kbs_protocol = match text("kbs_protocol")?.as_str() {
            "reference" => KbsProtocol::Reference,
            "rcar" => KbsProtocol::Rcar,
            _ => return Err(BindingError::Field("kbs_protocol")),
        };
        let broker_pin = match obj.get("broker_pin") {
            None => None,
            Some(Value::String(s)) => Some(parse_pin(s).ok_or(BindingError::Field("broker_pin"))?),
            Some(_) => return Err(BindingError::Field("broker_pin")),
        };
        let b = Binding {
            workload_id: text("workload_id")?,
            attestation_url: text("attestation_url")?,
            kbs_protocol,
            broker_pin,
        };
        if b.workload_id.is_empty() {
            return Err(BindingError::Field("workload_id"));
        }
        if b.attestation_url.is_empty() {
            return Err(BindingError::Field("attestation_url"));
        }
        Ok(b)
    }
}

/// Parses a pin: 64 hex digits, optionally prefixed `sha256:`.
pub fn parse_pin(s: &str) -> Option<[u8; PIN_LEN]> {
    let digits = s.strip_prefix("sha256:").unwrap_or(s).as_bytes();
    if digits.len() != 2 * PIN_LEN {
        return None;
    }
    let mut out = [0u8; PIN_LEN];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn cfg(url: &str, pubkey: &str) -> Result<TeeConfig, TeeConfigError> {
        let json = format!(
            r#"{{"tee":"snp","tee_data":{{"gen":"milan","attestation_server_pubkey":"{pubkey}"}},"workload_id":"wl","cpus":1,"ram_mib":512,"attestation_url":"{url}"}}"#
        );
        TeeConfig::parse(json.as_bytes())
    }

    #[test]
    fn binding_follows_the_tee_config() {
        let b = Binding::from_tee_config(&cfg("https://kbs:8443", PIN).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(b.workload_id, "wl");
        assert_eq!(b.attestation_url, "https://kbs:8443");
        assert_eq!(b.broker_pin.map(|p| hex(&p)), Some(PIN.to_owned()));
        let unpinned = Binding::from_tee_config(&cfg("http://kbs:8000", "").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(unpinned.broker_pin, None);
        assert_eq!(
            Binding::from_tee_config(&cfg("", "").unwrap()).unwrap(),
            None
        );
    }

    #[test]
    fn round_trips_and_is_canonical() {
        let b = Binding::from_tee_config(&cfg("https://kbs", &format!("sha256:{PIN}")).unwrap())
            .unwrap()
            .unwrap();
        let v = b.to_value();
        assert_eq!(
            v.to_string(),
            format!(
                r#"{{"attestation_url":"https://kbs","broker_pin":"{PIN}","kbs_protocol":"reference","workload_id":"wl"}}"#
            )
        );
        assert_eq!(Binding::from_value(&v).unwrap(), b);
    }

    #[test]
    fn bad_bindings_are_refused() {
        for bad in [
            json!("x"),
            json!({"attestation_url": "http://k", "kbs_protocol": "reference"}),
            json!({"workload_id": "", "attestation_url": "http://k", "kbs_protocol": "reference"}),
            json!({"workload_id": "w", "attestation_url": "http://k", "kbs_protocol": "x"}),
            json!({"workload_id": "w", "attestation_url": "http://k", "kbs_protocol": "rcar", "broker_pin": "12"}),
            json!({"workload_id": "w", "attestation_url": "http://k", "kbs_protocol": "rcar", "broker_pin": 1}),
        ] {
            assert!(Binding::from_value(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pins_parse() {
        assert!(parse_pin(PIN).is_some());
        assert!(parse_pin(&format!("sha256:{PIN}")).is_some());
        assert!(parse_pin(&PIN[1..]).is_none());
        assert!(parse_pin(&PIN.replace('0', "g")).is_none());
    }
}
