//! Exit codes and the one-line error message, by meaning of the error.

use std::path::{Path, PathBuf};

use s3opt::Error as S3;

/// A local file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}: {source}")]
pub struct LocalFileError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl LocalFileError {
    pub fn read(path: &Path, source: std::io::Error) -> Self {
        Self { action: "read", path: path.to_owned(), source }
    }

    pub fn write(path: &Path, source: std::io::Error) -> Self {
        Self { action: "write", path: path.to_owned(), source }
    }
}

/// Exit code for an error (see `cargoship --help`).
pub fn code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<crate::s3url::BadUrl>().is_some() {
        return 2;
    }
    if err.downcast_ref::<LocalFileError>().is_some() {
        return 6;
    }
    if let Some(e) = err.downcast_ref::<crate::get_many::GetManyError>() {
        use crate::get_many::GetManyError as G;
        return match e {
            G::Usage(_) => 2,
            G::Empty(_) => 3,
            G::BadKey { .. } => 1,
        };
    }
    if let Some(a) = err.downcast_ref::<cargoship::archive::ArchiveError>() {
        use cargoship::archive::ArchiveError as A;
        return match a {
            A::S3(e) => s3_code(e),
            A::Source { .. } | A::Changed { .. } | A::Write { .. } | A::WouldOverwrite(_) | A::Journal { .. } => 6,
            A::Inventory(_) | A::HashMismatch { .. } => 7,
            A::Exists(_) | A::Usage(_) => 2,
            A::NotAnArchive(_) => 3,
            A::Pack(_) => 1,
        };
    }
    err.downcast_ref::<S3>().map_or(1, s3_code)
}

fn s3_code(err: &S3) -> i32 {
    match Some(err) {
        Some(S3::NoSuchBucket { .. } | S3::NoSuchKey { .. }) => 3,
        Some(S3::AccessDenied { .. }) => 4,
        Some(S3::Unreachable { .. }) => 5,
        Some(S3::Io { .. }) => 6,
        Some(S3::Integrity { .. }) => 7,
        Some(S3::Config(_) | S3::InvalidRange { .. }) => 2,
        _ => 1,
    }
}

/// The error as one line: the outermost message plus its causes.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}
