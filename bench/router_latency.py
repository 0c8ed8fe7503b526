"""Router latency and throughput: `python -m bench.router_latency`.

Measures, on the held-out prompts (realistic lengths): p50/p99 latency of one `route` call,
and prompts/s of `route_batch` at a few batch sizes. Writes bench/results/router.md and
router.json with the command, the machine and the load average (the numbers are CPU numbers and
move with whatever else runs on the box).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.result_files import write_result
from router import load_router
from router.data import HELDOUT_PATH, load_jsonl
from router.embedding import configure_torch_threads

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (1, 8, 32, 128)


def _percentile(values_ms: list[float], q: float) -> float:
    ordered = sorted(values_ms)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure_route_latency_ms(router, prompts: list[str], calls: int, warmup: int) -> list[float]:
    for i in range(warmup):
        router.route(prompts[i % len(prompts)])
    latencies_ms = []
    for i in range(calls):
        start = time.perf_counter()
        router.route(prompts[i % len(prompts)])
        latencies_ms.append((time.perf_counter() - start) * 1e3)
    return latencies_ms


def measure_batch_throughput(router, prompts: list[str], batch_size: int, min_prompts: int) -> dict:
    router.route_batch(prompts[:batch_size])  # warm-up at this shape
    done, batches, start = 0, 0, time.perf_counter()
    while done < min_prompts:
        offset = (batches * batch_size) % len(prompts)
        batch = (prompts[offset:] + prompts)[:batch_size]
        router.route_batch(batch)
        done += len(batch)
        batches += 1
    elapsed_s = time.perf_counter() - start
    return {
        "batch_size": batch_size,
        "prompts": done,
        "elapsed_s": elapsed_s,
        "prompts_per_s": done / elapsed_s,
        "batch_latency_ms": elapsed_s / batches * 1e3,
    }


def render_markdown(result: dict) -> str:
    lat = result["route_latency_ms"]
    lines = [
        "# Router latency and throughput",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs visible, "
        f"torch {result['machine']['torch']} with {result['machine']['torch_threads']} intra-op threads",
        f"- load average at start (1 min): {result['machine']['load_avg_1m']:.2f} "
        "(other processes on the box slow these numbers down)",
        f"- prompts: {result['prompt_count']} held-out prompts, "
        f"mean {result['mean_prompt_chars']:.0f} characters",
        f"- router load time (artifact + encoder): {result['load_s']:.2f} s",
        "",
        f"## `route` (one prompt), {lat['calls']} calls after {lat['warmup']} warm-up",
        "",
        "| p50 ms | p90 ms | p99 ms | mean ms |",
        "|---:|---:|---:|---:|",
        f"| {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['mean']:.2f} |",
        "",
        "## `route_batch` throughput",
        "",
        "| batch size | prompts/s | ms per batch |",
        "|---:|---:|---:|",
    ]
    for row in result["batch_throughput"]:
        lines.append(f"| {row['batch_size']} | {row['prompts_per_s']:.1f} | {row['batch_latency_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.router_latency", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--path", type=Path, help="router artifact (default: cluster.paths.router_dir())")
    parser.add_argument("--calls", type=int, default=300, help="timed single-prompt route calls")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--min-prompts", type=int, default=512, help="prompts routed per batch size")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: the router's choice)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    if args.threads:
        configure_torch_threads(args.threads)
    load_avg_1m = os.getloadavg()[0]
    start = time.perf_counter()
    router = load_router(args.path)
    load_s = time.perf_counter() - start
    prompts = [r.prompt for r in load_jsonl(HELDOUT_PATH)]

    latencies_ms = measure_route_latency_ms(router, prompts, args.calls, args.warmup)
    result = {
        "command": "python -m bench.router_latency"
        + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])),
        "machine": {
            "cpu": _cpu_model(),
            "cpus": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_avg_1m": load_avg_1m,
        },
        "prompt_count": len(prompts),
        "mean_prompt_chars": statistics.fmean(len(p) for p in prompts),
        "load_s": load_s,
        "route_latency_ms": {
            "calls": args.calls,
            "warmup": args.warmup,
            "p50": _percentile(latencies_ms, 0.50),
            "p90": _percentile(latencies_ms, 0.90),
            "p99": _percentile(latencies_ms, 0.99),
            "mean": statistics.fmean(latencies_ms),
        },
        "batch_throughput": [
            measure_batch_throughput(router, prompts, size, args.min_prompts) for size in BATCH_SIZES
        ],
    }
    write_result(args.out_dir, "router", result, render_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
