//! Progress on stderr: a bar on a terminal, a plain line every few seconds otherwise.
//! Readings come from the client's byte counters (confirmed transfers, not guesses).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use s3opt::OptimizedS3Client;
use tokio::task::JoinHandle;

/// Which counter to follow.
#[derive(Clone, Copy)]
pub enum Direction {
    Up,
    Down,
}

/// A running progress display; call [`Progress::finish`] when done.
pub struct Progress {
    task: Option<JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

fn counter(client: &OptimizedS3Client, dir: Direction) -> u64 {
    match dir {
        Direction::Up => client.bytes_sent(),
        Direction::Down => client.bytes_received(),
    }
}

/// Formats bytes with binary units.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", units[i]) }
}

/// One reading of a long operation's counters.
pub struct Reading {
    pub bytes: u64,
    pub total_bytes: Option<u64>,
    /// Files done and in total, when the operation counts files.
    pub files: Option<(u64, u64)>,
}

impl Progress {
    /// Starts following `client`'s counter; `total` when known.
    pub fn start(client: &OptimizedS3Client, dir: Direction, label: &str, total: Option<u64>, quiet: bool) -> Self {
        let base = counter(client, dir);
        let c = client.clone();
        Self::follow(label, quiet, move || Reading { bytes: counter(&c, dir) - base, total_bytes: total, files: None })
    }

    /// Starts following any counters.
    pub fn follow(label: &str, quiet: bool, read: impl Fn() -> Reading + Send + 'static) -> Self {
        if quiet {
            return Self { task: None, bar: None };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::no_length();
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(label.to_owned());
            let b = bar.clone();
            let task = tokio::spawn(async move {
                loop {
                    let r = read();
                    if let Some(t) = r.total_bytes {
                        b.set_length(t);
                    }
                    if let Some((done, total)) = r.files {
                        b.set_message(format!("{done}/{total} files"));
                    }
                    b.set_position(r.bytes);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            return Self { task: Some(task), bar: Some(bar) };
        }
        let label = label.to_owned();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let r = read();
                let secs = start.elapsed().as_secs_f64();
                let rate = r.bytes as f64 / secs / 1e6;
                let files = r.files.map(|(d, t)| format!(", {d}/{t} files")).unwrap_or_default();
                match r.total_bytes {
                    Some(t) if t > 0 => {
                        let left = t.saturating_sub(r.bytes) as f64 / (r.bytes as f64 / secs).max(1.0);
                        eprintln!(
                            "{label}: {} / {} ({:.0}%){files}, {rate:.1} MB/s, ETA {:.0} s",
                            human(r.bytes),
                            human(t),
                            r.bytes as f64 * 100.0 / t as f64,
                            left
                        )
                    }
                    _ => eprintln!("{label}: {}{files}, {rate:.1} MB/s", human(r.bytes)),
                }
            }
        });
        Self { task: Some(task), bar: None }
    }

    /// Stops the display.
    pub fn finish(self) {
        if let Some(t) = &self.task {
            t.abort();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
