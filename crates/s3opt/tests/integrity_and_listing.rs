//! Corruption is detected, listings paginate, failed uploads leave nothing behind.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};

use common::{BUCKET, MIB, data, start};
use futures::StreamExt;
use s3opt::{Error, PutOptions};
use tokio::io::{AsyncRead, ReadBuf};

fn flip_byte(path: &std::path::Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_byte_at_rest_is_detected_and_no_file_is_written() {
    let env = start().await;
    let out_dir = tempfile::tempdir().unwrap();
    for (key, len) in [("multi.bin", 17 * MIB as usize), ("single.bin", 100_000)] {
        let src = data(len, 11);
        env.client.put_object(BUCKET, key, &src[..], PutOptions::default()).await.unwrap();
        flip_byte(&env.dir.path().join(BUCKET).join(key), len as u64 / 2);
        let dest = out_dir.path().join(key);
        let err = env.client.get_object_to_file(BUCKET, key, &dest).await.unwrap_err();
        assert!(matches!(err, Error::Integrity { .. }), "{key}: {err:?}");
        assert!(err.to_string().contains("CRC64NVME"), "{err}");
        assert!(!dest.exists(), "no corrupt file left at the destination");
        let leftovers: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "no partial file left behind: {leftovers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_whose_bytes_do_not_match_its_checksum_is_rejected() {
    let env = start().await;
    let sdk = env.client.sdk();
    let created = sdk
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("bad")
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme)
        .send()
        .await
        .unwrap();
    let body = data(MIB as usize, 5);
    let (_, wrong) = s3opt::integrity::crc64nvme_b64(&body[1..]);
    let err = sdk
        .upload_part()
        .bucket(BUCKET)
        .key("bad")
        .upload_id(created.upload_id().unwrap())
        .part_number(1)
        .body(body.into())
        .checksum_crc64_nvme(wrong)
        .send()
        .await
        .unwrap_err();
    use aws_sdk_s3::error::ProvideErrorMetadata;
    assert_eq!(err.code(), Some("BadDigest"));
    assert_eq!(s3opt::network::loss::classify_status(400, err.code()), s3opt::network::Outcome::Integrity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_paginates_past_1000_keys_and_folds_prefixes() {
    let env = start().await;
    let client = &env.client;
    futures::stream::iter(0..1100)
        .for_each_concurrent(32, |i| async move {
            client.put_object(BUCKET, &format!("many/{i:05}"), &b"x"[..], PutOptions::default()).await.unwrap();
        })
        .await;
    client.put_object(BUCKET, "many/sub/deep", &b"y"[..], PutOptions::default()).await.unwrap();
    let all = client.list(BUCKET, "many/", None).await.unwrap();
    assert_eq!(all.objects.len(), 1101);
    assert!(all.pages >= 2, "more than 1000 keys take more than one page ({})", all.pages);
    let mut keys: Vec<_> = all.objects.iter().map(|o| o.key.clone()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 1101, "no key listed twice");
    let level = client.list(BUCKET, "many/", Some("/")).await.unwrap();
    assert_eq!(level.objects.len(), 1100);
    assert_eq!(level.common_prefixes, vec!["many/sub/".to_owned()]);
    client.delete(BUCKET, "many/sub/deep").await.unwrap();
    assert!(client.list(BUCKET, "many/sub/", None).await.unwrap().objects.is_empty());
}

/// Yields `ok` bytes, then fails like a disk error.
struct FailingReader {
    left: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::Error::other("simulated read failure")));
        }
        let n = self.left.min(buf.remaining()).min(64 * 1024);
        buf.put_slice(&vec![9u8; n]);
        self.left -= n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_is_aborted_and_leaves_no_multipart_upload() {
    let env = start().await;
    let err = env
        .client
        .put_object(BUCKET, "fails", FailingReader { left: 12 * MIB as usize }, PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Stream { .. }), "{err:?}");
    let m = env.client.metrics();
    assert_eq!(m.requests_by_op.get("CreateMultipartUpload"), Some(&1));
    assert_eq!(m.requests_by_op.get("AbortMultipartUpload"), Some(&1));
    assert!(env.client.list_multipart_uploads(BUCKET, "").await.unwrap().is_empty());
    assert!(env.client.head(BUCKET, "fails").await.is_err(), "no object was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_is_aborted_in_the_background() {
    let env = start().await;
    let src = data(40 * MIB as usize, 2);
    let fut = env.client.put_object(BUCKET, "cancelled", &src[..], PutOptions::default());
    // Let it create the upload and send some parts, then drop it (as Ctrl-C does).
    let _ = tokio::time::timeout(std::time::Duration::from_millis(300), fut).await;
    let open = env.client.list_multipart_uploads(BUCKET, "").await.unwrap();
    env.client.finish_cleanup().await;
    let after = env.client.list_multipart_uploads(BUCKET, "").await.unwrap();
    assert!(after.is_empty(), "left behind: {after:?} (open before cleanup: {open:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_the_budget_for_an_object_8x_larger() {
    let env = common::start_with(|c| {
        c.memory_budget = 16 * MIB;
        c.concurrency = 8;
    })
    .await;
    let src = data(128 * MIB as usize, 4);
    let client = env.client.clone();
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(client.memory_in_use());
            if rx.try_recv().is_ok() {
                return peak;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    });
    let put = env.client.put_object(BUCKET, "huge", &src[..], PutOptions::default()).await.unwrap();
    tx.send(()).unwrap();
    let peak = watcher.await.unwrap();
    assert_eq!(put.bytes, src.len() as u64);
    assert!(peak <= 16 * MIB, "pool peak {peak} exceeds the 16 MiB budget");
    assert!(peak >= 10 * MIB, "the pool was actually used ({peak})");
}
