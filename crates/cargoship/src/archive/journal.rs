//! The resume journal of a `ship`: a local directory per (source, destination) with the
//! run's settings and suitcase plan (`plan.json`, written once) and an append-only event log
//! (`events.jsonl`: multipart upload created, part acknowledged, suitcase done). Re-running
//! the same `ship` replays it and continues without re-sending acknowledged parts.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use s3opt::{JournaledPart, ResumePoint, UploadJournal};
use serde::{Deserialize, Serialize};

use super::codec::Codec;
use super::inventory::{Entry, Skipped, Suitcase};
use super::walk::Item;
use super::{ArchiveError, Result};

/// Settings that must be the same for a run to continue another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub source: String,
    pub destination: String,
    pub codec: Codec,
    pub level: i32,
    pub suitcase_size: u64,
    pub frame_size: u64,
    /// `--exclude` patterns (absent in journals from before they existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct PlanFile {
    settings: Settings,
    created: String,
    /// Names this run's suitcases apart from any other run's (empty in journals written
    /// before runs had one: their suitcases have the plain names).
    #[serde(default)]
    run: String,
    plan: Vec<Vec<Item>>,
    skipped: Vec<Skipped>,
    /// Entries the exclude patterns left out of the walk.
    #[serde(default)]
    excluded: u64,
}

/// A finished suitcase: what goes into the inventory for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuitcaseRecord {
    pub suitcase: Suitcase,
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
}

/// One line of the event log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    /// `key` is the suitcase's object key relative to the archive prefix.
    Upload {
        suitcase: u32,
        upload_id: String,
        key: String,
    },
    Part {
        suitcase: u32,
        part: JournaledPart,
    },
    Restart {
        suitcase: u32,
    },
    Done {
        index: u32,
        record: Box<SuitcaseRecord>,
    },
    /// The inventory's upload, sent ahead and held until every suitcase is in (older
    /// builds skip the line).
    InventoryUpload {
        upload_id: String,
    },
}

/// What the journal knows about one suitcase.
#[derive(Debug, Clone, Default)]
pub struct SuitcaseState {
    pub upload_id: Option<String>,
    /// Object key of the upload (relative to the archive prefix).
    pub key: Option<String>,
    pub parts: Vec<JournaledPart>,
    pub done: Option<SuitcaseRecord>,
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    log: Mutex<File>,
    pub settings: Settings,
    /// When the run began (RFC 3339).
    pub created: String,
    /// The run's id, part of its suitcases' names (see [`PlanFile`]).
    pub run: String,
    pub plan: Vec<Vec<Item>>,
    /// Skipped by the walk.
    pub skipped: Vec<Skipped>,
    /// Left out of the walk by the exclude patterns (a directory counts once).
    pub excluded: u64,
    /// Per suitcase, as replayed when the journal was opened.
    pub state: Vec<SuitcaseState>,
    /// Inventory uploads started by earlier runs (held, never continued: a run that did not
    /// commit its inventory left it open, and the next run or a discard aborts it).
    pub inventory_uploads: Vec<String>,
}

/// Where journals live: `CARGOSHIP_STATE_DIR`, else `$XDG_STATE_HOME/cargoship`, else
/// `~/.local/state/cargoship`.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGOSHIP_STATE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("cargoship");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".local/state/cargoship")
}

/// The journal directory of a (source, destination) pair.
pub fn dir_for(state: &Path, source: &str, destination: &str) -> PathBuf {
    let id = blake3::hash(format!("{source}\n{destination}").as_bytes()).to_hex();
    state.join("journals").join(&id.as_str()[..16])
}

/// Where a finished ship of (source, destination) is remembered, so that shipping it again
/// checks the destination before sending anything.
pub fn shipped_marker(state: &Path, source: &str, destination: &str) -> PathBuf {
    let journal = dir_for(state, source, destination);
    let name = journal.file_name().expect("a journal directory has a name").to_owned();
    state.join("shipped").join(name)
}

/// Records that (source, destination) was shipped (best effort: only an optimisation hangs
/// on it).
pub fn mark_shipped(state: &Path, source: &str, destination: &str) {
    let marker = shipped_marker(state, source, destination);
    let written = marker
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&marker, format!("{source}\n{destination}\n")));
    if let Err(err) = written {
        tracing::debug!(%err, marker = %marker.display(), "could not record the finished ship");
    }
}

/// 12 hex digits, different for every run: the clock, the process and the journal's place.
fn new_run_id(dir: &Path, now: std::time::SystemTime) -> String {
    let nanos = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let seed = format!("{nanos} {} {}", std::process::id(), dir.display());
    blake3::hash(seed.as_bytes()).to_hex()[..12].to_owned()
}

impl Journal {
    fn err(dir: &Path, detail: impl std::fmt::Display) -> ArchiveError {
        ArchiveError::Journal { path: dir.to_owned(), detail: detail.to_string() }
    }

    /// Starts a journal for a new run.
    pub fn create(
        dir: &Path,
        settings: Settings,
        plan: Vec<Vec<Item>>,
        skipped: Vec<Skipped>,
        excluded: u64,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Self::err(dir, e))?;
        let now = std::time::SystemTime::now();
        let created = humantime::format_rfc3339_seconds(now).to_string();
        let run = new_run_id(dir, now);
        let file = PlanFile { settings, created, run, plan, skipped, excluded };
        let tmp = dir.join("plan.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&file).expect("plan serializes")).map_err(|e| Self::err(dir, e))?;
        let _ = std::fs::remove_file(dir.join("events.jsonl"));
        std::fs::rename(&tmp, dir.join("plan.json")).map_err(|e| Self::err(dir, e))?;
        Self::open(dir)?.ok_or_else(|| Self::err(dir, "vanished right after it was written"))
    }

    /// Opens the journal in `dir` if there is one, replaying its events.
    pub fn open(dir: &Path) -> Result<Option<Self>> {
        let plan_bytes = match std::fs::read(dir.join("plan.json")) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::err(dir, e)),
        };
        let file: PlanFile = serde_json::from_slice(&plan_bytes).map_err(|e| Self::err(dir, e))?;
        let mut state = vec![SuitcaseState::default(); file.plan.len()];
        let mut inventory_uploads = Vec::new();
        let events_path = dir.join("events.jsonl");
        let text = match std::fs::read_to_string(&events_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Self::err(dir, e)),
        };
        for line in text.lines() {
            // A line cut short by a kill is the last one; it recorded nothing that completed.
            let Ok(event) = serde_json::from_str::<Event>(line) else { continue };
            match event {
                Event::Upload { suitcase, upload_id, key } => {
                    if let Some(s) = state.get_mut(suitcase as usize) {
                        s.upload_id = Some(upload_id);
                        s.key = Some(key);
                        s.parts.clear();
                    }
                }
                Event::Part { suitcase, part } => {
                    if let Some(s) = state.get_mut(suitcase as usize) {
                        s.parts.retain(|p| p.number != part.number);
                        s.parts.push(part);
                    }
                }
                Event::Restart { suitcase } => {
                    if let Some(s) = state.get_mut(suitcase as usize) {
                        *s = SuitcaseState::default();
                    }
                }
                Event::Done { index, record } => {
                    if let Some(s) = state.get_mut(index as usize) {
                        s.done = Some(*record);
                    }
                }
                Event::InventoryUpload { upload_id } => inventory_uploads.push(upload_id),
            }
        }
        let mut log = OpenOptions::new().create(true).append(true).open(&events_path).map_err(|e| Self::err(dir, e))?;
        if !text.is_empty() && !text.ends_with('\n') {
            // End the torn line so the next event starts on a line of its own.
            log.write_all(b"\n").map_err(|e| Self::err(dir, e))?;
        }
        Ok(Some(Self {
            dir: dir.to_owned(),
            log: Mutex::new(log),
            settings: file.settings,
            created: file.created,
            run: file.run,
            plan: file.plan,
            skipped: file.skipped,
            excluded: file.excluded,
            state,
            inventory_uploads,
        }))
    }

    fn append(&self, event: &Event) {
        let mut line = serde_json::to_vec(event).expect("event serializes");
        line.push(b'\n');
        let mut log = self.log.lock().expect("journal lock");
        // One write per line: a kill leaves at most one partial line, which replay skips.
        if let Err(err) = log.write_all(&line) {
            tracing::warn!(%err, dir = %self.dir.display(), "could not write the resume journal");
        }
    }

    /// Records that suitcase `index` is uploaded; flushed to disk before returning.
    pub fn suitcase_done(&self, index: u32, record: &SuitcaseRecord) {
        self.append(&Event::Done { index, record: Box::new(record.clone()) });
        let _ = self.log.lock().expect("journal lock").sync_data();
    }

    /// Records that suitcase `index` starts over (its source changed since the last run).
    pub fn restart(&self, index: u32) {
        self.append(&Event::Restart { suitcase: index });
    }

    /// Deletes the journal (the archive is committed, or the run was discarded).
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(|e| Self::err(&self.dir, e))
    }

    /// The upload journal of suitcase `index`, resuming from `resume` if given.
    pub fn for_suitcase(
        self: &Arc<Self>,
        index: u32,
        key: &str,
        resume: Option<ResumePoint>,
    ) -> Arc<dyn UploadJournal> {
        Arc::new(SuitcaseJournal { journal: self.clone(), index, key: key.into(), resume })
    }

    /// The upload journal of the inventory: it records the upload's id (so that a run
    /// killed before its commit leaves nothing open for long), never resumes it, and lets
    /// a failed or cancelled one be aborted.
    pub fn for_inventory(self: &Arc<Self>) -> Arc<dyn UploadJournal> {
        Arc::new(InventoryJournal(self.clone()))
    }
}

#[derive(Debug)]
struct InventoryJournal(Arc<Journal>);

impl UploadJournal for InventoryJournal {
    fn resume_point(&self) -> Option<ResumePoint> {
        None
    }

    fn upload_started(&self, upload_id: &str) {
        self.0.append(&Event::InventoryUpload { upload_id: upload_id.into() });
    }

    fn part_done(&self, _: &JournaledPart) {}

    fn keeps_failed_uploads(&self) -> bool {
        false
    }
}

#[derive(Debug)]
struct SuitcaseJournal {
    journal: Arc<Journal>,
    index: u32,
    key: String,
    resume: Option<ResumePoint>,
}

impl UploadJournal for SuitcaseJournal {
    fn resume_point(&self) -> Option<ResumePoint> {
        self.resume.clone()
    }

    fn upload_started(&self, upload_id: &str) {
        self.journal.append(&Event::Upload {
            suitcase: self.index,
            upload_id: upload_id.into(),
            key: self.key.clone(),
        });
    }

    fn part_done(&self, part: &JournaledPart) {
        self.journal.append(&Event::Part { suitcase: self.index, part: part.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_replays_uploads_parts_and_finished_suitcases() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            source: "/src".into(),
            destination: "s3://b/p".into(),
            codec: Codec::Zstd,
            level: 3,
            suitcase_size: 100,
            frame_size: 10,
            exclude: vec!["*.tmp".into()],
        };
        let j = Arc::new(Journal::create(dir.path(), settings.clone(), vec![vec![], vec![]], vec![], 3).unwrap());
        let up = j.for_suitcase(1, "s1", None);
        up.upload_started("u-1");
        let part = JournaledPart { number: 2, offset: 5, size: 5, crc64nvme: 9, e_tag: "e".into() };
        up.part_done(&part);
        j.for_inventory().upload_started("inv-1");
        j.restart(0);
        drop(up);
        // A torn final line, as a kill -9 mid-write would leave.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("events.jsonl"))
            .unwrap()
            .write_all(b"{\"event\":\"part\",\"suit")
            .unwrap();
        let again = Journal::open(dir.path()).unwrap().unwrap();
        assert_eq!(again.settings, settings);
        assert_eq!(again.excluded, 3);
        assert_eq!((again.run.len(), &again.run), (12, &j.run), "the run id is kept");
        assert_eq!(again.state[1].upload_id.as_deref(), Some("u-1"));
        assert_eq!(again.state[1].key.as_deref(), Some("s1"));
        assert_eq!(again.state[1].parts, [part]);
        assert!(again.state[0].upload_id.is_none());
        assert_eq!(again.inventory_uploads, ["inv-1"], "an inventory upload is remembered to be aborted");
        let again = Arc::new(again);
        again.for_suitcase(0, "s0", None).upload_started("u-2");
        let third = Journal::open(dir.path()).unwrap().unwrap();
        assert_eq!(third.state[0].upload_id.as_deref(), Some("u-2"), "events after a torn line are kept");
        drop(again);
        third.remove().unwrap();
        assert!(Journal::open(dir.path()).unwrap().is_none());

        // Another run at the same place gets another id; a journal from before run ids has none.
        let other = Journal::create(dir.path(), settings.clone(), vec![vec![]], vec![], 0).unwrap();
        assert_ne!(other.run, j.run);
        let plan = dir.path().join("plan.json");
        let mut old: serde_json::Value = serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("run");
        std::fs::write(&plan, serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(Journal::open(dir.path()).unwrap().unwrap().run, "");
    }
}
