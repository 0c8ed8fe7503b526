"""Figures from saved results (no cluster needed): `python -m bench.plots [--results bench/results]`.

* `latency_cdf.png`: TTFT and end-to-end latency CDFs of the measured requests, per system
  (from `compare_records.jsonl` + `compare.json`).
* `over_time.png`: completions per second and HBM hit rate over the run, warm-up included
  and marked, per system (same inputs).
* `sweep.png`: the ratios across output length and oversubscription (from `sweep.json`).
* `policy_hit_rate.png` is drawn by `python -m bench.policy`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.metrics import SystemRecord

__all__ = ["load_records", "plot_compare", "plot_latency_cdf", "plot_over_time", "plot_sweep"]

COLORS = {"coe": "tab:blue", "baseline": "tab:red", "ceiling": "tab:green"}
THROUGHPUT_WINDOW_S = 5.0
HIT_WINDOW_REQUESTS = 25  # rolling window: small enough to show warm-up, large enough to be smooth


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or in CI
    import matplotlib.pyplot as plt

    return plt


def load_records(path: Path) -> dict[str, list[SystemRecord]]:
    by_system: dict[str, list[SystemRecord]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = SystemRecord.model_validate_json(line)
            by_system.setdefault(record.system, []).append(record)
    return by_system


def _cdf(ax, values_ms: Sequence[float], label: str, color: str | None) -> None:
    if not values_ms:
        return
    xs = np.sort(np.asarray(values_ms))
    ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label, color=color)


def plot_latency_cdf(records: dict[str, list[SystemRecord]], warmup: int, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for system, rows in records.items():
        done = [r for r in rows if r.ok and r.index >= warmup]
        _cdf(axes[0], [r.ttft_s * 1000 for r in done if r.ttft_s is not None], system, COLORS.get(system))
        _cdf(axes[1], [r.e2el_s * 1000 for r in done], system, COLORS.get(system))
    for ax, name in zip(axes, ("TTFT", "end-to-end latency"), strict=True):
        ax.set_xlabel(f"{name} (ms)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    axes[0].set_ylabel("fraction of requests")
    axes[0].legend()
    fig.suptitle("Latency CDFs, measured requests (dotted: p99)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_over_time(records: dict[str, list[SystemRecord]], warmup: int, path: Path) -> None:
    """Throughput in fixed windows and the HBM hit rate of the last requests, against run time."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for system, rows in records.items():
        color = COLORS.get(system)
        done = sorted((r for r in rows if r.ok), key=lambda r: r.end_s)
        if not done:
            continue
        ends = np.array([r.end_s for r in done])
        edges = np.arange(0.0, ends.max() + THROUGHPUT_WINDOW_S, THROUGHPUT_WINDOW_S)
        counts, _ = np.histogram(ends, bins=edges)
        axes[0].step(edges[1:], counts / THROUGHPUT_WINDOW_S, where="pre", label=system, color=color)
        hits = np.array([1.0 if r.tier == "hbm" else 0.0 for r in done])
        window = min(HIT_WINDOW_REQUESTS, len(hits))
        rolling = np.convolve(hits, np.ones(window) / window, mode="valid")
        axes[1].plot(ends[window - 1 :], rolling, label=system, color=color)
        warm_end = max((r.end_s for r in rows if r.index < warmup), default=None)
        if warm_end is not None:
            for ax in axes:
                ax.axvline(warm_end, color=color, lw=0.8, ls="--")
    axes[0].set_ylabel(f"completions/s ({THROUGHPUT_WINDOW_S:g} s windows)")
    axes[1].set_ylabel(f"HBM hit rate (last {HIT_WINDOW_REQUESTS})")
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_xlabel("seconds since the system's first request (dashed: end of warm-up)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_compare(results: Path) -> list[Path]:
    """latency_cdf.png and over_time.png from a comparison's saved results."""
    report = json.loads((results / "compare.json").read_text())
    records = load_records(results / "compare_records.jsonl")
    warmup = report["settings"]["warmup"]
    paths = [results / "latency_cdf.png", results / "over_time.png"]
    plot_latency_cdf(records, warmup, paths[0])
    plot_over_time(records, warmup, paths[1])
    return paths


def plot_sweep(results: Path) -> Path:
    """Ratios against output tokens, one line per oversubscription; the last panel: absolute req/s."""
    plt = _pyplot()
    sweep = json.loads((results / "sweep.json").read_text())
    rows = sweep["rows"]
    panels = [
        ("throughput_ratio", "CoE / baseline throughput"),
        ("p99_ratio", "CoE / baseline e2el p99"),
        ("hbm_hit_rate", "HBM hit rate (CoE solid, baseline dashed)"),
        ("ideal_throughput_ratio", "CoE / ceiling throughput"),
        ("baseline_ideal_throughput_ratio", "baseline / ceiling throughput"),
    ]
    fig, grid = plt.subplots(2, 3, figsize=(13, 7))
    axes = list(grid.flat)
    for oversub in sorted({r["oversubscription"] for r in rows}):
        mine = sorted((r for r in rows if r["oversubscription"] == oversub), key=lambda r: r["max_tokens"])
        xs = [r["max_tokens"] for r in mine]
        for ax, (key, title) in zip(axes, panels, strict=False):
            line = ax.plot(xs, [r[key] for r in mine], marker="o", label=f"{oversub:g}x oversubscribed")
            if key == "hbm_hit_rate":
                ax.plot(
                    xs, [r["baseline_hit_rate"] for r in mine], marker="s", ls="--", color=line[0].get_color()
                )
            ax.set_title(title, fontsize=10)
        color = (
            axes[-1]
            .plot(xs, [r["coe_rps"] for r in mine], marker="o", label=f"CoE {oversub:g}x")[0]
            .get_color()
        )
        axes[-1].plot(
            xs,
            [r["baseline_rps"] for r in mine],
            marker="s",
            ls="--",
            color=color,
            label=f"baseline {oversub:g}x",
        )
    first = sorted(
        (r for r in rows if r["oversubscription"] == rows[0]["oversubscription"]),
        key=lambda r: r["max_tokens"],
    )
    axes[-1].plot(
        [r["max_tokens"] for r in first],
        [r["ideal_rps"] for r in first],
        marker="^",
        color="tab:green",
        label="ceiling",
    )
    axes[-1].set_title("requests/s", fontsize=10)
    axes[-1].set_yscale("log")
    axes[-1].legend(fontsize=7)
    for ax, key in zip(axes, [k for k, _ in panels] + ["rps"], strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks([4, 16, 64], ["4", "16", "64"])
        ax.set_xlabel("max_tokens")
        ax.grid(alpha=0.3)
        if key in {"ideal_throughput_ratio", "baseline_ideal_throughput_ratio", "hbm_hit_rate"}:
            ax.set_ylim(0, 1.2)
        if key in {"throughput_ratio", "p99_ratio"}:
            ax.axhline(1.0, color="grey", lw=0.6)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Regimes ({sweep['experts']} experts, {sweep['sockets']} sockets, Zipf s={sweep['zipf']}; "
        "one run each)"
    )
    fig.tight_layout()
    path = results / "sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    made: list[Path] = []
    if (args.results / "compare.json").exists():
        made += plot_compare(args.results)
    if (args.results / "sweep.json").exists():
        made.append(plot_sweep(args.results))
    for path in made:
        print(path)
    return made


if __name__ == "__main__":
    main()
