//! Errors of the client, typed by meaning so callers (and the CLI's exit codes) can match
//! on what went wrong rather than on strings.

use std::path::PathBuf;

use crate::network::loss::Outcome;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything an [`OptimizedS3Client`](crate::OptimizedS3Client) call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bucket does not exist.
    #[error("bucket '{bucket}' does not exist")]
    NoSuchBucket { bucket: String },
    /// The object does not exist.
    #[error("object s3://{bucket}/{key} does not exist")]
    NoSuchKey { bucket: String, key: String },
    /// Credentials were rejected (unknown key, bad signature) or access is denied.
    #[error("access denied by {endpoint}: {detail} (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile)")]
    AccessDenied { endpoint: String, detail: String },
    /// The endpoint could not be reached at all.
    #[error("cannot reach S3 endpoint {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// A byte range outside the object was asked for.
    #[error("range starting at byte {offset} is past the end of s3://{bucket}/{key} ({size} bytes)")]
    InvalidRange { bucket: String, key: String, offset: u64, size: u64 },
    /// Data did not match its checksum: corruption in flight or at rest.
    #[error("integrity check failed for s3://{bucket}/{key}: {detail}")]
    Integrity { bucket: String, key: String, detail: String },
    /// The object was replaced while it was being downloaded (a ranged GET pinned to the
    /// first version's ETag was refused): its ranges would belong to two versions.
    #[error("s3://{bucket}/{key} changed while it was being downloaded ({detail}); download it again")]
    Changed { bucket: String, key: String, detail: String },
    /// The object cannot be stored within S3's part limits and the memory budget.
    #[error("object too large: {0}")]
    TooLarge(String),
    /// A request kept failing with a retryable error until the attempts ran out.
    #[error("{op} failed after {attempts} attempts ({outcome:?}): {detail}")]
    RetriesExhausted { op: &'static str, attempts: u32, outcome: Outcome, detail: String },
    /// S3 answered with an error this client does not retry.
    #[error("{op} failed: {code} (HTTP {status}): {message}")]
    Service { op: &'static str, status: u16, code: String, message: String },
    /// Local I/O (reading the source, writing the destination).
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to a caller's stream failed.
    #[error("{context}: {source}")]
    Stream {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Invalid configuration or arguments.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A resumed upload's source no longer produces the bytes of the parts already sent.
    #[error("cannot resume s3://{bucket}/{key}: {detail}")]
    ResumeMismatch { bucket: String, key: String, detail: String },
    /// The transfer was cancelled.
    #[error("transfer cancelled")]
    Cancelled,
}

impl Error {
    /// Attaches the bucket/key to errors that came back without them.
    pub(crate) fn with_object(self, bucket: &str, key: &str) -> Self {
        match self {
            Error::NoSuchKey { .. } => Error::NoSuchKey { bucket: bucket.into(), key: key.into() },
            Error::NoSuchBucket { .. } => Error::NoSuchBucket { bucket: bucket.into() },
            Error::Integrity { detail, .. } => Error::Integrity { bucket: bucket.into(), key: key.into(), detail },
            other => other,
        }
    }

    /// [`Error::with_object`] for a download, whose ranged GETs are pinned with `If-Match`
    /// to one version: S3's 412 means the object was replaced meanwhile.
    pub(crate) fn with_downloaded_object(self, bucket: &str, key: &str) -> Self {
        match self {
            Error::Service { status: 412, message, .. } => {
                Error::Changed { bucket: bucket.into(), key: key.into(), detail: message }
            }
            other => other.with_object(bucket, key),
        }
    }
}
