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

/// CRC64NVME of `len` bytes of the file at `path` from `offset`, as
/// [`crc64nvme_b64`] gives it, read in 256 KiB pieces (blocking: call it off the async
/// threads). A file that ends sooner is an `UnexpectedEof` error.
pub fn crc64nvme_of_file_range(path: &std::path::Path, offset: u64, len: u64) -> std::io::Result<(u64, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut range = file.take(len);
    let mut digest = crc_fast::Digest::new(CrcAlgorithm::Crc64Nvme);
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0;
    loop {
        let n = range.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        read += n as u64;
    }
    if read < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} ended at byte {}, before byte {}", path.display(), offset + read, offset + len),
        ));
    }
    let crc = digest.finalize();
    Ok((crc, STANDARD.encode(crc.to_be_bytes())))
}

/// Folds the checksums of consecutive pieces (in order) into the checksum of their
/// concatenation: the whole object's from its parts or ranges.
///
/// All three of S3's CRCs are reflected with init = xorout = all ones, so
/// `crc(A ++ B) = crc(A) * x^(8 |B|) mod P  xor  crc(B)` (zlib's `crc32_combine_op`,
/// generalised to 64 bits), with `x^(2^k) mod P` tabulated once. That is a few dozen
/// shift-and-xor products per piece; `crc_fast`'s combine rebuilds its zero operator by
/// squaring 64x64 matrices on every call (~0.25 ms, 8% of a loopback download's CPU).
#[derive(Debug, Clone)]
pub struct CombinedCrc {
    algorithm: Algorithm,
    crc: Option<u64>,
}

impl CombinedCrc {
    /// Over no data yet.
    pub fn new(algorithm: Algorithm) -> Self {
        Self { algorithm, crc: None }
    }

    /// Appends a piece with checksum `crc` and length `len`.
    pub fn push(&mut self, crc: u64, len: u64) {
        self.crc = Some(match self.crc {
            None => crc,
            Some(acc) => self.algorithm.mul_mod(self.algorithm.x_pow_8n(len), acc) ^ crc,
        });
    }

    /// Appends the data a hasher has seen.
    pub fn append(&mut self, piece: &StreamHasher) {
        self.push(piece.digest.finalize(), piece.digest.get_amount());
    }

    /// The checksum of everything appended (that of empty data if nothing was).
    pub fn value(&self) -> u64 {
        self.crc.unwrap_or_else(|| crc_fast::checksum(self.algorithm.crc_fast(), b""))
    }

    /// Base64, in the width of the algorithm, as in S3's headers.
    pub fn b64(&self) -> String {
        self.algorithm.b64(self.value())
    }
}

/// A full-object checksum S3 reported for an object, that a download can be checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChecksum {
    algorithm: Algorithm,
    /// Base64 as in the response header.
    pub value: String,
}

/// One of the full-object checksums S3 stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Crc64Nvme,
    Crc32c,
    Crc32,
}

impl Algorithm {
    fn crc_fast(self) -> CrcAlgorithm {
        match self {
            Algorithm::Crc64Nvme => CrcAlgorithm::Crc64Nvme,
            Algorithm::Crc32c => CrcAlgorithm::Crc32Iscsi,
            Algorithm::Crc32 => CrcAlgorithm::Crc32IsoHdlc,
        }
    }

    /// Width in bits and the reflected generator polynomial.
    fn shape(self) -> (u32, u64) {
        match self {
            Algorithm::Crc64Nvme => (64, 0x9a6c_9329_ac4b_c9b5),
            Algorithm::Crc32c => (32, 0x82f6_3b78),
            Algorithm::Crc32 => (32, 0xedb8_8320),
        }
    }

    fn b64(self, v: u64) -> String {
        match self {
            Algorithm::Crc64Nvme => STANDARD.encode(v.to_be_bytes()),
            Algorithm::Crc32c | Algorithm::Crc32 => STANDARD.encode((v as u32).to_be_bytes()),
        }
    }

    /// `a * b mod P`, both reflected (the top bit of the width is `x^0`).
    fn mul_mod(self, a: u64, mut b: u64) -> u64 {
        let (width, poly) = self.shape();
        let (mut m, mut p) = (1u64 << (width - 1), 0u64);
        loop {
            if a & m != 0 {
                p ^= b;
                if a & (m - 1) == 0 {
                    return p;
                }
            }
            m >>= 1;
            b = if b & 1 != 0 { (b >> 1) ^ poly } else { b >> 1 };
        }
    }

    /// `x^(8 n) mod P`: a CRC advanced over `n` zero bytes is multiplied by it.
    fn x_pow_8n(self, n: u64) -> u64 {
        let table = self.x_pow_2k();
        let (width, _) = self.shape();
        let (mut p, mut n, mut k) = (1u64 << (width - 1), n, 3usize);
        while n != 0 {
            if n & 1 != 0 {
                p = self.mul_mod(table[k], p);
            }
            n >>= 1;
            k += 1;
        }
        p
    }

    /// `x^(2^k) mod P` for k in 0..67 (a length of up to 2^64 bytes is 2^67 bits),
    /// computed once per algorithm.
    fn x_pow_2k(self) -> &'static [u64; 67] {
        use std::sync::OnceLock;
        static TABLES: [OnceLock<[u64; 67]>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        TABLES[self as usize].get_or_init(|| {
            let (width, _) = self.shape();
            let mut table = [0u64; 67];
            let mut p = 1u64 << (width - 2); // x^1
            for entry in &mut table {
                *entry = p;
                p = self.mul_mod(p, p);
            }
            table
        })
    }
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
        StreamHasher { digest: crc_fast::Digest::new(self.algorithm.crc_fast()), algorithm: self.algorithm }
    }

    /// A combiner of piece checksums for the same algorithm.
    pub fn combiner(&self) -> CombinedCrc {
        CombinedCrc::new(self.algorithm)
    }
}

/// Running checksum over data seen in order (pieces hashed apart are joined with
/// [`CombinedCrc`]).
#[derive(Clone)]
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
        self.algorithm.b64(self.digest.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_part_crcs_equal_the_crc_of_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut combined = CombinedCrc::new(Algorithm::Crc64Nvme);
        for chunk in data.chunks(30_001) {
            combined.push(crc64nvme_b64(chunk).0, chunk.len() as u64);
        }
        assert_eq!(combined.value(), crc64nvme_b64(&data).0);
        assert_eq!(CombinedCrc::new(Algorithm::Crc64Nvme).value(), crc64nvme_b64(b"").0);
    }

    #[test]
    fn a_file_range_has_the_crc_of_its_bytes_and_a_short_file_is_an_error() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, &data).unwrap();
        assert_eq!(crc64nvme_of_file_range(&path, 30_001, 60_000).unwrap(), crc64nvme_b64(&data[30_001..90_001]));
        let short = crc64nvme_of_file_range(&path, 90_000, 10_001).unwrap_err();
        assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
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

    #[test]
    fn pieces_hashed_apart_append_to_the_checksum_of_the_whole() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
        for algorithm in [Algorithm::Crc64Nvme, Algorithm::Crc32c, Algorithm::Crc32] {
            let stored = StoredChecksum { algorithm, value: String::new() };
            let mut whole = stored.hasher();
            whole.update(&data);
            // Uneven pieces, an empty one, and lengths with high bits set.
            for sizes in [&[33_333usize, 0, 100_000, 1][..], &[1, 1, 299_998], &[131_072, 168_928]] {
                let (mut joined, mut at) = (stored.combiner(), 0);
                for &n in sizes.iter().chain(std::iter::once(&(data.len() - sizes.iter().sum::<usize>()))) {
                    let mut h = stored.hasher();
                    h.update(&data[at..at + n]);
                    joined.append(&h);
                    at += n;
                }
                assert_eq!(joined.b64(), whole.finish_b64(), "{algorithm:?} {sizes:?}");
            }
            // Agrees with crc_fast's own (slow) combine on a long second piece.
            let (a, b) = (0x1234_5678_9abc_def0u64 & (u64::MAX >> (64 - algorithm.shape().0)), 0x0fed_cba9u64);
            let mut c = CombinedCrc::new(algorithm);
            c.push(a, 1);
            c.push(b, 5 << 30);
            assert_eq!(c.value(), crc_fast::checksum_combine(algorithm.crc_fast(), a, b, 5 << 30), "{algorithm:?}");
        }
    }
}
