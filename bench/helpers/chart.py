"""Draw one scenario's chart from its results JSON (run inside bench/.venv).

    chart.py bench/results/wan.json bench/results/wan.svg

Top panel: throughput of every successful row, grouped by workload and direction. Bottom
panel: cargoship's large-object upload over time: the emulator's per-second bytes and, when
cargoship's JSON summary carries a timeline, its own throughput and concurrency window.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "cargoship-bench"})  # small, stable SVGs
import matplotlib.pyplot as plt  # noqa: E402

GROUPS = [("large", "up"), ("large", "down"), ("tree", "up"), ("tree", "down")]


def throughput_panel(ax, rows):
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    width = 0.8 / len(GROUPS)
    for g, (workload, direction) in enumerate(GROUPS):
        values = []
        for tool in tools:
            match = [r for r in rows if (r["tool"], r["workload"], r["direction"]) == (tool, workload, direction)]
            ok = match and match[0]["status"] == "ok"
            values.append(match[0]["mb_per_s"] if ok else 0.0)
        xs = [i + (g - (len(GROUPS) - 1) / 2) * width for i in range(len(tools))]
        ax.bar(xs, values, width, label=f"{workload} {direction}")
    ax.set_xticks(range(len(tools)))
    ax.set_xticklabels(tools, rotation=30, ha="right")
    ax.set_ylabel("MB/s (1e6 bytes/s)")
    ax.set_title("Throughput per tool (missing bar: failed, timed out or not applicable)")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)


def timeline_panel(ax, rows):
    row = next((r for r in rows if (r["tool"], r["workload"], r["direction"]) == ("cargoship", "large", "up")), None)
    timeline = (row or {}).get("timeline")
    per_second = (row or {}).get("per_second")
    if not timeline and not per_second:
        ax.text(0.5, 0.5, "no timeline: cargoship's summary has none and no emulator stats were taken",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("cargoship large upload over time")
        return
    if per_second:
        ax.step([p["t"] for p in per_second], [p["bytes_up"] / 1e6 for p in per_second], where="post",
                color="tab:gray", label="bytes through the emulator (MB/s, per second)")
    if timeline:
        ax.plot([p["t"] for p in timeline], [p["mbps"] for p in timeline], marker="o", label="cargoship's timeline (MB/s)")
        window = ax.twinx()
        window.step([p["t"] for p in timeline], [p["window"] for p in timeline], color="tab:orange", where="post",
                    marker=".")
        window.set_ylabel("concurrency window", color="tab:orange")
        window.set_ylim(bottom=0)
    ax.set_title("cargoship large upload over time")
    ax.set_ylabel("MB/s")
    ax.set_xlabel("seconds since start")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)


def main():
    results_path, svg_path = sys.argv[1], sys.argv[2]
    with open(results_path) as f:
        results = json.load(f)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 9), gridspec_kw={"height_ratios": [3, 2]})
    throughput_panel(top, results["rows"])
    timeline_panel(bottom, results["rows"])
    mode = "quick" if results["quick"] else "full"
    fig.suptitle(f"CargoShip bench: {results['scenario']['name']} ({mode}, {results['date']})")
    fig.tight_layout()
    fig.savefig(svg_path, metadata={"Date": None})


if __name__ == "__main__":
    main()
