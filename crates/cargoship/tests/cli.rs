//! The `cargoship` binary end to end: exit codes and one-line errors for bad input, the
//! embedded default, and a put/get round trip with a JSON summary.

use std::path::Path;
use std::process::Output;

use testbed::{EmbeddedServer, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_cargoship");

struct Env {
    dir: tempfile::TempDir,
    server: EmbeddedServer,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedServer::start(ServerConfig::ephemeral(dir.path().join("store"))).await.unwrap();
    server.create_bucket("bucket").unwrap();
    Env { dir, server }
}

/// Runs the binary with a clean AWS environment (no ~/.aws, no AWS_* variables).
async fn run(home: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("CARGOSHIP_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home).env_remove("XDG_DATA_HOME").envs(envs.iter().copied()).args(args);
    cmd.output().await.unwrap()
}

async fn run_against(env: &Env, args: &[&str]) -> Output {
    let url = env.server.endpoint_url();
    let envs = [
        ("AWS_ENDPOINT_URL", url.as_str()),
        ("AWS_ACCESS_KEY_ID", "cargoship"),
        ("AWS_SECRET_ACCESS_KEY", "cargoship-secret"),
        ("AWS_REGION", "us-east-1"),
    ];
    run(env.dir.path(), &envs, args).await
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failure with `code` and a single error line mentioning `needle`.
fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<_> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_get_round_trips_with_a_json_summary() {
    let env = start().await;
    let src = env.dir.path().join("src.bin");
    let bytes: Vec<u8> = (0..7_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&src, &bytes).unwrap();
    let o =
        run_against(&env, &["--json", "--part-size", "5MiB", "put", src.to_str().unwrap(), "s3://bucket/dir/"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["bytes"], 7_000_000);
    assert_eq!(j["destination"], "s3://bucket/dir/src.bin");
    assert!(j["requests"].as_u64().unwrap() >= 3, "multipart: create, 2 parts, complete");
    assert!(j["mb_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(j["retries"], 0);

    let dest = env.dir.path().join("copy.bin");
    let o = run_against(&env, &["--json", "get", "s3://bucket/dir/src.bin", dest.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["verified_with"], "CRC64NVME");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);

    let part = env.dir.path().join("part.bin");
    let o = run_against(&env, &["get", "s3://bucket/dir/src.bin", part.to_str().unwrap(), "--range", "100:50"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&part).unwrap(), &bytes[100..150]);

    let o = run_against(&env, &["ls", "s3://bucket/"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("PRE dir/"), "{}", String::from_utf8_lossy(&o.stdout));
    let o = run_against(&env, &["ls", "--recursive", "s3://bucket/dir/"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("7000000 dir/src.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_urls_exit_2_with_the_reason() {
    let env = start().await;
    let f = env.dir.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let o = run_against(&env, &["put", f.to_str().unwrap(), "bucket/key"]).await;
    assert_fails(&o, 2, "must start with s3://");
    let o = run_against(&env, &["get", "s3://bucket", "-"]).await;
    assert_fails(&o, 2, "not to standard output");
    let o = run_against(&env, &["ls", "s3://Not_A_Bucket/"]).await;
    assert_fails(&o, 2, "bucket names");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_or_key_exit_3() {
    let env = start().await;
    let out = env.dir.path().join("out");
    let o = run_against(&env, &["get", "s3://bucket/missing", out.to_str().unwrap()]).await;
    assert_fails(&o, 3, "s3://bucket/missing does not exist");
    assert!(!out.exists());
    let o = run_against(&env, &["get", "s3://nobucket/k", out.to_str().unwrap()]).await;
    assert_fails(&o, 3, "bucket 'nobucket' does not exist");
    let f = env.dir.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let o = run_against(&env, &["put", f.to_str().unwrap(), "s3://nobucket/k"]).await;
    assert_fails(&o, 3, "bucket 'nobucket' does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_exit_4() {
    let env = start().await;
    let url = env.server.endpoint_url();
    let envs = [
        ("AWS_ENDPOINT_URL", url.as_str()),
        ("AWS_ACCESS_KEY_ID", "cargoship"),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
        ("AWS_REGION", "us-east-1"),
    ];
    let o = run(env.dir.path(), &envs, &["ls", "s3://bucket/"]).await;
    assert_fails(&o, 4, "access denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_without_credentials_exits_4_at_once() {
    let env = start().await;
    let url = env.server.endpoint_url();
    // No credentials anywhere (instance metadata off, so every machine answers alike): the
    // request cannot be signed, which no retry will change.
    let envs = [("AWS_ENDPOINT_URL", url.as_str()), ("AWS_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")];
    let started = std::time::Instant::now();
    let o = run(env.dir.path(), &envs, &["ls", "s3://bucket/"]).await;
    assert_fails(&o, 4, "no usable AWS credentials");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "not retried: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_exits_5() {
    let env = start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let envs = [("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b"), ("AWS_REGION", "us-east-1")];
    let o = run(env.dir.path(), &envs, &["--endpoint-url", &url, "ls", "s3://bucket/"]).await;
    assert_fails(&o, 5, &format!("cannot reach S3 endpoint {url}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_source_and_unwritable_destination_exit_6() {
    let env = start().await;
    let o = run_against(&env, &["put", "/definitely/not/here.bin", "s3://bucket/k"]).await;
    assert_fails(&o, 6, "cannot read /definitely/not/here.bin");
    let empty = env.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = run_against(&env, &["put", empty.to_str().unwrap(), "s3://bucket/k"]).await;
    assert_fails(&o, 6, "contains no files");

    let f = env.dir.path().join("f");
    std::fs::write(&f, b"hello").unwrap();
    let o = run_against(&env, &["put", f.to_str().unwrap(), "s3://bucket/k"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_against(&env, &["get", "s3://bucket/k", "/no/such/dir/out"]).await;
    assert_fails(&o, 6, "cannot write /no/such/dir/out");
    // A path under a regular file cannot be created, even by root.
    let under_file = f.join("out");
    let o = run_against(&env, &["get", "s3://bucket/k", under_file.to_str().unwrap()]).await;
    assert_fails(&o, 6, "cannot write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_endpoint_or_credentials_the_embedded_store_is_used_and_announced() {
    let home = tempfile::tempdir().unwrap();
    let store = home.path().join("store");
    let f = home.path().join("hello.txt");
    std::fs::write(&f, b"hello, embedded").unwrap();
    let envs = [("CARGOSHIP_EMBEDDED_ROOT", store.to_str().unwrap())];
    let o = run(home.path(), &envs, &["put", f.to_str().unwrap(), "s3://demo/hello.txt"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("embedded local store"), "{err}");
    assert!(err.contains(store.to_str().unwrap()), "says where the data lives: {err}");
    assert_eq!(std::fs::read(store.join("demo/hello.txt")).unwrap(), b"hello, embedded");
    // An explicit endpoint wins over the embedded default.
    let o = run(home.path(), &envs, &["--endpoint-url", "http://127.0.0.1:1", "ls", "s3://demo/"]).await;
    assert!(!stderr(&o).contains("embedded local store"));
    assert_ne!(o.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_of_a_directory_spreads_objects_over_prefixes_with_coordination_metrics() {
    let env = start().await;
    let tree = env.dir.path().join("tree");
    for i in 0..24 {
        let d = tree.join(format!("sub{}", i % 3));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}.txt")), format!("file {i}").repeat(100)).unwrap();
    }
    let args =
        ["--json", "put", tree.to_str().unwrap(), "s3://bucket/runs/", "--prefixes", "4", "--strategy", "fair_share"];
    let o = run_against(&env, &args).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((j["objects"].as_u64(), j["failed"].as_u64()), (Some(24), Some(0)));
    assert_eq!(j["strategy"], "fair_share");
    let prefixes: Vec<&str> = j["prefixes"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(prefixes, ["runs/archives/00/", "runs/archives/40/", "runs/archives/80/", "runs/archives/c0/"]);
    let c = &j["coordination"];
    assert_eq!(c["objects_completed"], 24);
    assert_eq!(c["active_prefixes"], 4);
    for field in
        ["coordination_overhead_percent", "load_balance_efficiency", "pipeline_utilization", "global_throughput_mbps"]
    {
        assert!(c[field].as_f64().is_some(), "{field} in {c}");
    }
    let per: u64 = j["per_prefix"].as_array().unwrap().iter().map(|p| p["objects"].as_u64().unwrap()).sum();
    assert_eq!(per, 24);
    let o = run_against(&env, &["ls", "--recursive", "s3://bucket/runs/"]).await;
    let listing = String::from_utf8_lossy(&o.stdout);
    assert_eq!(listing.lines().filter(|l| l.contains("/sub")).count(), 24, "{listing}");
    assert!(listing.contains("sub1/f1.txt"));

    // Uncoordinated, with a distribution, and a bad strategy name.
    let args = [
        "--json",
        "put",
        tree.to_str().unwrap(),
        "s3://bucket/flat/",
        "--strategy",
        "none",
        "--distribution",
        "hash_based",
    ];
    let o = run_against(&env, &args).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["failed"], 0);
    assert!(j.get("coordination").is_none());
    let o = run_against(&env, &["put", tree.to_str().unwrap(), "s3://bucket/x/", "--strategy", "fastest"]).await;
    assert_fails(&o, 1, "unknown strategy 'fastest'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_downloads_into_a_directory_with_one_get_per_small_object() {
    let env = start().await;
    let client = s3opt::OptimizedS3Client::new(s3opt::ClientConfig {
        endpoint_url: Some(env.server.endpoint_url()),
        region: Some("us-east-1".into()),
        credentials: Some(("cargoship".into(), "cargoship-secret".into())),
        ..s3opt::ClientConfig::default()
    })
    .await
    .unwrap();
    let data =
        |len: usize, seed: u32| -> Vec<u8> { (0..len as u32).map(|i| (i.wrapping_mul(seed) >> 3) as u8).collect() };
    let objects = [
        ("data/a.txt", data(5, 3)),
        ("data/sub/b.bin", data(300_000, 5)),
        ("data/sub/deeper/c.bin", data(20 << 20, 7)),
        ("other/x", data(10, 9)),
    ];
    for (key, bytes) in &objects {
        client.put_object("bucket", key, &bytes[..], s3opt::PutOptions::default()).await.unwrap();
    }

    let out = env.dir.path().join("out");
    let o = run_against(&env, &["--json", "get", "s3://bucket/data/", out.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((j["objects"].as_u64(), j["verified_objects"].as_u64()), (Some(3), Some(3)), "{j}");
    assert_eq!(j["verified_with"], "CRC64NVME");
    assert_eq!(j["bytes"], 5 + 300_000 + (20 << 20));
    // Only the large object is looked at with a HEAD (then fetched in ranges); the small
    // ones are one GET each.
    let ops = &j["metrics"]["requests_by_op"];
    assert_eq!(ops["HeadObject"], 1, "{ops}");
    assert!(ops["GetObject"].as_u64().unwrap() >= 2 + 3, "{ops}");
    for (key, bytes) in &objects[..3] {
        let path = out.join(key.strip_prefix("data/").unwrap());
        assert!(std::fs::read(&path).unwrap() == *bytes, "{key}");
    }
    assert!(!out.join("x").exists() && !out.join("other").exists(), "nothing from outside the prefix");
    let partial = walk(&out).into_iter().filter(|p| p.to_string_lossy().contains("cargoship-partial")).count();
    assert_eq!(partial, 0, "no temporary file is left");

    // Again into the same directory: the files are replaced; the text summary says what went.
    let o = run_against(&env, &["get", "s3://bucket/data/", out.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(line.starts_with("downloaded 3 objects under s3://bucket/data/ to "), "{line}");
    assert!(line.contains("verified (CRC64NVME)"), "{line}");

    // More than a page of keys (1,000): every page's objects arrive.
    let client = &client;
    futures::future::join_all((0..1200).map(|i| async move {
        let body = format!("object {i}");
        client
            .put_object("bucket", &format!("many/{i:04}"), body.as_bytes(), s3opt::PutOptions::default())
            .await
            .unwrap();
    }))
    .await;
    let many = env.dir.path().join("many");
    let o = run_against(&env, &["--json", "get", "s3://bucket/many/", many.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (j["objects"].as_u64(), j["metrics"]["requests_by_op"]["ListObjectsV2"].as_u64()),
        (Some(1200), Some(2))
    );
    assert_eq!(std::fs::read_to_string(many.join("1199")).unwrap(), "object 1199");
    assert_eq!(std::fs::read_dir(&many).unwrap().count(), 1200);
    // `ls` prints them page by page: every key once, in order, across both pages.
    let o = run_against(&env, &["ls", "--recursive", "--objects", "s3://bucket/many/"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let keys: Vec<String> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| l.rsplit(' ').next().unwrap().to_owned()).collect();
    assert_eq!(keys, (0..1200).map(|i| format!("many/{i:04}")).collect::<Vec<_>>());

    // Without its trailing '/', a prefix is an object that does not exist: the error says so.
    let o = run_against(&env, &["get", "s3://bucket/data", out.to_str().unwrap()]).await;
    assert_fails(&o, 3, "s3://bucket/data is a prefix, not an object (end the source with /");
    let o = run_against(&env, &["get", "s3://bucket/nothing/", out.to_str().unwrap()]).await;
    assert_fails(&o, 3, "no objects under s3://bucket/nothing/");

    // --exclude leaves keys out by name, by path after the prefix, or with their directory.
    let some = env.dir.path().join("some");
    let args =
        ["--json", "get", "s3://bucket/data/", some.to_str().unwrap(), "--exclude", "*.txt", "--exclude", "deeper/"];
    let o = run_against(&env, &args).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((j["objects"].as_u64(), j["excluded"].as_u64()), (Some(1), Some(2)), "{j}");
    assert!(some.join("sub/b.bin").is_file() && !some.join("a.txt").exists() && !some.join("sub/deeper").exists());
    let o = run_against(&env, &["get", "s3://bucket/data/", some.to_str().unwrap(), "--exclude", "*"]).await;
    assert_fails(&o, 3, "no objects under s3://bucket/data/ that --exclude leaves in");
    let o = run_against(&env, &["get", "s3://bucket/data/a.txt", some.to_str().unwrap(), "--exclude", "x"]).await;
    assert_fails(&o, 2, "--exclude applies to a prefix");
    let o = run_against(&env, &["get", "s3://bucket/data/", out.join("a.txt").to_str().unwrap()]).await;
    assert_fails(&o, 6, "not a directory");
    let o = run_against(&env, &["get", "s3://bucket/data/", out.to_str().unwrap(), "--range", "0:10"]).await;
    assert_fails(&o, 2, "--range applies to one object");
}

/// Every path under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
