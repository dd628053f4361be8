//! Each emulator knob, measured through a real S3 client against the embedded endpoint.

use std::time::{Duration, Instant};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::ProvideErrorMetadata;
use testbed::{EmbeddedServer, Emulator, Scenario, ServerConfig};

struct Env {
    _dir: tempfile::TempDir,
    server: EmbeddedServer,
    emu: Emulator,
    /// Client through the emulator.
    via: aws_sdk_s3::Client,
    /// Client straight to the server (to seed data without shaping).
    direct: aws_sdk_s3::Client,
}

fn client(url: &str, server: &EmbeddedServer) -> aws_sdk_s3::Client {
    let c = server.config();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(&c.access_key, &c.secret_key, None, None, "test"))
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn start(scenario: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedServer::start(ServerConfig::ephemeral(dir.path())).await.unwrap();
    server.create_bucket("bkt").unwrap();
    let scenario = Scenario::parse(&format!("name = \"test\"\n{scenario}")).unwrap();
    let emu = Emulator::start(scenario, "127.0.0.1:0".parse().unwrap(), &server.endpoint_url()).await.unwrap();
    let via = client(&emu.endpoint_url(), &server);
    let direct = client(&server.endpoint_url(), &server);
    Env { _dir: dir, server, emu, via, direct }
}

async fn seed(env: &Env, key: &str, len: usize) {
    let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    env.direct.put_object().bucket("bkt").key(key).body(body.into()).send().await.unwrap();
}

async fn get_range(c: &aws_sdk_s3::Client, key: &str, start: u64, len: u64) -> Result<usize, String> {
    let out = c
        .get_object()
        .bucket("bkt")
        .key(key)
        .range(format!("bytes={start}-{}", start + len - 1))
        .send()
        .await
        .map_err(|e| format!("{:?}", e.code()))?;
    let data = out.body.collect().await.map_err(|e| e.to_string())?;
    Ok(data.into_bytes().len())
}

fn assert_within(measured: f64, target: f64, tol: f64, what: &str) {
    assert!((measured - target).abs() <= target * tol, "{what}: measured {measured:.2}, configured {target:.2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_bottleneck_holds_many_connections_to_its_rate() {
    let env = start("[link]\nbottleneck_down_mbps = 20.0").await;
    seed(&env, "obj", 16_000_000).await;
    let t = Instant::now();
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let c = env.via.clone();
            tokio::spawn(async move { get_range(&c, "obj", i * 2_000_000, 2_000_000).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let rate = total as f64 / t.elapsed().as_secs_f64() / 1e6;
    assert_within(rate, 20.0, 0.10, "shared bottleneck MB/s");
    assert_eq!(env.emu.report().totals.bytes_down, 16_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_gets_at_most_its_per_connection_cap() {
    let env = start("[link]\nper_connection_mbps = 4.0").await;
    seed(&env, "obj", 4_000_000).await;
    env.via.head_object().bucket("bkt").key("obj").send().await.unwrap(); // open the connection
    let t = Instant::now();
    get_range(&env.via, "obj", 0, 4_000_000).await.unwrap();
    let rate = 4.0 / t.elapsed().as_secs_f64();
    assert_within(rate, 4.0, 0.10, "per-connection MB/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_pays_an_rtt_and_a_new_connection_one_more() {
    let env = start("[link]\nrtt_ms = 100.0").await;
    seed(&env, "obj", 10).await;
    let t = Instant::now();
    env.via.head_object().bucket("bkt").key("obj").send().await.unwrap();
    let first = t.elapsed();
    let t = Instant::now();
    env.via.head_object().bucket("bkt").key("obj").send().await.unwrap();
    let second = t.elapsed();
    assert!(first >= Duration::from_millis(200), "handshake + request: {first:?}");
    assert!(second >= Duration::from_millis(100) && second < Duration::from_millis(160), "warm request: {second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_prefix_rate_requests_get_503_slowdown() {
    let env = start("[throttle]\nrequests_per_sec_per_prefix = 5.0\nprefix_depth = 1").await;
    seed(&env, "hot/a", 10).await;
    seed(&env, "cold/a", 10).await;
    let mut slowdowns = 0;
    for _ in 0..20 {
        if let Err(e) = env.via.get_object().bucket("bkt").key("hot/a").send().await {
            assert_eq!(e.code(), Some("SlowDown"));
            assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(503));
            slowdowns += 1;
        }
    }
    assert!(slowdowns >= 10, "20 quick requests against 5/s: {slowdowns} throttled");
    env.via.get_object().bucket("bkt").key("cold/a").send().await.expect("another prefix has its own budget");
    assert_eq!(env.emu.report().totals.status_503, slowdowns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_resets_break_downloads_and_uploads() {
    let env = start("[faults]\nreset_rate = 1.0").await;
    seed(&env, "obj", 1_000_000).await;
    let err = get_range(&env.via, "obj", 0, 1_000_000).await.unwrap_err();
    assert!(!err.is_empty());
    let put = env.via.put_object().bucket("bkt").key("up").body(vec![1u8; 500_000].into()).send().await;
    assert!(put.is_err(), "an upload whose connection is reset fails");
    assert_eq!(env.emu.report().totals.resets_injected, 2);
    assert!(env.direct.head_object().bucket("bkt").key("up").send().await.is_err(), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_pause_a_body_and_errors_answer_500() {
    let env = start("[faults]\nstall_rate = 1.0\nstall_secs = 0.5").await;
    seed(&env, "obj", 100_000).await;
    let t = Instant::now();
    assert_eq!(get_range(&env.via, "obj", 0, 100_000).await.unwrap(), 100_000);
    assert!(t.elapsed() >= Duration::from_millis(500), "{:?}", t.elapsed());
    assert_eq!(env.emu.report().totals.stalls_injected, 1);

    // Stalls at chosen request numbers: the second and fourth request here.
    let env = start("[faults]\nstall_at = [1, 3]\nstall_secs = 0.4").await;
    seed(&env, "obj", 100_000).await;
    let mut took = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        assert_eq!(get_range(&env.via, "obj", 0, 100_000).await.unwrap(), 100_000);
        took.push(t.elapsed() >= Duration::from_millis(400));
    }
    assert_eq!(took, [false, true, false, true]);
    assert_eq!(env.emu.report().totals.stalls_injected, 2);

    let env = start("[faults]\nerror_rate = 1.0").await;
    seed(&env, "obj", 10).await;
    let err = env.via.get_object().bucket("bkt").key("obj").send().await.unwrap_err();
    assert_eq!(err.code(), Some("InternalError"));
    assert_eq!(env.emu.report().totals.errors_injected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_upload_body_is_rejected_by_the_server_checksum() {
    let env = start("[faults]\ncorrupt_first = 1").await;
    let body = vec![7u8; 200_000];
    let crc = crc_b64(&body);
    // Unsigned payload, as cargoship sends: the CRC, not the SigV4 body hash, must catch it.
    let put = |body: Vec<u8>| {
        env.via
            .put_object()
            .bucket("bkt")
            .key("c")
            .body(body.into())
            .checksum_crc64_nvme(&crc)
            .customize()
            .disable_payload_signing()
            .send()
    };
    // An object already there is left as it was by the corrupted PUT, not replaced.
    env.direct.put_object().bucket("bkt").key("c").body(b"old".to_vec().into()).send().await.unwrap();
    assert_eq!(put(body.clone()).await.unwrap_err().code(), Some("BadDigest"));
    let old = env.direct.get_object().bucket("bkt").key("c").send().await.unwrap();
    assert_eq!(old.body.collect().await.unwrap().into_bytes().as_ref(), b"old");
    put(body.clone()).await.unwrap();
    let new = env.direct.get_object().bucket("bkt").key("c").send().await.unwrap();
    assert_eq!(new.body.collect().await.unwrap().into_bytes().as_ref(), &body[..]);
    assert_eq!(env.emu.report().totals.corruptions_injected, 1);
    let _ = &env.server;
}

fn crc_b64(data: &[u8]) -> String {
    use base64::Engine as _;
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data);
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_changes_the_bottleneck_mid_run() {
    let env =
        start("[link]\nbottleneck_down_mbps = 20.0\n[[schedule]]\nat_secs = 1.0\nbottleneck_down_mbps = 5.0").await;
    seed(&env, "obj", 6_000_000).await;
    env.emu.reset();
    let t = Instant::now();
    let n = get_range(&env.via, "obj", 0, 6_000_000).await.unwrap();
    assert_within(n as f64 / t.elapsed().as_secs_f64() / 1e6, 20.0, 0.10, "before the change");
    tokio::time::sleep_until((t + Duration::from_millis(1100)).into()).await;
    let t = Instant::now();
    let n = get_range(&env.via, "obj", 0, 2_500_000).await.unwrap();
    assert_within(n as f64 / t.elapsed().as_secs_f64() / 1e6, 5.0, 0.10, "after the change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prefix_answers_every_object_request_with_the_configured_error() {
    let env = start("[faults]\nfail_prefixes = [\"bkt/down/\"]\nfail_status = 503").await;
    for i in 0..5 {
        let err = env
            .via
            .put_object()
            .bucket("bkt")
            .key(format!("down/{i}"))
            .body(b"x".to_vec().into())
            .send()
            .await
            .expect_err("the prefix is down");
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    }
    env.via.put_object().bucket("bkt").key("up/1").body(b"y".to_vec().into()).send().await.unwrap();
    env.via.put_object().bucket("bkt").key("downstairs/1").body(b"z".to_vec().into()).send().await.unwrap();
    let listed = env.direct.list_objects_v2().bucket("bkt").send().await.unwrap();
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["downstairs/1", "up/1"], "nothing reached the server under the failed prefix");
    let r = env.emu.report();
    assert_eq!(r.totals.errors_injected, 5);
    assert_eq!(r.totals.status_503, 5);
    let _ = &env.server;
}

#[test]
fn fail_status_must_be_500_or_503() {
    assert!(Scenario::parse("name='x'\n[faults]\nfail_status = 404").unwrap_err().contains("500 or 503"));
}
