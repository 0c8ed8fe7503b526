"""Routing under load: `python -m bench.router_load [--concurrency 32] [--rounds 50]`.

Drives the ingress's `RouteBatcher` (the `@serve.batch` path `CoEService.route` uses) with
`--concurrency` callers at once, each routing one held-out prompt per round, and reports p50 /
p99 route latency as a caller sees it (queueing + batch wait + encoder pass), beside the same
calls made one at a time (the unbatched baseline in the same run). Target (issue 14): p50 <= 5 ms,
p99 <= 20 ms at 32 concurrent requests on CPU. Writes bench/results/router_load.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

from bench.result_files import write_result
from bench.router_latency import _cpu_model, _percentile
from router import load_router
from router.batching import RouteBatcher
from router.data import HELDOUT_PATH, load_jsonl

RESULTS_DIR = Path(__file__).resolve().parent / "results"


async def _run(batcher: RouteBatcher, prompts: list[str], concurrency: int, rounds: int) -> list[float]:
    latencies_ms: list[float] = []

    async def one(prompt: str) -> None:
        start = time.perf_counter()
        await batcher.route(prompt)
        latencies_ms.append((time.perf_counter() - start) * 1e3)

    for r in range(rounds):
        batch = [prompts[(r * concurrency + i) % len(prompts)] for i in range(concurrency)]
        await asyncio.gather(*(one(p) for p in batch))
    return latencies_ms


def measure(path: Path | None, concurrency: int, rounds: int) -> dict:
    router = load_router(path)
    prompts = [r.prompt for r in load_jsonl(HELDOUT_PATH)]
    batcher = RouteBatcher(lambda: router)
    asyncio.run(_run(batcher, prompts, concurrency, 3))  # warm-up
    batcher.batches = batcher.items = 0
    loaded = asyncio.run(_run(batcher, prompts, concurrency, rounds))
    single = []
    for p in prompts[: min(len(prompts), rounds * 4)]:
        start = time.perf_counter()
        router.route(p)
        single.append((time.perf_counter() - start) * 1e3)
    return {
        "encoder": router.artifact.encoder,
        "concurrency": concurrency,
        "rounds": rounds,
        "requests": len(loaded),
        "mean_batch_size": batcher.items / max(batcher.batches, 1),
        "p50_ms": _percentile(loaded, 0.5),
        "p99_ms": _percentile(loaded, 0.99),
        "mean_ms": statistics.fmean(loaded),
        "unbatched_single_p50_ms": _percentile(single, 0.5),
        "unbatched_single_p99_ms": _percentile(single, 0.99),
    }


def render(result: dict) -> str:
    lines = [
        "# Routing under load",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- machine: {result['cpu']}, {result['cpus']} CPUs; load average at start "
        f"{result['load_avg_1m']:.1f} (the box was shared with other agents while measuring)",
        "- path: `RouteBatcher` (max 32 items or 2 ms wait) -> `Router.route_batch`, as in the ingress",
        "",
        "| run | encoder | concurrency | requests | mean batch | p50 ms | p99 ms | single-call p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(result["runs"], 1):
        lines.append(
            f"| {i} | {r['encoder']} | {r['concurrency']} | {r['requests']} | {r['mean_batch_size']:.1f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['unbatched_single_p50_ms']:.2f} |"
        )
    lines += ["", "Target: p50 <= 5 ms and p99 <= 20 ms at 32 concurrent requests."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.router_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, help="router artifact (default: the one `make serve` uses)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="independent runs (results need two or more)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    result = {
        "command": "python -m bench.router_load" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
        "cpu": _cpu_model(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg_1m": os.getloadavg()[0],
        "runs": [measure(args.path, args.concurrency, args.rounds) for _ in range(args.repeats)],
    }
    write_result(args.out_dir, "router_load", result, render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
