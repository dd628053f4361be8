#!/usr/bin/env python3
"""Archive benchmarks: `cargoship ship`/`restore` measured side by side with peers.

1. small: 10,000 files of 64 KiB (random, so compression does not help) on the `wan`
   scenario: `cargoship ship` vs `s5cmd cp` and `aws s3 cp --recursive` uploading the same
   tree file by file (files/s, MB/s of file data).
2. tree: a 1 GiB tree (4 x 200 MiB + 2,000 x 100 KiB, random) shipped and restored on
   `wan`: throughput as a fraction of the bottleneck, restore verified against the source.
3. zstd: a 256 MiB text-like dataset (CSV sensor readings) shipped on loopback (no
   emulator) at zstd levels 1, 3, 9 and gzip 6: compression ratio and client CPU s per GiB.

All data on /dev/shm. Usage: bench/archive.py [small] [tree] [zstd]   (default: all)
Needs `bench/run` to have set up bench/.venv (s5cmd, awscli). Writes bench/results/archive.md.
"""
import json, os, random, math, shutil, signal, subprocess, sys, time, tomllib
from pathlib import Path
from benchlib import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/cargoship"
VENV = ROOT / "bench/.venv/bin"
WORK = Path("/dev/shm/cargoship-archive")
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="cargoship", AWS_SECRET_ACCESS_KEY="cargoship-secret",
           AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", CARGOSHIP_STATE_DIR=str(WORK / "state"))
ENV.pop("AWS_ENDPOINT_URL", None)


class Stack:
    """`cargoship serve` on /dev/shm, optionally `cargoship emulate` in front."""

    def __init__(self, scenario=None):
        self.store = WORK / "store"
        shutil.rmtree(self.store, ignore_errors=True)
        sp = free_port()
        self.procs = [subprocess.Popen([BIN, "serve", "--root", self.store, "--addr", f"127.0.0.1:{sp}", "--bucket", "bench"],
                                       stderr=subprocess.DEVNULL)]
        self.url = f"http://127.0.0.1:{sp}"
        self.bottleneck = None
        if scenario:
            ep = free_port()
            path = ROOT / f"bench/scenarios/{scenario}.toml"
            self.bottleneck = tomllib.loads(path.read_text())["link"].get("bottleneck_up_mbps")
            self.procs.append(subprocess.Popen([BIN, "emulate", "--scenario", path, "--listen", f"127.0.0.1:{ep}",
                                                "--upstream", self.url], stderr=subprocess.DEVNULL))
            self.url = f"http://127.0.0.1:{ep}"
        time.sleep(1)

    def close(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            p.wait()


def timed(cmd, env=ENV):
    """Runs cmd; returns (seconds, cpu seconds, peak RSS MiB, stdout)."""
    t = WORK / "time.txt"
    start = time.monotonic()
    out = subprocess.run(["/usr/bin/time", "-v", "-o", str(t), *map(str, cmd)], env=env, capture_output=True, text=True)
    secs = time.monotonic() - start
    if out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}): {' '.join(map(str, cmd))}\n{out.stderr[-2000:]}")
    lines = t.read_text().splitlines()
    val = lambda key: next(l.split(":")[-1].strip() for l in lines if key in l)
    cpu = float(val("User time")) + float(val("System time"))
    rss = int(val("Maximum resident")) / 1024
    return secs, cpu, rss, out.stdout


def make_random_tree(root, files):
    if root.exists():
        return
    for rel, size in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))


def tree_equal(a, b):
    out = subprocess.run(["diff", "-r", "-q", str(a), str(b)], capture_output=True, text=True)
    return out.returncode == 0


def small():
    n, size = 10_000, 64 << 10
    src = WORK / "small"
    make_random_tree(src, [(f"d{i % 100:02d}/f{i:05d}.bin", size) for i in range(n)])
    total = n * size
    rows = []
    stack = Stack("wan")
    try:
        runs = [
            ("cargoship ship", [BIN, "-q", "--json", "--endpoint-url", stack.url, "ship", src, "s3://bench/ship-small"]),
            ("s5cmd cp (file by file)", [VENV / "s5cmd", "--endpoint-url", stack.url, "cp", f"{src}/*", "s3://bench/s5cmd-small/"]),
            ("aws s3 cp --recursive", [VENV / "aws", "--endpoint-url", stack.url, "s3", "cp", "--recursive", "--quiet", src, "s3://bench/aws-small/"]),
        ]
        for name, cmd in runs:
            secs, cpu, rss, _ = timed(cmd)
            rows.append(dict(tool=name, seconds=secs, files_per_s=n / secs, mbps=total / secs / 1e6,
                             pct=total / secs / 1e6 / stack.bottleneck * 100, cpu=cpu, rss=rss))
            print(rows[-1], flush=True)
    finally:
        stack.close()
    return rows


def tree():
    src = WORK / "tree"
    files = [(f"big/part-{i}.bin", 200 << 20) for i in range(4)] + [(f"small/{i % 40:02d}/f{i:04d}.bin", 100 << 10) for i in range(2000)]
    make_random_tree(src, files)
    total = sum(s for _, s in files)
    stack = Stack("wan")
    rows = []
    try:
        secs, cpu, rss, out = timed([BIN, "-q", "--json", "--endpoint-url", stack.url, "ship", src, "s3://bench/tree"])
        rows.append(dict(op="ship", seconds=secs, mbps=total / secs / 1e6, pct=total / secs / 1e6 / stack.bottleneck * 100, cpu=cpu, rss=rss, verified="-"))
        dest = WORK / "tree-restored"
        shutil.rmtree(dest, ignore_errors=True)
        secs, cpu, rss, out = timed([BIN, "-q", "--json", "--endpoint-url", stack.url, "restore", "s3://bench/tree", dest])
        rows.append(dict(op="restore", seconds=secs, mbps=total / secs / 1e6, pct=total / secs / 1e6 / stack.bottleneck * 100, cpu=cpu, rss=rss,
                         verified="yes" if tree_equal(src, dest) else "NO"))
        shutil.rmtree(dest, ignore_errors=True)
    finally:
        stack.close()
    for r in rows:
        print(r, flush=True)
    return rows, total, stack.bottleneck


def text_dataset(root, size):
    if root.exists():
        return
    rng = random.Random(7)
    i = 0
    day = 0
    while i * (4 << 20) < size:
        p = root / f"day-{day:03d}" / f"sensors-{i:04d}.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        lines = ["timestamp,sensor,temperature_c,humidity_pct,status"]
        n = 0
        while n < (4 << 20):
            t = i * 100_000 + len(lines)
            line = f"2026-11-{day % 28 + 1:02d}T{t // 3600 % 24:02d}:{t // 60 % 60:02d}:{t % 60:02d}Z,s{t % 17},{20 + 5 * math.sin(t / 50) + rng.random():.3f},{50 + 10 * math.cos(t / 70) + rng.random():.2f},{'ok' if rng.random() > 0.01 else 'warn'}"
            lines.append(line)
            n += len(line) + 1
        p.write_text("\n".join(lines) + "\n")
        i += 1
        day = i // 8


def zstd():
    src = WORK / "text"
    size = 256 << 20
    text_dataset(src, size)
    total = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    stack = Stack(None)
    rows = []
    try:
        for comp, level in [("zstd", 1), ("zstd", 3), ("zstd", 9), ("gzip", 6), ("none", 0)]:
            secs, cpu, rss, out = timed([BIN, "-q", "--json", "--endpoint-url", stack.url, "ship", src, f"s3://bench/text-{comp}-{level}",
                                         "--compression", comp, "--level", str(level)])
            j = json.loads(out)
            rows.append(dict(codec=f"{comp} {level}" if comp != "none" else "none", ratio=j["bytes"] / j["stored_bytes"], seconds=secs,
                             mbps=total / secs / 1e6, cpu=cpu, cpu_per_gib=cpu / (total / (1 << 30)), rss=rss))
            print(rows[-1], flush=True)
    finally:
        stack.close()
    return rows, total


def main():
    which = sys.argv[1:] or ["small", "tree", "zstd"]
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "-p", "cargoship"], cwd=ROOT, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    md = [f"# Archive benchmarks ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, cargoship at {commit})", "",
          f"Command: `bench/archive.py {' '.join(which)}`. Data on /dev/shm; 2-core machine.", ""]
    if "small" in which:
        rows = small()
        md += ["## 10,000 files of 64 KiB (625 MiB, random) on `wan` (40 MB/s bottleneck, 2 MB/s per connection, 60 ms RTT)", "",
               "| tool | s | files/s | MB/s | % of bottleneck | CPU s | peak RSS MiB |", "|---|---|---|---|---|---|---|"]
        md += [f"| {r['tool']} | {r['seconds']:.1f} | {r['files_per_s']:.0f} | {r['mbps']:.1f} | {r['pct']:.0f}% | {r['cpu']:.1f} | {r['rss']:.0f} |" for r in rows]
        md.append("")
    if "tree" in which:
        rows, total, bn = tree()
        md += [f"## A {total / (1 << 30):.2f} GiB tree (4 x 200 MiB + 2,000 x 100 KiB, random) on `wan` ({bn:.0f} MB/s bottleneck)", "",
               "| op | s | MB/s | % of bottleneck | CPU s | peak RSS MiB | restored tree identical |", "|---|---|---|---|---|---|---|"]
        md += [f"| {r['op']} | {r['seconds']:.1f} | {r['mbps']:.1f} | {r['pct']:.0f}% | {r['cpu']:.1f} | {r['rss']:.0f} | {r['verified']} |" for r in rows]
        md.append("")
    if "zstd" in which:
        rows, total = zstd()
        md += [f"## Compression of a {total / (1 << 20):.0f} MiB text-like dataset (CSV), shipped on loopback", "",
               "| codec | ratio | s | MB/s | CPU s | CPU s per GiB | peak RSS MiB |", "|---|---|---|---|---|---|---|"]
        md += [f"| {r['codec']} | {r['ratio']:.2f}x | {r['seconds']:.1f} | {r['mbps']:.1f} | {r['cpu']:.1f} | {r['cpu_per_gib']:.1f} | {r['rss']:.0f} |" for r in rows]
        md.append("")
    out = ROOT / "bench/results/archive.md"
    out.write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
