//! Cross-prefix coordination against the embedded server through the emulator: per-prefix
//! throttling, a prefix that fails outright, the lease API, coordinator failure, cancellation.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{BUCKET, MIB, data};
use s3opt::coordination::{
    CoordinationConfig, Distribution, LeaseOutcome, ParallelConfig, ParallelUploader, PipelineCoordinator,
    PrefixHealth, PrefixPattern, ScheduledUpload, Strategy, UploadExecutor, UploadItem,
};
use s3opt::{ClientConfig, OptimizedS3Client, PutOptions};
use testbed::{EmbeddedServer, Emulator, Scenario, ServerConfig};

struct Env {
    _dir: tempfile::TempDir,
    files: tempfile::TempDir,
    _server: EmbeddedServer,
    emu: Emulator,
    client: OptimizedS3Client,
}

async fn via_emulator(scenario: &str, tweak: impl FnOnce(&mut ClientConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedServer::start(ServerConfig::ephemeral(dir.path())).await.unwrap();
    server.create_bucket(BUCKET).unwrap();
    let scenario = Scenario::parse(&format!("name = \"t\"\n{scenario}")).unwrap();
    let emu = Emulator::start(scenario, "127.0.0.1:0".parse().unwrap(), &server.endpoint_url()).await.unwrap();
    let mut cfg = ClientConfig {
        endpoint_url: Some(emu.endpoint_url()),
        controller: s3opt::ControllerKind::Auto,
        concurrency: 16,
        memory_budget: 128 * MIB,
        ..common::config(&server)
    };
    tweak(&mut cfg);
    let client = OptimizedS3Client::new(cfg).await.unwrap();
    Env { _dir: dir, files: tempfile::tempdir().unwrap(), _server: server, emu, client }
}

/// `n` files of `len` bytes under `dir/d<k>/`, with distinct contents.
fn make_files(dir: &Path, n: usize, len: usize) -> Vec<UploadItem> {
    (0..n)
        .map(|i| {
            let name = format!("d{}/f{i:04}.bin", i % 3);
            let path = dir.join(&name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, data(len, i as u64 + 1)).unwrap();
            UploadItem { path, name, size: len as u64, priority: (i % 2) as u8 }
        })
        .collect()
}

/// Every item is stored exactly once, under one of `prefixes`, with its bytes.
async fn assert_all_stored(client: &OptimizedS3Client, items: &[UploadItem], prefixes: &[String]) {
    let listing = client.list(BUCKET, "", None).await.unwrap();
    for item in items {
        let found: Vec<_> = listing
            .objects
            .iter()
            .filter(|o| o.key.ends_with(&item.name) && prefixes.iter().any(|p| o.key == format!("{p}{}", item.name)))
            .collect();
        assert_eq!(found.len(), 1, "{} stored once: {found:?}", item.name);
        let got = client.get_range(BUCKET, &found[0].key, 0, 0).await.unwrap();
        assert!(got == std::fs::read(&item.path).unwrap(), "{} bytes match", item.name);
    }
    assert_eq!(listing.objects.len(), items.len(), "nothing extra");
}

async fn empty_bucket(client: &OptimizedS3Client) {
    for o in client.list(BUCKET, "", None).await.unwrap().objects {
        client.delete(BUCKET, &o.key).await.unwrap();
    }
}

fn throttled_so_far(client: &OptimizedS3Client) -> u64 {
    client.metrics().errors.get("throttled").copied().unwrap_or(0)
}

fn top_level_hash(n: usize) -> PrefixPattern {
    let _ = n;
    PrefixPattern::Hash { root: String::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_upload_survives_throttling_and_a_dead_prefix_with_nothing_lost() {
    // 4 prefixes 00/ 40/ 80/ c0/, each limited to 30 requests/s; 80/ is down.
    let scenario = "[link]\nrtt_ms = 5.0\n[faults]\nfail_prefixes = [\"test-bucket/80/\"]\n\
                    [throttle]\nrequests_per_sec_per_prefix = 30.0\nprefix_depth = 1";
    let env = via_emulator(scenario, |_| {}).await;
    let items = make_files(env.files.path(), 150, 16 * 1024);
    for (strategy, use_leases) in [(Strategy::TcpLike, false), (Strategy::Adaptive, true)] {
        let cfg = ParallelConfig {
            max_prefixes: 4,
            max_concurrent_uploads: 3,
            use_leases,
            pattern: top_level_hash(4),
            coordination: CoordinationConfig { strategy, ..CoordinationConfig::default() },
            ..ParallelConfig::default()
        };
        let up = ParallelUploader::new(env.client.clone(), BUCKET, "", cfg);
        let prefixes = up.prefixes();
        assert_eq!(prefixes, ["00/", "40/", "80/", "c0/"]);
        empty_bucket(&env.client).await;
        let throttled_before = throttled_so_far(&env.client);
        let summary = up.upload_all(items.clone()).await;
        assert_eq!(summary.failed, 0, "leases {use_leases}: {:?}", summary.results.iter().find(|r| r.error.is_some()));
        assert_eq!(summary.objects, 150);
        assert!(!summary.fell_back);
        let c = summary.coordination.as_ref().unwrap();
        assert_eq!(c.drained_prefixes, 1, "the dead prefix was drained: {:?}", summary.congestion);
        assert_eq!(c.objects_completed, 150);
        let congestion = summary.congestion.as_ref().unwrap();
        let dead = congestion.prefixes.iter().find(|p| p.prefix == "80/").unwrap();
        assert_eq!(dead.health, PrefixHealth::Drained);
        assert!(dead.failures >= 4, "the controller saw the dead prefix's failed requests");
        let throttled: u64 = congestion.prefixes.iter().map(|p| p.throttled).sum();
        assert_eq!(
            throttled,
            throttled_so_far(&env.client) - throttled_before,
            "every 503 the engine saw reached the controller as a sample of its prefix"
        );
        assert_eq!(summary.per_prefix.iter().find(|p| p.prefix == "80/").unwrap().objects, 0);
        // (Balance is not asserted: a short run on a throttled path legitimately favours
        // the prefixes with budget left.)
        assert!(
            c.global_throughput_mbps > 0.0 && c.pipeline_utilization > 0.0 && c.load_balance_efficiency > 0.0,
            "leases {use_leases}: {c:?} {:?}",
            summary.per_prefix
        );
        assert_all_stored(&env.client, &items, &prefixes).await;
    }
    assert!(env.emu.report().totals.errors_injected >= 4);
    assert!(env.client.list_multipart_uploads(BUCKET, "").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_and_the_uncoordinated_distributions_store_every_object() {
    let env = via_emulator("[throttle]\nrequests_per_sec_per_prefix = 40.0\nprefix_depth = 1", |_| {}).await;
    let items = make_files(env.files.path(), 40, 8 * 1024);
    let runs: Vec<(String, ParallelConfig)> = [Strategy::TcpLike, Strategy::FairShare, Strategy::Adaptive]
        .into_iter()
        .map(|s| {
            let coordination = CoordinationConfig { strategy: s, ..Default::default() };
            (s.name().to_owned(), ParallelConfig { coordination, ..Default::default() })
        })
        .chain([Distribution::RoundRobin, Distribution::HashBased, Distribution::LeastLoaded].into_iter().map(|d| {
            (format!("{d:?}"), ParallelConfig { enable_coordination: false, distribution: d, ..Default::default() })
        }))
        .collect();
    for (i, (name, mut cfg)) in runs.into_iter().enumerate() {
        cfg.max_prefixes = 4;
        cfg.pattern = PrefixPattern::Sequential { root: format!("run{i}") };
        let up = ParallelUploader::new(env.client.clone(), BUCKET, "", cfg);
        let prefixes = up.prefixes();
        let summary = up.upload_all(items.clone()).await;
        assert_eq!((summary.objects, summary.failed), (40, 0), "{name}");
        assert_eq!(summary.per_prefix.iter().map(|p| p.objects).sum::<u64>(), 40, "{name}");
        let listing = env.client.list(BUCKET, &format!("run{i}/"), None).await.unwrap();
        assert_eq!(listing.objects.len(), 40, "{name}");
        assert!(listing.objects.iter().all(|o| prefixes.iter().any(|p| o.key.starts_with(p.as_str()))));
        if name == "RoundRobin" {
            assert!(summary.per_prefix.iter().all(|p| p.objects == 10), "{name}: {:?}", summary.per_prefix);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_coordinator_falls_back_to_uncoordinated_uploads_that_complete() {
    let env = via_emulator("[link]\nrtt_ms = 2.0", |_| {}).await;
    let items = make_files(env.files.path(), 60, 4096);
    for use_leases in [false, true] {
        let cfg = ParallelConfig { max_prefixes: 3, pattern: top_level_hash(3), use_leases, ..Default::default() };
        let up = ParallelUploader::new(env.client.clone(), BUCKET, "", cfg).fail_coordinator_after(20);
        let prefixes = up.prefixes();
        empty_bucket(&env.client).await;
        let summary = up.upload_all(items.clone()).await;
        assert!(summary.fell_back, "leases {use_leases}");
        assert_eq!((summary.objects, summary.failed), (60, 0), "leases {use_leases}");
        assert_all_stored(&env.client, &items, &prefixes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_name_prefixes_and_a_drained_prefix_is_left_for_healthy_ones() {
    let scenario = "[faults]\nfail_prefixes = [\"test-bucket/s/b/\"]\n[throttle]\nrequests_per_sec_per_prefix = 25.0\nprefix_depth = 2";
    let env = via_emulator(scenario, |c| c.retry.max_attempts = 3).await;
    let coord = PipelineCoordinator::new(CoordinationConfig::default()).unwrap();
    for p in ["s/a/", "s/b/", "s/c/"] {
        coord.register_prefix(p, 0.0);
    }
    coord.attach(&env.client);
    coord.start(None).unwrap();
    // Suitcases produced one after another, each streamed under a lease.
    let mut stored = Vec::new();
    let tasks: Vec<_> = (0..30u64)
        .map(|i| {
            let (coord, client) = (coord.clone(), env.client.clone());
            tokio::spawn(async move {
                let body = data(20_000, i);
                loop {
                    let mut lease = coord.acquire(body.len() as u64).await.unwrap();
                    let key = lease.key(&format!("suitcase-{i:03}"));
                    let put = client.put_object(BUCKET, &key, &body[..], PutOptions::default());
                    let r = tokio::select! {
                        r = put => r.ok(),
                        () = lease.drained() => None,
                    };
                    match r {
                        Some(r) => {
                            lease.finish(LeaseOutcome::Uploaded { bytes: r.bytes });
                            return key;
                        }
                        None => lease.finish(LeaseOutcome::Failed),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        stored.push(t.await.unwrap());
    }
    coord.stop().await;
    assert!(stored.iter().all(|k| !k.starts_with("s/b/")));
    let listing = env.client.list(BUCKET, "s/", None).await.unwrap();
    assert_eq!(listing.objects.len(), 30);
    let m = coord.metrics();
    assert_eq!(m.drained_prefixes, 1);
    assert_eq!(m.objects_completed, 30);
    assert!(m.scheduling_decisions >= 30 && m.scheduling_time_us_mean > 0.0);
    let snap = coord.congestion();
    assert_eq!(snap.prefixes.iter().find(|p| p.prefix == "s/b/").unwrap().health, PrefixHealth::Drained);
    assert!(coord.acquire(1).await.is_err(), "a stopped coordinator grants nothing");
    let fallback = coord.fallback_prefix("suitcase-007").unwrap();
    assert!(["s/a/", "s/b/", "s/c/"].contains(&fallback.as_str()));
    assert_eq!(coord.fallback_prefix("suitcase-007").unwrap(), fallback, "stable per name");
}

/// Uploads a file but never finishes unless allowed, to test cancellation.
struct SlowBigUpload {
    client: OptimizedS3Client,
}

impl UploadExecutor for SlowBigUpload {
    fn upload(&self, item: &ScheduledUpload, prefix: &str) -> futures::future::BoxFuture<'static, s3opt::Result<u64>> {
        let client = self.client.clone();
        let key = format!("{prefix}{}", item.name);
        let size = item.estimated_size as usize;
        Box::pin(async move {
            let body = data(size, 3);
            Ok(client.put_object(BUCKET, &key, &body[..], PutOptions::default()).await?.bytes)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_hands_queued_work_back_and_leaves_no_multipart_upload_behind() {
    // 12 MiB objects at 8 MB/s: multipart uploads are under way when the cancel comes.
    let env = via_emulator("[link]\nbottleneck_up_mbps = 8.0", |_| {}).await;
    let coord = PipelineCoordinator::new(CoordinationConfig { pipeline_depth: 4, ..Default::default() }).unwrap();
    coord.register_prefix("x/", 0.0);
    coord.register_prefix("y/", 0.0);
    coord.attach(&env.client);
    coord.start(Some(Arc::new(SlowBigUpload { client: env.client.clone() }))).unwrap();
    let mut tickets = Vec::new();
    for i in 0..8 {
        let item =
            ScheduledUpload { source: "mem".into(), name: format!("big-{i}"), priority: 0, estimated_size: 12 * MIB };
        tickets.push(coord.schedule_upload(item).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!env.client.list_multipart_uploads(BUCKET, "").await.unwrap().is_empty(), "uploads are under way");
    coord.cancel().await;
    let mut handed_back = 0;
    for t in tickets {
        if let Err(r) = t.wait().await {
            assert!(r.item.name.starts_with("big-"));
            handed_back += 1;
        }
    }
    assert!(handed_back >= 2, "queued and in-flight work came back: {handed_back}");
    assert!(env.client.list_multipart_uploads(BUCKET, "").await.unwrap().is_empty(), "nothing orphaned");
}
