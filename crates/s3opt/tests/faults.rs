//! Through the emulator: corrupted parts, resets and throttling are retried, classified
//! and counted, and the object still arrives intact.

mod common;

use common::{BUCKET, MIB, data};
use s3opt::{ClientConfig, OptimizedS3Client, PutOptions};
use testbed::{EmbeddedServer, Emulator, Scenario, ServerConfig};

async fn via_emulator(scenario: &str) -> (tempfile::TempDir, EmbeddedServer, Emulator, OptimizedS3Client) {
    via_emulator_with(scenario, |_| {}).await
}

async fn via_emulator_with(
    scenario: &str,
    tweak: impl FnOnce(&mut ClientConfig),
) -> (tempfile::TempDir, EmbeddedServer, Emulator, OptimizedS3Client) {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedServer::start(ServerConfig::ephemeral(dir.path())).await.unwrap();
    server.create_bucket(BUCKET).unwrap();
    let scenario = Scenario::parse(&format!("name = \"t\"\n{scenario}")).unwrap();
    let emu = Emulator::start(scenario, "127.0.0.1:0".parse().unwrap(), &server.endpoint_url()).await.unwrap();
    let mut cfg = ClientConfig { endpoint_url: Some(emu.endpoint_url()), ..common::config(&server) };
    tweak(&mut cfg);
    let client = OptimizedS3Client::new(cfg).await.unwrap();
    (dir, server, emu, client)
}

/// Stores `src` at `key` straight on `server` (not through the emulator, so its faults
/// hit only what the test measures); returns that direct client.
async fn put_direct(server: &EmbeddedServer, key: &str, src: &[u8]) -> OptimizedS3Client {
    let direct = OptimizedS3Client::new(common::config(server)).await.unwrap();
    direct.put_object(BUCKET, key, src, PutOptions::default()).await.unwrap();
    direct
}

async fn roundtrip(client: &OptimizedS3Client, key: &str, src: &[u8]) {
    client.put_object(BUCKET, key, src, PutOptions::default()).await.unwrap();
    let mut out = Vec::new();
    let got = client.get_object(BUCKET, key, &mut out).await.unwrap();
    assert_eq!(got.verified_with, Some("CRC64NVME"));
    assert!(out == src, "{key}: downloaded bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_parts_are_rejected_by_checksum_and_resent() {
    let (_d, _s, emu, client) = via_emulator("[faults]\ncorrupt_first = 3").await;
    roundtrip(&client, "c.bin", &data(20 * MIB as usize, 1)).await;
    assert_eq!(emu.report().totals.corruptions_injected, 3);
    let m = client.metrics();
    assert_eq!(m.errors.get("integrity"), Some(&3), "{:?}", m.errors);
    assert_eq!(m.retries, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_mid_body_are_retried() {
    resets_are_retried(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_retried_on_connections_with_a_chosen_congestion_control() {
    resets_are_retried(|c| c.tcp_congestion = Some("reno".into())).await;
}

async fn resets_are_retried(tweak: impl FnOnce(&mut s3opt::ClientConfig)) {
    let (_d, _s, emu, client) = via_emulator_with("[faults]\nreset_first = 4", tweak).await;
    roundtrip(&client, "r.bin", &data(30 * MIB as usize, 2)).await;
    let resets = emu.report().totals.resets_injected;
    let m = client.metrics();
    assert_eq!(resets, 4, "the scenario reset the first four requests");
    assert_eq!(m.errors.get("reset").copied().unwrap_or(0), resets, "each reset seen as one: {:?}", m.errors);
    assert_eq!(m.retries, resets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_off_mid_body_resumes_where_it_stopped() {
    cut_off_download_resumes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_to_a_file_cut_off_mid_body_resumes_where_it_stopped() {
    cut_off_download_resumes(true).await;
}

async fn cut_off_download_resumes(to_file: bool) {
    // Requests 1 and 2 (the two 8 MiB ranges; request 0 is the HEAD) are reset somewhere
    // between 10% and 90% of their body. The retries ask only for what did not arrive;
    // fetching the ranges again would cost at least 2 x 0.8 MiB more.
    let (dir, server, emu, client) = via_emulator_with("[faults]\nreset_first = 3", |cfg| {
        cfg.controller = s3opt::ControllerKind::Fixed(2);
        cfg.part_size = 8 * MIB;
    })
    .await;
    let src = data(16 * MIB as usize, 4);
    put_direct(&server, "cut.bin", &src).await;
    let (got, out) = if to_file {
        let dest = dir.path().join("cut.out");
        let got = client.get_object_to_file(BUCKET, "cut.bin", &dest).await.unwrap();
        (got, std::fs::read(&dest).unwrap())
    } else {
        let mut out = Vec::new();
        (client.get_object(BUCKET, "cut.bin", &mut out).await.unwrap(), out)
    };
    assert!(out == src, "resumed download differs from the source");
    assert_eq!(got.verified_with, Some("CRC64NVME"));
    let report = emu.report();
    assert_eq!(report.totals.resets_injected, 2);
    assert_eq!(client.metrics().retries, 2);
    let sent = report.totals.bytes_down;
    assert!(
        sent >= src.len() as u64 && sent <= src.len() as u64 + MIB,
        "the emulator sent {sent} bytes for a {} byte object: cut-off bytes were fetched again",
        src.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_replaced_during_a_download_fails_it_and_leaves_no_file() {
    // 4 ranges of 6 MiB, two at a time at 4 MB/s each: the last two start after the
    // object was replaced, and must not be spliced onto the first two.
    let (dir, server, _emu, client) = via_emulator_with("[link]\nper_connection_mbps = 4.0", |cfg| {
        cfg.controller = s3opt::ControllerKind::Fixed(2);
        cfg.part_size = 6 * MIB;
    })
    .await;
    let direct = put_direct(&server, "moving.bin", &data(24 * MIB as usize, 5)).await;
    let dest = dir.path().join("moving.out");
    let download = client.get_object_to_file(BUCKET, "moving.bin", &dest);
    let replace = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        direct.put_object(BUCKET, "moving.bin", &data(24 * MIB as usize, 6)[..], PutOptions::default()).await.unwrap();
    };
    let (got, ()) = tokio::join!(download, replace);
    let err = got.expect_err("a download spanning two versions must fail");
    assert!(matches!(err, s3opt::Error::Changed { .. }), "refused as another version, not spliced: {err:?}");
    assert!(err.to_string().contains("s3://test-bucket/moving.bin changed while it was being downloaded"), "{err}");
    assert!(!dest.exists(), "no file at the destination");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().contains("moving")), "no partial file left: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_dropped_mid_way_leaves_no_temporary_file() {
    // As on Ctrl-C: the download's future is dropped while its ranges are coming in.
    let (dir, server, _emu, client) = via_emulator("[link]\nbottleneck_down_mbps = 8.0").await;
    put_direct(&server, "slow.bin", &data(16 * MIB as usize, 8)).await;
    let dest = dir.path().join("slow.out");
    let download = client.get_object_to_file(BUCKET, "slow.bin", &dest);
    let partial = dir.path().join(".slow.out.cargoship-partial");
    let cut = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while client.bytes_received() < 2 * MIB {
            assert!(std::time::Instant::now() < deadline, "the download never started");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(partial.exists(), "bytes go to the temporary file while the download runs");
    };
    tokio::select! {
        r = download => panic!("the download ended before it was cut: {r:?}"),
        () = cut => {}
    }
    assert!(!partial.exists() && !dest.exists(), "nothing is left of the dropped download");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowdown_is_counted_as_throttling_and_retried() {
    let (_d, _s, emu, client) = via_emulator("[throttle]\nrequests_per_sec_per_prefix = 20.0").await;
    let client = &client;
    futures::future::join_all((0..60).map(|i| async move {
        client.put_object(BUCKET, &format!("hot/{i}"), &b"x"[..], PutOptions::default()).await.unwrap();
    }))
    .await;
    let slowdowns = emu.report().totals.status_503;
    let errors = client.metrics().errors;
    let (throttled, resets) =
        (errors.get("throttled").copied().unwrap_or(0), errors.get("reset").copied().unwrap_or(0));
    assert!(slowdowns > 0 && throttled > 0, "{slowdowns} 503s, {throttled} seen as throttling");
    // Every SlowDown is counted as throttling, except one whose connection the emulator
    // closed with the unread body still queued: the kernel's reset can then overtake the
    // 503 (the client sees a reset, and retries all the same).
    assert!(throttled <= slowdowns && slowdowns <= throttled + resets, "{slowdowns} 503s: {errors:?}");
    assert_eq!(client.list(BUCKET, "hot/", None).await.unwrap().objects.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auto_controller_opens_the_window_on_a_path_with_a_per_connection_cap() {
    // 4 MB/s per connection under a 24 MB/s bottleneck: about 6 parts must be in flight.
    let scenario =
        "[link]\nrtt_ms = 20.0\nper_connection_mbps = 4.0\nbottleneck_up_mbps = 24.0\nbottleneck_down_mbps = 24.0";
    let (_d, _s, _emu, client) = via_emulator_with(scenario, |c| {
        c.controller = s3opt::ControllerKind::Auto;
        c.concurrency = 2;
        c.memory_budget = 64 * MIB;
    })
    .await;
    let src = data(60 * MIB as usize, 9);
    let started = std::time::Instant::now();
    roundtrip(&client, "auto.bin", &src).await;
    let secs = started.elapsed().as_secs_f64();
    let timeline = client.timeline();
    let peak = timeline.iter().map(|p| p.state.window).max().unwrap_or(0);
    assert!(peak >= 5, "the window grew from 2 toward the ~6 the path needs (peak {peak})");
    assert!(timeline.iter().all(|p| p.state.controller == "auto"));
    // Two stream-limited directions at 2 streams would take 2 x 60 MiB / 8 MB/s = 15.7 s.
    assert!(secs < 13.0, "steering made it faster than 2 fixed streams: {secs:.1} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_are_hedged_within_a_five_percent_budget() {
    // Stalls of 5 s start 2 s in, after a warm-up that teaches the client normal latency.
    let scenario = "[faults]\nstall_secs = 5.0\n[[schedule]]\nat_secs = 2.0\nstall_rate = 0.1";
    let (_d, server, emu, client) = via_emulator(scenario).await;
    let _ = &server;
    client.put_object(BUCKET, "small", &data(64 * 1024, 3)[..], PutOptions::default()).await.unwrap();
    for _ in 0..30 {
        client.get_range(BUCKET, "small", 0, 4096).await.unwrap();
    }
    tokio::time::sleep_until((std::time::Instant::now() + std::time::Duration::from_secs(2)).into()).await;
    let stalls_before = emu.report().totals.stalls_injected;
    let started = std::time::Instant::now();
    for i in 0..60u64 {
        let got = client.get_range(BUCKET, "small", i * 100, 100).await.unwrap();
        assert_eq!(got.len(), 100);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stalls = emu.report().totals.stalls_injected - stalls_before;
    let m = client.metrics();
    assert!(stalls > 0, "the scenario stalled some requests");
    assert!(m.hedges >= 1, "stragglers were hedged");
    assert!(m.hedges as f64 <= 0.05 * m.requests_by_op["GetObject"] as f64 + 1.0, "{} hedges", m.hedges);
    assert!(elapsed < stalls as f64 * 5.0, "{elapsed:.1} s for {stalls} stalls of 5 s: hedging saved time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stalled_in_the_first_round_is_hedged_once_latency_is_known() {
    // 40 PUTs start together, before the client has any latency sample; the first one
    // stalls for 30 s. Once the others have finished, it is a straggler and is hedged.
    let (_d, _s, emu, client) = via_emulator("[faults]\nstall_first = 1\nstall_secs = 30.0").await;
    let client = &client;
    let started = std::time::Instant::now();
    futures::future::join_all((0..40u64).map(|i| async move {
        let body = data(64 * 1024, i);
        client.put_object(BUCKET, &format!("round/{i}"), &body[..], PutOptions::default()).await.unwrap();
    }))
    .await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(emu.report().totals.stalls_injected, 1);
    assert_eq!(client.metrics().hedges, 1, "the stalled PUT was hedged, nothing else");
    assert!(secs < 10.0, "{secs:.1} s: the stall of 30 s was not waited out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_to_a_file_does_not_wait_out_a_range_stalled_at_the_end() {
    // 4 ranges of 6 MiB at 4 MB/s each; the first one (request 1: request 0 is the HEAD)
    // stalls for 20 s somewhere in its body. The other three end after ~1.6 s; then the
    // window has room, the stalled range's unreceived bytes are split off, and once it has
    // received nothing for a second, all it has left goes to a GET of its own.
    let scenario = "[link]\nrtt_ms = 20.0\nper_connection_mbps = 4.0\n[faults]\nstall_at = [1]\nstall_secs = 20.0";
    let (dir, server, emu, client) = via_emulator_with(scenario, |cfg| {
        cfg.controller = s3opt::ControllerKind::Fixed(4);
        cfg.part_size = 8 * MIB;
    })
    .await;
    let src = data(24 * MIB as usize, 7);
    put_direct(&server, "stall.bin", &src).await;
    let dest = dir.path().join("stall.out");
    let started = std::time::Instant::now();
    let got = client.get_object_to_file(BUCKET, "stall.bin", &dest).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(emu.report().totals.stalls_injected, 1);
    assert!(std::fs::read(&dest).unwrap() == src, "downloaded bytes differ");
    assert_eq!(got.verified_with, Some("CRC64NVME"), "the ranges' and the pieces' checksums combined");
    assert!(got.splits >= 1, "the stalled range was split: {got:?}");
    assert!(secs < 8.0, "{secs:.1} s: the 20 s stall was waited out");
    let m = client.metrics();
    assert_eq!(m.bytes_received, src.len() as u64, "pieces split off are not counted twice");
    assert_eq!(m.splits, u64::from(got.splits), "the client's metrics count the splits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_body_takes_longer_than_the_idle_timeout_is_not_abandoned() {
    // 1 MB/s per connection: a 4 MiB object as one PutObject takes 4.2 s to send, twice
    // the 2 s the client waits in silence. Its body moves all along, so it is not silence.
    let scenario = "[link]\nrtt_ms = 20.0\nper_connection_mbps = 1.0";
    let (_d, _s, _emu, client) = via_emulator_with(scenario, |cfg| {
        cfg.controller = s3opt::ControllerKind::Fixed(1);
        cfg.part_size = 8 * MIB;
        cfg.idle_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let src = data(4 * MIB as usize, 12);
    let started = std::time::Instant::now();
    client.put_object(BUCKET, "slow.bin", &src[..], PutOptions::default()).await.unwrap();
    assert!(started.elapsed().as_secs_f64() > 3.0, "the path was not slow: {:?}", started.elapsed());
    let m = client.metrics();
    assert_eq!(m.retries, 0, "{:?}", m.errors);
    // The controller heard of the bytes moving while the one request ran (a point every
    // 250 ms at most), not only of its end.
    let points = client.timeline().len();
    assert!(points >= 8, "{points} timeline points over a 4 s request");
    let mut out = Vec::new();
    client.get_object(BUCKET, "slow.bin", &mut out).await.unwrap();
    assert!(out == src, "the object differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_connection_stalls_is_hedged_before_any_latency_is_known() {
    // The client's first request, a PutObject of 12 MiB at 4 MB/s, stalls for 30 s part way
    // through its body. With no latency sample yet, nothing can call it late; but its
    // connection holds bytes the server has stopped taking, and 2 s of that is a stall.
    // (Stalled past its first 10%, more is left of it than the emulator's socket and buffers
    // take in, about 0.7 MiB: what they swallow is acknowledged.)
    let scenario = "[link]\nrtt_ms = 20.0\nper_connection_mbps = 4.0\n[faults]\nstall_first = 1\nstall_secs = 30.0";
    let (_d, _s, emu, client) = via_emulator_with(scenario, |cfg| {
        cfg.part_size = 16 * MIB;
        cfg.idle_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let src = data(12 * MIB as usize, 13);
    let started = std::time::Instant::now();
    client.put_object(BUCKET, "stalled.bin", &src[..], PutOptions::default()).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(emu.report().totals.stalls_injected, 1);
    let m = client.metrics();
    assert_eq!(m.hedges, 1, "{m:?}");
    assert_eq!(m.retries, 0, "{:?}", m.errors);
    assert!(secs < 15.0, "{secs:.1} s: the 30 s stall was waited out");
    // Progress was reported all along, the hedge's race too (a point every 250 ms at most).
    let t: Vec<f64> = client.timeline().iter().map(|p| p.t).collect();
    let gap = t.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    assert!(gap < 1.0, "{gap:.1} s without a timeline point: {t:?}");
    let mut out = Vec::new();
    client.get_object(BUCKET, "stalled.bin", &mut out).await.unwrap();
    assert!(out == src, "the object differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_hedge_stalls_too_is_waited_for_not_sent_again() {
    // The first two requests stall 8 s mid-body: the PUT and the hedge its stalled
    // connection earns (the one hedge the budget allows), so nothing rescues it. Nothing
    // may call that a failure and send the body a third time: the idle timeout (60 s here)
    // is what bounds a stall, and with no budget left the request is only watched.
    let scenario = "[link]\nrtt_ms = 20.0\nper_connection_mbps = 4.0\n[faults]\nstall_first = 2\nstall_secs = 8.0";
    let (_d, _s, emu, client) = via_emulator_with(scenario, |cfg| {
        cfg.part_size = 32 * MIB;
        cfg.memory_budget = 128 * MIB;
        cfg.idle_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    // 16 MiB: stalled anywhere past its first 10%, more is left than the emulator's socket
    // and buffers take in, so the client's socket holds unacknowledged bytes (4 MiB could
    // be swallowed whole, and a connection that holds none is not stalled).
    let src = data(16 * MIB as usize, 17);
    let started = std::time::Instant::now();
    client.put_object(BUCKET, "waited.bin", &src[..], PutOptions::default()).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(emu.report().totals.stalls_injected, 2, "the PUT and its hedge both stalled");
    let m = client.metrics();
    assert_eq!(m.hedges, 1, "{m:?}");
    assert_eq!(m.retries, 0, "a stalled upload was failed and sent again: {:?}", m.errors);
    assert!(secs >= 8.0, "{secs:.1} s: the PUT ended before either stall did");
    let mut out = Vec::new();
    client.get_object(BUCKET, "waited.bin", &mut out).await.unwrap();
    assert!(out == src, "the object differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_longer_than_a_download_range_is_split_even_when_it_fits_in_a_part() {
    // 4 MB/s per connection: a 6 MiB read as one GET takes 1.6 s, as 2 MiB ranges (the
    // first range size, before any request is measured; then about a second of one
    // request's rate) side by side a third of that. (A fixed window keeps ranges a part.)
    let scenario = "[link]\nrtt_ms = 20.0\nper_connection_mbps = 4.0";
    let (_d, server, _emu, client) = via_emulator_with(scenario, |cfg| {
        cfg.controller = s3opt::ControllerKind::Auto;
        cfg.part_size = 8 * MIB;
        cfg.memory_budget = 256 * MIB;
    })
    .await;
    let src = data(24 * MIB as usize, 11);
    put_direct(&server, "long.bin", &src).await;
    let gets = |m: &s3opt::MetricsSnapshot| m.requests_by_op.get("GetObject").copied().unwrap_or(0);
    for (i, offset) in [3 * MIB, 15 * MIB + 7].into_iter().enumerate() {
        let before = client.metrics();
        let got = client.get_range(BUCKET, "long.bin", offset, 6 * MIB).await.unwrap();
        assert!(got[..] == src[offset as usize..(offset + 6 * MIB) as usize], "read {i}: bytes differ");
        let after = client.metrics();
        let n = gets(&after) - gets(&before);
        assert!(client.part_size() > 6 * MIB, "read {i}: the part is still larger than the read");
        assert!(n >= 2, "read {i}: a 6 MiB read under a part of {} went as {n} GET(s)", client.part_size());
        assert_eq!(after.bytes_received - before.bytes_received, 6 * MIB, "read {i}: each byte fetched once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_first_round_trip_starts_the_window_small_and_a_long_one_does_not() {
    let short = s3opt::config::SHORT_ROUND_TRIP.as_secs_f64() * 1e3;
    let src = data(3 * MIB as usize, 5);
    // Loopback answers in a few ms; 30 ms of emulated round trip is a far endpoint; a
    // number given (short_path_concurrency off) holds anywhere.
    for (rtt, small_start) in [(0.0, true), (30.0, false), (0.0, false)] {
        let (_d, server, _emu, client) = via_emulator_with(&format!("[link]\nrtt_ms = {rtt}"), |cfg| {
            cfg.controller = s3opt::ControllerKind::Auto;
            cfg.concurrency = 64;
            cfg.memory_budget = 256 * MIB;
            if !small_start {
                cfg.short_path_concurrency = if rtt > 0.0 { Some(8) } else { None };
            }
        })
        .await;
        put_direct(&server, "x", &src).await;
        assert_eq!(client.controller_state().window, 64, "rtt {rtt}: starts at concurrency");
        client.head(BUCKET, "x").await.unwrap();
        let latency = client.metrics().latency_ms.max;
        let window = client.controller_state().window;
        if small_start && latency < short {
            assert_eq!(window, 8, "a {latency:.1} ms first round trip starts at 8");
            assert_eq!(client.metrics().concurrency, 8);
        } else {
            assert!(rtt == 0.0 || latency >= rtt, "the emulated round trip was taken ({latency:.1} ms)");
            assert_eq!(window, 64, "rtt {rtt}, {latency:.1} ms first round trip: stays at 64");
        }
        // The decision is taken once, on the first request: data requests steer from here.
        let mut out = Vec::new();
        client.get_object(BUCKET, "x", &mut out).await.unwrap();
        assert!(out == src, "rtt {rtt}: bytes differ");
        let after_data = client.controller_state().window;
        client.head(BUCKET, "x").await.unwrap();
        assert_eq!(client.controller_state().window, after_data, "rtt {rtt}: a later HEAD changes nothing");
    }
}

/// Every attempt's key, outcome, start and end, as the client saw them.
#[derive(Default)]
struct Attempts(std::sync::Mutex<Vec<(String, s3opt::network::Sample)>>);

impl s3opt::SampleObserver for Attempts {
    fn on_sample(&self, key: &str, sample: &s3opt::network::Sample) {
        self.0.lock().unwrap().push((key.to_owned(), *sample));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_keeps_its_place_when_the_window_shrinks_below_what_is_in_flight() {
    // 4 MB/s per connection: the first PUT (4 MiB) is reset somewhere in its body; three
    // of 12 MiB take 3 s each. Once all four are under way, the window drops to 1, as a
    // controller's cut or a drain does: the retry must go at once, not wait for the other
    // three to end.
    let (_d, _s, emu, client) =
        via_emulator_with("[link]\nper_connection_mbps = 4.0\n[faults]\nreset_first = 1", |cfg| {
            cfg.controller = s3opt::ControllerKind::Fixed(4);
            cfg.part_size = 16 * MIB;
            cfg.memory_budget = 64 * MIB;
        })
        .await;
    let attempts = std::sync::Arc::new(Attempts::default());
    client.add_sample_observer(attempts.clone());
    let first: &'static [u8] = data(4 * MIB as usize, 1).leak();
    let rest: &'static [u8] = data(12 * MIB as usize, 2).leak();
    let client = &client;
    let put = |key: &'static str, body: &'static [u8]| async move {
        client.put_object(BUCKET, key, body, PutOptions::default()).await.unwrap();
    };
    let ms = |n| tokio::time::sleep(std::time::Duration::from_millis(n));
    let others = async {
        ms(10).await;
        futures::future::join3(put("b", rest), put("c", rest), put("d", rest)).await;
    };
    let cut = async {
        ms(40).await;
        client.set_concurrency(1);
    };
    futures::future::join3(put("a", first), others, cut).await;
    assert_eq!(emu.report().totals.resets_injected, 1);
    let seen = attempts.0.lock().unwrap().clone();
    let retry = seen.iter().find(|(k, s)| k == "a" && s.retransmit).expect("the reset PUT was retried").1;
    let others_done = seen.iter().filter(|(k, _)| k != "a").map(|(_, s)| s.finished).min().unwrap();
    assert!(retry.started < others_done, "the retry started before any other PUT ended");
    assert!(retry.finished < others_done, "and, 4 MiB against 12 MiB, ended before them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_the_service_turned_away_gives_up_its_place_while_it_backs_off() {
    // One request in flight at a time; every request under down/ fails with a 500. While
    // the PUT to down/ waits out its backoffs, the PUT to up/ takes the slot and finishes.
    let scenario = format!("[faults]\nfail_prefixes = [\"{BUCKET}/down/\"]");
    let (_d, _s, _emu, client) = via_emulator_with(&scenario, |cfg| {
        cfg.controller = s3opt::ControllerKind::Fixed(1);
        cfg.retry.max_attempts = 6;
    })
    .await;
    let attempts = std::sync::Arc::new(Attempts::default());
    client.add_sample_observer(attempts.clone());
    let body = data(64 * 1024, 3);
    let client = &client;
    let down = async { client.put_object(BUCKET, "down/x", &body[..], PutOptions::default()).await };
    let up = async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        client.put_object(BUCKET, "up/y", &body[..], PutOptions::default()).await
    };
    let (down, up) = futures::future::join(down, up).await;
    assert!(down.is_err(), "the failing prefix fails");
    up.unwrap();
    let seen = attempts.0.lock().unwrap().clone();
    let up_done =
        seen.iter().find(|(k, s)| k == "up/y" && s.outcome == s3opt::network::Outcome::Ok).unwrap().1.finished;
    let down_attempts: Vec<_> = seen.iter().filter(|(k, _)| k == "down/x").map(|(_, s)| s.finished).collect();
    assert_eq!(down_attempts.len(), 6);
    assert!(up_done < *down_attempts.last().unwrap(), "up/ did not wait for down/'s retries to run out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploads_parts_find_their_connections_dialled_while_the_upload_is_created() {
    // 300 ms round trips, and the emulator holds a new connection one round trip (the
    // handshake): a part on a connection of its own takes two and its transfer, one
    // dialled while CreateMultipartUpload was out takes one and its transfer (a debug
    // build on a busy machine moves 5 MiB over loopback in well under a round trip).
    let rtt = 0.3;
    let (_d, _s, emu, client) = via_emulator_with("[link]\nrtt_ms = 300.0", |cfg| {
        cfg.controller = s3opt::ControllerKind::Fixed(4);
        cfg.part_size = 5 * MIB;
    })
    .await;
    let attempts = std::sync::Arc::new(Attempts::default());
    client.add_sample_observer(attempts.clone());
    let src = data(20 * MIB as usize, 11);
    let opts = PutOptions { content_length: Some(src.len() as u64), ..PutOptions::default() };
    client.put_object(BUCKET, "warm", &src[..], opts.clone()).await.unwrap();
    assert_eq!(client.connections_dialled_ahead(), 4, "one per part, no more than the window");
    let parts: Vec<f64> = attempts
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.op == s3opt::network::Op::UploadPart)
        .map(|(_, s)| s.latency().as_secs_f64())
        .collect();
    assert_eq!(parts.len(), 4);
    assert!(parts.iter().all(|&l| l < 2.0 * rtt), "no part waited for a handshake: {parts:?}");
    // The four dialled ahead, and CreateMultipartUpload's own unless it took one of them
    // (it names the endpoint, so the dials start as it does): never one per request.
    let connections = emu.report().totals.connections;
    assert!((4..=5).contains(&connections), "{connections} connections for 6 requests");
    // Once data requests have begun, the pool holds connections: nothing more is dialled.
    client.put_object(BUCKET, "warm2", &src[..], opts).await.unwrap();
    assert_eq!(client.connections_dialled_ahead(), 4);
    let mut out = Vec::new();
    client.get_object(BUCKET, "warm", &mut out).await.unwrap();
    assert!(out == src, "bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_dialled_ahead_on_a_short_path() {
    let (_d, server, _emu, client) = via_emulator_with("[link]\nrtt_ms = 0.0", |_| {}).await;
    put_direct(&server, "x", b"x").await;
    client.head(BUCKET, "x").await.unwrap();
    client.expect_requests(4);
    let src = data(12 * MIB as usize, 12);
    let opts = PutOptions { content_length: Some(src.len() as u64), ..PutOptions::default() };
    client.put_object(BUCKET, "near", &src[..], opts).await.unwrap();
    assert_eq!(client.connections_dialled_ahead(), 0, "a round trip under 20 ms: handshakes cost nothing");
}
