#!/usr/bin/env python3
"""Cross-prefix coordination bench: many small objects over 8 key prefixes, through the emulator.

For each scenario (default: throttled, prefix-failure), each run on a fresh store behind a fresh
`cargoship emulate`:
  - `uncoordinated`: 8 prefixes, least loaded, 3 objects in flight per prefix (the baseline);
  - `tcp_like`, `fair_share`, `adaptive`: 8 prefixes through the coordinator's queues (with
    the uncoordinated run as --baseline, so the JSON's improvement_factor is measured);
  - `adaptive-leases`: the same through the lease API (one lease per object, as `ship` uses);
  - `single`: the same upload to 1 prefix (adaptive).
Reports throughput against min(bottleneck, healthy prefixes x request limit x object size),
503 SlowDown after the first 5 s as a share of requests, failed objects, missing or corrupt
objects (every source file is looked up under the key the run reported, in the store on disk,
and compared by BLAKE2b), CPU seconds (user+sys of the cargoship process), and the
coordinator's own overhead figures (time inside scheduling decisions, mean grant wait).

Usage: bench/coordination.py [--files N] [--single-files N] [SCENARIO ...]
Writes bench/results/coordination.md and coordination.json. Build first:
    cargo build --release -p cargoship
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, time, tomllib
from pathlib import Path
from benchlib import emu, file_hash, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/cargoship"
WORK = Path("/dev/shm/cargoship-coordination")
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="cargoship", AWS_SECRET_ACCESS_KEY="cargoship-secret", AWS_REGION="us-east-1")
PREFIXES = 8


def log(msg):
    print(msg, file=sys.stderr, flush=True)




def wait_port(port):
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def make_tree(n, kib):
    src = WORK / f"src-{n}x{kib}k"
    done = WORK / f"src-{n}x{kib}k.done"
    if not done.exists():
        shutil.rmtree(src, ignore_errors=True)
        for i in range(n):
            d = src / f"d{i % 16:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:06d}.bin").write_bytes(os.urandom(kib * 1024))
        done.write_text("")
    files = sorted(p for p in src.rglob("*.bin"))[:n]
    return src, {str(p.relative_to(src)): file_hash(p) for p in files}


def run_one(scenario, label, src, hashes, args, baseline=None):
    store = WORK / "store"
    shutil.rmtree(store, ignore_errors=True)
    sp, ep = free_port(), free_port()
    server = subprocess.Popen([BIN, "serve", "--root", store, "--addr", f"127.0.0.1:{sp}", "--bucket", "bench"], stderr=subprocess.DEVNULL)
    emulator = subprocess.Popen([BIN, "emulate", "--scenario", ROOT / f"bench/scenarios/{scenario}.toml", "--listen", f"127.0.0.1:{ep}", "--upstream", f"http://127.0.0.1:{sp}"], stderr=subprocess.DEVNULL)
    try:
        wait_port(sp)
        wait_port(ep)
        url = f"http://127.0.0.1:{ep}"
        emu(url, "/__emulator/reset", post=True)
        out_json = WORK / f"{scenario}-{label}.json"
        tfile = WORK / "time.txt"
        cmd = [str(BIN), "--json", "-q", "--endpoint-url", url, "put", str(src), "s3://bench/",
               "--pattern", "hash", "--prefix-root", "", *args]
        if baseline:
            cmd += ["--baseline", str(baseline)]
        log(f"[{scenario}] {label}: {' '.join(cmd[5:])}")
        p = subprocess.run(["/usr/bin/time", "-v", "-o", str(tfile), *cmd], env=ENV, capture_output=True, text=True)
        stats = emu(url, "/__emulator/stats")
    finally:
        for proc in (emulator, server):
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    t = tfile.read_text()
    field = lambda name: float(next(l.split(":")[-1] for l in t.splitlines() if name in l))
    cpu = field("User time (seconds)") + field("System time (seconds)")
    if p.returncode != 0 and not p.stdout.strip().startswith("{"):
        log(p.stderr[-2000:])
        raise RuntimeError(f"{label} failed with {p.returncode}")
    summary = json.loads(p.stdout)
    out_json.write_text(p.stdout)
    # Every source file must be in the store under the key the run reported, byte for byte.
    by_name = {r["name"]: r for r in summary["results"]}
    missing = 0
    for name, h in hashes.items():
        r = by_name.get(name)
        stored = store / "bench" / r["key"] if r and r.get("key") else None
        if stored is None or not stored.exists() or file_hash(stored) != h:
            missing += 1
    objects_on_disk = sum(1 for _ in (store / "bench").rglob("*.bin"))
    shutil.rmtree(store, ignore_errors=True)
    late = [s for s in stats["per_second"] if s["t"] >= 5]
    late_req = sum(s["requests"] for s in late)
    late_503 = sum(s["status_503"] for s in late)
    c = summary.get("coordination") or {}
    return dict(
        scenario=scenario, run=label, objects=summary["objects"], failed=summary["failed"], missing=missing,
        extra=objects_on_disk - len(hashes), seconds=summary["seconds"], mbps=summary["mb_per_s"], cpu_s=cpu,
        requests=stats["requests"], s503=stats["status_503"], s503_after5=late_503, requests_after5=late_req,
        s5xx=stats["status_5xx_other"],
        overhead_pct=c.get("coordination_overhead_percent"), sched_us=c.get("scheduling_time_us_mean"),
        grant_wait_ms=c.get("grant_wait_ms_mean"), queue_wait_ms=c.get("queue_wait_ms_mean"), decisions=c.get("scheduling_decisions"),
        improvement=c.get("improvement_factor"), balance=c.get("load_balance_efficiency"),
        utilization=c.get("pipeline_utilization"), drained=c.get("drained_prefixes"), moved=c.get("objects_moved"),
        congestion_events=c.get("congestion_events"), json=str(out_json))


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=6000)
    ap.add_argument("--single-files", type=int, default=1500)
    ap.add_argument("scenarios", nargs="*", default=["throttled", "prefix-failure"])
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for scenario in a.scenarios:
        scen = tomllib.loads((ROOT / f"bench/scenarios/{scenario}.toml").read_text())
        kib = scen["bench"]["small_file_kib"]
        rate = scen["throttle"]["requests_per_sec_per_prefix"]
        bottleneck = scen["link"]["bottleneck_up_mbps"]
        dead = len(scen["faults"].get("fail_prefixes", []))
        src, hashes = make_tree(a.files, kib)
        ssrc, shashes = make_tree(a.single_files, kib)
        common = ["--prefixes", str(PREFIXES), "--per-prefix", "3"]
        base = run_one(scenario, "uncoordinated", src, hashes, [*common, "--strategy", "none", "--distribution", "least_loaded"])
        runs = [base]
        baseline_file = WORK / f"{scenario}-uncoordinated.json"
        for strategy in ["tcp_like", "fair_share", "adaptive"]:
            runs.append(run_one(scenario, strategy, src, hashes, [*common, "--strategy", strategy], baseline_file))
        runs.append(run_one(scenario, "adaptive-leases", src, hashes, [*common, "--strategy", "adaptive", "--via", "leases"], baseline_file))
        runs.append(run_one(scenario, "single", ssrc, shashes, ["--prefixes", "1", "--per-prefix", "3", "--strategy", "adaptive"]))
        for r in runs:
            healthy = (PREFIXES - dead) if r["run"] != "single" else 1
            r["target_mbps"] = min(bottleneck, healthy * rate * kib * 1024 / 1e6)
            r["pct_target"] = r["mbps"] / r["target_mbps"] * 100
            r["late_503_pct"] = (r["s503_after5"] / r["requests_after5"] * 100) if r["requests_after5"] else 0.0
        single = runs[-1]["mbps"]
        for r in runs:
            r["x_single"] = r["mbps"] / single if single else None
        rows += runs
        log(json.dumps(runs, indent=1))
    (ROOT / "bench/results/coordination.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "# Cross-prefix coordination",
        "",
        f"`bench/coordination.py --files {a.files} --single-files {a.single_files} {' '.join(a.scenarios)}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Objects of the scenario's small_file_kib; "
        "target = min(bottleneck, healthy prefixes x requests/s per prefix x object size). "
        "CPU = user+sys of the cargoship process.",
        "",
        "| scenario | run | objects | MB/s | % of target | x single | 503 after 5 s | failed | missing | CPU s | overhead % | us/decision | queue wait ms | drained | moved | improvement x |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['run']} | {r['objects']} | {r['mbps']:.1f} | {r['pct_target']:.0f}% | {fmt(r['x_single'], '.2f')} "
            f"| {r['s503_after5']}/{r['requests_after5']} ({r['late_503_pct']:.2f}%) | {r['failed']} | {r['missing']} | {r['cpu_s']:.1f} "
            f"| {fmt(r['overhead_pct'], '.3f')} | {fmt(r['sched_us'], '.1f')} | {fmt(r['queue_wait_ms'], '.1f')} | {fmt(r['drained'], 'd')} "
            f"| {fmt(r['moved'], 'd')} | {fmt(r['improvement'], '.2f')} |")
    (ROOT / "bench/results/coordination.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    bad = [r for r in rows if r["failed"] or r["missing"]]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
