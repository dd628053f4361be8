//! Listing archives: every inventory under a prefix, summarized (date, files, bytes,
//! compression ratio).

use futures::StreamExt;
use s3opt::OptimizedS3Client;
use serde::Serialize;

use super::Result;
use super::inventory::is_inventory_name;
use super::reader::fetch_inventory;

/// One archive.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveSummary {
    /// `s3://bucket/prefix` of the archive.
    pub url: String,
    pub created: String,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// Uncompressed / stored.
    pub ratio: f64,
    pub suitcases: usize,
}

/// The archives at or below `s3://bucket/prefix`, sorted by URL. The listing is read page
/// by page and only the inventories' prefixes are kept, so a prefix of millions of keys
/// costs one page of memory.
pub async fn list_archives(client: &OptimizedS3Client, bucket: &str, prefix: &str) -> Result<Vec<ArchiveSummary>> {
    let mut prefixes: Vec<String> = Vec::new();
    let mut pages = std::pin::pin!(client.list_pages(bucket, prefix, None));
    while let Some(page) = pages.next().await {
        prefixes.extend(page?.objects.iter().filter_map(|o| match o.key.rsplit_once('/') {
            None => is_inventory_name(&o.key).then(String::new),
            Some((prefix, name)) => is_inventory_name(name).then(|| prefix.to_owned()),
        }));
    }
    let mut out: Vec<ArchiveSummary> = futures::stream::iter(prefixes)
        .map(|p| async move {
            let inv = fetch_inventory(client, bucket, &p).await?;
            let t = &inv.totals;
            Ok::<_, super::ArchiveError>(ArchiveSummary {
                url: format!("s3://{bucket}/{p}"),
                created: inv.created.clone(),
                files: t.files,
                bytes: t.bytes,
                stored_bytes: t.stored_bytes,
                ratio: if t.stored_bytes > 0 { t.bytes as f64 / t.stored_bytes as f64 } else { 0.0 },
                suitcases: inv.suitcases.len(),
            })
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    out.sort_by(|a, b| a.url.cmp(&b.url));
    Ok(out)
}
