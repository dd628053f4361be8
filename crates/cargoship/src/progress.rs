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

impl Progress {
    /// Starts following `client`'s counter; `total` when known.
    pub fn start(client: &OptimizedS3Client, dir: Direction, label: &str, total: Option<u64>, quiet: bool) -> Self {
        if quiet {
            return Self { task: None, bar: None };
        }
        let base = counter(client, dir);
        if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::no_length(),
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("valid template"),
            );
            bar.set_message(label.to_owned());
            let (c, b) = (client.clone(), bar.clone());
            let task = tokio::spawn(async move {
                loop {
                    b.set_position(counter(&c, dir) - base);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            return Self { task: Some(task), bar: Some(bar) };
        }
        let (c, label) = (client.clone(), label.to_owned());
        let task = tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let done = counter(&c, dir) - base;
                let rate = done as f64 / start.elapsed().as_secs_f64() / 1e6;
                match total {
                    Some(t) if t > 0 => eprintln!(
                        "{label}: {} / {} ({:.0}%), {rate:.1} MB/s",
                        human(done),
                        human(t),
                        done as f64 * 100.0 / t as f64
                    ),
                    _ => eprintln!("{label}: {}, {rate:.1} MB/s", human(done)),
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
