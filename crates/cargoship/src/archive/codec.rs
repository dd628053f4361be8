//! Frame compression: each frame is compressed on its own (a zstd frame, a gzip member, or
//! stored), so any frame decompresses without the ones before it, and the concatenation is
//! still an ordinary `.tar.zst` / `.tar.gz` / `.tar`.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Suitcase compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Zstandard (fast, good ratio; the default).
    Zstd,
    /// gzip (for tools that only know gzip).
    Gzip,
    /// Stored as is.
    None,
}

impl Codec {
    /// Suitcase file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Zstd => "tar.zst",
            Codec::Gzip => "tar.gz",
            Codec::None => "tar",
        }
    }

    /// Default level when none is given.
    pub fn default_level(self) -> i32 {
        match self {
            Codec::Zstd => 3,
            Codec::Gzip => 6,
            Codec::None => 0,
        }
    }

    /// Checks a level for this codec.
    pub fn check_level(self, level: i32) -> Result<(), String> {
        let ok = match self {
            Codec::Zstd => zstd::compression_level_range().contains(&level),
            Codec::Gzip => (0..=9).contains(&level),
            Codec::None => level == 0,
        };
        if ok { Ok(()) } else { Err(format!("level {level} is not valid for {self:?} (zstd 1..=22, gzip 0..=9)")) }
    }

    /// Compresses one frame.
    pub fn compress(self, level: i32, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Codec::Zstd => zstd::bulk::compress(data, level),
            Codec::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level as u32));
                enc.write_all(data)?;
                enc.finish()
            }
            Codec::None => Ok(data.to_vec()),
        }
    }

    /// Decompresses one frame whose decompressed length is `len`.
    pub fn decompress(self, data: &[u8], len: u64) -> std::io::Result<Vec<u8>> {
        let out = match self {
            Codec::Zstd => zstd::bulk::decompress(data, len as usize)?,
            Codec::Gzip => {
                let mut out = Vec::with_capacity(len as usize);
                flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
                out
            }
            Codec::None => data.to_vec(),
        };
        if out.len() as u64 != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame decompressed to {} bytes, the index says {len}", out.len()),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decompress_alone_and_concatenate_into_one_stream() {
        let a = b"first frame ".repeat(1000);
        let b = b"second frame ".repeat(1000);
        for codec in [Codec::Zstd, Codec::Gzip, Codec::None] {
            let level = codec.default_level();
            let (ca, cb) = (codec.compress(level, &a).unwrap(), codec.compress(level, &b).unwrap());
            assert_eq!(codec.decompress(&cb, b.len() as u64).unwrap(), b, "{codec:?} frame alone");
            if codec != Codec::None {
                assert!(ca.len() < a.len() / 10, "{codec:?} compresses repetitive text");
            }
            let joined = [ca.clone(), cb].concat();
            let whole = match codec {
                Codec::Zstd => zstd::stream::decode_all(&joined[..]).unwrap(),
                Codec::Gzip => {
                    let mut out = Vec::new();
                    flate2::read::MultiGzDecoder::new(&joined[..]).read_to_end(&mut out).unwrap();
                    out
                }
                Codec::None => joined.clone(),
            };
            assert_eq!(whole, [a.clone(), b.clone()].concat(), "{codec:?} stream");
            assert!(codec.decompress(&ca, 5).is_err(), "{codec:?} length checked");
        }
    }
}
