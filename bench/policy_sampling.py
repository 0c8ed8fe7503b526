"""Does sampling the adaptive policy's shadows cost hit rate at cluster scale? (issue 17, point 5)

`memtier.policy.AdaptiveLRFU` replays a SHARDS spatial sample of the experts in its shadow caches
once the budget holds more than `FULL_SHADOW_EXPERTS` experts (one policy ranks a whole cluster's
HBM). This replays `bench.policy`'s traces over a large catalog with the shadows sampled (as
production runs) and with every expert replayed, beside LRU and LFU, and reports the hit rates
and the CPU seconds of each adaptive replay. Hit rates are deterministic for a seed; times are not.

Run ``python -m bench.policy_sampling --help``; results go to
``bench/results/policy_sampling.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

import memtier.policy
from bench import policy as policy_bench

__all__ = ["Row", "main"]


class Row(BaseModel):
    budget_experts: int
    workload: str
    lru: float
    lfu: float
    sampled: float
    full: float
    sampled_cpu_s: float
    full_cpu_s: float


class SamplingReport(BaseModel):
    command: str
    experts: int
    requests: int
    rows: list[Row]


def _adaptive(trace: list[str], sizes: dict[str, int], budget: int, *, full: bool) -> tuple[float, float]:
    """Hit rate and CPU seconds of the production policy, its shadows sampled or not."""
    threshold = memtier.policy.FULL_SHADOW_EXPERTS
    memtier.policy.FULL_SHADOW_EXPERTS = 10**9 if full else threshold
    try:
        started = time.process_time()
        hit_rate = policy_bench.replay(trace, sizes, budget, "ADAPTIVE").hit_rate
        return hit_rate, time.process_time() - started
    finally:
        memtier.policy.FULL_SHADOW_EXPERTS = threshold


def run(experts: int, requests: int, budgets: list[int], seed: int) -> list[Row]:
    names = [f"e{i:05d}" for i in range(experts)]
    sizes = dict.fromkeys(names, 1)
    rows = []
    for budget in budgets:
        for workload, trace in policy_bench._traces(names, requests, 1.0, seed).items():
            sampled, sampled_s = _adaptive(trace, sizes, budget, full=False)
            full, full_s = _adaptive(trace, sizes, budget, full=True)
            rows.append(
                Row(
                    budget_experts=budget,
                    workload=workload,
                    lru=policy_bench.replay(trace, sizes, budget, "LRU").hit_rate,
                    lfu=policy_bench.replay(trace, sizes, budget, "LFU").hit_rate,
                    sampled=sampled,
                    full=full,
                    sampled_cpu_s=sampled_s,
                    full_cpu_s=full_s,
                )
            )
            print(rows[-1].model_dump_json(), flush=True)
    return rows


def markdown(report: SamplingReport) -> str:
    lines = [
        "# Adaptive policy: sampled vs full shadow caches at cluster scale",
        "",
        f"```\n{report.command}\n```",
        "",
        f"{report.experts} experts of equal size, {report.requests} requests per trace "
        "(bench.policy's traces, Zipf s=1.0). `sampled` is production (SHARDS sample of the experts in "
        "the shadows); `full` replays every expert. Hit rates are deterministic; CPU seconds are one run "
        "on a shared box.",
        "",
        "| budget | workload | LRU | LFU | sampled | full | sampled - full | CPU s sampled / full |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.budget_experts} | {r.workload} | {r.lru:.4f} | {r.lfu:.4f} | {r.sampled:.4f} "
            f"| {r.full:.4f} | {r.sampled - r.full:+.4f} | {r.sampled_cpu_s:.1f} / {r.full_cpu_s:.1f} |"
        )
    worst = min(r.sampled - max(r.lru, r.lfu) for r in report.rows)
    lines += ["", f"Sampled against the better of LRU and LFU, worst case: {worst:+.4f} (goal >= -0.01)."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> SamplingReport:
    parser = argparse.ArgumentParser(
        prog="python -m bench.policy_sampling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--experts", type=int, default=4096)
    parser.add_argument("--requests", type=int, default=60_000)
    parser.add_argument("--budgets", default="512,1024", help="budgets, in experts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    command = (
        f"python -m bench.policy_sampling --experts {args.experts} --requests {args.requests} "
        f"--budgets {args.budgets} --seed {args.seed} --out {args.out}"
    )
    report = SamplingReport(
        command=command,
        experts=args.experts,
        requests=args.requests,
        rows=run(args.experts, args.requests, budgets, args.seed),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policy_sampling.json").write_text(report.model_dump_json(indent=2) + "\n")
    (args.out / "policy_sampling.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
