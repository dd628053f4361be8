//! Command-line interface definition (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str =
    "Move directories and objects into S3 and back: fast on any network, within a memory budget, verified end to end.";

const AFTER_HELP: &str = "\
Where data goes:
  --endpoint-url, AWS_ENDPOINT_URL or AWS credentials (env, ~/.aws, AWS_PROFILE) select a real
  S3 or S3-compatible store. With none of them, cargoship runs against an embedded local store
  (under ~/.local/share/cargoship/s3, or CARGOSHIP_EMBEDDED_ROOT) and says so on stderr.

Exit codes:
  0 success   1 other failure   2 bad usage or malformed argument   3 bucket or key not found
  4 access denied / bad credentials   5 endpoint unreachable   6 local file unreadable or
  destination not writable   7 integrity check failed (data did not match its checksum)

Examples:
  cargoship survey ./dataset
  cargoship ship ./dataset s3://my-bucket/archives/dataset-2026
  cargoship ship ./project s3://my-bucket/archives/project --exclude .git --exclude '*.tmp'
  cargoship restore s3://my-bucket/archives/dataset-2026 ./restored
  cargoship restore s3://my-bucket/archives/dataset-2026 ./one 'runs/42/*.csv'
  cargoship verify s3://my-bucket/archives/dataset-2026 --against ./dataset --deep
  cargoship ls s3://my-bucket/archives/
  cargoship put data.bin s3://my-bucket/data/data.bin
  cargoship put ./results s3://my-bucket/runs/ --prefixes 8 --strategy fair_share
  cargoship get s3://my-bucket/data/data.bin ./copy.bin
  cargoship get s3://my-bucket/data/data.bin head.bin --range 0:4096
  cargoship ls s3://my-bucket/data/
  cargoship mount s3://my-bucket/data ./mnt
  cargoship serve --root /srv/s3 --addr 127.0.0.1:9000
  cargoship emulate --scenario bench/scenarios/wan.toml --upstream http://127.0.0.1:9000";

#[derive(Debug, Parser)]
#[command(name = "cargoship", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// S3 endpoint URL (as in the AWS CLI); path-style addressing is used with it.
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// AWS region (default: from the environment/profile, else us-east-1).
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// Named profile from ~/.aws/config.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// How many requests are in flight: auto (BBR probing + CUBIC backoff, the default),
    /// bbr, cubic, or fixed:N.
    #[arg(long, global = true, value_name = "NAME", value_parser = parse_controller)]
    pub controller: Option<s3opt::ControllerKind>,
    /// Requests in flight: alone, a fixed number (same as --controller fixed:N); with
    /// --controller, where that controller starts [default: 64, or 8 when the endpoint
    /// answers its first request within 20 ms, as on a LAN].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: Option<u64>,
    /// Part size for multipart uploads and ranged downloads (e.g. 8MiB, 64M).
    #[arg(long, global = true, default_value = "8MiB", value_parser = parse_size, value_name = "SIZE")]
    pub part_size: u64,
    /// Most object data held in memory at once (e.g. 256MiB, 1G). A file's parts in flight count against it without being held.
    #[arg(long, global = true, default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    pub memory_budget: u64,
    /// Cap on transfer bandwidth in bytes per second, all requests together (e.g. 10MiB,
    /// 500K; K/M/G are binary). Held within a few percent over any 10 s.
    #[arg(long, global = true, value_parser = parse_size, value_name = "RATE")]
    pub bwlimit: Option<u64>,
    /// TCP congestion control for this client's connections (Linux), e.g. bbr, cubic, reno;
    /// /proc/sys/net/ipv4/tcp_available_congestion_control lists what the kernel offers.
    /// Default: the system's.
    #[arg(long, global = true, value_name = "ALGORITHM")]
    pub tcp_congestion: Option<String>,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More logging on stderr (-v info, -vv debug); RUST_LOG also works.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what shipping a directory would do: sizes, histogram, suitcases, monthly cost.
    Survey(SurveyArgs),
    /// Ship a directory into S3 as compressed, seekable suitcases plus an inventory.
    Ship(ShipArgs),
    /// Restore an archive (or only some paths of it) into a directory.
    Restore(RestoreArgs),
    /// Check an archive: suitcases present and intact, optionally content and a local tree.
    Verify(VerifyArgs),
    /// Upload a file (or - for stdin) to s3://bucket/key, or every file of a directory
    /// under s3://bucket/prefix.
    Put(PutArgs),
    /// Download s3://bucket/key to a file (or - for stdout), or every object under
    /// s3://bucket/prefix/ into a directory, verified against S3's checksums.
    Get(GetArgs),
    /// List the archives under s3://bucket/prefix (or, if there are none, the objects).
    Ls(LsArgs),
    /// Run an S3-compatible endpoint on a local directory.
    Serve(ServeArgs),
    /// Run the WAN/fault emulator: a proxy that imposes a scenario between clients and S3.
    Emulate(EmulateArgs),
    /// Mount s3://bucket/prefix read-only on a directory (FUSE), until Ctrl-C or unmount.
    Mount(crate::mount::MountArgs),
    /// Unmount a `cargoship mount`.
    Unmount(crate::mount::UnmountArgs),
}

#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Scenario file (TOML), e.g. bench/scenarios/wan.toml.
    #[arg(long, value_name = "FILE")]
    pub scenario: PathBuf,
    /// Address clients connect to.
    #[arg(long, default_value = "127.0.0.1:9200", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// The S3 endpoint requests are forwarded to.
    #[arg(long, default_value = "http://127.0.0.1:9000", value_name = "URL")]
    pub upstream: String,
    /// Write the final stats (JSON) here on exit.
    #[arg(long, value_name = "FILE")]
    pub stats_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Local file to upload, - for standard input, or a directory (every file under it
    /// becomes an object, spread over --prefixes key prefixes).
    pub source: String,
    /// Destination s3://bucket/key (a key ending in / gets the file's name appended); for
    /// a directory, s3://bucket/prefix.
    pub destination: String,
    #[command(flatten)]
    pub many: crate::put_many::ManyArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Object to download, s3://bucket/key; or a prefix, s3://bucket/prefix/ (ending in /,
    /// or a bucket alone): every object under it, into the DESTINATION directory.
    pub source: String,
    /// Local file (or directory) to write, or - for standard output; for a prefix, the
    /// directory to download into (created if missing; files there with the same names
    /// are replaced).
    pub destination: String,
    /// Only this byte range, as OFFSET:LEN (LEN 0 = to the end).
    #[arg(long, value_name = "OFFSET:LEN", value_parser = parse_range)]
    pub range: Option<(u64, u64)>,
    #[command(flatten)]
    pub filter: ExcludeArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// s3://bucket or s3://bucket/prefix.
    pub target: String,
    /// List every key under the prefix instead of one level.
    #[arg(long, short)]
    pub recursive: bool,
    /// List objects even where there are archives.
    #[arg(long)]
    pub objects: bool,
}

#[derive(Debug, Args)]
pub struct SurveyArgs {
    /// Directory to survey.
    pub dir: PathBuf,
    #[command(flatten)]
    pub filter: ExcludeArgs,
    /// Suitcase size cap, as for ship.
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub suitcase_size: u64,
    /// Price table (TOML, same format as the built-in one) instead of the built-in table.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Layout: s3://bucket/prefix/suitcases/s-RUN-NNNNNN.tar.zst (RUN: an id per run; tar compressed
in independent frames: any file can be read back with ranged GETs; each suitcase is also a
plain .tar.zst) and s3://bucket/prefix/cargoship-inventory.json.zst (zstd-compressed JSON),
written last: the archive exists once it does.

Interrupted (Ctrl-C, kill, network loss)? Run the same command again: it continues where it
stopped without re-sending finished parts. --no-resume starts over; --abort discards the
interrupted run (aborts its uploads, deletes its suitcases) without shipping.")]
pub struct ShipArgs {
    /// Directory to ship.
    pub source: PathBuf,
    /// Archive location s3://bucket/prefix (must not hold an archive yet).
    pub destination: String,
    #[command(flatten)]
    pub filter: ExcludeArgs,
    /// Compression of the suitcases.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: cargoship::archive::codec::Codec,
    /// Compression level (zstd 1-22, default 3; gzip 0-9, default 6).
    #[arg(long, allow_negative_numbers = true)]
    pub level: Option<i32>,
    /// Most uncompressed bytes per suitcase (a larger single file gets its own). Smaller
    /// trees are split into 2 x --parallel-suitcases suitcases (of at least 64 MiB) so that
    /// they pack and upload in parallel; a tree under 2 x --parallel-suitcases x 64 MiB is
    /// cut into at most 64 pieces of 256 KiB-4 MiB that go up side by side as single PUTs.
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub suitcase_size: u64,
    /// Uncompressed bytes per frame: the smallest unit a single-file restore fetches.
    #[arg(long, default_value = "2MiB", value_parser = parse_size, value_name = "SIZE")]
    pub frame_size: u64,
    /// Storage class of the suitcases (the inventory stays STANDARD so it can be read).
    #[arg(long, value_name = "CLASS", value_parser = ["STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE", "ONEZONE_IA", "REDUCED_REDUNDANCY"])]
    pub storage_class: Option<String>,
    /// Server-side encryption.
    #[arg(long, value_name = "ALG", value_parser = ["AES256", "aws:kms"])]
    pub sse: Option<String>,
    /// KMS key for --sse aws:kms.
    #[arg(long, value_name = "KEY_ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,
    /// Stop on a file that vanishes, changes or cannot be read (default: skip it, list it
    /// in the inventory, warn).
    #[arg(long)]
    pub strict: bool,
    /// Start over even if an interrupted run of this ship exists (discarding it).
    #[arg(long, conflicts_with = "abort")]
    pub no_resume: bool,
    /// Discard an interrupted run of this ship and exit.
    #[arg(long)]
    pub abort: bool,
    /// Suitcases packed and uploaded at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallel_suitcases: u64,
    /// Key prefixes (suitcases/00/, suitcases/20/, ...) to spread suitcases over, chosen per
    /// suitcase by the cross-prefix coordinator; 0 = 8 when there are 8 or more suitcases.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub prefixes: u64,
    /// How the coordinator picks a prefix: tcp_like, fair_share or adaptive.
    #[arg(long, default_value = "adaptive", value_name = "NAME")]
    pub strategy: String,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Archive s3://bucket/prefix.
    pub source: String,
    /// Directory to restore into (created if missing).
    pub destination: PathBuf,
    /// Only these paths (a directory selects all under it) or globs ('*' within a
    /// directory, '**' across); default everything.
    pub paths: Vec<String>,
    /// Replace files that exist in the destination.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Archive s3://bucket/prefix.
    pub archive: String,
    /// Also compare with this local directory (names, kinds, sizes; content with --deep).
    #[arg(long, value_name = "DIR")]
    pub against: Option<PathBuf>,
    /// Re-read and re-hash every file's content.
    #[arg(long)]
    pub deep: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory holding the buckets (one sub-directory per bucket); created if missing.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "IP:PORT")]
    pub addr: SocketAddr,
    /// Access key clients sign with.
    #[arg(long, env = "CARGOSHIP_SERVE_ACCESS_KEY", default_value = "cargoship")]
    pub access_key: String,
    /// Secret key clients sign with.
    #[arg(long, env = "CARGOSHIP_SERVE_SECRET_KEY", default_value = "cargoship-secret", hide_default_value = true)]
    pub secret_key: String,
    /// Buckets to create at start if missing.
    #[arg(long = "bucket", value_name = "NAME")]
    pub buckets: Vec<String>,
}

/// Parses sizes like `8MiB`, `64M`, `1G`, `4096` (K/M/G/T are binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("'{s}' is not a size (try 8MiB, 64M, 1G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' in '{s}' (use K, M, G, T)")),
    };
    Ok((value * mult as f64) as u64)
}

fn parse_controller(s: &str) -> Result<s3opt::ControllerKind, String> {
    s.parse()
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (o, l) = s.split_once(':').ok_or_else(|| format!("range '{s}' must be OFFSET:LEN"))?;
    let offset = o.trim().parse().map_err(|_| format!("range offset '{o}' is not a number"))?;
    let len = l.trim().parse().map_err(|_| format!("range length '{l}' is not a number"))?;
    Ok((offset, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
    }

    #[test]
    fn ranges_parse_as_offset_colon_len() {
        assert_eq!(parse_range("10:0").unwrap(), (10, 0));
        assert!(parse_range("10").is_err());
        assert!(parse_range("a:1").is_err());
    }
}

/// `--exclude`, shared by ship, survey, and put and get of a directory.
#[derive(Debug, Args)]
pub struct ExcludeArgs {
    /// Leave out what matches PATTERN (repeatable). Without a `/`, a glob on the name at any
    /// depth (`*.tmp`, `.git`); with one, a glob on the path under the directory, or for a
    /// prefix get on the key after the prefix (`logs/2026-*`, `/build`); a trailing `/`
    /// matches directories only (`cache/`). `*` stays within a name, `**` crosses
    /// directories; an excluded directory goes with everything under it.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
}

impl ExcludeArgs {
    /// The compiled patterns; a bad one is a usage error naming it.
    pub fn compile(&self) -> Result<cargoship::archive::walk::Exclude, cargoship::archive::ArchiveError> {
        cargoship::archive::walk::Exclude::new(&self.exclude)
    }
}
