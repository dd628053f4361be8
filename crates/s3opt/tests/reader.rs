//! The prefetching reader against the embedded S3 server: what each access pattern costs in
//! requests and bytes (read from the client's metrics) and that every byte is right.

mod common;

use common::{BUCKET, MIB, data};
use s3opt::{Error, PutOptions};

const KIB: u64 = 1024;

async fn put(env: &common::Env, key: &str, body: &[u8]) {
    env.client.put_object(BUCKET, key, body, PutOptions::default()).await.expect("put");
}

fn gets(env: &common::Env) -> u64 {
    env.client.metrics().requests_by_op.get("GetObject").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_small_read_is_one_small_get() {
    let env = common::start().await;
    let src = data((20 * MIB) as usize, 1);
    put(&env, "obj", &src).await;
    let before = env.client.metrics();
    let mut r = env.client.reader(BUCKET, "obj", src.len() as u64);
    let off = 5 * MIB + 123;
    let got = r.read(off, 4 * KIB).await.unwrap();
    assert_eq!(&got[..], &src[off as usize..(off + 4 * KIB) as usize]);
    let after = env.client.metrics();
    assert_eq!(gets(&env), before.requests_by_op.get("GetObject").copied().unwrap_or(0) + 1, "one GET");
    assert_eq!(after.bytes_received - before.bytes_received, 16 * KIB, "one 16 KiB block, not a part");
    assert_eq!(after.requests - before.requests, 1, "no HEAD either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_are_prefetched_with_a_growing_window_and_fetched_once() {
    let env = common::start().await;
    let size = 20 * MIB + 777;
    let src = data(size as usize, 2);
    put(&env, "seq", &src).await;
    let before = env.client.metrics().bytes_received;
    let mut r = env.client.reader(BUCKET, "seq", size);
    let mut out = Vec::with_capacity(size as usize);
    let mut max_window = 0;
    let mut off = 0;
    while off < size {
        let chunk = r.read(off, 128 * KIB).await.unwrap();
        assert!(!chunk.is_empty());
        off += chunk.len() as u64;
        out.extend_from_slice(&chunk);
        max_window = max_window.max(r.stats().window);
    }
    assert!(out == src, "bytes differ");
    let stats = r.stats();
    assert_eq!(stats.reads, size.div_ceil(128 * KIB));
    assert!(stats.prefetch_requests >= 4, "{stats:?}");
    assert!(stats.demand_requests <= 3, "after the first reads everything was prefetched: {stats:?}");
    assert!(max_window >= 8 * MIB, "window grew: {max_window}");
    assert_eq!(env.client.metrics().bytes_received - before, size, "every byte fetched exactly once");
    assert!(gets(&env) < stats.reads / 8, "{} GETs for {} reads", gets(&env), stats.reads);
    assert!(r.read(size, 10).await.unwrap().is_empty(), "nothing past the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reads_match_the_source_and_fetch_only_what_they_touch() {
    let env = common::start().await;
    let size = 12 * MIB + 5;
    let src = data(size as usize, 3);
    put(&env, "rnd", &src).await;
    let mut r = env.client.reader(BUCKET, "rnd", size);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let n = 100;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % size;
        let len = 1 + (x >> 40) % (200 * KIB);
        let got = r.read(off, len).await.unwrap();
        let end = (off + len).min(size) as usize;
        assert!(got[..] == src[off as usize..end], "mismatch at {off}+{len}");
    }
    let stats = r.stats();
    // In a 12 MiB object some reads land within a tolerated jump of the one before.
    assert!(stats.random_reads >= n / 2, "{stats:?}");
    // A read fetches at most the blocks it touches (<= 200 KiB + 2 blocks); prefetches
    // are at most one 5 MiB part each.
    let bound = n * (200 * KIB + 128 * KIB) + stats.prefetch_requests * 5 * MIB;
    assert!(env.client.metrics().bytes_received <= bound, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_the_block_cache() {
    let env = common::start().await;
    let src = data((3 * MIB) as usize, 4);
    put(&env, "shared", &src).await;
    let mut a = env.client.reader(BUCKET, "shared", src.len() as u64);
    let first = a.read(MIB, 256 * KIB).await.unwrap();
    let gets_after_a = gets(&env);
    let hits_before = env.client.read_cache_stats().hits;
    let mut b = env.client.reader(BUCKET, "shared", src.len() as u64);
    let second = b.read(MIB + 10, 100 * KIB).await.unwrap();
    assert_eq!(&second[..], &first[10..10 + 100 * KIB as usize]);
    assert_eq!(gets(&env), gets_after_a, "served from the cache");
    let stats = env.client.read_cache_stats();
    // [1 MiB + 10, 1 MiB + 10 + 100 KiB) touches 7 blocks of 16 KiB.
    assert_eq!(stats.hits - hits_before, 7, "seven blocks hit: {stats:?}");
    assert!(stats.bytes <= stats.capacity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_no_such_key() {
    let env = common::start().await;
    let mut r = env.client.reader(BUCKET, "nope", 1000);
    let err = r.read(0, 10).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchKey { ref key, .. } if key == "nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_its_bound_on_a_large_scan() {
    // Budget 32 MiB: a 16 MiB cache; scan 40 MiB through it.
    let env = common::start().await;
    let size = 40 * MIB;
    let src = data(size as usize, 5);
    put(&env, "big", &src).await;
    let mut r = env.client.reader(BUCKET, "big", size);
    let mut off = 0;
    while off < size {
        let got = r.read(off, MIB).await.unwrap();
        assert!(got[..] == src[off as usize..(off + MIB) as usize]);
        off += MIB;
        let s = env.client.read_cache_stats();
        assert!(s.bytes + s.reserved <= s.capacity, "{s:?}");
    }
    let s = env.client.read_cache_stats();
    assert_eq!(s.capacity, 16 * MIB);
    assert!(s.evictions > 0);
}
