#!/usr/bin/env python3
"""Filesystem reads through a FUSE mount of S3: `cargoship mount` against s3fs and rclone mount.

Usage:
    bench/mount.py [--scenario wan] [--size-mib 1024] [--random-reads 1000] [--tools cargoship,s3fs,rclone]
                   [--seq-limit-s 240] [--merge]

What it does:
  1. installs what is missing (apt-get: fuse3 for fusermount3, s3fs, rclone) and builds
     target/release/cargoship if it is missing or older than the sources;
  2. starts `cargoship serve` on a fresh store in /dev/shm and `cargoship emulate` in front of it
     with bench/scenarios/<scenario>.toml; seeds one random object of --size-mib MiB straight
     into the server (never through the emulator);
  3. for each tool, mounts the bucket prefix through the emulator and measures, with the
     emulator's request and byte counters reset before each step:
       - time to first byte: 5 fresh opens, each followed by one 128 KiB pread at a random
         offset (the time the pread took and the requests it cost; the open is timed apart);
       - 1,000 random 4 KiB preads on one open file (same offsets for every tool), each
         checked against the source;
       - a sequential read of the whole object in 1 MiB reads, hashed and compared with the
         source, as a fraction of the scenario's bottleneck (stopped after --seq-limit-s;
         the rate over what was read is then reported, marked partial);
  4. writes bench/results/mount-<scenario>.md and .json (with --merge, the tools not run this
     time keep their rows from the previous .json).

The kernel's page cache is dropped between steps where the machine allows it.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from benchlib import emu, file_hash, free_port

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
CARGOSHIP = REPO / "target" / "release" / "cargoship"
DATA = Path("/dev/shm/cargoship-mount")
BUCKET = "bench"
PREFIX = "m"
KEY = f"{PREFIX}/large.bin"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "cargoship",
    "AWS_SECRET_ACCESS_KEY": "cargoship-secret",
    "AWS_REGION": "us-east-1",
}
TOOLS = ["cargoship", "cargoship-page-cache", "s3fs", "rclone"]
APT = {"fusermount3": "fuse3", "s3fs": "s3fs", "rclone": "rclone"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_packages():
    missing = [pkg for binary, pkg in APT.items() if not shutil.which(binary)]
    if missing:
        log(f"installing {' '.join(missing)}")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_cargoship():
    newest = max(p.stat().st_mtime for p in (REPO / "crates").rglob("*") if p.suffix in (".rs", ".toml"))
    if not CARGOSHIP.exists() or CARGOSHIP.stat().st_mtime < newest:
        log("building target/release/cargoship")
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cargoship"], cwd=REPO, check=True)



def start_listening(cmd, log_path, port):
    with open(log_path, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[1]} exited: {log_path.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{cmd[1]} did not listen on {port}")


def stop(proc, sig=signal.SIGINT):
    if proc and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()



def counters(url):
    totals = emu(url, "/__emulator/stats")
    return {"requests": totals["requests"], "bytes_down": totals["bytes_down"]}


def drop_caches():
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def mounted(path):
    want = str(path).replace(" ", "\\040")
    return any(line.split(" ")[4] == want for line in Path("/proc/self/mountinfo").read_text().splitlines())


def unmount(path):
    for cmd in (["fusermount3", "-u", str(path)], ["umount", "-l", str(path)]):
        if not mounted(path):
            return
        subprocess.run(cmd, capture_output=True)
        time.sleep(0.5)


def mount_cmd(tool, emu_url, mnt):
    if tool.startswith("cargoship"):
        extra = os.environ.get("CARGOSHIP_MOUNT_ARGS", "").split()
        cache = ["--page-cache"] if tool == "cargoship-page-cache" else []
        return [str(CARGOSHIP), "--endpoint-url", emu_url, *extra, "mount", *cache, f"s3://{BUCKET}/{PREFIX}",
                str(mnt)]
    if tool == "s3fs":
        pw = DATA / "s3fs-passwd"
        pw.write_text(f"{CREDENTIALS['AWS_ACCESS_KEY_ID']}:{CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n")
        pw.chmod(0o600)
        return ["s3fs", f"{BUCKET}:/{PREFIX}", str(mnt), "-f", "-o", f"url={emu_url}", "-o", "use_path_request_style",
                "-o", f"passwd_file={pw}", "-o", "ro", "-o", "endpoint=us-east-1", "-o", "sigv4"]
    if tool == "rclone":
        return ["rclone", "mount", f"bench:{BUCKET}/{PREFIX}", str(mnt), "--read-only"]
    raise ValueError(tool)


def tool_env(emu_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    empty = DATA / "empty-config"
    empty.touch()
    env.update(CREDENTIALS)
    env.update(
        AWS_CONFIG_FILE=str(empty), AWS_SHARED_CREDENTIALS_FILE=str(empty), RCLONE_CONFIG=str(empty),
        RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other", RCLONE_CONFIG_BENCH_ENDPOINT=emu_url,
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        RCLONE_CONFIG_BENCH_REGION=CREDENTIALS["AWS_REGION"], RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
    )
    return env


def version(tool):
    cmd = {"cargoship": [str(CARGOSHIP), "--version"], "cargoship-page-cache": [str(CARGOSHIP), "--version"], "s3fs": ["s3fs", "--version"], "rclone": ["rclone", "version"]}
    out = subprocess.run(cmd[tool], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[0]


def ttfb(emu_url, path, size, rng, trials=5):
    """Fresh opens (timed apart), one 128 KiB pread each at a random offset (timed, its requests counted)."""
    rows = []
    for _ in range(trials):
        drop_caches()
        off = rng.randrange(0, size - (128 << 10))
        t0 = time.monotonic()
        fd = os.open(path, os.O_RDONLY)
        open_ms = (time.monotonic() - t0) * 1e3
        emu(emu_url, "/__emulator/reset", post=True)
        try:
            t1 = time.monotonic()
            data = os.pread(fd, 128 << 10, off)
            ms = (time.monotonic() - t1) * 1e3
        finally:
            os.close(fd)
        rows.append({"offset": off, "ms": round(ms, 1), "open_ms": round(open_ms, 1), "bytes": len(data),
                     **counters(emu_url)})
    return rows


def random_reads(emu_url, path, source, size, n, seed):
    rng = random.Random(seed)
    offsets = [rng.randrange(0, size - 4096) for _ in range(n)]
    drop_caches()
    emu(emu_url, "/__emulator/reset", post=True)
    bad = 0
    fd, src = os.open(path, os.O_RDONLY), os.open(source, os.O_RDONLY)
    t0 = time.monotonic()
    try:
        for off in offsets:
            if os.pread(fd, 4096, off) != os.pread(src, 4096, off):
                bad += 1
    finally:
        os.close(fd)
        os.close(src)
    secs = time.monotonic() - t0
    return {"reads": n, "seconds": round(secs, 2), "ms_per_read": round(secs / n * 1e3, 1), "mismatches": bad,
            **counters(emu_url)}


def sequential(emu_url, path, size, want_hash, bottleneck_mb_s, limit_s):
    drop_caches()
    emu(emu_url, "/__emulator/reset", post=True)
    h = hashlib.blake2b()
    done = 0
    t0 = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            done += len(chunk)
            if time.monotonic() - t0 > limit_s:
                break
    secs = time.monotonic() - t0
    complete = done == size
    mb_s = done / secs / 1e6
    return {"bytes": done, "complete": complete, "seconds": round(secs, 1), "mb_per_s": round(mb_s, 1),
            "of_bottleneck": round(mb_s / bottleneck_mb_s, 3) if bottleneck_mb_s else None,
            "verified": (h.hexdigest() == want_hash) if complete else None, **counters(emu_url)}



def bench_tool(tool, emu_url, size, source, want_hash, scenario, args):
    mnt = DATA / f"mnt-{tool}"
    unmount(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    logf = DATA / f"{tool}-mount.log"
    cmd = mount_cmd(tool, emu_url, mnt)
    log("$ " + " ".join(cmd))
    with open(logf, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=tool_env(emu_url),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{tool} did not mount: {logf.read_text()[-1500:]}")
            time.sleep(0.2)
        path = mnt / "large.bin"
        st = os.stat(path)  # metadata warm: listing/HEAD not charged to the reads below
        if st.st_size != size:
            raise RuntimeError(f"{tool} shows {st.st_size} bytes, want {size}")
        rng = random.Random(7)
        out = {"tool": tool, "version": version(tool), "command": " ".join(cmd),
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        log(f"[{tool}] time to first byte")
        out["ttfb"] = ttfb(emu_url, path, size, rng)
        log(f"[{tool}] {args.random_reads} random 4 KiB reads")
        out["random"] = random_reads(emu_url, path, source, size, args.random_reads, 11)
        log(f"[{tool}] sequential read")
        out["sequential"] = sequential(emu_url, path, size, want_hash, scenario["link"].get("bottleneck_down_mbps"),
                                       args.seq_limit_s)
        log(f"[{tool}] {json.dumps(out['sequential'])}")
        return out
    finally:
        unmount(mnt)
        stop(proc, signal.SIGTERM)


def report(results, scenario, args, caches_dropped):
    link = scenario["link"]
    lines = [f"# Mount bench: scenario `{scenario['name']}`", "",
             f"{scenario.get('description', '')}; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (each tool's run time under Commands).",
             f"Object: {args.size_mib} MiB of random data; requests and bytes counted by the emulator; page cache "
             f"{'dropped' if caches_dropped else 'NOT dropped (no permission)'} before each step.", "",
             "| tool | TTFB 128 KiB, median ms (min-max) | requests per TTFB read | open, median ms | 1,000 random 4 KiB: s | requests | "
             "MB fetched | sequential MB/s | of bottleneck | verified |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['tool']} | failed: {r['error'][:200]} ||||||||| ")
            continue
        t = r["ttfb"]
        ms = [x["ms"] for x in t]
        reqs = sorted({x["requests"] for x in t})
        rnd, seq = r["random"], r["sequential"]
        seq_cell = f"{seq['mb_per_s']}" + ("" if seq["complete"] else f" (partial: {seq['bytes'] >> 20} MiB in "
                                                                     f"{seq['seconds']} s)")
        verified = "yes" if seq["verified"] and rnd["mismatches"] == 0 else (
            "random reads ok, sequential not complete" if seq["verified"] is None and rnd["mismatches"] == 0
            else "NO")
        lines.append(
            f"| {r['tool']} | {statistics.median(ms):.0f} ({min(ms):.0f}-{max(ms):.0f}) | "
            f"{'/'.join(map(str, reqs))} | {statistics.median(x['open_ms'] for x in t):.0f} | {rnd['seconds']} | {rnd['requests']} | {rnd['bytes_down'] / 1e6:.1f} | "
            f"{seq_cell} | {seq['of_bottleneck']:.0%} | {verified} |")
    lines += ["", f"RTT {link.get('rtt_ms')} ms, bottleneck {link.get('bottleneck_down_mbps')} MB/s down, "
                  f"{link.get('per_connection_mbps')} MB/s per connection.", "", "Commands:", ""]
    lines += [f"- {r['tool']} ({r.get('version', '?')}, measured {r.get('when', 'in an earlier run')}): "
              f"`{r.get('command', '')}`" for r in results]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="wan")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--random-reads", type=int, default=1000)
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--seq-limit-s", type=float, default=240)
    p.add_argument("--merge", action="store_true", help="keep the previous results of tools not run this time")
    args = p.parse_args()
    ensure_packages()
    ensure_cargoship()
    scenario_file = BENCH / "scenarios" / f"{args.scenario}.toml"
    scenario = tomllib.loads(scenario_file.read_text())
    DATA.mkdir(parents=True, exist_ok=True)
    size = args.size_mib << 20
    source = DATA / f"source-{args.size_mib}MiB.bin"
    if not source.exists() or source.stat().st_size != size:
        log(f"generating {source}")
        with open(source, "wb") as f:
            for off in range(0, size, 8 << 20):
                f.write(os.urandom(min(8 << 20, size - off)))
    want_hash = file_hash(source)
    store = DATA / "store"
    shutil.rmtree(store, ignore_errors=True)
    procs = []
    try:
        sport = free_port()
        direct = f"http://127.0.0.1:{sport}"
        procs.append(start_listening([str(CARGOSHIP), "serve", "--root", str(store), "--addr", f"127.0.0.1:{sport}",
                                      "--bucket", BUCKET], DATA / "serve.log", sport))
        eport = free_port()
        emu_url = f"http://127.0.0.1:{eport}"
        procs.append(start_listening([str(CARGOSHIP), "emulate", "--scenario", str(scenario_file), "--listen",
                                      f"127.0.0.1:{eport}", "--upstream", direct], DATA / "emulate.log", eport))
        env = tool_env(direct)
        subprocess.run([str(CARGOSHIP), "--endpoint-url", direct, "--quiet", "put", str(source),
                        f"s3://{BUCKET}/{KEY}"], env=env, check=True)
        caches_dropped = drop_caches()
        results = []
        for tool in args.tools.split(","):
            try:
                results.append(bench_tool(tool, emu_url, size, source, want_hash, scenario, args))
            except Exception as e:  # one tool failing must not lose the others' figures
                log(f"[{tool}] failed: {e}")
                results.append({"tool": tool, "error": str(e)})
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(store, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / f"mount-{args.scenario}.json"
    if args.merge and previous.exists():
        ran = {r["tool"] for r in results}
        kept = [r for r in json.loads(previous.read_text()) if r.get("tool") not in ran]
        results = results + kept
        results.sort(key=lambda r: TOOLS.index(r["tool"]) if r.get("tool") in TOOLS else len(TOOLS))
    (RESULTS / f"mount-{args.scenario}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = report(results, scenario, args, caches_dropped)
    (RESULTS / f"mount-{args.scenario}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
