//! The initial VMSA (VM save area) of each vCPU, as SEV-ES and SNP measure it.
//!
//! Layout: Linux `struct sev_es_save_area` (arch/x86/include/asm/svm.h). Values: the x86
//! reset state as KVM presents it for a VMM that leaves the reset registers alone, identical
//! to sev-snp-measure's `VMSA.build_save_area` for `VMMType.QEMU` (the oracle in the tests).
//! The BSP starts at the reset vector (CS base 0xFFFF0000, RIP 0xFFF0); APs at the
//! reset-vector firmware's AP entry (same CS, RIP 0xFFF8).

use super::TeeMode;

/// Size of a VMSA page.
pub const VMSA_SIZE: usize = 4096;
/// `SEV_FEATURES.SNPActive`.
const SEV_FEATURE_SNP_ACTIVE: u64 = 1;

mod off {
    pub const ES: usize = 0x000;
    pub const CS: usize = 0x010;
    pub const SS: usize = 0x020;
    pub const DS: usize = 0x030;
    pub const FS: usize = 0x040;
    pub const GS: usize = 0x050;
    pub const GDTR: usize = 0x060;
    pub const LDTR: usize = 0x070;
    pub const IDTR: usize = 0x080;
    pub const TR: usize = 0x090;
    pub const EFER: usize = 0x0d0;
    pub const CR4: usize = 0x148;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const G_PAT: usize = 0x268;
    pub const RDX: usize = 0x310;
    pub const SEV_FEATURES: usize = 0x3b0;
    pub const XCR0: usize = 0x3e8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

fn put(page: &mut [u8; VMSA_SIZE], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

/// `struct vmcb_seg`: selector, attrib, limit, base.
fn seg(page: &mut [u8; VMSA_SIZE], at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    put(page, at, &selector.to_le_bytes());
    put(page, at + 2, &attrib.to_le_bytes());
    put(page, at + 4, &limit.to_le_bytes());
    put(page, at + 8, &base.to_le_bytes());
}

/// The VMSA of vCPU `index` (0 = BSP). `vcpu_sig` is CPUID leaf 1 EAX (family, model,
/// stepping), which the reset state holds in RDX.
pub fn build(mode: TeeMode, index: u8, vcpu_sig: u32) -> Box<[u8; VMSA_SIZE]> {
    let eip: u64 = if index == 0 {
        krun_resetvec::layout::RESET_CS_BASE + krun_resetvec::BSP_ENTRY_IP
    } else {
        krun_resetvec::layout::RESET_CS_BASE + krun_resetvec::AP_ENTRY_IP
    };
    let mut p = Box::new([0u8; VMSA_SIZE]);
    seg(&mut p, off::ES, 0, 0x93, 0xffff, 0);
    seg(&mut p, off::CS, 0xf000, 0x9b, 0xffff, eip & 0xffff_0000);
    seg(&mut p, off::SS, 0, 0x93, 0xffff, 0);
    seg(&mut p, off::DS, 0, 0x93, 0xffff, 0);
    seg(&mut p, off::FS, 0, 0x93, 0xffff, 0);
    seg(&mut p, off::GS, 0, 0x93, 0xffff, 0);
    seg(&mut p, off::GDTR, 0, 0, 0xffff, 0);
    seg(&mut p, off::LDTR, 0, 0x82, 0xffff, 0);
    seg(&mut p, off::IDTR, 0, 0, 0xffff, 0);
    seg(&mut p, off::TR, 0, 0x8b, 0xffff, 0);
    // EFER.SVME, CR4.MCE and CR0.ET are what KVM sets at reset for an SVM guest.
    put(&mut p, off::EFER, &0x1000u64.to_le_bytes());
    put(&mut p, off::CR4, &0x40u64.to_le_bytes());
    put(&mut p, off::CR0, &0x10u64.to_le_bytes());
    put(&mut p, off::DR7, &0x400u64.to_le_bytes());
    put(&mut p, off::DR6, &0xffff_0ff0u64.to_le_bytes());
    put(&mut p, off::RFLAGS, &0x2u64.to_le_bytes());
    put(&mut p, off::RIP, &(eip & 0xffff).to_le_bytes());
    put(&mut p, off::G_PAT, &0x0007_0406_0007_0406u64.to_le_bytes());
    put(&mut p, off::RDX, &u64::from(vcpu_sig).to_le_bytes());
    let features = match mode {
        TeeMode::Snp => SEV_FEATURE_SNP_ACTIVE,
        TeeMode::Sev | TeeMode::SevEs => 0,
    };
    put(&mut p, off::SEV_FEATURES, &features.to_le_bytes());
    put(&mut p, off::XCR0, &1u64.to_le_bytes());
    put(&mut p, off::MXCSR, &0x1f80u32.to_le_bytes());
    put(&mut p, off::X87_FCW, &0x37fu16.to_le_bytes());
    p
}

/// CPUID leaf 1 EAX of the host CPU, which KVM passes to the guest and puts in RDX at reset.
pub fn host_vcpu_sig() -> u32 {
    // `__cpuid` has no preconditions on x86_64 (CPUID always exists in long mode).
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86_64 CPU and only reads identification registers.
    let leaf = unsafe { std::arch::x86_64::__cpuid(1) };
    leaf.eax
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsp_and_ap_entries() {
        let bsp = build(TeeMode::SevEs, 0, 0x00a00f11);
        let ap = build(TeeMode::SevEs, 1, 0x00a00f11);
        assert_eq!(&bsp[off::RIP..off::RIP + 8], &0xfff0u64.to_le_bytes());
        assert_eq!(&ap[off::RIP..off::RIP + 8], &0xfff8u64.to_le_bytes());
        assert_eq!(
            &bsp[off::CS + 8..off::CS + 16],
            &0xffff_0000u64.to_le_bytes()
        );
        assert_eq!(&bsp[off::RDX..off::RDX + 4], &0x00a00f11u32.to_le_bytes());
        assert_eq!(bsp[off::SEV_FEATURES], 0);
        assert_eq!(build(TeeMode::Snp, 0, 0)[off::SEV_FEATURES], 1);
    }

    /// Byte-for-byte against sev-snp-measure's VMSA builder (`KRUN_SEV_PYTHON`, as for the
    /// psp-model oracle tests); ignored where that is not configured, required by `make test`.
    #[test]
    #[cfg_attr(
        not(krun_oracles),
        ignore = "needs the Python oracles (KRUN_SEV_PYTHON): make test runs it"
    )]
    fn equals_sev_snp_measure() {
        let python = std::env::var_os("KRUN_SEV_PYTHON")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                panic!("KRUN_SEV_PYTHON is not set (make test-deps makes the venv)")
            });
        let script = r#"
import sys
from sevsnpmeasure.vmsa import VMSA
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vmm_types import VMMType
mode = {"es": SevMode.SEV_ES, "snp": SevMode.SEV_SNP}[sys.argv[1]]
feat = 0x1 if mode == SevMode.SEV_SNP else 0
v = VMSA(mode, 0xfffffff8, 0x00a00f11, feat, VMMType.QEMU)
pages = list(v.pages(2))
sys.stdout.write(pages[0].hex() + "\n" + pages[1].hex() + "\n")
"#;
        for (arg, mode) in [("es", TeeMode::SevEs), ("snp", TeeMode::Snp)] {
            let out = std::process::Command::new(&python)
                .args(["-c", script, arg])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let ours = build(mode, u8::try_from(i).unwrap(), 0x00a00f11);
                let hex: String = ours.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(&hex, line, "{arg} vCPU {i}");
            }
        }
    }
}
