//! LUKS1/LUKS2 in pure Rust (issue 5): header parsing with strict checks, keyslot unlock,
//! dm-crypt table values, sector crypto, and formatting/encryption of new images (mkcw).
//!
//! Guest side: [`Header::read`], [`Header::unlock`], [`Header::dm_crypt_target`].
//! Host side: [`format::format_luks1`], [`format::format_luks2`], [`format::write_encrypted`].

pub mod af;
pub mod cipher;
pub mod format;
pub mod hash;
pub mod header;
pub mod kdf;
pub mod key;
pub mod payload;
pub mod unlock;

pub use cipher::{CipherMode, CipherSpec};
pub use hash::HashAlg;
pub use header::{Header, HeaderError, LuksVersion};
pub use kdf::{Argon2Variant, Kdf, KdfLimits};
pub use key::MasterKey;
pub use payload::{DmCryptTarget, Payload, PayloadCipher};
pub use unlock::UnlockError;
