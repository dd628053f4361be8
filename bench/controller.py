#!/usr/bin/env python3
"""Full-size runs of cargoship's default (auto) controller through the emulator.

For each scenario: `cargoship serve` on /dev/shm, `cargoship emulate` in front, a large
object (the scenario's large_object_mib) uploaded and downloaded with `cargoship --json`.
Reports throughput over the whole transfer and over its first 10 s (from the emulator's
per-second byte counts) as a fraction of the bottleneck, peak RSS, retries, hedges, 503s,
and the controller's window range, and verifies the download byte for byte.

Usage: bench/controller.py [--tries N] [SCENARIO[:MiB] ...]   (default: wan lossy shifting)
`lossy:1024` runs lossy with a 1024 MiB object instead of its large_object_mib.
`--tries N` runs every transfer N times and reports the run of median time with all N
beside it (for scenarios with random faults, whose single runs differ by seconds); without
it, a scenario with random stalls has its upload run up to 5 times until one meets a stall.
Writes bench/results/controller.md (default scenarios) or controller-NAME-....md, and per row
controller-NAME-DIR.json (timeline, per-second counts, bottleneck) and .svg (its chart).
"""
import json, os, signal, subprocess, sys, time, tomllib
from pathlib import Path
from benchlib import emu, file_hash, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/cargoship"
WORK = Path("/dev/shm/cargoship-controller")
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="cargoship", AWS_SECRET_ACCESS_KEY="cargoship-secret", AWS_REGION="us-east-1")




def timed(cmd):
    t = WORK / "time.txt"
    out = subprocess.run(["/usr/bin/time", "-v", "-o", str(t), *cmd], env=ENV, capture_output=True, text=True, check=True)
    rss = next(int(l.split()[-1]) for l in t.read_text().splitlines() if "Maximum resident" in l) / 1024
    return json.loads(out.stdout), rss


def run_scenario(arg):
    name, _, mib = arg.partition(":")
    scen = tomllib.loads((ROOT / f"bench/scenarios/{name}.toml").read_text())
    size = int(mib or scen["bench"]["large_object_mib"]) << 20
    bottleneck = scen["link"].get("bottleneck_up_mbps", 0) or None
    src = WORK / f"src-{size >> 20}.bin"
    if not src.exists():
        with open(src, "wb") as f:
            f.write(os.urandom(size))
    src_hash = file_hash(src)
    store = WORK / "store"
    subprocess.run(["rm", "-rf", str(store)], check=True)
    sp, ep = free_port(), free_port()
    server = subprocess.Popen([BIN, "serve", "--root", store, "--addr", f"127.0.0.1:{sp}", "--bucket", "bench"], stderr=subprocess.DEVNULL)
    emulator = subprocess.Popen([BIN, "emulate", "--scenario", ROOT / f"bench/scenarios/{name}.toml", "--listen", f"127.0.0.1:{ep}", "--upstream", f"http://127.0.0.1:{sp}"], stderr=subprocess.DEVNULL)
    time.sleep(1)
    url = f"http://127.0.0.1:{ep}"
    rows = []
    try:
        for direction, cmd, key in [
            ("up", [BIN, "--json", "-q", "--endpoint-url", url, "put", src, "s3://bench/obj"], "bytes_up"),
            ("down", [BIN, "--json", "-q", "--endpoint-url", url, "get", "s3://bench/obj", WORK / "out.bin"], "bytes_down"),
        ]:
            # A scenario with random stalls stalls 0.1% of requests: a 1 GiB upload makes ~190,
            # so most runs see none. The upload is run again (up to STALL_TRIES times) until
            # one was stalled; the runs without a stall are listed in the row.
            # With --tries N every direction runs N times instead, and the row is the run of
            # median time, with every run's seconds and faults beside it.
            wants_stall = not TRIES and direction == "up" and scen["faults"].get("stall_rate", 0) > 0
            unstalled, runs, unverified = [], [], []
            while True:
                emu(url, "/__emulator/reset", post=True)
                summary, rss = timed([str(c) for c in cmd])
                stats = emu(url, "/__emulator/stats")
                runs.append((summary, rss, stats))
                if direction == "down" and file_hash(WORK / "out.bin") != src_hash:
                    unverified.append(len(runs))
                if TRIES:
                    # Every try's timeline and counts, for a look at the outliers (not kept in
                    # bench/results: only the median try's chart is).
                    tries_dir = WORK / "tries"
                    tries_dir.mkdir(exist_ok=True)
                    (tries_dir / f"{name}{'-' + mib if mib else ''}-{direction}-{len(runs)}.json").write_text(
                        json.dumps(dict(summary=summary, rss=rss, stats=stats)))
                    if len(runs) >= TRIES:
                        break
                elif not wants_stall or stalls_of(stats) > 0 or len(unstalled) + 1 >= STALL_TRIES:
                    break
                else:
                    unstalled.append(summary["seconds"])
            tries = None
            if TRIES:
                tries = ", ".join(f"{r[0]['seconds']:.1f} s ({r[0]['mb_per_s'] / bottleneck * 100:.0f}%"
                                  f"{faults_of(r[2])})" if bottleneck else f"{r[0]['seconds']:.1f} s" for r in runs)
                summary, _, stats = sorted(runs, key=lambda r: r[0]["seconds"])[len(runs) // 2]
                # Peak RSS is the highest of all the runs: the budget holds in every one.
                rss = max(r[1] for r in runs)
            # A transfer shorter than 10 s is measured over its own length, not padded with idle.
            first10 = sum(s[key] for s in stats["per_second"][:10]) / min(10, summary["seconds"]) / 1e6
            # The data phase, from the first request to the last payload byte the emulator
            # carried (to the millisecond): the rest of the wall time is the client starting
            # before it and, for an upload, the server assembling the object after it.
            last_byte_s = stats.get(f"last_byte_{direction}_s")
            first_request_s = stats.get("first_request_s")
            data_s = last_byte_s - first_request_s if last_byte_s and first_request_s is not None else None
            windows = [p["window"] for p in summary["timeline"]] or [0]
            verified = "NO (run " + ", ".join(map(str, unverified)) + ")" if unverified else "yes"
            rows.append(dict(
                scenario=name, direction=direction, mib=size >> 20, seconds=summary["seconds"], mbps=summary["mb_per_s"],
                pct=(summary["mb_per_s"] / bottleneck * 100) if bottleneck else None,
                first10_pct=(first10 / bottleneck * 100) if bottleneck else None,
                data_s=data_s,
                data_pct=(size / 1e6 / data_s / bottleneck * 100) if bottleneck and data_s else None,
                tries=tries,
                rss=rss, retries=summary["retries"], hedges=summary["metrics"]["hedges"],
                requests=summary["metrics"]["requests"],
                s503=stats["status_503"], resets=stats["resets_injected"],
                stalls=f"{stalls_of(stats)}" + (f" (try {len(unstalled) + 1}; runs without one: {', '.join(f'{x:.1f} s' for x in unstalled)})" if unstalled else ""),
                wmin=min(windows), wmax=max(windows), wlast=windows[-1], part=summary["metrics"]["part_size"] >> 20,
                verified=verified))
            # The run's timeline, the emulator's per-second counts and the bottleneck over
            # time, for bench/helpers/controller_chart.py.
            base = ROOT / f"bench/results/controller-{name}{'-' + mib if mib else ''}-{direction}"
            base.with_suffix(".json").write_text(json.dumps(dict(
                scenario=name, direction=direction, mib=size >> 20, seconds=summary["seconds"],
                bottleneck=bottleneck_steps(scen, direction), timeline=summary["timeline"],
                per_second=stats["per_second"])))
            chart(base)
    finally:
        for p in (emulator, server):
            p.send_signal(signal.SIGTERM)
            p.wait()
    return rows


STALL_TRIES = 5
TRIES = 0


def faults_of(stats):
    found = [f"{stats[k]} {name}" for k, name in (("resets_injected", "resets"), ("stalls_injected", "stalls")) if stats.get(k)]
    return "; " + ", ".join(found) if found else ""


def bottleneck_steps(scen, direction):
    """The scenario's bottleneck over time: [(from second, MB/s), ...]."""
    field = f"bottleneck_{direction}_mbps"
    steps = [(0.0, scen["link"].get(field, 0))]
    steps += [(s["at_secs"], s[field]) for s in scen.get("schedule", []) if field in s]
    return steps


def chart(base):
    """Draws base.svg from base.json with the bench's matplotlib, if it is installed."""
    python = ROOT / "bench/.venv/bin/python"
    if python.exists():
        subprocess.run([python, ROOT / "bench/helpers/controller_chart.py", base.with_suffix(".json"),
                        base.with_suffix(".svg")], check=False)


def stalls_of(stats):
    return stats.get("stalls_injected", 0)


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def main():
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__.strip())
        print("\nScenarios:", ", ".join(sorted(p.stem for p in (ROOT / "bench/scenarios").glob("*.toml"))))
        return
    global TRIES
    args = sys.argv[1:]
    if "--tries" in args:
        i = args.index("--tries")
        value = args[i + 1] if i + 1 < len(args) else ""
        if not value.isdigit() or int(value) < 1:
            sys.exit(f"controller.py: --tries takes a whole number of runs, at least 1 (got {value or 'nothing'})")
        TRIES = int(value)
        del args[i:i + 2]
    names = args or ["wan", "lossy", "shifting"]
    unknown = [n for n in names if not (ROOT / f"bench/scenarios/{n.partition(':')[0]}.toml").exists()]
    bad_size = [n for n in names if n.partition(":")[2] and not n.partition(":")[2].isdigit()]
    if unknown or bad_size:
        sys.exit(f"controller.py: unknown scenario {', '.join(unknown)}" if unknown else
                 f"controller.py: the size after ':' must be a whole number of MiB: {', '.join(bad_size)}")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cargoship"], cwd=ROOT, check=True)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = [r for n in names for r in run_scenario(n)]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        "# cargoship's auto controller, full-size objects", "",
        f"`bench/controller.py {' '.join(names)}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, git {rev}, "
        f"{os.cpu_count()} cores. Default settings (auto controller, 256 MiB budget). % is of the scenario's bottleneck; "
        "first 10 s (or the whole transfer if shorter) is from the emulator's per-second byte counts; \"data phase\" is from the "
        "first request to the last payload byte the emulator carried, to the millisecond (after it, an upload's "
        "remaining time is the server assembling the object at CompleteMultipartUpload). "
        + (f"Every direction ran {TRIES} times; a row is the run of median time (peak RSS: the highest of all "
            f"{TRIES}), \"tries\" lists them all; every try's timeline is in {WORK}/tries."
           if TRIES else "A scenario with random stalls has its upload run up to 5 times until one is stalled; "
           "the stalls column lists the runs without one."), "",
        "| scenario | dir | MiB | s | MB/s | % bottleneck | data phase s | % over data phase | % in first 10 s | peak RSS MiB | requests | retries | hedges | 503s | resets | stalls | window min/max/last | part MiB | verified |" + (" tries |" if TRIES else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|" + ("---|" if TRIES else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['direction']} | {r['mib']} | {r['seconds']:.1f} | {r['mbps']:.1f} | {fmt(r['pct'], '.0f')} | "
            f"{fmt(r['data_s'], '.2f')} | {fmt(r['data_pct'], '.0f')} | {fmt(r['first10_pct'], '.0f')} | {r['rss']:.0f} | {r['requests']} | {r['retries']} | {r['hedges']} | {r['s503']} | {r['resets']} | {r['stalls']} | "
            f"{r['wmin']}/{r['wmax']}/{r['wlast']} | {r['part']} | {r['verified']} |" + (f" {r['tries']} |" if TRIES else ""))
    default = names == ["wan", "lossy", "shifting"] and not TRIES
    suffix = f"-tries-{TRIES}" if TRIES else ""
    out = ROOT / ("bench/results/controller.md" if default else f"bench/results/controller-{'-'.join(names).replace(':', '-')}{suffix}.md")
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    if any(r["verified"] != "yes" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
