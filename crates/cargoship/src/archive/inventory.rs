//! The inventory: the archive's table of contents and its commit point. Versioned JSON
//! listing every entry (path, size, mtime, mode, BLAKE3, where its bytes are) and every
//! suitcase (key, size, CRC64NVME, frame index), stored zstd-compressed (about 4x smaller:
//! it is the last request of a ship and the first of a restore). Pure data + validation,
//! no I/O.

use serde::{Deserialize, Serialize};

use super::ArchiveError;
use super::codec::Codec;

/// The value of [`Inventory::format`].
pub const FORMAT: &str = "cargoship-inventory";
/// The schema version this build writes and reads.
pub const VERSION: u32 = 1;
/// Object name of the inventory under an archive's prefix: zstd-compressed JSON.
pub const INVENTORY_NAME: &str = "cargoship-inventory.json.zst";
/// Object name of an uncompressed inventory (archives written before it was compressed):
/// read, never written. It is a prefix of [`INVENTORY_NAME`], so one listing finds both.
pub const PLAIN_INVENTORY_NAME: &str = "cargoship-inventory.json";

/// Whether an object name (the last component of a key) is an archive's inventory.
pub fn is_inventory_name(name: &str) -> bool {
    name == INVENTORY_NAME || name == PLAIN_INVENTORY_NAME
}

/// zstd level of the stored inventory.
const STORED_LEVEL: i32 = 3;
/// An inventory never decompresses to more than this (a corrupt or hostile object must not
/// exhaust memory): 1 GiB holds several million entries.
const MAX_INVENTORY_BYTES: usize = 1 << 30;

/// An archive's inventory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Always [`FORMAT`].
    pub format: String,
    /// Schema version ([`VERSION`]).
    pub version: u32,
    /// BLAKE3 (hex) of this inventory serialized with `digest` empty: catches edits.
    pub digest: String,
    /// When the archive was committed (RFC 3339, UTC).
    pub created: String,
    /// Tool and version that wrote it.
    pub tool: String,
    /// The directory that was shipped (as given, made absolute).
    pub source: String,
    /// Compression of the suitcases.
    pub codec: Codec,
    /// Compression level (zstd 1..=22, gzip 0..=9; 0 for none).
    pub level: i32,
    /// Content hash algorithm of [`Entry::hash`].
    pub hash: String,
    /// The suitcases, in order.
    pub suitcases: Vec<Suitcase>,
    /// Every directory, file and symlink, in shipping order.
    pub entries: Vec<Entry>,
    /// What was left out, and why.
    pub skipped: Vec<Skipped>,
    /// The `--exclude` patterns the tree was walked with (none: absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Entries those patterns left out (a directory counts once).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub excluded: u64,
    /// Sums over the entries and suitcases.
    pub totals: Totals,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One suitcase: a tar stream compressed in independent frames.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suitcase {
    /// Object key relative to the archive prefix.
    pub key: String,
    /// Stored (compressed) bytes.
    pub size: u64,
    /// Uncompressed tar bytes.
    pub tar_size: u64,
    /// Whole-object CRC64NVME (base64) as S3 stores it.
    pub crc64nvme: String,
    /// Files whose data is in this suitcase.
    pub files: u64,
    /// Frame index, in order.
    pub frames: Vec<Frame>,
}

/// One independently decompressible frame: `[stored offset, stored length, tar offset,
/// tar length]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame(pub u64, pub u64, pub u64, pub u64);

impl Frame {
    pub fn stored_offset(&self) -> u64 {
        self.0
    }
    pub fn stored_len(&self) -> u64 {
        self.1
    }
    pub fn tar_offset(&self) -> u64 {
        self.2
    }
    pub fn tar_len(&self) -> u64 {
        self.3
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One directory, file or symlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Path relative to the shipped directory, `/`-separated.
    pub path: String,
    pub kind: Kind,
    /// Bytes (files only; 0 otherwise).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Unix permission bits.
    pub mode: u32,
    /// Content hash (files; hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Index of the suitcase holding the data (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suitcase: Option<u32>,
    /// Offset of the data in the suitcase's tar stream (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Index of the frame holding the first byte (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<u32>,
    /// Link target (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// An entry left out of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// Sums, for listings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// File bytes before compression.
    pub bytes: u64,
    /// Suitcase bytes as stored.
    pub stored_bytes: u64,
}

impl Totals {
    /// Computes the sums of an inventory's entries and suitcases.
    pub fn of(entries: &[Entry], suitcases: &[Suitcase]) -> Self {
        let count = |k| entries.iter().filter(|e| e.kind == k).count() as u64;
        Self {
            files: count(Kind::File),
            dirs: count(Kind::Dir),
            symlinks: count(Kind::Symlink),
            bytes: entries.iter().map(|e| e.size).sum(),
            stored_bytes: suitcases.iter().map(|s| s.size).sum(),
        }
    }
}

/// Checks that an inventory path stays inside the directory it is restored into:
/// relative, `/`-separated, no `.`/`..`/empty components, no NUL.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') || path.contains('\0') || path.contains('\\') {
        return Err(format!("'{path}' is not a relative path"));
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("'{path}' has an empty, '.' or '..' component"));
    }
    Ok(())
}

impl Inventory {
    /// Serializes with the digest filled in.
    pub fn to_json(&mut self) -> Vec<u8> {
        self.digest = String::new();
        let body = serde_json::to_vec(self).expect("inventory serializes");
        self.digest = blake3::hash(&body).to_hex().to_string();
        serde_json::to_vec(self).expect("inventory serializes")
    }

    /// The bytes stored under [`INVENTORY_NAME`]: the JSON, zstd-compressed.
    pub fn to_stored(&mut self) -> Vec<u8> {
        zstd::bulk::compress(&self.to_json(), STORED_LEVEL).expect("zstd compresses into memory")
    }

    /// Reads stored inventory bytes: zstd-compressed JSON, or plain JSON (older archives),
    /// then [`Inventory::from_json`].
    pub fn from_stored(bytes: &[u8]) -> Result<Self, ArchiveError> {
        const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
        if !bytes.starts_with(&ZSTD_MAGIC) {
            return Self::from_json(bytes);
        }
        let mut json = Vec::new();
        let decoder = zstd::stream::read::Decoder::new(bytes)
            .map_err(|e| ArchiveError::Inventory(format!("cannot decompress the inventory ({e})")))?;
        let read =
            std::io::Read::read_to_end(&mut std::io::Read::take(decoder, MAX_INVENTORY_BYTES as u64 + 1), &mut json);
        match read {
            Err(e) => Err(ArchiveError::Inventory(format!("cannot decompress the inventory ({e})"))),
            Ok(n) if n > MAX_INVENTORY_BYTES => Err(ArchiveError::Inventory(format!(
                "the inventory decompresses to more than {MAX_INVENTORY_BYTES} bytes"
            ))),
            Ok(_) => Self::from_json(&json),
        }
    }

    /// Parses and validates an inventory: format, version, digest, safe paths, and
    /// references that point at real suitcases and frames.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ArchiveError> {
        let bad = |detail: String| ArchiveError::Inventory(detail);
        let mut inv: Inventory =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a cargoship inventory ({e})")))?;
        if inv.format != FORMAT {
            return Err(bad(format!("format is '{}', expected '{FORMAT}'", inv.format)));
        }
        if inv.version != VERSION {
            return Err(bad(format!("schema version {} is not supported (this build reads {VERSION})", inv.version)));
        }
        let claimed = std::mem::take(&mut inv.digest);
        let body = serde_json::to_vec(&inv).expect("inventory serializes");
        if blake3::hash(&body).to_hex().as_str() != claimed {
            return Err(bad("digest does not match its content: the inventory was modified".into()));
        }
        inv.digest = claimed;
        for s in &inv.suitcases {
            check_path(&s.key).map_err(|e| bad(format!("suitcase key: {e}")))?;
            let mut expect = (0, 0);
            for f in &s.frames {
                if (f.stored_offset(), f.tar_offset()) != expect {
                    return Err(bad(format!("frame index of {} is not contiguous", s.key)));
                }
                expect = (f.stored_offset() + f.stored_len(), f.tar_offset() + f.tar_len());
            }
            if expect != (s.size, s.tar_size) {
                return Err(bad(format!("frame index of {} does not cover the suitcase", s.key)));
            }
        }
        for e in &inv.entries {
            check_path(&e.path).map_err(|d| bad(format!("entry rejected: {d}")))?;
            if e.kind == Kind::File {
                let (Some(s), Some(off), Some(_)) = (e.suitcase, e.offset, e.hash.as_ref()) else {
                    return Err(bad(format!("file '{}' has no location or hash", e.path)));
                };
                let Some(case) = inv.suitcases.get(s as usize) else {
                    return Err(bad(format!("file '{}' points at suitcase {s}, which does not exist", e.path)));
                };
                if off + e.size > case.tar_size {
                    return Err(bad(format!("file '{}' extends past the end of its suitcase", e.path)));
                }
            }
        }
        Ok(inv)
    }

    /// Indices of frames of suitcase `s` covering tar bytes `[offset, offset + len)`.
    pub fn frames_for(&self, s: usize, offset: u64, len: u64) -> std::ops::Range<usize> {
        let frames = &self.suitcases[s].frames;
        let first = frames.partition_point(|f| f.tar_offset() + f.tar_len() <= offset);
        let end = offset + len.max(1);
        let last = frames.partition_point(|f| f.tar_offset() < end);
        first..last.max(first + 1).min(frames.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inventory {
        let frames = vec![Frame(0, 10, 0, 100), Frame(10, 20, 100, 100), Frame(30, 5, 200, 50)];
        let suitcases = vec![Suitcase {
            key: "s/0.tar.zst".into(),
            size: 35,
            tar_size: 250,
            crc64nvme: "x".into(),
            files: 1,
            frames,
        }];
        let entries = vec![Entry {
            path: "a/b.txt".into(),
            kind: Kind::File,
            size: 120,
            mtime: 1,
            mtime_nsec: 0,
            mode: 0o644,
            hash: Some("h".into()),
            suitcase: Some(0),
            offset: Some(90),
            frame: Some(0),
            target: None,
        }];
        Inventory {
            format: FORMAT.into(),
            version: VERSION,
            digest: String::new(),
            created: "2026-11-21T00:00:00Z".into(),
            tool: "test".into(),
            source: "/src".into(),
            codec: Codec::Zstd,
            level: 3,
            hash: "blake3".into(),
            totals: Totals::of(&entries, &suitcases),
            suitcases,
            entries,
            skipped: vec![],
            exclude: vec![],
            excluded: 0,
        }
    }

    #[test]
    fn an_inventory_round_trips_and_finds_the_frames_of_a_file() {
        let mut inv = sample();
        let back = Inventory::from_json(&inv.to_json()).unwrap();
        assert_eq!(back.entries, inv.entries);
        assert_eq!(back.frames_for(0, 90, 120), 0..3);
        assert_eq!(back.frames_for(0, 100, 100), 1..2);
        assert_eq!(back.frames_for(0, 199, 1), 1..2);
        assert_eq!(back.frames_for(0, 0, 0), 0..1);
    }

    #[test]
    fn edited_or_escaping_inventories_are_rejected() {
        let mut inv = sample();
        let json = String::from_utf8(inv.to_json()).unwrap();
        let edited = json.replace("\"size\":120", "\"size\":121");
        let err = Inventory::from_json(edited.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("modified"), "{err}");

        let mut escaping = sample();
        escaping.entries[0].path = "../etc/passwd".into();
        let err = Inventory::from_json(&escaping.to_json()).unwrap_err().to_string();
        assert!(err.contains("'..'"), "{err}");

        let mut absolute = sample();
        absolute.entries[0].path = "/etc/passwd".into();
        assert!(Inventory::from_json(&absolute.to_json()).is_err());

        assert!(Inventory::from_json(b"{\"hello\": 1}").is_err());
    }
}
