"""Draw a controller run's chart (run inside bench/.venv).

    controller_chart.py bench/results/controller-shifting-up.json bench/results/controller-shifting-up.svg

One panel: the emulator's bytes per second through the link (what was really moved), the
scenario's bottleneck over time (its schedule), and, on the right axis, cargoship's
concurrency window and requests in flight from its timeline. The timeline gets a point when
a request completes (at most every 250 ms), so a stretch where every request in flight
takes long (the 10 MB/s phase of `shifting` under a full window) has no points.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "cargoship-bench"})  # small, stable SVGs
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, svg = sys.argv[1], sys.argv[2]
    with open(src) as f:
        run = json.load(f)
    key = "bytes_up" if run["direction"] == "up" else "bytes_down"
    per_second = run.get("per_second") or []
    timeline = run.get("timeline") or []
    fig, ax = plt.subplots(figsize=(12, 5))
    if per_second:
        ax.step([s["t"] for s in per_second], [s[key] / 1e6 for s in per_second], where="post", color="tab:gray",
                label="bytes through the emulator (MB/s, per second)")
    end = max([s["t"] + 1 for s in per_second] + [p["t"] for p in timeline] + [1])
    steps = run.get("bottleneck") or []
    if steps:
        xs = [t for t, _ in steps] + [end]
        ys = [v for _, v in steps] + [steps[-1][1]]
        ax.step(xs, ys, where="post", color="black", linestyle="--", label="the scenario's bottleneck (MB/s)")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("MB/s (1e6 bytes/s)")
    ax.set_xlim(0, end)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if timeline:
        right = ax.twinx()
        right.step([p["t"] for p in timeline], [p["window"] for p in timeline], where="post", color="tab:orange",
                   marker=".", label="window (requests)")
        right.plot([p["t"] for p in timeline], [p["in_flight"] for p in timeline], color="tab:blue", marker="x",
                   linestyle="none", label="requests in flight")
        right.set_ylabel("requests")
        right.set_ylim(bottom=0)
        right.legend(fontsize="small", loc="upper right")
    ax.legend(fontsize="small", loc="lower left")
    ax.set_title(f"cargoship {run['direction']}load of {run['mib']} MiB through `{run['scenario']}` "
                 f"({run['seconds']:.1f} s, default controller)")
    fig.tight_layout()
    fig.savefig(svg, metadata={"Date": None})


if __name__ == "__main__":
    main()
