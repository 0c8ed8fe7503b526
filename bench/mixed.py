"""Experts of different sizes through the real app: CoE's byte budget vs a model-count baseline.

Every expert in `bench.compare` has one size, so CoE's byte-aware budget never shows its edge
over `@serve.multiplexed`, which counts models. Here the catalog has three size classes (random-
weight bench experts of e.g. 20 / 50 / 120 MB, hot and cold ones in every class), each socket
gets the same HBM bytes in both systems, and `bench.compare`'s own machinery runs them on fresh
local clusters with the same requests:

* CoE packs experts into the bytes (a socket of 2x the largest expert holds up to 12 of the
  smallest at once);
* the baseline's K = the socket's bytes // the largest expert (`bench.baseline.models_per_replica`),
  the only K that can never exceed the bytes when models are counted, not sized.

The aggregate hit rates are put beside Belady-by-size and the PFOO-U upper bound of the same
trace over the summed HBM (`bench.policy`). Run ``python -m bench.mixed --help``; results go to
``bench/results/mixed.{json,md}``. This module does not change `bench.compare` (the lead's): it
imports `measure_system` from it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from bench.baseline import models_per_replica
from bench.compare import SystemRun, config_from_args, machine_info, measure_system
from bench.experts import build_bench_experts
from bench.load import LoadSettings
from bench.policy import replay
from bench.requests import build_requests

__all__ = ["MixedReport", "main"]

MIXED_SYSTEMS = ("coe", "baseline")


class MixedReport(BaseModel):
    command: str
    expert_mb: dict[str, int]
    hbm_bytes_per_socket: int
    baseline_k: int
    sockets: int
    runs: dict[str, SystemRun]
    belady_size_hit_rate: float
    opt_bound_hit_rate: float
    machine: dict[str, str]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.mixed", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", default="20,50,120", help="size classes of the catalog (MB)")
    parser.add_argument("--counts", default="6,5,5", help="experts per size class")
    parser.add_argument(
        "--experts-per-socket", type=int, default=2, help="HBM per socket, in largest experts"
    )
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--sockets-per-node", type=int, default=2)
    parser.add_argument("--cpus-per-socket", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def _catalog(args: argparse.Namespace) -> tuple[list[Path], list[int]]:
    """Experts of every class, interleaved by popularity rank (rank 1 small, 2 medium, 3 large...)."""
    from memtier.store import checkpoint_info

    classes = [
        build_bench_experts(count, mb)
        for mb, count in zip(
            (int(x) for x in args.sizes_mb.split(",")), (int(x) for x in args.counts.split(",")), strict=True
        )
    ]
    paths: list[Path] = []
    for i in range(max(len(c) for c in classes)):
        paths += [c[i] for c in classes if i < len(c)]
    return paths, [checkpoint_info(p).size_bytes for p in paths]


def markdown(report: MixedReport) -> str:
    coe, base = report.runs["coe"].report, report.runs["baseline"].report
    lines = [
        "# Mixed-size experts: CoE's byte budget vs the model-count baseline",
        "",
        "```",
        report.command,
        "```",
        "",
        f"Catalog: {', '.join(f'{k} MB x {v}' for k, v in report.expert_mb.items())}; {report.sockets} "
        f"sockets of {report.hbm_bytes_per_socket / 1e6:.0f} MB weights each in both systems; baseline K = "
        f"{report.baseline_k} models per replica (bytes // largest expert). Machine: {report.machine}. "
        "The box was shared with other agents' jobs while measuring; ratios come from one run.",
        "",
        "| system | req/s | E2EL p50 / p99 (ms) | HBM hit rate (measured) | hit rate from cold | failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("coe", coe), ("baseline", base)):
        lines.append(
            f"| {name} | {r.request_throughput:.2f} | {r.e2el.p50_ms:.0f} / {r.e2el.p99_ms:.0f} | "
            f"{r.server.hbm_hit_rate:.3f} | {r.server_with_warmup.hbm_hit_rate:.3f} | {r.failed} |"
        )
    lines += [
        "",
        f"Same trace over the summed HBM bytes: Belady by size {report.belady_size_hit_rate:.3f} (an "
        f"approximation), PFOO-U bound {report.opt_bound_hit_rate:.3f}.",
        "",
        f"- hit rate CoE / baseline: **{_ratio(coe.server.hbm_hit_rate, base.server.hbm_hit_rate):.2f}x**; "
        f"p99 CoE / baseline: **{_ratio(coe.e2el.p99_ms, base.e2el.p99_ms):.2f}x** "
        "(goal: CoE better on both).",
    ]
    return "\n".join(lines) + "\n"


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def main(argv: Sequence[str] | None = None) -> MixedReport:
    args = _parse_args(argv)
    command = "python -m bench.mixed " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    paths, sizes = _catalog(args)
    config = config_from_args(args, paths, sizes)
    specs = build_requests(
        config.expert_ids, args.warmup + args.requests, workload="zipf", zipf_s=args.zipf, seed=args.seed
    )
    load = LoadSettings(
        url="",
        concurrency=args.concurrency,
        num_requests=args.requests,
        warmup=args.warmup,
        workload="zipf",
        zipf_s=args.zipf,
        experts=config.expert_ids,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    runs = {system: measure_system(system, config, specs, load)[0] for system in MIXED_SYSTEMS}
    trace = [s.model for s in specs]
    expert_sizes = {e.id: e.size_bytes for e in config.experts}
    total = config.topology.total_hbm_bytes
    report = MixedReport(
        command=command,
        expert_mb={
            mb: int(c) for mb, c in zip(args.sizes_mb.split(","), args.counts.split(","), strict=True)
        },
        hbm_bytes_per_socket=config.topology.weights_per_socket,
        baseline_k=models_per_replica(config),
        sockets=config.topology.total_sockets,
        runs=runs,
        belady_size_hit_rate=replay(trace, expert_sizes, total, "BELADY-SIZE").hit_rate,
        opt_bound_hit_rate=replay(trace, expert_sizes, total, "OPT-BOUND").hit_rate,
        machine=machine_info(),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mixed.json").write_text(report.model_dump_json(indent=2) + "\n")
    (args.out / "mixed.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
