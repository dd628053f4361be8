//! Checksums: CRC64NVME on every part sent (S3 verifies and rejects a mismatch with
//! `BadDigest`), a full-object CRC64NVME combined from the parts at completion, and
//! verification of downloads against the checksum S3 stored for the object.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crc_fast::CrcAlgorithm;

/// CRC64NVME of `data` as S3 wants it in `x-amz-checksum-crc64nvme`.
pub fn crc64nvme_b64(data: &[u8]) -> (u64, String) {
    let crc = crc_fast::checksum(CrcAlgorithm::Crc64Nvme, data);
    (crc, STANDARD.encode(crc.to_be_bytes()))
}

/// Base64 of a CRC64 value.
pub fn b64_u64(v: u64) -> String {
    STANDARD.encode(v.to_be_bytes())
}

/// Folds per-part CRC64NVMEs (in part order) into the whole object's CRC64NVME.
#[derive(Debug, Default, Clone)]
pub struct CombinedCrc64 {
    crc: Option<u64>,
}

impl CombinedCrc64 {
    /// Appends a part with checksum `crc` and length `len`.
    pub fn push(&mut self, crc: u64, len: u64) {
        self.crc = Some(match self.crc {
            None => crc,
            Some(acc) => crc_fast::checksum_combine(CrcAlgorithm::Crc64Nvme, acc, crc, len),
        });
    }

    /// The whole object's checksum (that of empty data if no part was pushed).
    pub fn value(&self) -> u64 {
        self.crc.unwrap_or_else(|| crc_fast::checksum(CrcAlgorithm::Crc64Nvme, b""))
    }
}

/// A full-object checksum S3 reported for an object, that a download can be checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChecksum {
    algorithm: Algorithm,
    /// Base64 as in the response header.
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Crc64Nvme,
    Crc32c,
    Crc32,
}

impl StoredChecksum {
    /// Picks the strongest full-object checksum among those S3 returned. Composite
    /// checksums of multipart uploads (`value-N`) cover parts, not the object, and cannot be
    /// checked against a ranged download: they are ignored.
    pub fn pick(crc64nvme: Option<&str>, crc32c: Option<&str>, crc32: Option<&str>) -> Option<Self> {
        let full = |v: Option<&str>| v.filter(|s| !s.contains('-')).map(str::to_owned);
        if let Some(value) = full(crc64nvme) {
            return Some(Self { algorithm: Algorithm::Crc64Nvme, value });
        }
        if let Some(value) = full(crc32c) {
            return Some(Self { algorithm: Algorithm::Crc32c, value });
        }
        full(crc32).map(|value| Self { algorithm: Algorithm::Crc32, value })
    }

    /// Name of the algorithm, as in S3's API.
    pub fn algorithm_name(&self) -> &'static str {
        match self.algorithm {
            Algorithm::Crc64Nvme => "CRC64NVME",
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Crc32 => "CRC32",
        }
    }

    /// A hasher for the same algorithm.
    pub fn hasher(&self) -> StreamHasher {
        let alg = match self.algorithm {
            Algorithm::Crc64Nvme => CrcAlgorithm::Crc64Nvme,
            Algorithm::Crc32c => CrcAlgorithm::Crc32Iscsi,
            Algorithm::Crc32 => CrcAlgorithm::Crc32IsoHdlc,
        };
        StreamHasher { digest: crc_fast::Digest::new(alg), algorithm: self.algorithm }
    }
}

/// Running checksum over data seen in order.
pub struct StreamHasher {
    digest: crc_fast::Digest,
    algorithm: Algorithm,
}

impl StreamHasher {
    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    /// Base64 of the result, in the width of the algorithm.
    pub fn finish_b64(&self) -> String {
        let v = self.digest.finalize();
        match self.algorithm {
            Algorithm::Crc64Nvme => STANDARD.encode(v.to_be_bytes()),
            Algorithm::Crc32c | Algorithm::Crc32 => STANDARD.encode((v as u32).to_be_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_part_crcs_equal_the_crc_of_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut combined = CombinedCrc64::default();
        for chunk in data.chunks(30_001) {
            combined.push(crc64nvme_b64(chunk).0, chunk.len() as u64);
        }
        assert_eq!(combined.value(), crc64nvme_b64(&data).0);
    }

    #[test]
    fn composite_checksums_are_not_used_for_verification() {
        assert_eq!(StoredChecksum::pick(None, Some("abc=-3"), None), None);
        let s = StoredChecksum::pick(None, Some("abc="), Some("x")).unwrap();
        assert_eq!(s.algorithm_name(), "CRC32C");
    }

    #[test]
    fn stream_hasher_matches_s3_encoding() {
        let (_, b64) = crc64nvme_b64(b"hello world");
        let s = StoredChecksum::pick(Some(&b64), None, None).unwrap();
        let mut h = s.hasher();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish_b64(), b64);
    }
}
