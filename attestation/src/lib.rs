//! Key-broker protocols, client and shared helpers for libkrun-sev (issue 7).
//!
//! Two protocols are spoken:
//! - [`reference`]: virtee/reference-kbs (kbs-types 0.2.0 wire format), used by `buildah mkcw`
//!   images and libkrun-sev 1.x (`/kbs/v0/auth`, `/attest`, `/key/<workload_id>`);
//! - [`rcar`]: Trustee's RCAR, protocol version 0.4.0 (`/kbs/v0/resource/<repo>/<type>/<tag>`,
//!   JWE answers).
//!
//! The client side ([`client`]) has no async runtime and no OpenSSL: the guest init links it
//! statically and drives it over any `Read + Write` stream (vsock proxied by the VMM). The
//! broker itself is the `krun-kbs` crate.

pub mod client;
pub mod http;
pub mod keys;
pub mod rcar;
pub mod reference;
pub mod secret_table;
#[cfg(feature = "tls")]
pub mod tls_pin;
pub mod transport;

pub use client::{ClientConfig, ClientError, KbsProtocol, Step};
