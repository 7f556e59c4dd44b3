//! The named vCPU model a confidential launch presents: its CPUID signature (leaf 1 EAX:
//! family, model, stepping) goes into every measured VMSA (reset RDX) and into the CPUID the
//! guest sees, so the launch digest never depends on the machine that computes it or runs
//! the guest (docs/measurement.md, "vCPU model"). The signatures are QEMU's for its
//! `EPYC-Milan`, `EPYC-Genoa` and `EPYC-Turin` models, as sev-snp-measure's `--vcpu-type`
//! uses them.

use krun_footer::TeeConfig;

/// An AMD EPYC generation, named by the TEE config's `tee_data.gen`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VcpuModel {
    /// `milan` (family 0x19, model 0x01, stepping 1); the default, as buildah writes it.
    #[default]
    Milan,
    /// `genoa` (family 0x19, model 0x11, stepping 0).
    Genoa,
    /// `turin` (family 0x1a, model 0x00, stepping 0).
    Turin,
}

/// Errors about the vCPU model.
#[derive(Debug, thiserror::Error)]
pub enum VcpuModelError {
    /// Not one of the names.
    #[error("unknown vCPU model {0:?}; expected milan, genoa or turin")]
    Unknown(String),
    /// The hardware cannot present the model.
    #[error(
        "this host's CPU is family {host_family:#x} model {host_model:#x}, but the TEE config's vCPU model {name} is family {family:#x} model {model:#x}: SEV hardware presents the host's own CPU, so the measurement registered for {name} can never match here; set tee_data.gen to this host's generation and register the digest `krun-sev measure` prints for it"
    )]
    HostMismatch {
        /// The model asked for.
        name: &'static str,
        /// Its family and model.
        family: u32,
        model: u32,
        /// The host's.
        host_family: u32,
        host_model: u32,
    },
}

impl VcpuModel {
    /// Every model, in generation order.
    pub const ALL: [VcpuModel; 3] = [VcpuModel::Milan, VcpuModel::Genoa, VcpuModel::Turin];

    /// The model `name` (`tee_data.gen` spelling).
    pub fn parse(name: &str) -> Result<VcpuModel, VcpuModelError> {
        VcpuModel::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| VcpuModelError::Unknown(name.to_owned()))
    }

    /// The model a TEE config asks for: `tee_data.gen`, else [`VcpuModel::Milan`].
    pub fn from_tee_config(cfg: &TeeConfig) -> Result<VcpuModel, VcpuModelError> {
        cfg.generation()
            .map_or(Ok(VcpuModel::default()), Self::parse)
    }

    /// The `tee_data.gen` spelling.
    pub fn name(self) -> &'static str {
        match self {
            VcpuModel::Milan => "milan",
            VcpuModel::Genoa => "genoa",
            VcpuModel::Turin => "turin",
        }
    }

    /// CPUID leaf 1 EAX.
    pub fn signature(self) -> u32 {
        match self {
            VcpuModel::Milan => signature(0x19, 0x01, 1),
            VcpuModel::Genoa => signature(0x19, 0x11, 0),
            VcpuModel::Turin => signature(0x1a, 0x00, 0),
        }
    }

    /// Checks that a host whose CPUID leaf 1 EAX is `host_sig` can present this model on
    /// SEV hardware: family and model must agree (the AMD-SP checks an SNP guest's CPUID
    /// page against the real CPU; stepping may differ).
    pub fn check_host(self, host_sig: u32) -> Result<(), VcpuModelError> {
        let (family, model, _) = decode(self.signature());
        let (host_family, host_model, _) = decode(host_sig);
        if (family, model) == (host_family, host_model) {
            return Ok(());
        }
        Err(VcpuModelError::HostMismatch {
            name: self.name(),
            family,
            model,
            host_family,
            host_model,
        })
    }
}

/// CPUID leaf 1 EAX for a display family, model and stepping (AMD CPUID specification
/// #25481, Fn0000_0001_EAX).
pub fn signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (base_family, ext_family) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (ext_family << 20)
        | (((model >> 4) & 0xf) << 16)
        | (base_family << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// Display family, model and stepping of a leaf 1 EAX.
pub fn decode(sig: u32) -> (u32, u32, u32) {
    let base_family = (sig >> 8) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((sig >> 20) & 0xff)
    } else {
        base_family
    };
    let model = if base_family == 0xf {
        (((sig >> 16) & 0xf) << 4) | ((sig >> 4) & 0xf)
    } else {
        (sig >> 4) & 0xf
    };
    (family, model, sig & 0xf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_qemus() {
        // QEMU's builtin_x86_defs as sev-snp-measure lists them (vcpu_types.CPU_SIGS); the
        // Python oracle test in tee::vmsa checks the same values against the package itself.
        assert_eq!(VcpuModel::Milan.signature(), 0x00a0_0f11);
        assert_eq!(VcpuModel::Genoa.signature(), 0x00a1_0f10);
        assert_eq!(VcpuModel::Turin.signature(), 0x00b0_0f00);
        for m in VcpuModel::ALL {
            assert_eq!(VcpuModel::parse(m.name()).unwrap(), m);
            let (f, md, s) = decode(m.signature());
            assert_eq!(signature(f, md, s), m.signature());
        }
        assert!(VcpuModel::parse("rome").is_err());
    }

    #[test]
    fn default_and_tee_config() {
        let cfg = |data: &str| {
            TeeConfig::parse(
                format!(
                    r#"{{"tee":"snp","tee_data":{data},"workload_id":"w","cpus":1,"ram_mib":64,"attestation_url":""}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        assert_eq!(
            VcpuModel::from_tee_config(&cfg(r#""""#)).unwrap(),
            VcpuModel::Milan
        );
        assert_eq!(
            VcpuModel::from_tee_config(&cfg(r#""{\"gen\":\"genoa\"}""#)).unwrap(),
            VcpuModel::Genoa
        );
    }

    #[test]
    fn host_check_compares_family_and_model_only() {
        let milan_b2 = signature(0x19, 0x01, 2);
        VcpuModel::Milan.check_host(milan_b2).unwrap();
        let err = VcpuModel::Milan
            .check_host(VcpuModel::Genoa.signature())
            .unwrap_err()
            .to_string();
        assert!(err.contains("family 0x19 model 0x11"), "{err}");
        assert!(err.contains("tee_data.gen"), "{err}");
        // A QEMU "EPYC" test host (family 0x17) cannot present Milan either.
        assert!(VcpuModel::Milan
            .check_host(signature(0x17, 0x01, 2))
            .is_err());
    }
}
