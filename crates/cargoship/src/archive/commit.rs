//! The archive's commit point, staged ahead: once every suitcase is packed, the inventory
//! goes up beside their last parts as a held multipart upload of one part, and only its
//! completion (one round trip, no bytes) waits for the last suitcase to be in.
//!
//! Sent whole after the suitcases, a 10,000-file tree's 527 KB inventory took 0.32 s on one
//! 2 MB/s connection (wan) at the end of every ship. The inventory's content is what the
//! packers produced (entries, frame indexes, each suitcase's CRC64NVME), all known before
//! the uploads end; if a suitcase is packed again after staging (a resumed upload S3 no
//! longer knows), its new record arrives after the staged ones, and the final inventory is
//! sent instead.

use std::collections::BTreeMap;
use std::sync::Arc;

use s3opt::{Commit, OptimizedS3Client, PutOptions, PutResult};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Result;
use super::journal::{Journal, SuitcaseRecord};

/// Makes the inventory's bytes and upload options from the suitcases' records (in plan
/// order).
pub(super) type Build = Box<dyn FnOnce(Vec<SuitcaseRecord>) -> (Vec<u8>, PutOptions) + Send>;

/// An inventory upload held at its completion, and the records that arrive after it was
/// made (any means a suitcase was packed again: the staged inventory is out of date).
struct Staged {
    commit: Commit,
    upload: JoinHandle<s3opt::Result<PutResult>>,
    later: mpsc::UnboundedReceiver<(usize, SuitcaseRecord)>,
}

impl Staged {
    /// Aborts the held upload (and waits for the abort).
    async fn abandon(self) {
        drop(self.commit);
        let _ = self.upload.await;
    }
}

/// The task that stages the inventory once it has every suitcase's record.
pub(super) struct Stager(JoinHandle<Option<Staged>>);

/// Starts staging the inventory at `key`: `records` carries (plan index, record) as each of
/// the `n` suitcases is packed (or found done in the journal); a later record for an index
/// replaces the earlier one. Inventory uploads an interrupted run left open are aborted
/// first.
pub(super) fn start(
    client: OptimizedS3Client,
    (bucket, key): (String, String),
    build: Build,
    journal: Arc<Journal>,
    n: usize,
    mut records: mpsc::UnboundedReceiver<(usize, SuitcaseRecord)>,
) -> Stager {
    Stager(tokio::spawn(async move {
        for id in &journal.inventory_uploads {
            if let Err(err) = client.abort_multipart_upload(&bucket, &key, id).await {
                tracing::debug!(%err, upload_id = id, "an earlier run's inventory upload is already gone");
            }
        }
        let mut got = BTreeMap::new();
        while got.len() < n {
            let (i, record) = records.recv().await?;
            got.insert(i, record);
        }
        let (stored, mut opts) = build(got.into_values().collect());
        let (commit, gate) = Commit::new();
        opts.commit = Some(gate);
        opts.journal = Some(journal.for_inventory());
        let upload = tokio::spawn(async move {
            let len = stored.len() as u64;
            let reader = std::io::Cursor::new(stored);
            client.put_object(&bucket, &key, reader, PutOptions { content_length: Some(len), ..opts }).await
        });
        Some(Staged { commit, upload, later: records })
    }))
}

impl Stager {
    /// Writes the inventory once every suitcase is in (every record has been sent): by
    /// completing the staged upload if no suitcase was packed again since, else (nothing
    /// staged, a later record, or the staged upload failed) by sending what `fin` makes
    /// from the final records.
    pub(super) async fn commit(
        self,
        client: &OptimizedS3Client,
        (bucket, key): (&str, &str),
        fin: impl FnOnce() -> (Vec<u8>, PutOptions),
    ) -> Result<()> {
        if let Some(mut staged) = self.0.await.ok().flatten() {
            if staged.later.try_recv().is_err() {
                staged.commit.commit();
                match staged.upload.await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(err)) => tracing::warn!(%err, "the staged inventory failed; sending it again"),
                    Err(err) => tracing::warn!(%err, "the staged inventory's task failed; sending it again"),
                }
            } else {
                tracing::debug!("a suitcase was packed again after the inventory was staged; sending the final one");
                staged.abandon().await;
            }
        }
        let (stored, opts) = fin();
        let len = stored.len() as u64;
        client.put_object(bucket, key, &stored[..], PutOptions { content_length: Some(len), ..opts }).await?;
        Ok(())
    }

    /// Gives up what was staged: its upload is aborted (and the abort awaited).
    pub(super) async fn discard(self) {
        self.0.abort();
        if let Ok(Some(staged)) = self.0.await {
            staged.abandon().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::codec::Codec;
    use crate::archive::inventory::Suitcase;
    use crate::archive::journal::Settings;

    fn record(key: &str) -> SuitcaseRecord {
        let suitcase =
            Suitcase { key: key.into(), size: 1, tar_size: 1, crc64nvme: String::new(), files: 0, frames: vec![] };
        SuitcaseRecord { suitcase, entries: vec![], skipped: vec![] }
    }

    /// The inventory as the keys of its suitcases.
    fn build() -> Build {
        Box::new(|records| {
            let keys: Vec<&str> = records.iter().map(|r| r.suitcase.key.as_str()).collect();
            (keys.join(",").into_bytes(), PutOptions::default())
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_staged_inventory_is_committed_unless_a_suitcase_was_packed_again() {
        let dir = tempfile::tempdir().unwrap();
        let server =
            testbed::EmbeddedServer::start(testbed::ServerConfig::ephemeral(dir.path().join("store"))).await.unwrap();
        server.create_bucket("bucket").unwrap();
        let client = OptimizedS3Client::new(s3opt::ClientConfig {
            endpoint_url: Some(server.endpoint_url()),
            region: Some("us-east-1".into()),
            credentials: Some((server.config().access_key.clone(), server.config().secret_key.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
        let settings = Settings {
            source: "/src".into(),
            destination: "s3://bucket/a".into(),
            codec: Codec::Zstd,
            level: 3,
            suitcase_size: 1,
            frame_size: 1,
            exclude: vec![],
        };
        let journal =
            Arc::new(Journal::create(&dir.path().join("j"), settings, vec![vec![], vec![]], vec![], 0).unwrap());
        let read = |key: &'static str| {
            let client = client.clone();
            async move {
                let mut out = Vec::new();
                client.get_object("bucket", key, &mut out).await.unwrap();
                String::from_utf8(out).unwrap()
            }
        };
        let staged_once = |key: &'static str| {
            let (client, journal) = (client.clone(), journal.clone());
            async move {
                let (tx, rx) = mpsc::unbounded_channel();
                let stager = start(client.clone(), ("bucket".into(), key.into()), build(), journal, 2, rx);
                tx.send((1, record("s1"))).unwrap();
                tx.send((0, record("s0"))).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while client.list_multipart_uploads("bucket", key).await.unwrap().is_empty() {
                    assert!(std::time::Instant::now() < deadline, "the inventory was never staged");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                (stager, tx)
            }
        };

        // Nothing changed since staging: the staged bytes are committed, the final ones never made.
        let (stager, _tx) = staged_once("a/inv").await;
        stager.commit(&client, ("bucket", "a/inv"), || panic!("the final inventory is not needed")).await.unwrap();
        assert_eq!(read("a/inv").await, "s0,s1");

        // Suitcase 0 packed again after staging: the staged upload is aborted, the final one sent.
        let (stager, tx) = staged_once("a/inv2").await;
        tx.send((0, record("s0-again"))).unwrap();
        stager
            .commit(&client, ("bucket", "a/inv2"), || (b"s0-again,s1".to_vec(), PutOptions::default()))
            .await
            .unwrap();
        assert_eq!(read("a/inv2").await, "s0-again,s1");
        assert!(client.list_multipart_uploads("bucket", "a/").await.unwrap().is_empty(), "no upload left open");
    }
}
