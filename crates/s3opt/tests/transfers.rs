//! Uploads, downloads and ranged reads against the embedded S3 endpoint.

mod common;

use common::{BUCKET, MIB, data, start};
use s3opt::{Error, PutOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_roundtrip_of_64_mib_is_byte_identical_and_verified() {
    let env = start().await;
    let src = data(64 * MIB as usize + 12_345, 1);
    let put = env.client.put_object(BUCKET, "big/object.bin", &src[..], PutOptions::default()).await.unwrap();
    assert!(put.multipart);
    assert_eq!(put.parts, 13, "64 MiB + 12 KiB in 5 MiB parts");
    assert_eq!(put.bytes, src.len() as u64);
    let m = env.client.metrics();
    assert!(m.peak_in_flight > 1, "parts were sent concurrently (peak {})", m.peak_in_flight);
    assert!(m.peak_in_flight <= 4, "never more than the window (peak {})", m.peak_in_flight);
    assert_eq!(m.requests_by_op.get("UploadPart"), Some(&13));

    let mut out = Vec::new();
    let got = env.client.get_object(BUCKET, "big/object.bin", &mut out).await.unwrap();
    assert_eq!(got.bytes, src.len() as u64);
    assert_eq!(got.verified_with, Some("CRC64NVME"));
    assert!(got.ranges >= 13);
    assert!(out == src, "downloaded bytes differ from the source");
    let info = env.client.head(BUCKET, "big/object.bin").await.unwrap();
    assert_eq!(info.size, src.len() as u64);
    assert!(info.checksum.is_some(), "server stored the full-object checksum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_goes_up_in_parts_read_from_it_and_comes_back_identical() {
    let env = common::start_with(|c| {
        c.memory_budget = 10 * MIB;
        c.controller = s3opt::ControllerKind::Fixed(6);
        c.concurrency = 6;
    })
    .await;
    let src = data(40 * MIB as usize + 123, 5);
    let path = env.dir.path().join("src.bin");
    std::fs::write(&path, &src).unwrap();
    let put = env.client.put_file(BUCKET, "file.bin", &path, PutOptions::default()).await.unwrap();
    assert!(put.multipart);
    assert_eq!((put.parts, put.bytes), (9, src.len() as u64));
    let m = env.client.metrics();
    assert!(
        m.peak_in_flight <= 6,
        "a fixed window is never exceeded, even by the last parts (peak {})",
        m.peak_in_flight
    );
    assert_eq!(env.client.memory_in_use(), 0, "every part's share of the budget came back");
    let mut out = Vec::new();
    let got = env.client.get_object(BUCKET, "file.bin", &mut out).await.unwrap();
    assert_eq!(got.verified_with, Some("CRC64NVME"));
    assert!(out == src, "downloaded bytes differ from the source");

    // A small file is one PUT; a missing one is an error that names it.
    std::fs::write(&path, b"tiny").unwrap();
    let put = env.client.put_file(BUCKET, "tiny.bin", &path, PutOptions::default()).await.unwrap();
    assert!(!put.multipart && put.bytes == 4);
    let missing = env.dir.path().join("no-such-file");
    let err = env.client.put_file(BUCKET, "x", &missing, PutOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("no-such-file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_go_up_in_one_put_and_come_back_verified() {
    let env = start().await;
    for (i, len) in [0usize, 1, 4096, 5 * MIB as usize - 1].into_iter().enumerate() {
        let src = data(len, i as u64 + 7);
        let key = format!("small/{len}");
        let put = env.client.put_object(BUCKET, &key, &src[..], PutOptions::default()).await.unwrap();
        assert!(!put.multipart);
        let mut out = Vec::new();
        let got = env.client.get_object(BUCKET, &key, &mut out).await.unwrap();
        assert_eq!(out, src);
        assert_eq!(got.verified_with, Some("CRC64NVME"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_range_reads_start_middle_end_and_to_the_end() {
    let env = start().await;
    let src = data(12 * MIB as usize, 3);
    env.client.put_object(BUCKET, "r.bin", &src[..], PutOptions::default()).await.unwrap();
    let before = env.client.metrics();

    let head = env.client.get_range(BUCKET, "r.bin", 0, 4096).await.unwrap();
    assert_eq!(&head[..], &src[..4096]);
    let after = env.client.metrics();
    let gets = |m: &s3opt::MetricsSnapshot| m.requests_by_op.get("GetObject").copied().unwrap_or(0);
    assert_eq!(gets(&after) - gets(&before), 1, "a small read is one GET");
    assert_eq!(after.requests - before.requests, 1, "and nothing else (no HEAD)");
    assert_eq!(after.bytes_received - before.bytes_received, 4096, "of exactly the bytes asked for");

    let mid = env.client.get_range(BUCKET, "r.bin", 6 * MIB + 3, 100_000).await.unwrap();
    assert_eq!(&mid[..], &src[6 * MIB as usize + 3..6 * MIB as usize + 100_003]);
    let end = env.client.get_range(BUCKET, "r.bin", src.len() as u64 - 10, 10).await.unwrap();
    assert_eq!(&end[..], &src[src.len() - 10..]);
    let tail = env.client.get_range(BUCKET, "r.bin", 11 * MIB, 0).await.unwrap();
    assert_eq!(&tail[..], &src[11 * MIB as usize..]);
    let overlap = env.client.get_range(BUCKET, "r.bin", src.len() as u64 - 5, 100).await.unwrap();
    assert_eq!(&overlap[..], &src[src.len() - 5..], "a read crossing the end returns what exists");
    // Longer than a part: split into parallel GETs, same bytes.
    let long = env.client.get_range(BUCKET, "r.bin", 1, 11 * MIB).await.unwrap();
    assert_eq!(&long[..], &src[1..11 * MIB as usize + 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_range_past_the_end_is_a_clear_error() {
    let env = start().await;
    env.client.put_object(BUCKET, "short", &b"0123456789"[..], PutOptions::default()).await.unwrap();
    for (offset, len) in [(10, 1), (50, 0), (1000, 20 * MIB)] {
        let err = env.client.get_range(BUCKET, "short", offset, len).await.unwrap_err();
        match &err {
            Error::InvalidRange { offset: o, size, .. } => assert_eq!((*o, *size), (offset, 10)),
            other => panic!("expected InvalidRange, got {other:?}"),
        }
        assert!(err.to_string().contains("past the end"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_and_buckets_are_named() {
    let env = start().await;
    let err = env.client.get_object(BUCKET, "nope", Vec::new()).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchKey { ref key, .. } if key == "nope"), "{err:?}");
    let err = env.client.get_range(BUCKET, "nope", 0, 10).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchKey { .. }), "{err:?}");
    // A prefix of other keys is not an object either.
    env.client.put_object(BUCKET, "dir/inner", &b"x"[..], PutOptions::default()).await.unwrap();
    let err = env.client.head(BUCKET, "dir").await.unwrap_err();
    assert!(matches!(err, Error::NoSuchKey { .. }), "{err:?}");
    let err = env.client.get_range(BUCKET, "dir", 0, 1).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchKey { .. }), "{err:?}");
    let err = env.client.get_object("no-such-bucket", "k", Vec::new()).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchBucket { ref bucket } if bucket == "no-such-bucket"), "{err:?}");
    let err = env.client.put_object("no-such-bucket", "k", &b"x"[..], PutOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchBucket { .. }), "{err:?}");
    let err = env
        .client
        .put_object("no-such-bucket", "k", &data(6 * MIB as usize, 1)[..], PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchBucket { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_unreachable_endpoints_fail_fast_and_clearly() {
    let env = common::start_with(|c| c.credentials = Some(("cargoship".into(), "wrong-secret".into()))).await;
    let err = env.client.put_object(BUCKET, "k", &b"x"[..], PutOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::AccessDenied { .. }), "{err:?}");
    assert_eq!(env.client.metrics().requests, 1, "denied requests are not retried");

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let env = common::start_with(|c| c.endpoint_url = Some(url.clone())).await;
    let started = std::time::Instant::now();
    let err = env.client.head(BUCKET, "k").await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(started.elapsed().as_secs() < 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_limit_paces_uploads_and_downloads() {
    // 4 MiB/s: 15 MiB in 5 MiB parts cannot start its third part before 2.5 s, nor finish a
    // download of it in less time either. (Only lower bounds: a slow machine is slower.)
    let env = common::start_with(|c| c.bandwidth_limit = Some(4 * MIB)).await;
    let src = data(15 * MIB as usize, 3);
    let t = std::time::Instant::now();
    env.client.put_object(BUCKET, "paced.bin", &src[..], PutOptions::default()).await.unwrap();
    let up = t.elapsed().as_secs_f64();
    assert!(up >= 2.4, "15 MiB at 4 MiB/s took only {up:.2} s");
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    env.client.get_object(BUCKET, "paced.bin", &mut out).await.unwrap();
    let down = t.elapsed().as_secs_f64();
    assert!(out == src);
    assert!(down >= 2.4, "15 MiB at 4 MiB/s took only {down:.2} s");
    assert!(env.client.part_size() <= 5 * MIB, "parts shrink to about a second's worth");
    // Parts read from a file as they are sent are paced too.
    let path = env.dir.path().join("paced.bin");
    std::fs::write(&path, &src).unwrap();
    let t = std::time::Instant::now();
    env.client.put_file(BUCKET, "paced-file.bin", &path, PutOptions::default()).await.unwrap();
    let up = t.elapsed().as_secs_f64();
    assert!(up >= 2.4, "15 MiB from a file at 4 MiB/s took only {up:.2} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_tcp_congestion_control_carries_transfers_and_keeps_errors_clear() {
    // reno is in every Linux kernel; the client then runs on its own hyper connector.
    let env = common::start_with(|c| c.tcp_congestion = Some("reno".into())).await;
    let src = data(12 * MIB as usize + 7, 9);
    let put = env.client.put_object(BUCKET, "cc.bin", &src[..], PutOptions::default()).await.unwrap();
    assert!(put.multipart);
    let mut out = Vec::new();
    let got = env.client.get_object(BUCKET, "cc.bin", &mut out).await.unwrap();
    assert!(out == src, "downloaded bytes differ from the source");
    assert_eq!(got.verified_with, Some("CRC64NVME"));
    let err = env.client.head(BUCKET, "missing").await.unwrap_err();
    assert!(matches!(err, Error::NoSuchKey { .. }), "{err:?}");

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let env = common::start_with(|c| {
        c.endpoint_url = Some(url.clone());
        c.tcp_congestion = Some("reno".into());
    })
    .await;
    let err = env.client.head(BUCKET, "k").await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "a refused connection is unreachable: {err:?}");

    let dir = tempfile::tempdir().unwrap();
    let server = testbed::EmbeddedServer::start(testbed::ServerConfig::ephemeral(dir.path())).await.unwrap();
    let mut cfg = common::config(&server);
    cfg.tcp_congestion = Some("warp-drive".into());
    let Err(err) = s3opt::OptimizedS3Client::new(cfg).await else { panic!("an unknown algorithm was accepted") };
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("warp-drive"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_upload_sends_its_bytes_now_and_appears_only_when_committed() {
    let env = start().await;
    let src = data(300_000, 9);
    let sent_when = |c: &s3opt::OptimizedS3Client| c.metrics().requests_by_op.get("UploadPart").copied().unwrap_or(0);

    // Held: the bytes go up (an object under one part still goes as a part), nothing appears.
    let (commit, gate) = s3opt::Commit::new();
    let opts = PutOptions { content_length: Some(src.len() as u64), commit: Some(gate), ..PutOptions::default() };
    let upload = {
        let (client, src) = (env.client.clone(), src.clone());
        tokio::spawn(async move { client.put_object(BUCKET, "held/inventory", &src[..], opts).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sent_when(&env.client) == 0 {
        assert!(std::time::Instant::now() < deadline, "the part was never sent");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!upload.is_finished(), "it waits for the commit");
    assert!(
        matches!(env.client.head(BUCKET, "held/inventory").await, Err(Error::NoSuchKey { .. })),
        "nothing appears before the commit"
    );
    assert_eq!(env.client.list_multipart_uploads(BUCKET, "held/").await.unwrap().len(), 1);
    commit.commit();
    let put = upload.await.unwrap().unwrap();
    assert!(put.multipart && put.parts == 1, "{put:?}");
    let mut out = Vec::new();
    let got = env.client.get_object(BUCKET, "held/inventory", &mut out).await.unwrap();
    assert_eq!(got.verified_with, Some("CRC64NVME"));
    assert!(out == src, "the committed object holds the bytes sent before the commit");
    assert!(env.client.list_multipart_uploads(BUCKET, "held/").await.unwrap().is_empty());

    // Dropped instead: the upload is aborted and nothing is left.
    let (commit, gate) = s3opt::Commit::new();
    let opts = PutOptions { content_length: Some(src.len() as u64), commit: Some(gate), ..PutOptions::default() };
    let parts_before = sent_when(&env.client);
    let upload = {
        let (client, src) = (env.client.clone(), src.clone());
        tokio::spawn(async move { client.put_object(BUCKET, "held/dropped", &src[..], opts).await })
    };
    while sent_when(&env.client) == parts_before {
        assert!(std::time::Instant::now() < deadline, "the part was never sent");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(commit);
    let err = upload.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(matches!(env.client.head(BUCKET, "held/dropped").await, Err(Error::NoSuchKey { .. })));
    assert!(env.client.list_multipart_uploads(BUCKET, "held/").await.unwrap().is_empty(), "aborted");
}
