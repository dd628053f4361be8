//! `cargoship ship` as a process: killed with SIGKILL mid-upload (twice) and re-run, it
//! finishes without re-sending acknowledged parts and the archive restores identically;
//! unreadable files are skipped and listed, or stop a `--strict` run leaving nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use s3opt::{ClientConfig, OptimizedS3Client};
use testbed::data::noise;
use testbed::{EmbeddedServer, Emulator, Scenario, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_cargoship");
const MIB: usize = 1 << 20;

struct Env {
    dir: tempfile::TempDir,
    server: EmbeddedServer,
    endpoint: String,
}

impl Env {
    async fn start(scenario: Option<&str>) -> (Self, Option<Emulator>) {
        let dir = tempfile::tempdir().unwrap();
        let server = EmbeddedServer::start(ServerConfig::ephemeral(dir.path().join("store"))).await.unwrap();
        server.create_bucket("bucket").unwrap();
        let (endpoint, emu) = match scenario {
            Some(s) => {
                let scenario = Scenario::parse(&format!("name = \"t\"\n{s}")).unwrap();
                let emu =
                    Emulator::start(scenario, "127.0.0.1:0".parse().unwrap(), &server.endpoint_url()).await.unwrap();
                (emu.endpoint_url(), Some(emu))
            }
            None => (server.endpoint_url(), None),
        };
        (Self { dir, server, endpoint }, emu)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") || k.starts_with("CARGOSHIP_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", self.dir.path())
            .env("CARGOSHIP_STATE_DIR", self.dir.path().join("state"))
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "cargoship")
            .env("AWS_SECRET_ACCESS_KEY", "cargoship-secret")
            .env("AWS_REGION", "us-east-1")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }

    async fn client(&self) -> OptimizedS3Client {
        let cfg = ClientConfig {
            endpoint_url: Some(self.server.endpoint_url()),
            region: Some("us-east-1".into()),
            credentials: Some(("cargoship".into(), "cargoship-secret".into())),
            ..ClientConfig::default()
        };
        OptimizedS3Client::new(cfg).await.unwrap()
    }

    /// The event log of the (single) ship journal.
    fn events(&self) -> String {
        let Ok(dirs) = std::fs::read_dir(self.dir.path().join("state/journals")) else { return String::new() };
        dirs.filter_map(|d| std::fs::read_to_string(d.unwrap().path().join("events.jsonl")).ok()).collect()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn trees_equal(a: &Path, b: &Path) {
    let none = cargoship::archive::walk::Exclude::default();
    let (wa, wb) =
        (cargoship::archive::walk::walk(a, &none).unwrap(), cargoship::archive::walk::walk(b, &none).unwrap());
    assert_eq!(wa.items, wb.items);
    for i in wa.items.iter().filter(|i| i.kind == cargoship::archive::inventory::Kind::File) {
        assert!(std::fs::read(a.join(&i.path)).unwrap() == std::fs::read(b.join(&i.path)).unwrap(), "{}", i.path);
    }
}

/// Starts a ship and SIGKILLs it once `until` holds for its journal's events.
async fn ship_and_kill(env: &Env, args: &[&str], until: impl Fn(&str) -> bool) {
    let mut child = env.command(args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if until(&env.events()) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ship ended ({status}) before it could be killed; events: {}", env.events());
        }
        assert!(Instant::now() < deadline, "ship never reached the kill point");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ship_resumes_without_resending_acknowledged_parts() {
    // 8 MB/s, so the ~40 MB upload takes seconds and can be killed part-way.
    let (env, _emu) = Env::start(Some("[link]\nrtt_ms = 2.0\nbottleneck_up_mbps = 8.0\n")).await;
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..3u64 {
        std::fs::write(src.join(format!("sub/big-{i}.bin")), noise(12 * MIB + 1000, i)).unwrap();
    }
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    let args = [
        "--json",
        "-q",
        "--concurrency",
        "2",
        "--part-size",
        "5MiB",
        "ship",
        src.to_str().unwrap(),
        "s3://bucket/arch",
        "--suitcase-size",
        "12MiB",
        "--parallel-suitcases",
        "1",
    ];
    let parts = |e: &str| e.matches("\"event\":\"part\"").count();
    // Kill 1: inside the first suitcase, after its first acknowledged part.
    ship_and_kill(&env, &args, |e| parts(e) >= 1).await;
    let at_first_kill = parts(&env.events());
    // Kill 2: after a whole suitcase and a part of the next one.
    ship_and_kill(&env, &args, |e| e.contains("\"event\":\"done\"") && parts(e) >= at_first_kill + 3).await;
    let events = env.events();
    let done_before = events.matches("\"event\":\"done\"").count();
    assert!(done_before >= 1, "{events}");

    let o = env.run(&args).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["files"], 4);
    let resumed_suitcases = j["resumed_suitcases"].as_u64().unwrap() as usize;
    let resumed_bytes = j["resumed_bytes"].as_u64().unwrap();
    eprintln!("resumed: {resumed_suitcases} suitcases, {} parts, {resumed_bytes} bytes", j["resumed_parts"]);
    assert_eq!(resumed_suitcases, done_before);
    assert!(j["resumed_parts"].as_u64().unwrap() >= 1 || resumed_suitcases == 3, "{j}");

    // The last run sent exactly what had not been acknowledged: the unfinished suitcases
    // minus their resumed parts, plus the inventory. No acknowledged byte went twice.
    let client = env.client().await;
    let mut inv = Vec::new();
    client.get_object("bucket", "arch/cargoship-inventory.json.zst", &mut inv).await.unwrap();
    let inventory = cargoship::archive::Inventory::from_stored(&inv).unwrap();
    let unfinished: u64 = inventory.suitcases[resumed_suitcases..].iter().map(|s| s.size).sum();
    let sent = j["metrics"]["bytes_sent"].as_u64().unwrap();
    assert_eq!(sent, unfinished - resumed_bytes + inv.len() as u64, "{j}");
    assert!(client.list_multipart_uploads("bucket", "").await.unwrap().is_empty(), "no upload left open");
    assert!(env.events().is_empty(), "journal removed after the commit");

    let out = env.dir.path().join("out");
    let o = env.run(&["-q", "restore", "s3://bucket/arch", out.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    trees_equal(&src, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_ship_can_be_discarded_leaving_nothing_behind() {
    let (env, _emu) = Env::start(Some("[link]\nrtt_ms = 2.0\nbottleneck_up_mbps = 8.0\n")).await;
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), noise(30 * MIB, 1)).unwrap();
    let ship = ["--concurrency", "2", "--part-size", "5MiB", "ship", src.to_str().unwrap(), "s3://bucket/gone"];
    // Killed once a part is in and the inventory, staged as soon as the suitcase was packed,
    // is waiting for its commit: two uploads are open.
    ship_and_kill(&env, &ship, |e| e.contains("\"event\":\"part\"") && e.contains("inventory_upload")).await;
    let client = env.client().await;
    assert_eq!(client.list_multipart_uploads("bucket", "").await.unwrap().len(), 2);
    let o = env.run(&[&ship[..], &["--abort"]].concat()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 multipart upload(s) aborted"), "{}", stderr(&o));
    assert!(client.list_multipart_uploads("bucket", "").await.unwrap().is_empty());
    assert!(client.list("bucket", "gone", None).await.unwrap().objects.is_empty());
    assert!(env.events().is_empty());
    let o = env.run(&[&ship[..], &["--abort"]].concat()).await;
    assert_eq!(o.status.code(), Some(2), "nothing left to discard: {}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_the_store_no_longer_has_is_sent_again() {
    // The journal of a killed ship names a multipart upload that is gone by the next run
    // (aborted here; also what a kill right after its completion leaves). S3 answers
    // NoSuchUpload, the embedded store AccessDenied: either way the suitcase goes again.
    let (env, _emu) = Env::start(Some("[link]\nrtt_ms = 2.0\nbottleneck_up_mbps = 8.0\n")).await;
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), noise(30 * MIB, 2)).unwrap();
    let ship = ["-q", "--concurrency", "2", "--part-size", "5MiB", "ship", src.to_str().unwrap(), "s3://bucket/again"];
    ship_and_kill(&env, &ship, |e| e.contains("\"event\":\"part\"") && e.contains("inventory_upload")).await;
    let client = env.client().await;
    let open = client.list_multipart_uploads("bucket", "").await.unwrap();
    let suitcase: Vec<_> = open.iter().filter(|u| u.key.contains("/suitcases/")).collect();
    assert_eq!((open.len(), suitcase.len()), (2, 1), "the suitcase's and the staged inventory's");
    client.abort_multipart_upload("bucket", &suitcase[0].key, &suitcase[0].upload_id).await.unwrap();
    let o = env.run(&ship).await;
    assert!(o.status.success(), "{}", stderr(&o));
    // The killed run's inventory upload was aborted by this one, which committed its own.
    assert!(client.list_multipart_uploads("bucket", "").await.unwrap().is_empty(), "no upload left open");
    let out = env.dir.path().join("out");
    let o = env.run(&["-q", "restore", "s3://bucket/again", out.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    trees_equal(&src, &out);
}

/// Makes `path` and its ancestors up to `root` traversable by anyone.
fn open_up(root: &Path, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut p: Option<PathBuf> = Some(path.to_owned());
    while let Some(dir) = p {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        if dir == root {
            break;
        }
        p = dir.parent().map(Path::to_owned);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_files_are_skipped_and_listed_or_stop_a_strict_ship_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let (env, _) = Env::start(None).await;
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ok.txt"), b"fine").unwrap();
    std::fs::write(src.join("secret.txt"), b"private").unwrap();
    std::fs::set_permissions(src.join("secret.txt"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::create_dir_all(env.dir.path().join("state")).unwrap();
    for p in [&src, &env.dir.path().join("state")] {
        open_up(env.dir.path(), p);
    }
    std::fs::set_permissions(src.join("ok.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    // Root reads everything; run as nobody so the permission really bites.
    let as_nobody = |extra: &[&str]| {
        let mut args = vec!["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "-q"];
        args.extend_from_slice(extra);
        let cmd = env.command(&[]);
        let mut c = tokio::process::Command::new("setpriv");
        c.args(&args);
        for (k, v) in cmd.as_std().get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    };
    let src_s = src.to_str().unwrap();
    let o = as_nobody(&["ship", src_s, "s3://bucket/skip"]).output().await.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipped secret.txt: cannot be read: Permission denied"), "{}", stderr(&o));
    let client = env.client().await;
    let mut inv = Vec::new();
    client.get_object("bucket", "skip/cargoship-inventory.json.zst", &mut inv).await.unwrap();
    let inventory = cargoship::archive::Inventory::from_stored(&inv).unwrap();
    assert_eq!(inventory.skipped.len(), 1);
    assert_eq!(inventory.skipped[0].path, "secret.txt");
    assert_eq!(inventory.totals.files, 1);

    let o = as_nobody(&["ship", src_s, "s3://bucket/strict", "--strict"]).output().await.unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("secret.txt cannot be read"), "{}", stderr(&o));
    assert!(client.list("bucket", "strict", None).await.unwrap().objects.is_empty(), "no suitcase left");
    assert!(client.list_multipart_uploads("bucket", "").await.unwrap().is_empty(), "no upload left");
    assert!(env.events().is_empty(), "no journal left");

    let o = env.run(&["ship", env.dir.path().join("missing").to_str().unwrap(), "s3://bucket/x"]).await;
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_entries_stay_out_of_ship_survey_verify_restore_and_put() {
    let (env, _) = Env::start(None).await;
    let src = env.dir.path().join("src");
    for d in ["src/.git/objects", "data/cache", "logs"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    for f in
        ["src/main.rs", "src/main.rs.tmp", "src/.git/objects/ab", "data/cache/x.bin", "data/keep.bin", "logs/a.log"]
    {
        std::fs::write(src.join(f), f.as_bytes()).unwrap();
    }
    let src_s = src.to_str().unwrap();
    let excludes = ["--exclude", ".git", "--exclude", "*.tmp", "--exclude", "data/cache/"];

    let o = env.run(&[&["survey", src_s][..], &excludes].concat()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(": 3 files, 3 directories"), "{out}");
    assert!(out.contains("left out by --exclude: 3 entries"), "{out}");

    let o = env.run(&[&["ship", src_s, "s3://bucket/ex"][..], &excludes].concat()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("shipped 3 files") && out.contains("0 skipped, 3 excluded"), "{out}");
    // The archive records its patterns, so verify compares with the tree walked the same way.
    let o = env.run(&["verify", "s3://bucket/ex", "--against", src_s, "--deep"]).await;
    assert!(o.status.success(), "{}{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
    let dest = env.dir.path().join("back");
    let o = env.run(&["restore", "s3://bucket/ex", dest.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        dest.join("src/main.rs").is_file() && dest.join("data/keep.bin").is_file() && dest.join("logs/a.log").is_file()
    );
    for gone in ["src/.git", "src/main.rs.tmp", "data/cache"] {
        assert!(!dest.join(gone).exists(), "{gone} was excluded");
    }
    // A resumed or repeated ship must use the same patterns.
    let o = env.run(&["ship", src_s, "s3://bucket/ex"]).await;
    assert!(!o.status.success(), "without the patterns the tree differs from the archive's");

    // put sends regular files only: a symlink is passed over, and said so.
    std::os::unix::fs::symlink("main.rs", src.join("src/link")).unwrap();
    let o = env
        .run(&[&["put", src_s, "s3://bucket/objs", "--prefixes", "1", "--prefix-root", ""][..], &excludes].concat())
        .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("uploaded 3 objects") && out.contains(", 1 skipped, 3 excluded"), "{out}");
    assert!(
        stderr(&o).contains("link: a symlink (put sends regular files and does not follow links)"),
        "{}",
        stderr(&o)
    );
    let client = env.client().await;
    let mut keys: Vec<String> =
        client.list("bucket", "objs/", None).await.unwrap().objects.into_iter().map(|e| e.key).collect();
    keys.sort();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains(".git") && !k.ends_with(".tmp") && !k.contains("cache")), "{keys:?}");

    for bad in ["a[b", "/"] {
        let o = env.run(&["ship", src_s, "s3://bucket/bad", "--exclude", bad]).await;
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("bad --exclude pattern '{bad}'")), "{}", stderr(&o));
    }
}
