//! `cargoship mount` for real: the binary mounts a prefix of the embedded S3 server through
//! FUSE and the tests use the mount with ordinary tools and syscalls (`ls -R`, `cat`, `cmp`,
//! `pread`), then unmount it with `cargoship unmount`.
//!
//! Every filesystem call runs on a blocking thread under a timeout (the server answering the
//! mount lives in this process), and a guard lazily unmounts and kills the mount process
//! whatever happens, so a broken mount cannot hang the test run. Needs /dev/fuse; set
//! CARGOSHIP_SKIP_FUSE_TESTS=1 to skip on machines without it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use s3opt::{ClientConfig, OptimizedS3Client, PutOptions};
use testbed::data::noise as data;
use testbed::{EmbeddedServer, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_cargoship");
const MIB: usize = 1024 * 1024;
const STEP: Duration = Duration::from_secs(60);

fn skip() -> bool {
    if std::env::var_os("CARGOSHIP_SKIP_FUSE_TESTS").is_some() {
        eprintln!("CARGOSHIP_SKIP_FUSE_TESTS set: not mounting");
        return true;
    }
    false
}

fn command(server: &EmbeddedServer, home: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("CARGOSHIP_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("AWS_ENDPOINT_URL", server.endpoint_url())
        .env("AWS_ACCESS_KEY_ID", &server.config().access_key)
        .env("AWS_SECRET_ACCESS_KEY", &server.config().secret_key)
        .env("AWS_REGION", "us-east-1");
    cmd
}

/// A running `cargoship mount`; dropping it unmounts (lazily) and kills the process.
struct Mounted {
    child: Option<tokio::process::Child>,
    path: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).stderr(Stdio::null()).status();
            let _ = child.start_kill();
        }
    }
}

fn mounted(path: &Path) -> bool {
    let path = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.as_str()))
}

async fn mount(server: &EmbeddedServer, home: &Path, source: &str, path: &Path) -> Mounted {
    mount_with(server, home, &[source], path).await
}

async fn mount_with(server: &EmbeddedServer, home: &Path, args: &[&str], path: &Path) -> Mounted {
    let child = command(server, home)
        .arg("mount")
        .args(args)
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cargoship mount");
    let mut m = Mounted { child: Some(child), path: path.to_owned() };
    for _ in 0..200 {
        if mounted(path) {
            return m;
        }
        if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
            let out = m.child.take().unwrap().wait_with_output().await.unwrap();
            panic!("mount exited with {status}: {}", String::from_utf8_lossy(&out.stderr));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} was not mounted within 20 s", path.display());
}

/// Runs a blocking filesystem call off the runtime, with a timeout.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(STEP, tokio::task::spawn_blocking(f)).await.expect("filesystem call timed out").unwrap()
}

async fn sh(program: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let child = tokio::process::Command::new(program).args(args).kill_on_drop(true).output();
    tokio::time::timeout(STEP, child).await.expect("command timed out").expect("command runs")
}

struct Env {
    dir: tempfile::TempDir,
    server: EmbeddedServer,
    big: Vec<u8>,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedServer::start(ServerConfig::ephemeral(dir.path().join("store"))).await.unwrap();
    server.create_bucket("bucket").unwrap();
    let client = OptimizedS3Client::new(ClientConfig {
        endpoint_url: Some(server.endpoint_url()),
        region: Some("us-east-1".into()),
        credentials: Some((server.config().access_key.clone(), server.config().secret_key.clone())),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let big = data(12 * MIB + 3, 7);
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("data/a.txt", b"hello from s3\n".to_vec()),
        ("data/big.bin", big.clone()),
        ("data/sub/b.bin", data(300 * 1024, 8)),
        ("data/sub/deep/c.txt", b"deep\n".to_vec()),
        ("other/outside.txt", b"not mounted\n".to_vec()),
    ];
    for (key, body) in objects {
        client.put_object("bucket", key, &body[..], PutOptions::default()).await.unwrap();
    }
    std::fs::create_dir(dir.path().join("mnt")).unwrap();
    Env { dir, server, big }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mounted_prefix_reads_like_the_source_and_is_read_only() {
    if skip() {
        return;
    }
    let env = start().await;
    let mnt = env.dir.path().join("mnt");
    let mut m = mount(&env.server, env.dir.path(), "s3://bucket/data", &mnt).await;

    // ls -R shows the tree under the prefix, and nothing outside it.
    let ls = sh("ls", &["-R".as_ref(), mnt.as_os_str()]).await;
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    let listing = String::from_utf8_lossy(&ls.stdout);
    for name in ["a.txt", "big.bin", "sub", "b.bin", "deep", "c.txt"] {
        assert!(listing.contains(name), "{name} missing from ls -R:\n{listing}");
    }
    assert!(!listing.contains("outside"), "{listing}");

    // cat and sizes.
    let cat = sh("cat", &[mnt.join("a.txt").as_os_str()]).await;
    assert_eq!(cat.stdout, b"hello from s3\n");
    let deep = sh("cat", &[mnt.join("sub/deep/c.txt").as_os_str()]).await;
    assert_eq!(deep.stdout, b"deep\n");
    let p = mnt.join("big.bin");
    let len = blocking(move || std::fs::metadata(p).unwrap().len()).await;
    assert_eq!(len, env.big.len() as u64);

    // cmp against the source, byte for byte.
    let local = env.dir.path().join("big.local");
    std::fs::write(&local, &env.big).unwrap();
    let cmp = sh("cmp", &[mnt.join("big.bin").as_os_str(), local.as_os_str()]).await;
    assert!(cmp.status.success(), "cmp: {}", String::from_utf8_lossy(&cmp.stdout));

    // Random-offset reads on one open file.
    let p = mnt.join("big.bin");
    let big = env.big.clone();
    blocking(move || {
        let f = std::fs::File::open(p).unwrap();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % big.len() as u64) as usize;
            let len = 1 + (x >> 44) as usize % (256 * 1024);
            let mut buf = vec![0u8; len];
            let n = f.read_at(&mut buf, off as u64).unwrap();
            let end = (off + len).min(big.len());
            assert!(n > 0 && off + n <= end);
            assert!(buf[..n] == big[off..off + n], "mismatch at {off}+{n}");
        }
    })
    .await;

    // A missing key is ENOENT.
    let p = mnt.join("nope.txt");
    let err = blocking(move || std::fs::File::open(p).unwrap_err()).await;
    assert_eq!(err.raw_os_error(), Some(2), "{err}");
    let p = mnt.join("sub/nope/deeper");
    let err = blocking(move || std::fs::metadata(p).unwrap_err()).await;
    assert_eq!(err.raw_os_error(), Some(2), "{err}");

    // Writes are EROFS: create, write to an existing file, mkdir, remove.
    let dir = mnt.clone();
    let errs = blocking(move || {
        [
            std::fs::File::create(dir.join("new.txt")).map(drop),
            std::fs::OpenOptions::new().write(true).open(dir.join("a.txt")).map(drop),
            std::fs::create_dir(dir.join("newdir")),
            std::fs::remove_file(dir.join("a.txt")),
        ]
        .map(|r| r.unwrap_err().raw_os_error())
    })
    .await;
    assert_eq!(errs, [Some(30); 4], "EROFS for every write");

    // A second mount on the same place is refused as busy.
    let busy = command(&env.server, env.dir.path()).args(["mount", "s3://bucket/data"]).arg(&mnt).output();
    let busy = tokio::time::timeout(STEP, busy).await.unwrap().unwrap();
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("busy"), "{}", String::from_utf8_lossy(&busy.stderr));

    // `cargoship unmount` ends the mount process cleanly.
    let un = command(&env.server, env.dir.path()).arg("unmount").arg(&mnt).output();
    let un = tokio::time::timeout(STEP, un).await.unwrap().unwrap();
    assert!(un.status.success(), "{}", String::from_utf8_lossy(&un.stderr));
    let child = m.child.take().unwrap();
    let out = tokio::time::timeout(STEP, child.wait_with_output()).await.expect("mount exits").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!mounted(&mnt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_cache_mount_reads_like_the_source() {
    if skip() {
        return;
    }
    let env = start().await;
    let mnt = env.dir.path().join("mnt");
    let _m = mount_with(&env.server, env.dir.path(), &["--page-cache", "s3://bucket/data"], &mnt).await;
    let local = env.dir.path().join("big.local");
    std::fs::write(&local, &env.big).unwrap();
    let cmp = sh("cmp", &[mnt.join("big.bin").as_os_str(), local.as_os_str()]).await;
    assert!(cmp.status.success(), "cmp: {}", String::from_utf8_lossy(&cmp.stdout));
    let (p, big) = (mnt.join("big.bin"), env.big.clone());
    blocking(move || {
        let f = std::fs::File::open(p).unwrap();
        for off in [0usize, 1, 4095, 5 * MIB + 7, big.len() - 10] {
            let mut buf = vec![0u8; 4096];
            let n = f.read_at(&mut buf, off as u64).unwrap();
            assert_eq!(n, 4096.min(big.len() - off), "a read returns exactly what is there");
            assert!(buf[..n] == big[off..off + n], "mismatch at {off}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_unmounts() {
    if skip() {
        return;
    }
    let env = start().await;
    let mnt = env.dir.path().join("mnt");
    let mut m = mount(&env.server, env.dir.path(), "s3://bucket", &mnt).await;
    let p = mnt.join("data/a.txt");
    assert_eq!(blocking(move || std::fs::read(p).unwrap()).await, b"hello from s3\n");
    let pid = m.child.as_ref().unwrap().id().unwrap();
    let kill = sh("kill", &["-TERM".as_ref(), pid.to_string().as_ref()]).await;
    assert!(kill.status.success());
    let child = m.child.take().unwrap();
    let out = tokio::time::timeout(STEP, child.wait_with_output()).await.expect("mount exits").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!mounted(&mnt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_a_missing_mountpoint_a_missing_bucket_and_unmounting_nothing() {
    let env = start().await;
    let home = env.dir.path();
    let missing = command(&env.server, home).args(["mount", "s3://bucket/data"]).arg(home.join("nope")).output();
    let out = tokio::time::timeout(STEP, missing).await.unwrap().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{out:?}");

    if !skip() {
        let no_bucket =
            command(&env.server, home).args(["mount", "s3://no-such-bucket"]).arg(home.join("mnt")).output();
        let out = tokio::time::timeout(STEP, no_bucket).await.unwrap().unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!mounted(&home.join("mnt")));
    }

    let nothing = command(&env.server, home).arg("unmount").arg(home.join("mnt")).output();
    let out = tokio::time::timeout(STEP, nothing).await.unwrap().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not mounted"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mounted_archive_shows_its_inventory_and_reads_like_the_source() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if skip() {
        return;
    }
    let env = start().await;
    let home = env.dir.path();
    // The tree to ship: nested files, a big one spanning many frames, a symlink, modes.
    let src = home.join("tree");
    std::fs::create_dir_all(src.join("docs/deep")).unwrap();
    std::fs::write(src.join("docs/readme.md"), b"# archived\n").unwrap();
    std::fs::set_permissions(src.join("docs/readme.md"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(src.join("docs/deep/note.txt"), b"deep note\n").unwrap();
    let big = data(5 * MIB + 17, 9);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("docs/readme.md", src.join("link")).unwrap();
    let ship = command(&env.server, home)
        .args(["--quiet", "ship"])
        .arg(&src)
        .args(["s3://bucket/arch", "--frame-size", "256KiB"])
        .output();
    let out = tokio::time::timeout(STEP, ship).await.unwrap().unwrap();
    assert!(out.status.success(), "ship: {}", String::from_utf8_lossy(&out.stderr));

    let mnt = home.join("mnt");
    let mut m = {
        let child = command(&env.server, home)
            .args(["mount", "--archive", "s3://bucket/arch"])
            .arg(&mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut m = Mounted { child: Some(child), path: mnt.clone() };
        for _ in 0..200 {
            if mounted(&mnt) {
                break;
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let out = m.child.take().unwrap().wait_with_output().await.unwrap();
                panic!("mount --archive exited with {status}: {}", String::from_utf8_lossy(&out.stderr));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(mounted(&mnt), "archive not mounted within 20 s");
        m
    };

    let ls = sh("ls", &["-R".as_ref(), mnt.as_os_str()]).await;
    let listing = String::from_utf8_lossy(&ls.stdout);
    for name in ["big.bin", "docs", "readme.md", "deep", "note.txt", "link"] {
        assert!(listing.contains(name), "{name} missing from ls -R:\n{listing}");
    }
    assert!(!listing.contains("inventory"), "the archive's own objects are not shown:\n{listing}");
    let cat = sh("cat", &[mnt.join("docs/deep/note.txt").as_os_str()]).await;
    assert_eq!(cat.stdout, b"deep note\n");
    let via_link = sh("cat", &[mnt.join("link").as_os_str()]).await;
    assert_eq!(via_link.stdout, b"# archived\n");
    let cmp = sh("cmp", &[mnt.join("big.bin").as_os_str(), src.join("big.bin").as_os_str()]).await;
    assert!(cmp.status.success(), "cmp: {}", String::from_utf8_lossy(&cmp.stdout));

    // Names, sizes, modes and times come from the inventory.
    let (m_src, m_mnt) = (src.join("docs/readme.md"), mnt.join("docs/readme.md"));
    let (a, b) = blocking(move || (std::fs::metadata(m_src).unwrap(), std::fs::metadata(m_mnt).unwrap())).await;
    assert_eq!((b.len(), b.mode() & 0o7777, b.mtime()), (a.len(), 0o640, a.mtime()));
    let l = mnt.join("link");
    assert_eq!(blocking(move || std::fs::read_link(l).unwrap()).await, Path::new("docs/readme.md"));

    // Random-offset reads across frame boundaries.
    let p = mnt.join("big.bin");
    blocking(move || {
        let f = std::fs::File::open(p).unwrap();
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        for _ in 0..40 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % big.len() as u64) as usize;
            let len = 1 + (x >> 44) as usize % (600 * 1024);
            let mut buf = vec![0u8; len];
            let n = f.read_at(&mut buf, off as u64).unwrap();
            assert!(n > 0 && buf[..n] == big[off..off + n], "mismatch at {off}+{n}");
        }
    })
    .await;

    let (missing, dir) = (mnt.join("docs/nope"), mnt.clone());
    let (enoent, erofs) = blocking(move || {
        (
            std::fs::File::open(missing).unwrap_err().raw_os_error(),
            std::fs::File::create(dir.join("new")).unwrap_err().raw_os_error(),
        )
    })
    .await;
    assert_eq!((enoent, erofs), (Some(2), Some(30)));

    let un = command(&env.server, home).arg("unmount").arg(&mnt).output();
    assert!(tokio::time::timeout(STEP, un).await.unwrap().unwrap().status.success());
    let out = tokio::time::timeout(STEP, m.child.take().unwrap().wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
