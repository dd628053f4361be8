#!/usr/bin/env python3
"""`--bwlimit` accuracy: a 300 MiB upload and download through the `wan` emulator with
`--bwlimit 10MiB` (10.49 MB/s, a quarter of wan's bottleneck). Reports the average over every
full 10 s window of the emulator's per-second byte counts, as a fraction of the limit
(issue 4: within 5%). Writes bench/results/bwlimit.md.
"""
import os, signal, subprocess, time
from pathlib import Path
from benchlib import emu, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/cargoship"
WORK = Path("/dev/shm/cargoship-bwlimit")
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="cargoship", AWS_SECRET_ACCESS_KEY="cargoship-secret", AWS_REGION="us-east-1")
LIMIT = 10 << 20




def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "cargoship"], cwd=ROOT, check=True)
    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / "src.bin"
    if not src.exists():
        src.write_bytes(os.urandom(300 << 20))
    sp, ep = free_port(), free_port()
    procs = [subprocess.Popen([BIN, "serve", "--root", WORK / "store", "--addr", f"127.0.0.1:{sp}", "--bucket", "bench"], stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([BIN, "emulate", "--scenario", ROOT / "bench/scenarios/wan.toml", "--listen", f"127.0.0.1:{ep}",
                                   "--upstream", f"http://127.0.0.1:{sp}"], stderr=subprocess.DEVNULL))
    time.sleep(1)
    url = f"http://127.0.0.1:{ep}"
    rows, series = [], []
    try:
        for d, cmd, key in [("up", ["put", src, "s3://bench/obj"], "bytes_up"), ("down", ["get", "s3://bench/obj", WORK / "out.bin"], "bytes_down")]:
            emu(url, "/__emulator/reset", post=True)
            subprocess.run([BIN, "-q", "--bwlimit", "10MiB", "--endpoint-url", url, *map(str, cmd)], env=ENV, check=True)
            per = [s[key] for s in emu(url, "/__emulator/stats")["per_second"]]
            # Full 10 s windows inside the transfer: from the first to the last second that
            # moved data, without those two (partial) seconds.
            moved = [i for i, b in enumerate(per) if b > 0]
            body = per[moved[0] + 1:moved[-1]]
            wins = [sum(body[i:i + 10]) / 10 for i in range(0, len(body) - 9)]
            rows.append((d, len(per), sum(per) / len(per) / LIMIT * 100, min(wins) / LIMIT * 100, max(wins) / LIMIT * 100))
            series.append((d, per))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            p.wait()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [f"# --bwlimit 10MiB (10.49 MB/s) on wan, 300 MiB ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, git {rev})", "",
             "`bench/bwlimit.py`. % of the limit from the emulator's per-second byte counts; 10 s windows slide by 1 s over the seconds that moved data, the first and last (partial) ones left out.", "",
             "| dir | seconds | whole transfer % | lowest 10 s window % | highest 10 s window % |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {n} | {a:.1f} | {lo:.1f} | {hi:.1f} |" for d, n, a, lo, hi in rows]
    lines += ["", "Per second, % of the limit:", ""]
    lines += [f"- {d}: " + " ".join(f"{b / LIMIT * 100:.0f}" for b in per) for d, per in series]
    (ROOT / "bench/results/bwlimit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
