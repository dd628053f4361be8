//! The archive commands: survey, ship, restore, verify, and the archive listing of `ls`.
//! Parsing and output only; the work is in `cargoship::archive`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::bail;
use cargoship::archive::extract::ExtractProgress;
use cargoship::archive::listing::list_archives;
use cargoship::archive::restore::{RestoreOptions, restore as restore_archive};
use cargoship::archive::ship::{ShipOptions, ShipProgress, discard, ship as ship_archive};
use cargoship::archive::survey::{Prices, survey as survey_dir};
use cargoship::archive::verify::verify as verify_archive;
use cargoship::archive::{ArchiveError, ArchiveReader, journal};
use s3opt::PutOptions;
use serde::Serialize;

use crate::cli::{GlobalOpts, RestoreArgs, ShipArgs, SurveyArgs, VerifyArgs};
use crate::progress::{Progress, Reading, human};
use crate::s3url::S3Url;
use crate::setup;

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn survey(g: &GlobalOpts, a: &SurveyArgs) -> anyhow::Result<()> {
    let prices = match &a.prices {
        Some(p) => Prices::from_file(p)?,
        None => Prices::embedded(),
    };
    let (dir, cap, part, exclude) = (a.dir.clone(), a.suitcase_size, g.part_size, a.filter.compile()?);
    let s = tokio::task::spawn_blocking(move || survey_dir(&dir, cap, part, &exclude, &prices)).await??;
    if g.json {
        return print_json(&s);
    }
    println!("{}: {} files, {} directories, {} symlinks, {}", s.root, s.files, s.dirs, s.symlinks, human(s.bytes));
    if !a.filter.exclude.is_empty() {
        println!("left out by --exclude: {} entries (a directory counts once)", s.excluded);
    }
    println!("\nsize histogram:");
    for b in s.histogram.iter().filter(|b| b.files > 0) {
        println!("  {:>14}  {:>10} files  {:>12}", b.label, b.files, human(b.bytes));
    }
    if !s.largest.is_empty() {
        println!("\nlargest files:");
        for (p, size) in &s.largest {
            println!("  {:>12}  {p}", human(*size));
        }
    }
    if !s.skipped.is_empty() {
        println!("\nwould be skipped ({}):", s.skipped.len());
        for k in s.skipped.iter().take(20) {
            println!("  {}: {}", k.path, k.reason);
        }
    }
    println!(
        "\nship would make {} suitcase(s) of at most {} with about {} upload requests (file by file: {}).",
        s.suitcases,
        human(a.suitcase_size),
        s.ship_requests,
        s.files
    );
    println!("\nestimated cost ({}, prices of {}, before compression):", s.currency, s.prices_as_of);
    println!("  {:<20} {:>12} {:>16} {:>18}", "storage class", "per month", "ship requests", "file-by-file reqs");
    for c in &s.costs {
        println!("  {:<20} {:>12.4} {:>16.4} {:>18.4}", c.class, c.monthly, c.ship_requests, c.file_by_file_requests);
    }
    Ok(())
}

pub async fn ship(g: &GlobalOpts, a: &ShipArgs) -> anyhow::Result<()> {
    let dest = S3Url::parse(&a.destination)?;
    let level = a.level.unwrap_or(a.compression.default_level());
    a.compression.check_level(level).map_err(ArchiveError::Usage)?;
    if a.frame_size < 64 << 10 || a.frame_size > 256 << 20 {
        bail!(ArchiveError::Usage("--frame-size must be between 64KiB and 256MiB".into()));
    }
    let meta = std::fs::metadata(&a.source).map_err(|e| ArchiveError::Source { path: a.source.clone(), source: e })?;
    if !meta.is_dir() {
        bail!(ArchiveError::Source {
            path: a.source.clone(),
            source: std::io::Error::other("is not a directory (ship takes a directory; use put for one file)"),
        });
    }
    let o = ShipOptions {
        source: a.source.clone(),
        bucket: dest.bucket.clone(),
        prefix: dest.key.trim_end_matches('/').to_owned(),
        codec: a.compression,
        level,
        suitcase_size: a.suitcase_size,
        frame_size: a.frame_size,
        put: PutOptions {
            storage_class: a.storage_class.clone(),
            sse: a.sse.clone(),
            sse_kms_key_id: a.sse_kms_key_id.clone(),
            ..Default::default()
        },
        strict: a.strict,
        resume: !a.no_resume,
        state_dir: journal::state_dir(),
        parallel: a.parallel_suitcases as usize,
        prefixes: a.prefixes as usize,
        strategy: a.strategy.parse().map_err(ArchiveError::Usage)?,
        exclude: a.filter.compile()?,
    };
    let session = setup::connect(g).await?;
    session.ensure_embedded_bucket(&dest.bucket)?;
    let client = &session.client;
    if a.abort {
        let d = discard(client, &o).await?;
        eprintln!(
            "discarded the interrupted ship: {} multipart upload(s) aborted, {} suitcase(s) deleted",
            d.aborted_uploads, d.deleted_suitcases
        );
        return Ok(());
    }
    let started = Instant::now();
    let progress = Arc::new(ShipProgress::default());
    let p = progress.clone();
    let display = Progress::follow("ship", g.quiet, move || Reading {
        bytes: p.pack.bytes.load(Relaxed),
        total_bytes: Some(p.total_bytes.load(Relaxed)),
        files: Some((p.pack.files.load(Relaxed), p.total_files.load(Relaxed))),
    });
    let result = tokio::select! {
        r = ship_archive(client, &o, progress) => r,
        _ = tokio::signal::ctrl_c() => {
            display.finish();
            bail!("interrupted; finished parts are recorded: run the same command again to continue, or add --abort to discard");
        }
    };
    display.finish();
    let r = result?;
    let secs = started.elapsed().as_secs_f64();
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(flatten)]
        report: &'a cargoship::archive::ship::ShipReport,
        seconds: f64,
        mb_per_s: f64,
        metrics: s3opt::MetricsSnapshot,
        controller: s3opt::ControllerState,
        timeline: Vec<s3opt::TimelinePoint>,
    }
    let mb_per_s = r.bytes as f64 / secs / 1e6;
    if g.json {
        return print_json(&Out {
            report: &r,
            seconds: secs,
            mb_per_s,
            metrics: client.metrics(),
            controller: client.controller_state(),
            timeline: client.timeline(),
        });
    }
    if r.up_to_date {
        println!("{} already holds this tree ({} files, {}); nothing to send", r.archive, r.files, human(r.bytes));
        if !g.quiet {
            println!("restore with: cargoship restore {} DEST", r.archive);
        }
        return Ok(());
    }
    for k in &r.skipped {
        eprintln!("skipped {}: {}", k.path, k.reason);
    }
    let ratio = if r.stored_bytes > 0 { r.bytes as f64 / r.stored_bytes as f64 } else { 0.0 };
    let excluded = if a.filter.exclude.is_empty() { String::new() } else { format!(", {} excluded", r.excluded) };
    println!(
        "shipped {} files ({}) to {} in {:.2} s ({:.1} MB/s): {} suitcase(s), {} stored ({ratio:.2}x), {} skipped{excluded}",
        r.files,
        human(r.bytes),
        r.archive,
        secs,
        mb_per_s,
        r.suitcases,
        human(r.stored_bytes),
        r.skipped.len()
    );
    if r.resumed_suitcases > 0 || r.resumed_parts > 0 {
        println!(
            "resumed: {} suitcase(s) and {} part(s) ({}) sent by the interrupted run were not sent again",
            r.resumed_suitcases,
            r.resumed_parts,
            human(r.resumed_bytes)
        );
    }
    if !g.quiet {
        println!("restore with: cargoship restore {} DEST", r.archive);
    }
    Ok(())
}

fn archive_url(url: &str) -> anyhow::Result<S3Url> {
    let u = S3Url::parse(url)?;
    Ok(S3Url { bucket: u.bucket, key: u.key.trim_end_matches('/').to_owned() })
}

pub async fn restore(g: &GlobalOpts, a: &RestoreArgs) -> anyhow::Result<()> {
    let src = archive_url(&a.source)?;
    let session = setup::connect(g).await?;
    let client = &session.client;
    let started = Instant::now();
    let reader = if a.paths.is_empty() {
        ArchiveReader::open_to_restore_all(client.clone(), &src.bucket, &src.key).await?
    } else {
        ArchiveReader::open(client.clone(), &src.bucket, &src.key).await?
    };
    let o =
        RestoreOptions { dest: a.destination.clone(), patterns: a.paths.clone(), overwrite: a.overwrite, parallel: 2 };
    let progress = Arc::new(ExtractProgress::default());
    let p = progress.clone();
    let total = reader.inventory().totals.clone();
    let all = a.paths.is_empty();
    let display = Progress::follow("restore", g.quiet, move || Reading {
        bytes: p.bytes.load(Relaxed),
        total_bytes: all.then_some(total.bytes),
        files: all.then(|| (p.files.load(Relaxed), total.files)),
    });
    let result = tokio::select! {
        r = restore_archive(&reader, &o, progress) => r,
        _ = tokio::signal::ctrl_c() => {
            display.finish();
            bail!("interrupted; files restored so far are complete and verified, no partial file was kept");
        }
    };
    display.finish();
    let r = result?;
    let secs = started.elapsed().as_secs_f64();
    let fetched = client.bytes_received();
    if g.json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a cargoship::archive::restore::RestoreReport,
            fetched_bytes: u64,
            seconds: f64,
            mb_per_s: f64,
            metrics: s3opt::MetricsSnapshot,
            controller: s3opt::ControllerState,
            timeline: Vec<s3opt::TimelinePoint>,
        }
        return print_json(&Out {
            report: &r,
            fetched_bytes: fetched,
            seconds: secs,
            mb_per_s: r.bytes as f64 / secs / 1e6,
            metrics: client.metrics(),
            controller: client.controller_state(),
            timeline: client.timeline(),
        });
    }
    println!(
        "restored {} files ({}), {} directories, {} symlinks into {} in {:.2} s ({:.1} MB/s); fetched {} from S3 (inventory included; the suitcases hold {}); every file's hash verified",
        r.files,
        human(r.bytes),
        r.dirs,
        r.symlinks,
        a.destination.display(),
        secs,
        r.bytes as f64 / secs / 1e6,
        human(fetched),
        human(r.archive_stored_bytes)
    );
    Ok(())
}

pub async fn verify(g: &GlobalOpts, a: &VerifyArgs) -> anyhow::Result<()> {
    let src = archive_url(&a.archive)?;
    let session = setup::connect(g).await?;
    let reader = ArchiveReader::open(session.client.clone(), &src.bucket, &src.key).await?;
    let progress = Arc::new(ExtractProgress::default());
    let r = verify_archive(&reader, &src.key, &src.bucket, a.deep, a.against.as_deref(), progress).await?;
    if g.json {
        print_json(&r)?;
    } else {
        for p in &r.problems {
            println!("problem: {p}");
        }
        let depth = if a.deep { format!(", {} files re-hashed", r.files_hashed) } else { String::new() };
        let local = a.against.as_ref().map(|d| format!(", compared with {}", d.display())).unwrap_or_default();
        println!(
            "{}: {} suitcase(s) checked{depth}{local}: {}",
            a.archive,
            r.suitcases,
            if r.problems.is_empty() { "OK".to_owned() } else { format!("{} problem(s)", r.problems.len()) }
        );
    }
    if !r.problems.is_empty() {
        bail!(ArchiveError::Inventory(format!("verification found {} problem(s)", r.problems.len())));
    }
    Ok(())
}

/// Prints the archives under the target; false if there are none.
pub async fn ls_archives(g: &GlobalOpts, client: &s3opt::OptimizedS3Client, target: &S3Url) -> anyhow::Result<bool> {
    let archives = list_archives(client, &target.bucket, &target.key).await?;
    if archives.is_empty() {
        return Ok(false);
    }
    if g.json {
        print_json(&archives)?;
        return Ok(true);
    }
    println!("{:<20} {:>9} {:>11} {:>11} {:>6}  ARCHIVE", "CREATED", "FILES", "BYTES", "STORED", "RATIO");
    for a in &archives {
        println!(
            "{:<20} {:>9} {:>11} {:>11} {:>5.2}x  {}",
            a.created,
            a.files,
            human(a.bytes),
            human(a.stored_bytes),
            a.ratio,
            a.url
        );
    }
    Ok(true)
}
