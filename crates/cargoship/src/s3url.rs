//! `s3://bucket/key` URLs, as the AWS CLI writes them.

use std::fmt;

/// A parsed `s3://bucket/key` (key may be empty or a prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

/// A malformed URL, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("malformed S3 URL '{url}': {reason} (expected s3://bucket/key)")]
pub struct BadUrl {
    pub url: String,
    pub reason: &'static str,
}

impl S3Url {
    /// Parses `s3://bucket[/key]`.
    pub fn parse(url: &str) -> Result<Self, BadUrl> {
        let bad = |reason| BadUrl { url: url.to_owned(), reason };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("must start with s3://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("bucket name is missing"));
        }
        let valid = bucket.len() >= 3
            && bucket.len() <= 63
            && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid {
            return Err(bad("bucket names are 3-63 lowercase letters, digits, '-' or '.'"));
        }
        Ok(Self { bucket: bucket.to_owned(), key: key.to_owned() })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_key() {
        let u = S3Url::parse("s3://my-bucket/a/b.txt").unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("my-bucket", "a/b.txt"));
        assert_eq!(S3Url::parse("s3://my-bucket").unwrap().key, "");
    }

    #[test]
    fn rejects_malformed_urls_with_a_reason() {
        for bad in ["my-bucket/key", "s3://", "s3:///key", "s3://Bad_Bucket/k", "http://b/k"] {
            let e = S3Url::parse(bad).unwrap_err().to_string();
            assert!(e.contains("malformed S3 URL"), "{bad}: {e}");
        }
    }
}
