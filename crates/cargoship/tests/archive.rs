//! Archives end to end against the embedded S3 endpoint: ship a generated tree, restore
//! it whole and file by file, and the bad inputs (tampered or escaping inventory, missing
//! bucket, disk full on restore).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cargoship::archive::codec::Codec;
use cargoship::archive::extract::ExtractProgress;
use cargoship::archive::inventory::{INVENTORY_NAME, Inventory};
use cargoship::archive::restore::{RestoreOptions, restore};
use cargoship::archive::ship::{ShipOptions, ShipProgress, ship};
use cargoship::archive::walk::{Exclude, walk};
use cargoship::archive::{ArchiveError, ArchiveReader};
use s3opt::{ClientConfig, OptimizedS3Client, PutOptions};
use testbed::{EmbeddedServer, Emulator, Scenario, ServerConfig};

const MIB: u64 = 1 << 20;

struct Env {
    dir: tempfile::TempDir,
    server: EmbeddedServer,
    client: OptimizedS3Client,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedServer::start(ServerConfig::ephemeral(dir.path().join("store"))).await.unwrap();
    server.create_bucket("bucket").unwrap();
    let client = client_for(&server, server.endpoint_url()).await;
    Env { dir, server, client }
}

/// A client of `server`'s store that talks to `endpoint` (the server, or an emulator in front).
async fn client_for(server: &EmbeddedServer, endpoint: String) -> OptimizedS3Client {
    let cfg = ClientConfig {
        endpoint_url: Some(endpoint),
        region: Some("us-east-1".into()),
        credentials: Some((server.config().access_key.clone(), server.config().secret_key.clone())),
        part_size: 5 * MIB,
        memory_budget: 64 * MIB,
        ..ClientConfig::default()
    };
    OptimizedS3Client::new(cfg).await.unwrap()
}

fn options(env: &Env, source: &Path, prefix: &str) -> ShipOptions {
    ShipOptions {
        source: source.to_owned(),
        bucket: "bucket".into(),
        prefix: prefix.into(),
        codec: Codec::Zstd,
        level: 3,
        suitcase_size: 16 * MIB,
        frame_size: 2 * MIB,
        put: PutOptions::default(),
        strict: false,
        resume: true,
        state_dir: env.dir.path().join("state"),
        parallel: 2,
        prefixes: 0,
        strategy: s3opt::coordination::Strategy::Adaptive,
        exclude: Exclude::default(),
    }
}

/// Deterministic bytes that compress somewhat (like real data, unlike zeros or noise).
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            if i % 4 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            if i % 3 == 0 { b'a' + (x % 8) as u8 } else { (x >> (i % 4 * 8)) as u8 }
        })
        .collect()
}

fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// The tree of the issue: nested dirs, empty files and dirs, unicode names, a symlink, a
/// 100 MiB file and 10,000 tiny files.
fn make_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("nested/deeper/deepest")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::create_dir_all(root.join("tiny")).unwrap();
    std::fs::write(root.join("nested/deeper/deepest/leaf.txt"), b"leaf\n").unwrap();
    std::fs::write(root.join("nested/empty-file"), b"").unwrap();
    std::fs::write(root.join("données – ünïcödé ✓.txt"), "unicode name\n").unwrap();
    std::fs::write(root.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("script.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("nested/deeper/deepest/leaf.txt", root.join("link-to-leaf")).unwrap();
    std::fs::write(root.join("big.bin"), data(1, 100 * MIB as usize)).unwrap();
    for i in 0..10_000u64 {
        let dir = root.join("tiny").join(format!("{:02}", i % 50));
        if i < 50 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i:05}.dat")), data(i + 7, (i % 97) as usize * 11)).unwrap();
    }
    set_mtime(&root.join("big.bin"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("link-to-leaf"), 1_500_000_000, 0);
    set_mtime(&root.join("empty-dir"), 1_400_000_000, 5);
}

/// Asserts two trees are the same: names, kinds, sizes, modes, mtimes, link targets and
/// file contents.
fn assert_same_tree(a: &Path, b: &Path) {
    let (wa, wb) = (walk(a, &Exclude::default()).unwrap(), walk(b, &Exclude::default()).unwrap());
    assert_eq!(wa.items.len(), wb.items.len(), "entry counts");
    for (x, y) in wa.items.iter().zip(&wb.items) {
        assert_eq!(x, y, "metadata of {}", x.path);
        if x.kind == cargoship::archive::inventory::Kind::File {
            assert!(std::fs::read(a.join(&x.path)).unwrap() == std::fs::read(b.join(&y.path)).unwrap(), "{}", x.path);
        }
    }
}

fn restore_opts(dest: PathBuf, patterns: &[&str]) -> RestoreOptions {
    RestoreOptions { dest, patterns: patterns.iter().map(|s| s.to_string()).collect(), overwrite: false, parallel: 2 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_ships_and_restores_whole_and_one_file_by_ranged_reads() {
    let env = start().await;
    let src = env.dir.path().join("src");
    make_tree(&src);
    let o = ShipOptions { suitcase_size: 4 * MIB, ..options(&env, &src, "archives/one") };
    let report = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap();
    assert_eq!(report.files, 10_005);
    assert!(report.suitcases >= 3, "4 MiB suitcases: {}", report.suitcases);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert!(report.stored_bytes < report.bytes, "compressed");
    assert!(env.client.list_multipart_uploads("bucket", "").await.unwrap().is_empty(), "no upload left open");
    assert!(!env.dir.path().join("state/journals").read_dir().unwrap().any(|_| true), "journal removed");
    // The inventory was staged while the suitcases went up and committed last: a multipart
    // upload of one part (its ETag says so), not a PUT after them.
    let inv = env.client.head("bucket", &format!("archives/one/{INVENTORY_NAME}")).await.unwrap();
    assert!(inv.e_tag.as_deref().unwrap_or_default().trim_matches('"').ends_with("-1"), "{:?}", inv.e_tag);
    // The packing pipelines' reservations and every part's buffer are back in the budget.
    assert_eq!(env.client.memory_in_use(), 0);

    // Whole restore.
    let reader = ArchiveReader::open(env.client.clone(), "bucket", "archives/one").await.unwrap();
    let out = env.dir.path().join("out");
    let r = restore(&reader, &restore_opts(out.clone(), &[]), Arc::new(ExtractProgress::default())).await.unwrap();
    assert_eq!(r.files, 10_005);
    assert_same_tree(&src, &out);

    // One file out of a multi-suitcase archive fetches a small fraction of it.
    let before = env.client.bytes_received();
    let one = env.dir.path().join("one");
    let path = "tiny/07/f05007.dat";
    let r = restore(&reader, &restore_opts(one.clone(), &[path]), Arc::new(ExtractProgress::default())).await.unwrap();
    let fetched = env.client.bytes_received() - before;
    assert_eq!(r.files, 1);
    assert_eq!(std::fs::read(one.join(path)).unwrap(), std::fs::read(src.join(path)).unwrap());
    assert!(fetched * 20 < report.stored_bytes, "fetched {fetched} of {} stored bytes", report.stored_bytes);

    // Reading inside the big file touches only its frames.
    let idx = reader.inventory().entries.iter().position(|e| e.path == "big.bin").unwrap();
    let before = env.client.bytes_received();
    let got = reader.read(idx, 50 * MIB, 4096).await.unwrap();
    assert_eq!(&got[..], &data(1, 100 * MIB as usize)[50 * MIB as usize..50 * MIB as usize + 4096]);
    assert!(env.client.bytes_received() - before <= 2 * MIB, "one frame at most");

    // Restoring again refuses to overwrite, and writes nothing.
    let err =
        restore(&reader, &restore_opts(one.clone(), &[]), Arc::new(ExtractProgress::default())).await.unwrap_err();
    assert!(matches!(err, ArchiveError::WouldOverwrite(_)), "{err}");
    assert!(!one.join("big.bin").exists());

    // Shipping the same tree again has nothing to do; a changed tree is refused.
    let before = env.client.bytes_sent();
    let again = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap();
    assert!(again.up_to_date && again.files == 10_005);
    assert_eq!(env.client.bytes_sent(), before, "nothing sent");
    std::fs::write(src.join("new-file"), b"new").unwrap();
    let err = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Exists(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_uncompressed_archives_round_trip() {
    let env = start().await;
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/a.txt"), data(3, 3_000_000)).unwrap();
    std::fs::write(src.join("b.txt"), b"bee").unwrap();
    for (codec, level) in [(Codec::Gzip, 6), (Codec::None, 0)] {
        let prefix = format!("{codec:?}");
        let o = ShipOptions { codec, level, frame_size: 256 << 10, ..options(&env, &src, &prefix) };
        ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap();
        let reader = ArchiveReader::open(env.client.clone(), "bucket", &prefix).await.unwrap();
        let out = env.dir.path().join(format!("out-{prefix}"));
        restore(&reader, &restore_opts(out.clone(), &[]), Arc::new(ExtractProgress::default())).await.unwrap();
        assert_same_tree(&src, &out);
    }
}

async fn small_archive(env: &Env, prefix: &str) -> PathBuf {
    let src = env.dir.path().join(format!("src-{prefix}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), data(9, 5 * MIB as usize)).unwrap();
    std::fs::write(src.join("b.txt"), b"bee").unwrap();
    ship(&env.client, &options(env, &src, prefix), Arc::new(ShipProgress::default())).await.unwrap();
    src
}

async fn inventory_json(env: &Env, prefix: &str) -> Inventory {
    let mut buf = Vec::new();
    env.client.get_object("bucket", &format!("{prefix}/{INVENTORY_NAME}"), &mut buf).await.unwrap();
    Inventory::from_stored(&buf).unwrap()
}

async fn replace_inventory(env: &Env, prefix: &str, bytes: Vec<u8>) {
    let key = format!("{prefix}/{INVENTORY_NAME}");
    env.client.put_object("bucket", &key, &bytes[..], PutOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_escaping_inventories_are_refused_before_anything_is_written() {
    let env = start().await;
    small_archive(&env, "t").await;
    let out = env.dir.path().join("out");

    // Edited by hand: the digest no longer matches.
    let mut inv = inventory_json(&env, "t").await;
    let json = String::from_utf8(inv.to_json()).unwrap().replace("\"b.txt\"", "\"c.txt\"");
    replace_inventory(&env, "t", json.into_bytes()).await;
    let err = ArchiveReader::open(env.client.clone(), "bucket", "t").await.err().unwrap();
    assert!(err.to_string().contains("inventory was modified"), "{err}");

    // Re-digested, but pointing outside the destination.
    inv.entries.iter_mut().find(|e| e.path == "b.txt").unwrap().path = "../escaped.txt".into();
    replace_inventory(&env, "t", inv.to_json()).await;
    let err = ArchiveReader::open(env.client.clone(), "bucket", "t").await.err().unwrap();
    assert!(matches!(err, ArchiveError::Inventory(_)) && err.to_string().contains("'..'"), "{err}");
    assert!(!env.dir.path().join("escaped.txt").exists() && !out.exists());

    // Not an archive at all.
    let err = ArchiveReader::open(env.client.clone(), "bucket", "nothing-here").await.err().unwrap();
    assert!(matches!(err, ArchiveError::NotAnArchive(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_to_a_missing_bucket_fails_clearly_and_leaves_no_journal() {
    let env = start().await;
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    let o = ShipOptions { bucket: "no-such-bucket".into(), ..options(&env, &src, "p") };
    let err = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap_err();
    assert!(matches!(err, ArchiveError::S3(s3opt::Error::NoSuchBucket { .. })), "{err}");
    let journals = env.dir.path().join("state/journals");
    let no_journal = || !journals.exists() || journals.read_dir().unwrap().next().is_none();
    assert!(no_journal(), "no journal left");
    // A small tree's pieces, too, start before the bucket is known to be missing: the same
    // error, and nothing left either.
    let tree = small_tree(&env, "tree", 1, 40);
    let o = ShipOptions { bucket: "no-such-bucket".into(), ..options(&env, &tree, "p") };
    let err = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap_err();
    assert!(matches!(err, ArchiveError::S3(s3opt::Error::NoSuchBucket { .. })), "{err}");
    assert!(no_journal(), "no journal left");

    let o = ShipOptions { source: env.dir.path().join("missing"), ..options(&env, &src, "p") };
    let err = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Source { .. }) && err.to_string().contains("missing"), "{err}");
}

/// A tmpfs of `size` mounted at `dir` for the test's lifetime (the tests run as root).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a small tmpfs needs root (CI runs as root)");
        Self(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_restore_is_a_clear_error_and_leaves_no_partial_file() {
    let env = start().await;
    small_archive(&env, "full").await;
    let disk = SmallDisk::mount(env.dir.path().join("small"), "2m");
    let reader = ArchiveReader::open(env.client.clone(), "bucket", "full").await.unwrap();
    let err =
        restore(&reader, &restore_opts(disk.0.clone(), &[]), Arc::new(ExtractProgress::default())).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ArchiveError::Write { .. }) && msg.contains("No space left"), "{msg}");
    assert!(msg.contains("a.bin"), "names the file: {msg}");
    let left: Vec<_> = std::fs::read_dir(&disk.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().contains("cargoship-partial")), "{left:?}");
    assert!(!disk.0.join("a.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_suitcases_are_spread_over_prefixes_by_the_coordinator() {
    let env = start().await;
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        std::fs::write(src.join(format!("f{i:02}.bin")), data(i, 100_000)).unwrap();
    }
    let o = ShipOptions { suitcase_size: 128 << 10, ..options(&env, &src, "spread") };
    let report = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap();
    assert_eq!(report.suitcases, 12);
    assert!(report.prefixes.len() >= 4, "spread over 8 prefixes: {:?}", report.prefixes);
    assert!(report.prefixes.iter().all(|p| p.starts_with("suitcases/") && p.len() == "suitcases/00/".len()));
    let c = report.coordination.as_ref().expect("coordination metrics");
    assert_eq!(c.active_prefixes, 8);
    let reader = ArchiveReader::open(env.client.clone(), "bucket", "spread").await.unwrap();
    let out = env.dir.path().join("out");
    restore(&reader, &restore_opts(out.clone(), &[]), Arc::new(ExtractProgress::default())).await.unwrap();
    assert_same_tree(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_directory_ships_and_restores_to_an_empty_directory() {
    let env = start().await;
    let src = env.dir.path().join("empty");
    std::fs::create_dir_all(&src).unwrap();
    let report = ship(&env.client, &options(&env, &src, "empty"), Arc::new(ShipProgress::default())).await.unwrap();
    assert_eq!((report.files, report.suitcases), (0, 1));
    let reader = ArchiveReader::open(env.client.clone(), "bucket", "empty").await.unwrap();
    let out = env.dir.path().join("out");
    let r = restore(&reader, &restore_opts(out.clone(), &[]), Arc::new(ExtractProgress::default())).await.unwrap();
    assert_eq!(r.files, 0);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_is_stored_compressed_and_plain_inventories_are_still_read() {
    use cargoship::archive::inventory::PLAIN_INVENTORY_NAME;
    let env = start().await;
    let src = small_archive(&env, "new").await;
    let mut stored = Vec::new();
    env.client.get_object("bucket", &format!("new/{INVENTORY_NAME}"), &mut stored).await.unwrap();
    assert!(stored.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd frame");
    let mut inv = Inventory::from_stored(&stored).unwrap();
    let json = inv.to_json();
    assert!(stored.len() < json.len(), "{} compressed vs {} plain", stored.len(), json.len());

    // An archive written before compression: the same suitcases, a plain JSON inventory.
    env.client.delete("bucket", &format!("new/{INVENTORY_NAME}")).await.unwrap();
    env.client
        .put_object("bucket", &format!("new/{PLAIN_INVENTORY_NAME}"), &json[..], PutOptions::default())
        .await
        .unwrap();
    let listed = cargoship::archive::listing::list_archives(&env.client, "bucket", "").await.unwrap();
    assert_eq!(listed.iter().map(|a| a.url.as_str()).collect::<Vec<_>>(), ["s3://bucket/new"]);
    let reader = ArchiveReader::open(env.client.clone(), "bucket", "new").await.unwrap();
    let out = env.dir.path().join("out-plain");
    restore(&reader, &restore_opts(out.clone(), &[]), Arc::new(ExtractProgress::default())).await.unwrap();
    assert_same_tree(&src, &out);
    // And it still counts as an archive there: shipping the same tree again is a no-op.
    let report = ship(&env.client, &options(&env, &src, "new"), Arc::new(ShipProgress::default())).await.unwrap();
    assert!(report.up_to_date, "{report:?}");

    // A corrupt compressed inventory is refused with a clear error.
    env.client
        .put_object("bucket", &format!("bad/{INVENTORY_NAME}"), &stored[..stored.len() / 2], PutOptions::default())
        .await
        .unwrap();
    let err = ArchiveReader::open(env.client.clone(), "bucket", "bad").await.err().unwrap();
    assert!(matches!(err, ArchiveError::Inventory(_)) && err.to_string().contains("decompress"), "{err}");
}

/// Every object key under `prefix/`.
async fn keys_under(env: &Env, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = env
        .client
        .list("bucket", &format!("{prefix}/"), None)
        .await
        .unwrap()
        .objects
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    keys
}

/// A tree of `n` 64 KiB files (a small tree: it ships as pieces).
fn small_tree(env: &Env, name: &str, seed: u64, n: u64) -> PathBuf {
    let src = env.dir.path().join(name);
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..n {
        std::fs::write(src.join(format!("f{i:03}")), data(seed + i, 64 << 10)).unwrap();
    }
    src
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_tree_goes_up_while_the_destination_is_checked_and_leaves_nothing_when_it_is_taken() {
    let env = start().await;
    let first = small_tree(&env, "first", 1, 40);
    let o = options(&env, &first, "taken");
    ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap();
    let before = keys_under(&env, "taken").await;
    assert!(before.iter().filter(|k| k.contains("/suitcases/s-")).count() > 4, "shipped as pieces: {before:?}");

    // Another tree to the same place, through a link that holds the existence check (the
    // run's first request) for 1.5 s: every piece goes up meanwhile, then the check finds
    // the archive, the run is refused, and what it sent is deleted again.
    let scenario = Scenario::parse("name = \"t\"\n[faults]\nstall_first = 1\nstall_secs = 1.5").unwrap();
    let emu = Emulator::start(scenario, "127.0.0.1:0".parse().unwrap(), &env.server.endpoint_url()).await.unwrap();
    let slow = client_for(&env.server, emu.endpoint_url()).await;
    let second = small_tree(&env, "second", 100, 40);
    let err = ship(&slow, &options(&env, &second, "taken"), Arc::new(ShipProgress::default())).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Exists(_)), "{err}");
    assert_eq!(emu.report().totals.stalls_injected, 1);
    assert!(
        slow.bytes_sent() * 2 > 40 * (64 << 10),
        "the pieces went up before the answer: {} bytes",
        slow.bytes_sent()
    );
    assert_eq!(keys_under(&env, "taken").await, before, "the existing archive is untouched, nothing stray is left");
    let reader = ArchiveReader::open(env.client.clone(), "bucket", "taken").await.unwrap();
    let out = env.dir.path().join("out");
    restore(&reader, &restore_opts(out.clone(), &[]), Arc::new(ExtractProgress::default())).await.unwrap();
    assert_same_tree(&first, &out);
    assert!(!env.dir.path().join("state/journals").read_dir().unwrap().any(|_| true), "no journal left");

    // The first tree again, from a machine that has not shipped it (no local record): the
    // pieces race the check, and the archive is found to hold this very tree.
    std::fs::remove_dir_all(env.dir.path().join("state/shipped")).unwrap();
    let again = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap();
    assert!(again.up_to_date, "{again:?}");
    assert_eq!(keys_under(&env, "taken").await, before);
    // Recorded now: a third run asks first and sends nothing.
    let sent = env.client.bytes_sent();
    assert!(ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap().up_to_date);
    assert_eq!(env.client.bytes_sent(), sent, "nothing sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_multipart_suitcases_also_goes_up_while_the_destination_is_checked() {
    let env = start().await;
    // 2 x 66 MiB with one packer: two suitcases of 66 MiB, each a multipart upload.
    let tree = |name: &str, seed: u64| {
        let src = env.dir.path().join(name);
        std::fs::create_dir_all(&src).unwrap();
        let block = data(seed, MIB as usize);
        for f in 0..2 {
            let mut file = std::io::BufWriter::new(std::fs::File::create(src.join(format!("big{f}"))).unwrap());
            for i in 0..66u8 {
                use std::io::Write;
                // Each MiB differs, so the frames do not compress to nothing.
                file.write_all(&[i, f]).unwrap();
                file.write_all(&block[2..]).unwrap();
            }
        }
        src
    };
    let first = tree("first", 1);
    let o = ShipOptions { parallel: 1, ..options(&env, &first, "big") };
    let report = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap();
    assert_eq!(report.suitcases, 2, "{report:?}");
    let before = keys_under(&env, "big").await;

    // Another tree there, with the existence check held for 1.5 s: multipart uploads
    // start meanwhile; when the archive is found they are aborted and nothing is left.
    let scenario = Scenario::parse("name = \"t\"\n[faults]\nstall_first = 1\nstall_secs = 1.5").unwrap();
    let emu = Emulator::start(scenario, "127.0.0.1:0".parse().unwrap(), &env.server.endpoint_url()).await.unwrap();
    let slow = client_for(&env.server, emu.endpoint_url()).await;
    let second = tree("second", 2);
    let o2 = ShipOptions { parallel: 1, ..options(&env, &second, "big") };
    let err = ship(&slow, &o2, Arc::new(ShipProgress::default())).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Exists(_)), "{err}");
    assert_eq!(emu.report().totals.stalls_injected, 1);
    assert!(slow.bytes_sent() > 5 * MIB, "parts went up before the answer: {} bytes", slow.bytes_sent());
    assert!(env.client.list_multipart_uploads("bucket", "").await.unwrap().is_empty(), "no upload left open");
    assert_eq!(keys_under(&env, "big").await, before, "the existing archive is untouched, nothing stray is left");
    assert!(!env.dir.path().join("state/journals").read_dir().unwrap().any(|_| true), "no journal left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_ship_does_not_resume_over_an_archive_written_since() {
    use cargoship::archive::journal::{Journal, Settings, dir_for};
    let env = start().await;
    let mine = small_tree(&env, "mine", 1, 8);
    let o = options(&env, &mine, "place");
    // A run of `mine` to s3://bucket/place was interrupted before it sent anything...
    let source = std::fs::canonicalize(&mine).unwrap().to_str().unwrap().to_owned();
    let settings = Settings {
        source: source.clone(),
        destination: "s3://bucket/place".into(),
        codec: o.codec,
        level: o.level,
        suitcase_size: o.suitcase_size,
        frame_size: o.frame_size,
        exclude: vec![],
    };
    let dir = dir_for(&o.state_dir, &source, &settings.destination);
    Journal::create(&dir, settings, vec![walk(&mine, &Exclude::default()).unwrap().items], vec![], 0).unwrap();
    // ...and meanwhile another tree was shipped there.
    let theirs = small_tree(&env, "theirs", 50, 8);
    ship(&env.client, &options(&env, &theirs, "place"), Arc::new(ShipProgress::default())).await.unwrap();
    let before = keys_under(&env, "place").await;

    let err = ship(&env.client, &o, Arc::new(ShipProgress::default())).await.unwrap_err();
    assert!(err.to_string().contains("another archive was written at s3://bucket/place"), "{err}");
    assert_eq!(keys_under(&env, "place").await, before, "their archive is untouched");
    assert!(Journal::open(&dir).unwrap().is_some(), "the interrupted run is kept for --no-resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_whole_archive_dials_its_suitcases_connections_while_the_inventory_comes_down() {
    let env = start().await;
    let src = small_tree(&env, "warm", 7, 40);
    ship(&env.client, &options(&env, &src, "warm"), Arc::new(ShipProgress::default())).await.unwrap();
    // 100 ms round trips: the first request (the inventory's HEAD) is not a short path.
    let scenario = Scenario::parse("name = \"t\"\n[link]\nrtt_ms = 100.0").unwrap();
    let emu = Emulator::start(scenario, "127.0.0.1:0".parse().unwrap(), &env.server.endpoint_url()).await.unwrap();

    // Opened for a part of it (or a listing, a mount): nothing is dialled ahead.
    let far = client_for(&env.server, emu.endpoint_url()).await;
    ArchiveReader::open(far.clone(), "bucket", "warm").await.unwrap();
    assert_eq!(far.connections_dialled_ahead(), 0);

    // Opened to restore all of it: one connection per suitcase, and the restore's GETs
    // take them (no GET opens a connection of its own).
    let far = client_for(&env.server, emu.endpoint_url()).await;
    let reader = ArchiveReader::open_to_restore_all(far.clone(), "bucket", "warm").await.unwrap();
    let suitcases = reader.inventory().suitcases.len();
    assert!(suitcases > 4, "shipped as pieces: {suitcases}");
    assert_eq!(far.connections_dialled_ahead(), suitcases);
    let before = emu.report().totals.connections;
    let out = env.dir.path().join("out-warm");
    restore(&reader, &restore_opts(out.clone(), &[]), Arc::new(ExtractProgress::default())).await.unwrap();
    assert_same_tree(&src, &out);
    assert_eq!(emu.report().totals.connections, before, "the suitcases' GETs used the connections dialled ahead");
}
