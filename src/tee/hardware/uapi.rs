//! The Linux KVM SEV UAPI values the hardware backend uses, named once.
//!
//! Structures come from kvm-bindings 0.14.2; the tests below check every structure passed
//! to the kernel (size and field offsets) and every command id against both kvm-bindings
//! and the values of Linux 6.12 `include/uapi/linux/kvm.h`,
//! `arch/x86/include/uapi/asm/kvm.h` and `include/uapi/linux/kvm_para.h`, written out as
//! literals so a binding regeneration that drifts from the kernel fails here.

pub use kvm_bindings::{
    kvm_create_guest_memfd, kvm_enc_region, kvm_memory_attributes, kvm_sev_cmd, kvm_sev_init,
    kvm_sev_launch_measure, kvm_sev_launch_secret, kvm_sev_launch_start,
    kvm_sev_launch_update_data, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start,
    kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
};

/// `enum sev_cmd_id` values used by the launch.
pub mod cmd {
    /// `KVM_SEV_LAUNCH_START`.
    pub const LAUNCH_START: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_START;
    /// `KVM_SEV_LAUNCH_UPDATE_DATA`.
    pub const LAUNCH_UPDATE_DATA: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_UPDATE_DATA;
    /// `KVM_SEV_LAUNCH_UPDATE_VMSA`.
    pub const LAUNCH_UPDATE_VMSA: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_UPDATE_VMSA;
    /// `KVM_SEV_LAUNCH_SECRET`.
    pub const LAUNCH_SECRET: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_SECRET;
    /// `KVM_SEV_LAUNCH_MEASURE`.
    pub const LAUNCH_MEASURE: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_MEASURE;
    /// `KVM_SEV_LAUNCH_FINISH`.
    pub const LAUNCH_FINISH: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_LAUNCH_FINISH;
    /// `KVM_SEV_INIT2`.
    pub const INIT2: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_INIT2;
    /// `KVM_SEV_SNP_LAUNCH_START`.
    pub const SNP_LAUNCH_START: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_START;
    /// `KVM_SEV_SNP_LAUNCH_UPDATE`.
    pub const SNP_LAUNCH_UPDATE: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE;
    /// `KVM_SEV_SNP_LAUNCH_FINISH`.
    pub const SNP_LAUNCH_FINISH: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH;
}

/// `KVM_CAP_VM_TYPES`: `KVM_CHECK_EXTENSION` returns a bit mask of supported VM types.
pub const CAP_VM_TYPES: u32 = kvm_bindings::KVM_CAP_VM_TYPES;
/// `KVM_CAP_GUEST_MEMFD`.
pub const CAP_GUEST_MEMFD: u32 = kvm_bindings::KVM_CAP_GUEST_MEMFD;
/// `KVM_CAP_MEMORY_ATTRIBUTES`: returns the supported attribute mask.
pub const CAP_MEMORY_ATTRIBUTES: u32 = kvm_bindings::KVM_CAP_MEMORY_ATTRIBUTES;
/// `KVM_CAP_EXIT_HYPERCALL`: returns the mask of hypercalls that may exit to userspace.
pub const CAP_EXIT_HYPERCALL: u32 = kvm_bindings::KVM_CAP_EXIT_HYPERCALL;
/// `KVM_MEM_GUEST_MEMFD` slot flag.
pub const MEM_GUEST_MEMFD: u32 = kvm_bindings::KVM_MEM_GUEST_MEMFD;
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
pub const MEMORY_ATTRIBUTE_PRIVATE: u64 = kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE as u64;
/// `KVM_MEMORY_EXIT_FLAG_PRIVATE` in a `KVM_EXIT_MEMORY_FAULT`.
pub const MEMORY_EXIT_FLAG_PRIVATE: u64 = kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE as u64;
/// `KVM_HC_MAP_GPA_RANGE` (`include/uapi/linux/kvm_para.h`; not in kvm-bindings).
pub const HC_MAP_GPA_RANGE: u64 = 12;
/// `KVM_MAP_GPA_RANGE_ENCRYPTED` in the hypercall's attribute argument.
pub const MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// `KVM_MAP_GPA_RANGE_PAGE_SZ_2M` / `_1G`: page-size hint bits.
pub const MAP_GPA_RANGE_PAGE_SZ_MASK: u64 = 0b11;
/// Every attribute bit a guest may set in `KVM_HC_MAP_GPA_RANGE`.
pub const MAP_GPA_RANGE_VALID: u64 = MAP_GPA_RANGE_ENCRYPTED | MAP_GPA_RANGE_PAGE_SZ_MASK;
/// `KVM_SEV_SNP_ID_BLOCK_SIZE` / `KVM_SEV_SNP_ID_AUTH_SIZE`.
pub const SNP_ID_BLOCK_SIZE: usize = 96;
/// See [`SNP_ID_BLOCK_SIZE`].
pub const SNP_ID_AUTH_SIZE: usize = 4096;
/// GHCB protocol version KVM_SEV_INIT2 asks for under SEV-ES and SNP (2: what KVM
/// defaults to and what SNP requires).
pub const GHCB_VERSION: u16 = 2;

// ABI sizes checked at compile time as well (STYLE.md §8.11).
const _: () = assert!(std::mem::size_of::<kvm_sev_cmd>() == 24);
const _: () = assert!(std::mem::size_of::<kvm_sev_init>() == 48);
const _: () = assert!(std::mem::size_of::<kvm_sev_launch_start>() == 40);
const _: () = assert!(std::mem::size_of::<kvm_sev_launch_update_data>() == 16);
const _: () = assert!(std::mem::size_of::<kvm_sev_launch_secret>() == 48);
const _: () = assert!(std::mem::size_of::<kvm_sev_launch_measure>() == 16);
const _: () = assert!(std::mem::size_of::<kvm_sev_snp_launch_start>() == 64);
const _: () = assert!(std::mem::size_of::<kvm_sev_snp_launch_update>() == 64);
const _: () = assert!(std::mem::size_of::<kvm_sev_snp_launch_finish>() == 88);
const _: () = assert!(std::mem::size_of::<kvm_memory_attributes>() == 32);
const _: () = assert!(std::mem::size_of::<kvm_create_guest_memfd>() == 64);
const _: () = assert!(std::mem::size_of::<kvm_userspace_memory_region2>() == 160);
const _: () = assert!(std::mem::size_of::<kvm_enc_region>() == 16);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// (field, offset) lists transcribed from the Linux 6.12.117 UAPI headers.
    macro_rules! layout {
        ($t:ty, $size:expr, [$($f:ident = $o:expr),* $(,)?]) => {{
            assert_eq!(size_of::<$t>(), $size, "size of {}", stringify!($t));
            $(assert_eq!(offset_of!($t, $f), $o, "{}.{}", stringify!($t), stringify!($f));)*
        }};
    }

    #[test]
    fn structs_match_linux_6_12_uapi() {
        layout!(
            kvm_sev_cmd,
            24,
            [id = 0, pad0 = 4, data = 8, error = 16, sev_fd = 20]
        );
        layout!(
            kvm_sev_init,
            48,
            [
                vmsa_features = 0,
                flags = 8,
                ghcb_version = 12,
                pad1 = 14,
                pad2 = 16
            ]
        );
        layout!(
            kvm_sev_launch_start,
            40,
            [
                handle = 0,
                policy = 4,
                dh_uaddr = 8,
                dh_len = 16,
                pad0 = 20,
                session_uaddr = 24,
                session_len = 32,
                pad1 = 36
            ]
        );
        layout!(
            kvm_sev_launch_update_data,
            16,
            [uaddr = 0, len = 8, pad0 = 12]
        );
        layout!(
            kvm_sev_launch_secret,
            48,
            [
                hdr_uaddr = 0,
                hdr_len = 8,
                pad0 = 12,
                guest_uaddr = 16,
                guest_len = 24,
                pad1 = 28,
                trans_uaddr = 32,
                trans_len = 40,
                pad2 = 44
            ]
        );
        layout!(kvm_sev_launch_measure, 16, [uaddr = 0, len = 8, pad0 = 12]);
        layout!(
            kvm_sev_snp_launch_start,
            64,
            [policy = 0, gosvw = 8, flags = 24, pad0 = 26, pad1 = 32]
        );
        layout!(
            kvm_sev_snp_launch_update,
            64,
            [
                gfn_start = 0,
                uaddr = 8,
                len = 16,
                type_ = 24,
                pad0 = 25,
                flags = 26,
                pad1 = 28,
                pad2 = 32
            ]
        );
        layout!(
            kvm_sev_snp_launch_finish,
            88,
            [
                id_block_uaddr = 0,
                id_auth_uaddr = 8,
                id_block_en = 16,
                auth_key_en = 17,
                vcek_disabled = 18,
                host_data = 19,
                pad0 = 51,
                flags = 54,
                pad1 = 56
            ]
        );
        layout!(
            kvm_memory_attributes,
            32,
            [address = 0, size = 8, attributes = 16, flags = 24]
        );
        layout!(
            kvm_create_guest_memfd,
            64,
            [size = 0, flags = 8, reserved = 16]
        );
        layout!(
            kvm_userspace_memory_region2,
            160,
            [
                slot = 0,
                flags = 4,
                guest_phys_addr = 8,
                memory_size = 16,
                userspace_addr = 24,
                guest_memfd_offset = 32,
                guest_memfd = 40,
                pad1 = 44,
                pad2 = 48
            ]
        );
        layout!(kvm_enc_region, 16, [addr = 0, size = 8]);
    }

    /// The ioctl request numbers kvm-ioctls issues for us encode the structure size; these
    /// are the values of the 6.12 header macros (`_IOWR(KVMIO, 0xba, unsigned long)` etc.),
    /// recomputed from our structures' sizes.
    #[test]
    fn ioctl_numbers_match_linux_6_12_uapi() {
        const KVMIO: u32 = 0xae;
        let ioc = |dir: u32, nr: u32, size: usize| {
            (dir << 30) | (u32::try_from(size).unwrap() << 16) | (KVMIO << 8) | nr
        };
        let (w, r, wr) = (1, 2, 3);
        assert_eq!(ioc(wr, 0xba, size_of::<libc::c_ulong>()), 0xc008_aeba); // MEMORY_ENCRYPT_OP
        assert_eq!(ioc(r, 0xbb, size_of::<kvm_enc_region>()), 0x8010_aebb); // REG_REGION
        assert_eq!(
            ioc(w, 0xd2, size_of::<kvm_memory_attributes>()),
            0x4020_aed2
        );
        assert_eq!(
            ioc(wr, 0xd4, size_of::<kvm_create_guest_memfd>()),
            0xc040_aed4
        );
        assert_eq!(
            ioc(w, 0x49, size_of::<kvm_userspace_memory_region2>()),
            0x40a0_ae49
        );
    }

    #[test]
    fn command_ids_and_constants_match_linux_6_12_uapi() {
        // enum sev_cmd_id
        let ids = [
            (cmd::LAUNCH_START, 2),
            (cmd::LAUNCH_UPDATE_DATA, 3),
            (cmd::LAUNCH_UPDATE_VMSA, 4),
            (cmd::LAUNCH_SECRET, 5),
            (cmd::LAUNCH_MEASURE, 6),
            (cmd::LAUNCH_FINISH, 7),
            (cmd::INIT2, 22),
            (cmd::SNP_LAUNCH_START, 100),
            (cmd::SNP_LAUNCH_UPDATE, 101),
            (cmd::SNP_LAUNCH_FINISH, 102),
        ];
        for (ours, linux) in ids {
            assert_eq!(ours, linux);
        }
        // KVM_SEV_SNP_PAGE_TYPE_* against kvm-bindings and the header.
        use crate::tee::backend::SnpPageType as T;
        for (ty, bindings, linux) in [
            (T::Normal, kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_NORMAL, 1),
            (T::Zero, kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_ZERO, 3),
            (
                T::Unmeasured,
                kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_UNMEASURED,
                4,
            ),
            (T::Secrets, kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_SECRETS, 5),
            (T::Cpuid, kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_CPUID, 6),
        ] {
            assert_eq!(u32::from(ty as u8), bindings);
            assert_eq!(ty as u8, linux);
        }
        // VM types (KVM_X86_*_VM).
        use crate::tee::backend::vm_type;
        assert_eq!(vm_type::SEV, u64::from(kvm_bindings::KVM_X86_SEV_VM));
        assert_eq!(vm_type::SEV_ES, u64::from(kvm_bindings::KVM_X86_SEV_ES_VM));
        assert_eq!(vm_type::SNP, u64::from(kvm_bindings::KVM_X86_SNP_VM));
        assert_eq!((vm_type::SEV, vm_type::SEV_ES, vm_type::SNP), (2, 3, 4));
        // Capabilities, flags and attributes.
        assert_eq!(CAP_EXIT_HYPERCALL, 201);
        assert_eq!(CAP_MEMORY_ATTRIBUTES, 233);
        assert_eq!(CAP_GUEST_MEMFD, 234);
        assert_eq!(CAP_VM_TYPES, 235);
        assert_eq!(MEM_GUEST_MEMFD, 1 << 2);
        assert_eq!(MEMORY_ATTRIBUTE_PRIVATE, 1 << 3);
        assert_eq!(MEMORY_EXIT_FLAG_PRIVATE, 1 << 3);
        assert_eq!(HC_MAP_GPA_RANGE, 12);
        assert_eq!(MAP_GPA_RANGE_ENCRYPTED, 0x10);
        assert_eq!(kvm_bindings::KVM_EXIT_HYPERCALL, 3);
        assert_eq!(kvm_bindings::KVM_EXIT_MEMORY_FAULT, 39);
        assert_eq!(
            (SNP_ID_BLOCK_SIZE, SNP_ID_AUTH_SIZE),
            (
                kvm_bindings::KVM_SEV_SNP_ID_BLOCK_SIZE as usize,
                kvm_bindings::KVM_SEV_SNP_ID_AUTH_SIZE as usize
            )
        );
    }
}
