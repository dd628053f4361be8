//! The mounted namespace: inodes for the directories (`/`-separated key prefixes) and files
//! (objects) under the mount's prefix, built from delimited listings that are kept for a
//! TTL; or, for an archive, the fixed tree of its inventory (directories, files, symlinks
//! with their modes and times). Pure: the caller fetches listings and passes the time in.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use s3opt::Listing;

/// Inode of the mount's root directory.
pub const ROOT: u64 = 1;

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A key prefix, ending in `/` (the root's may be empty).
    Dir { prefix: String },
    /// An object.
    File { key: String, size: u64, mtime: SystemTime },
    /// A file inside an archive: entry `index` of its inventory.
    Member { index: usize, size: u64 },
    /// A symbolic link inside an archive.
    Symlink { target: String },
}

/// What an archive entry becomes in the tree.
#[derive(Debug, Clone)]
pub enum ArchiveKind {
    Dir,
    File { index: usize, size: u64 },
    Symlink { target: String },
}

/// One inventory entry, as the tree needs it.
#[derive(Debug, Clone)]
pub struct ArchiveEntry {
    /// `/`-separated path relative to the archive's root.
    pub path: String,
    pub kind: ArchiveKind,
    pub mtime: SystemTime,
    /// Unix permission bits.
    pub mode: u32,
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub kind: Kind,
    /// Permission bits and time recorded for it (archives), if any.
    pub meta: Option<(u32, SystemTime)>,
}

#[derive(Debug)]
struct DirListing {
    listed_at: Instant,
    /// Children, sorted by name.
    entries: Vec<u64>,
}

/// Every inode handed out so far and the listings of directories.
#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, String), u64>,
    listings: HashMap<u64, DirListing>,
    next_ino: u64,
    ttl: Duration,
    /// A fixed tree (an archive's): never listed again.
    fixed: bool,
    /// Time shown for directories (the mount time).
    pub mounted_at: SystemTime,
}

impl Tree {
    /// A tree whose root is `prefix` (empty, or ending in `/`), with listings kept `ttl`.
    pub fn new(prefix: &str, ttl: Duration, mounted_at: SystemTime) -> Self {
        let root = Node {
            ino: ROOT,
            parent: ROOT,
            name: String::new(),
            kind: Kind::Dir { prefix: prefix.to_owned() },
            meta: None,
        };
        Self {
            nodes: HashMap::from([(ROOT, root)]),
            by_name: HashMap::new(),
            listings: HashMap::new(),
            next_ino: ROOT + 1,
            ttl,
            fixed: false,
            mounted_at,
        }
    }

    /// The fixed tree of an archive's entries. Directories an entry needs but the inventory
    /// does not list are made up; entries with unusable path components are left out.
    pub fn from_archive(entries: impl IntoIterator<Item = ArchiveEntry>, mounted_at: SystemTime) -> Self {
        let mut t = Self::new("", Duration::MAX, mounted_at);
        t.fixed = true;
        t.listings.insert(ROOT, DirListing { listed_at: Instant::now(), entries: Vec::new() });
        for e in entries {
            let parts: Vec<&str> = e.path.split('/').filter(|p| !p.is_empty()).collect();
            if parts.iter().any(|p| !usable(p)) {
                continue;
            }
            let Some((name, dirs)) = parts.split_last() else {
                // The root itself.
                if matches!(e.kind, ArchiveKind::Dir) {
                    t.nodes.get_mut(&ROOT).expect("root").meta = Some((e.mode, e.mtime));
                }
                continue;
            };
            let mut parent = ROOT;
            let mut path = String::new();
            for d in dirs {
                path = if path.is_empty() { (*d).to_owned() } else { format!("{path}/{d}") };
                parent = t.child_dir(parent, d, &path);
            }
            let meta = Some((e.mode, e.mtime));
            match e.kind {
                ArchiveKind::Dir => {
                    let dir = t.child_dir(parent, name, &e.path);
                    t.nodes.get_mut(&dir).expect("dir").meta = meta;
                }
                ArchiveKind::File { index, size } => {
                    t.add_child(parent, name, Kind::Member { index, size }, meta);
                }
                ArchiveKind::Symlink { target } => {
                    t.add_child(parent, name, Kind::Symlink { target }, meta);
                }
            }
        }
        for l in t.listings.values_mut() {
            l.entries.sort_by(|a, b| t.nodes[a].name.cmp(&t.nodes[b].name));
        }
        t
    }

    /// The directory `name` under `parent` in a fixed tree, made if missing.
    fn child_dir(&mut self, parent: u64, name: &str, path: &str) -> u64 {
        if let Some(&ino) = self.by_name.get(&(parent, name.to_owned()))
            && matches!(self.nodes[&ino].kind, Kind::Dir { .. })
        {
            return ino;
        }
        let ino = self.add_child(parent, name, Kind::Dir { prefix: format!("{path}/") }, None);
        self.listings.insert(ino, DirListing { listed_at: Instant::now(), entries: Vec::new() });
        ino
    }

    fn add_child(&mut self, parent: u64, name: &str, kind: Kind, meta: Option<(u32, SystemTime)>) -> u64 {
        let key = (parent, name.to_owned());
        if let Some(old) = self.by_name.get(&key).copied()
            && let Some(l) = self.listings.get_mut(&parent)
        {
            l.entries.retain(|i| *i != old);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_name.insert(key, ino);
        self.nodes.insert(ino, Node { ino, parent, name: name.to_owned(), kind, meta });
        self.listings.get_mut(&parent).expect("parent is a listed directory").entries.push(ino);
        ino
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The prefix to list for directory `dir` if its listing is missing or older than the
    /// TTL; `None` if it is fresh or `dir` is not a directory.
    pub fn needs_listing(&self, dir: u64, now: Instant) -> Option<String> {
        if self.fixed {
            return None;
        }
        let Kind::Dir { prefix } = &self.nodes.get(&dir)?.kind else { return None };
        match self.listings.get(&dir) {
            Some(l) if now.saturating_duration_since(l.listed_at) < self.ttl => None,
            _ => Some(prefix.clone()),
        }
    }

    /// Replaces the children of `dir` with what a delimited listing of its prefix found.
    /// Sub-prefixes become directories and objects files; a name that is both is shown as
    /// the directory; keys that would not make a usable file name (empty, `.`, `..`, or a
    /// directory marker ending in `/`) are skipped. Inode numbers of names seen before are
    /// kept.
    pub fn apply_listing(&mut self, dir: u64, listing: &Listing, now: Instant) {
        let Some(Node { kind: Kind::Dir { prefix }, .. }) = self.nodes.get(&dir) else { return };
        let prefix = prefix.clone();
        let mut found: Vec<(String, Kind)> = Vec::new();
        for p in &listing.common_prefixes {
            let Some(name) = p.strip_prefix(&prefix).map(|n| n.trim_end_matches('/')) else { continue };
            if usable(name) {
                found.push((name.to_owned(), Kind::Dir { prefix: p.clone() }));
            }
        }
        let dirs: std::collections::HashSet<String> = found.iter().map(|(n, _)| n.clone()).collect();
        for o in &listing.objects {
            let Some(name) = o.key.strip_prefix(&prefix) else { continue };
            if !usable(name) || name.contains('/') || dirs.contains(name) {
                continue;
            }
            let mtime = o.last_modified.unwrap_or(self.mounted_at);
            found.push((name.to_owned(), Kind::File { key: o.key.clone(), size: o.size, mtime }));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.dedup_by(|a, b| a.0 == b.0);
        let mut entries = Vec::with_capacity(found.len());
        for (name, kind) in found {
            let same_kind = |n: &Node| {
                matches!(
                    (&n.kind, &kind),
                    (Kind::Dir { .. }, Kind::Dir { .. }) | (Kind::File { .. }, Kind::File { .. })
                )
            };
            let ino = match self.by_name.get(&(dir, name.clone())).copied() {
                Some(ino) if self.nodes.get(&ino).is_some_and(same_kind) => ino,
                _ => {
                    let ino = self.next_ino;
                    self.next_ino += 1;
                    self.by_name.insert((dir, name.clone()), ino);
                    ino
                }
            };
            self.nodes.insert(ino, Node { ino, parent: dir, name, kind, meta: None });
            entries.push(ino);
        }
        self.listings.insert(dir, DirListing { listed_at: now, entries });
    }

    /// The child `name` of `dir` in its last listing.
    pub fn lookup(&self, dir: u64, name: &str) -> Option<&Node> {
        let listing = self.listings.get(&dir)?;
        let ino = self.by_name.get(&(dir, name.to_owned()))?;
        listing.entries.contains(ino).then(|| self.nodes.get(ino)).flatten()
    }

    /// The children of `dir` in its last listing, sorted by name.
    pub fn children(&self, dir: u64) -> Vec<&Node> {
        self.listings
            .get(&dir)
            .map(|l| l.entries.iter().filter_map(|i| self.nodes.get(i)).collect())
            .unwrap_or_default()
    }
}

fn usable(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.ends_with('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3opt::ListEntry;

    fn listing(prefixes: &[&str], objects: &[(&str, u64)]) -> Listing {
        Listing {
            objects: objects
                .iter()
                .map(|(k, s)| ListEntry { key: (*k).into(), size: *s, last_modified: None, e_tag: None })
                .collect(),
            common_prefixes: prefixes.iter().map(|p| (*p).into()).collect(),
            pages: 1,
        }
    }

    #[test]
    fn listings_become_directories_and_files() {
        let now = Instant::now();
        let mut t = Tree::new("data/", Duration::from_secs(10), SystemTime::UNIX_EPOCH);
        assert_eq!(t.needs_listing(ROOT, now).as_deref(), Some("data/"));
        t.apply_listing(ROOT, &listing(&["data/sub/"], &[("data/a.bin", 5), ("data/", 0)]), now);
        let names: Vec<_> = t.children(ROOT).iter().map(|n| n.name.clone()).collect();
        assert_eq!(names, ["a.bin", "sub"], "directory marker skipped");
        let sub = t.lookup(ROOT, "sub").unwrap();
        assert_eq!(sub.kind, Kind::Dir { prefix: "data/sub/".into() });
        let file = t.lookup(ROOT, "a.bin").unwrap();
        assert!(matches!(&file.kind, Kind::File { key, size: 5, .. } if key == "data/a.bin"));
        assert!(t.lookup(ROOT, "missing").is_none());
    }

    #[test]
    fn listings_expire_after_the_ttl() {
        let now = Instant::now();
        let mut t = Tree::new("", Duration::from_secs(10), SystemTime::UNIX_EPOCH);
        t.apply_listing(ROOT, &listing(&[], &[("x", 1)]), now);
        assert_eq!(t.needs_listing(ROOT, now + Duration::from_secs(9)), None);
        assert_eq!(t.needs_listing(ROOT, now + Duration::from_secs(10)).as_deref(), Some(""));
    }

    #[test]
    fn inode_numbers_survive_a_relisting_and_vanished_names_go() {
        let now = Instant::now();
        let mut t = Tree::new("", Duration::from_secs(1), SystemTime::UNIX_EPOCH);
        t.apply_listing(ROOT, &listing(&[], &[("a", 1), ("b", 2)]), now);
        let a = t.lookup(ROOT, "a").unwrap().ino;
        t.apply_listing(ROOT, &listing(&[], &[("a", 10)]), now + Duration::from_secs(2));
        let again = t.lookup(ROOT, "a").unwrap();
        assert_eq!(again.ino, a);
        assert!(matches!(again.kind, Kind::File { size: 10, .. }), "size refreshed");
        assert!(t.lookup(ROOT, "b").is_none());
    }

    #[test]
    fn an_archive_inventory_becomes_a_fixed_tree() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let e = |path: &str, kind, mode| ArchiveEntry { path: path.into(), kind, mtime: t0, mode };
        let t = Tree::from_archive(
            [
                e("", ArchiveKind::Dir, 0o750),
                e("docs", ArchiveKind::Dir, 0o700),
                e("docs/readme.md", ArchiveKind::File { index: 2, size: 12 }, 0o640),
                e("deep/er/x.bin", ArchiveKind::File { index: 3, size: 1 }, 0o600),
                e("link", ArchiveKind::Symlink { target: "docs/readme.md".into() }, 0o777),
                e("../escape", ArchiveKind::File { index: 5, size: 1 }, 0o600),
            ],
            SystemTime::UNIX_EPOCH,
        );
        let names: Vec<_> = t.children(ROOT).iter().map(|n| n.name.clone()).collect();
        assert_eq!(names, ["deep", "docs", "link"], "sorted, unsafe path left out");
        assert_eq!(t.get(ROOT).unwrap().meta, Some((0o750, t0)));
        let docs = t.lookup(ROOT, "docs").unwrap();
        assert_eq!(docs.meta, Some((0o700, t0)));
        let readme = t.lookup(docs.ino, "readme.md").unwrap();
        assert_eq!(readme.kind, Kind::Member { index: 2, size: 12 });
        assert_eq!(readme.meta, Some((0o640, t0)));
        let er = t.lookup(t.lookup(ROOT, "deep").unwrap().ino, "er").unwrap();
        assert!(t.lookup(er.ino, "x.bin").is_some(), "implicit directories made");
        assert_eq!(t.lookup(ROOT, "link").unwrap().kind, Kind::Symlink { target: "docs/readme.md".into() });
        assert_eq!(t.needs_listing(ROOT, Instant::now() + Duration::from_secs(1_000_000)), None);
    }

    #[test]
    fn a_prefix_shadows_an_object_of_the_same_name() {
        let now = Instant::now();
        let mut t = Tree::new("", Duration::from_secs(1), SystemTime::UNIX_EPOCH);
        t.apply_listing(ROOT, &listing(&["x/"], &[("x", 3)]), now);
        let children = t.children(ROOT);
        assert_eq!(children.len(), 1);
        assert!(matches!(children[0].kind, Kind::Dir { .. }));
    }
}
