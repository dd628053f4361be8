//! The commands: put, get, ls, serve.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use s3opt::{ControllerState, MetricsSnapshot, OptimizedS3Client, PutOptions, TimelinePoint};
use serde::Serialize;
use testbed::{EmbeddedServer, Emulator, Scenario, ServerConfig};

use crate::cli::{EmulateArgs, GetArgs, GlobalOpts, LsArgs, PutArgs, ServeArgs};
use crate::exit::LocalFileError;
use crate::progress::{Direction, Progress, human};
use crate::s3url::S3Url;
use crate::setup;

/// The machine-readable summary of a transfer (`--json`).
#[derive(Serialize)]
pub(crate) struct Summary {
    command: &'static str,
    source: String,
    destination: String,
    bytes: u64,
    seconds: f64,
    mb_per_s: f64,
    requests: u64,
    retries: u64,
    errors: std::collections::BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) verified_with: Option<&'static str>,
    /// Objects transferred, when there were many (a prefix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) objects: Option<u64>,
    /// Of those, how many were verified against a checksum S3 stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) verified_objects: Option<u64>,
    /// Objects left out by `--exclude` (when it was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) excluded: Option<u64>,
    /// The controller's final state.
    controller: ControllerState,
    metrics: MetricsSnapshot,
    /// The controller's decisions over time (window, part size, MB/s, estimates, mode).
    timeline: Vec<TimelinePoint>,
}

impl Summary {
    pub(crate) fn new(
        command: &'static str,
        source: String,
        destination: String,
        bytes: u64,
        started: Instant,
        client: &OptimizedS3Client,
    ) -> Self {
        let seconds = started.elapsed().as_secs_f64();
        let metrics = client.metrics();
        Self {
            command,
            source,
            destination,
            bytes,
            seconds,
            mb_per_s: if seconds > 0.0 { bytes as f64 / seconds / 1e6 } else { 0.0 },
            requests: metrics.requests,
            retries: metrics.retries,
            errors: metrics.errors.clone(),
            verified_with: None,
            objects: None,
            verified_objects: None,
            excluded: None,
            controller: client.controller_state(),
            metrics,
            timeline: client.timeline(),
        }
    }

    pub(crate) fn print(&self, g: &GlobalOpts, to_stderr: bool) {
        if g.json {
            let json = serde_json::to_string_pretty(self).expect("summary serializes");
            // With the data itself on stdout, the summary goes to stderr.
            if to_stderr {
                eprintln!("{json}")
            } else {
                println!("{json}")
            }
            return;
        }
        let verb = if self.command == "put" { "uploaded" } else { "downloaded" };
        let what = match self.objects {
            Some(n) => format!("{n} objects under {}", self.source),
            None => self.source.clone(),
        };
        let mut line = format!(
            "{verb} {what} to {}: {} in {:.2} s ({:.1} MB/s), {} requests, {} retries",
            self.destination,
            human(self.bytes),
            self.seconds,
            self.mb_per_s,
            self.requests,
            self.retries
        );
        match (self.verified_with, self.objects, self.verified_objects) {
            (Some(alg), _, _) => line.push_str(&format!(", verified ({alg})")),
            (None, Some(n), Some(v)) => line.push_str(&format!(", {v} of {n} verified against a checksum S3 stored")),
            _ => {}
        }
        if let Some(n) = self.excluded {
            line.push_str(&format!(", {n} excluded"));
        }
        if to_stderr || g.quiet {
            if !g.quiet {
                eprintln!("{line}");
            }
        } else {
            println!("{line}");
        }
    }
}

pub async fn put(g: &GlobalOpts, args: &PutArgs) -> anyhow::Result<()> {
    let mut dest = S3Url::parse(&args.destination)?;
    let from_stdin = args.source == "-";
    let source_path = PathBuf::from(&args.source);
    if dest.key.is_empty() || dest.key.ends_with('/') {
        if from_stdin {
            bail!(crate::s3url::BadUrl {
                url: args.destination.clone(),
                reason: "a key is needed when uploading stdin"
            });
        }
        let name = source_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        dest.key.push_str(&name);
    }
    let len = if from_stdin {
        None
    } else {
        let meta = std::fs::metadata(&source_path).map_err(|e| LocalFileError::read(&source_path, e))?;
        if meta.is_dir() {
            return crate::put_many::run(g, args).await;
        }
        // Opened now so that an unreadable file is reported before connecting.
        std::fs::File::open(&source_path).map_err(|e| LocalFileError::read(&source_path, e))?;
        Some(meta.len())
    };
    let session = setup::connect(g).await?;
    session.ensure_embedded_bucket(&dest.bucket)?;
    let client = &session.client;
    let started = Instant::now();
    let progress = Progress::start(client, Direction::Up, "put", len, g.quiet);
    let opts = PutOptions { content_length: len, ..Default::default() };
    let upload = async {
        if from_stdin {
            client.put_object(&dest.bucket, &dest.key, tokio::io::stdin(), opts).await
        } else {
            // Parts are read from the file as they are sent: they hold no memory.
            client.put_file(&dest.bucket, &dest.key, &source_path, opts).await
        }
    };
    let result = tokio::select! {
        r = upload => r,
        _ = tokio::signal::ctrl_c() => {
            progress.finish();
            client.finish_cleanup().await;
            bail!("interrupted; the partial upload was aborted");
        }
    };
    progress.finish();
    let result = result?;
    let summary = Summary::new("put", args.source.clone(), dest.to_string(), result.bytes, started, client);
    summary.print(g, false);
    Ok(())
}

pub async fn get(g: &GlobalOpts, args: &GetArgs) -> anyhow::Result<()> {
    let src = S3Url::parse(&args.source)?;
    if src.key.is_empty() || src.key.ends_with('/') {
        return crate::get_many::get_prefix(g, args, src).await;
    }
    if !args.filter.exclude.is_empty() {
        return Err(crate::get_many::GetManyError::Usage(format!(
            "--exclude applies to a prefix (a source ending in /); {src} is one object"
        ))
        .into());
    }
    let to_stdout = args.destination == "-";
    let mut dest = PathBuf::from(&args.destination);
    if !to_stdout && dest.is_dir() {
        dest.push(src.key.rsplit('/').next().unwrap_or("download"));
    }
    if !to_stdout {
        check_writable_parent(&dest)?;
    }
    let session = setup::connect(g).await?;
    let client = &session.client;
    let started = Instant::now();
    let progress = Progress::start(client, Direction::Down, "get", None, g.quiet || to_stdout);
    let outcome = async {
        match args.range {
            Some((offset, len)) => {
                let data = client.get_range(&src.bucket, &src.key, offset, len).await?;
                if to_stdout {
                    use std::io::Write;
                    std::io::stdout().write_all(&data).context("cannot write to stdout")?;
                } else {
                    std::fs::write(&dest, &data).map_err(|e| LocalFileError::write(&dest, e))?;
                }
                anyhow::Ok((data.len() as u64, None))
            }
            None if to_stdout => {
                let r = client.get_object(&src.bucket, &src.key, tokio::io::stdout()).await?;
                Ok((r.bytes, r.verified_with))
            }
            None => {
                let r = client.get_object_to_file(&src.bucket, &src.key, &dest).await?;
                Ok((r.bytes, r.verified_with))
            }
        }
    };
    let result = tokio::select! {
        r = outcome => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; no partial file was kept"),
    };
    progress.finish();
    let missing = |e: &anyhow::Error| matches!(e.downcast_ref::<s3opt::Error>(), Some(s3opt::Error::NoSuchKey { .. }));
    let (bytes, verified_with) = match result {
        Err(e) if missing(&e) && has_objects_under(client, &src.bucket, &format!("{}/", src.key)).await => {
            return Err(e.context(format!(
                "{src} is a prefix, not an object (end the source with / to download what is under it into a directory)"
            )));
        }
        other => other?,
    };
    let destination = if to_stdout { "-".to_owned() } else { dest.display().to_string() };
    let mut summary = Summary::new("get", src.to_string(), destination, bytes, started, client);
    summary.verified_with = verified_with;
    summary.print(g, to_stdout);
    Ok(())
}

/// Whether any object's key starts with `prefix` (one page of the listing; false if it
/// cannot be listed).
async fn has_objects_under(client: &OptimizedS3Client, bucket: &str, prefix: &str) -> bool {
    client.list_page(bucket, prefix, None, None).await.is_ok_and(|(page, _)| !page.objects.is_empty())
}

fn check_writable_parent(dest: &Path) -> anyhow::Result<()> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(LocalFileError::write(
            dest,
            std::io::Error::other(format!("directory {} does not exist", parent.display())),
        )
        .into());
    }
    Ok(())
}

pub async fn ls(g: &GlobalOpts, args: &LsArgs) -> anyhow::Result<()> {
    let target = S3Url::parse(&args.target)?;
    let session = setup::connect(g).await?;
    if !args.objects && crate::archive_cmds::ls_archives(g, &session.client, &target).await? {
        return Ok(());
    }
    let delimiter = (!args.recursive).then_some("/");
    if g.json {
        let listing = session.client.list(&target.bucket, &target.key, delimiter).await?;
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    // Page by page, as the AWS CLI does: a listing of millions of keys starts printing at
    // once and holds one page in memory.
    let mut pages = std::pin::pin!(session.client.list_pages(&target.bucket, &target.key, delimiter));
    while let Some(page) = futures::StreamExt::next(&mut pages).await {
        let page = page?;
        for p in &page.common_prefixes {
            println!("{:>19} {:>12} PRE {p}", "", "");
        }
        for o in &page.objects {
            let when = o.last_modified.map(format_time).unwrap_or_default();
            println!("{when:>19} {:>12} {}", o.size, o.key);
        }
    }
    Ok(())
}

fn format_time(t: std::time::SystemTime) -> String {
    // RFC 3339 in UTC, shown as "YYYY-MM-DD HH:MM:SS" like the AWS CLI's listing.
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").trim_end_matches('Z').to_owned()
}

pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("cannot create root directory {}", args.root.display()))?;
    for b in &args.buckets {
        S3Url::parse(&format!("s3://{b}"))?;
        std::fs::create_dir_all(args.root.join(b)).with_context(|| format!("cannot create bucket {b}"))?;
    }
    let cfg = ServerConfig {
        root: args.root.clone(),
        addr: args.addr,
        access_key: args.access_key.clone(),
        secret_key: args.secret_key.clone(),
    };
    let server = EmbeddedServer::start(cfg).await.with_context(|| format!("cannot listen on {}", args.addr))?;
    if !args.addr.ip().is_loopback() {
        eprintln!("warning: listening on {}, reachable from other hosts", args.addr);
    }
    eprintln!(
        "serving {} at {} (access key '{}'); Ctrl-C to stop",
        args.root.display(),
        server.endpoint_url(),
        args.access_key
    );
    stop_signal().await?;
    eprintln!("stopping");
    server.shutdown().await;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

pub async fn emulate(args: &EmulateArgs) -> anyhow::Result<()> {
    let scenario = Scenario::load(&args.scenario).map_err(anyhow::Error::msg)?;
    let name = scenario.name.clone();
    let emu = Emulator::start(scenario, args.listen, &args.upstream)
        .await
        .with_context(|| format!("cannot start the emulator on {}", args.listen))?;
    eprintln!(
        "emulating '{name}' at {} -> {}; stats at {}/__emulator/stats; Ctrl-C to stop",
        emu.endpoint_url(),
        args.upstream,
        emu.endpoint_url()
    );
    stop_signal().await?;
    if let Some(path) = &args.stats_out {
        let report = serde_json::to_vec_pretty(&emu.report())?;
        std::fs::write(path, report).map_err(|e| LocalFileError::write(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_dates() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(super::format_time(t), "2026-11-18 11:06:40");
    }
}
