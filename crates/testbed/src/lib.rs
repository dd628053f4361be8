//! CargoShip's testbed: everything needed to exercise the client without AWS.
//!
//! - [`store`]: an S3 backend on a local directory (s3s-fs) with the pieces of S3 that
//!   s3s-fs lacks and CargoShip relies on (full-object CRC64NVME checksums on multipart
//!   uploads, `ListMultipartUploads`).
//! - [`server`]: that backend served over HTTP with SigV4 auth, either in-process on an
//!   ephemeral port (integration tests, the CLI's embedded default) or as `cargoship serve`.
//!
//! - [`data`]: deterministic incompressible bytes for tests.
//! - [`emulator`]: an HTTP proxy that imposes a WAN scenario (delay, bandwidth, 503s,
//!   resets, stalls) between any client and any S3 endpoint.
//!
//! The `s3opt` library never depends on this crate; only its tests and the CLI do.

pub mod data;
pub mod emulator;
pub mod server;
pub mod store;

pub use emulator::{Emulator, Scenario};
pub use server::{EmbeddedServer, ServerConfig};
