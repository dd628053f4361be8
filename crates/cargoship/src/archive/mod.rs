//! CargoShip archives: a directory shipped as size-capped, compressed, seekable
//! "suitcases" plus an inventory, restorable whole or file by file with ranged reads.
//!
//! Layout under `s3://bucket/prefix/`: `suitcases/s-RUN-NNNNNN.tar.zst` (tar streams
//! compressed in independent frames; RUN, an id per run, keeps runs off each other's
//! keys) and `cargoship-inventory.json.zst` (every entry, where its bytes are, its BLAKE3;
//! completed last, it is the archive's commit point).
//!
//! Pieces: [`walk`] finds the entries, [`plan`] groups them into suitcases, [`pack`] writes
//! the framed tar, [`codec`] compresses frames, [`journal`] makes shipping resumable,
//! [`ship`] runs it all (`commit` sends the inventory ahead and completes it last),
//! [`reader`] reads files back by frame, [`restore`], [`verify`], [`survey`] and
//! [`listing`] are the other commands.

pub mod codec;
mod commit;
pub mod extract;
pub mod inventory;
pub mod journal;
pub mod listing;
pub mod pack;
pub mod plan;
pub mod reader;
pub mod restore;
pub mod ship;
pub mod survey;
pub mod verify;
pub mod walk;

use std::path::PathBuf;

pub use inventory::{INVENTORY_NAME, Inventory};
pub use reader::ArchiveReader;

/// Errors of archive operations.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The source tree (or a file in it) cannot be read.
    #[error("cannot read {path}: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file changed, vanished or could not be read, with `--strict`.
    #[error("{path} {reason} (--strict stops on this; without it the file is skipped and listed)")]
    Changed { path: PathBuf, reason: String },
    /// Writing the tar stream failed.
    #[error("packing failed: {0}")]
    Pack(String),
    /// The inventory is missing pieces, malformed, edited or unsafe.
    #[error("invalid inventory: {0}")]
    Inventory(String),
    /// There already is an archive at the destination.
    #[error("an archive of a different tree already exists at {0} (choose another prefix, or restore/verify it)")]
    Exists(String),
    /// No archive at the given place.
    #[error("no archive at {0} (no {name} there)", name = INVENTORY_NAME)]
    NotAnArchive(String),
    /// A restored file's content does not match the inventory's hash.
    #[error("{path}: content does not match the inventory's hash")]
    HashMismatch { path: String },
    /// Restoring would overwrite a file.
    #[error("{0} exists (use --overwrite to replace existing files)")]
    WouldOverwrite(PathBuf),
    /// Writing the restored tree failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The local resume journal cannot be used.
    #[error("resume journal {path}: {detail}")]
    Journal { path: PathBuf, detail: String },
    /// Arguments that do not make sense together or do not match anything.
    #[error("{0}")]
    Usage(String),
    /// S3.
    #[error(transparent)]
    S3(#[from] s3opt::Error),
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// `prefix` joined with `name` as an object key (`prefix` may be empty or end in `/`).
pub fn join_key(prefix: &str, name: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() { name.to_owned() } else { format!("{p}/{name}") }
}
