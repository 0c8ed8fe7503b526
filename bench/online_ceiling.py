"""How near Belady's OPT can an online policy get on `bench.compare`'s trace? (issue 17)

`bench.compare --quick` asks for a CoE HBM hit rate of at least 0.9x OPT, OPT being one cache of
all sockets' HBM replayed over the whole trace from cold. Serving measured 0.836-0.855x in seven
runs, all on seed 0. This replays the same expert sequence (`bench.requests.build_requests` with
compare's experts, requests, workload and seed) through one ideal cache of the summed HBM, under
every policy of `bench.policy` and under ORACLE, the A0 policy that knows the law each request
is drawn from (no online policy knows more, and under i.i.d. requests none expects more hits).
Seed by seed, that separates three gaps to OPT: the policy's, learning popularity from a trace
of a few hundred requests, and not knowing the future. Deterministic: no wall clock involved.

Run ``python -m bench.online_ceiling --help``; results go to
``bench/results/online_ceiling.{json,md}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from bench.policy import GOAL_OPT_RATIO, POLICIES, replay
from bench.requests import WORKLOADS, build_requests, item_forecast
from bench.result_files import write_result
from bench.settings_cli import parse_settings

__all__ = ["CeilingReport", "CeilingSettings", "main", "seed_hit_rates"]

RESULTS = Path("bench/results")
ORDER: tuple[str, ...] = (*(p for p in POLICIES if p != "OPT"), "ORACLE", "OPT")


class CeilingSettings(BaseModel):
    """Defaults are `bench.compare --quick`'s: 16 experts, 2 nodes x 2 sockets x 2 experts of HBM,
    100 warm-up + 300 measured requests, Zipf s=1.0, seed 0."""

    experts: int = Field(16, ge=1)
    capacity_experts: int = Field(8, ge=1, description="Experts all sockets' HBM holds together.")
    requests: int = Field(400, ge=1, description="Warm-up plus measured: OPT replays them all from cold.")
    workload: str = Field("zipf", description=f"One of {', '.join(WORKLOADS)}, as in bench.compare.")
    zipf_s: float = 1.0
    seed: int = Field(0, description="The seed bench.compare ran with.")
    seeds: int = Field(200, ge=1, description="Seeds 0..seeds-1 for the spread over traces.")


class SeedSpread(BaseModel):
    policy: str
    mean: float
    p10: float
    min: float
    max: float
    share_at_goal: float = Field(description=f"Share of the seeds with hit rate >= {GOAL_OPT_RATIO}x OPT.")


class CeilingReport(BaseModel):
    command: str
    settings: CeilingSettings
    hit_rates: dict[str, float] = Field(description="Policy -> HBM hit rate on `settings.seed`'s trace.")
    vs_opt: dict[str, float] = Field(description="Policy -> hit rate / OPT's on `settings.seed`'s trace.")
    spread: list[SeedSpread] = Field(description="hit rate / OPT's over seeds 0..seeds-1.")


def seed_hit_rates(s: CeilingSettings, seed: int) -> dict[str, float]:
    """Every policy's hit rate on the trace compare builds for `seed`, in one cache of the summed HBM."""
    experts = [f"bench-{i:02d}" for i in range(s.experts)]  # rank order, as compare passes its expert ids
    specs = build_requests(experts, s.requests, workload=s.workload, zipf_s=s.zipf_s, seed=seed)
    trace = [r.model for r in specs]
    forecast = item_forecast(experts, s.requests, s.workload, s.zipf_s)
    sizes = dict.fromkeys(experts, 1)
    return {p: replay(trace, sizes, s.capacity_experts, p, forecast=forecast).hit_rate for p in ORDER}


def build_report(s: CeilingSettings, command: str) -> CeilingReport:
    per_seed = [seed_hit_rates(s, k) for k in range(s.seeds)]
    rates = per_seed[s.seed] if 0 <= s.seed < s.seeds else seed_hit_rates(s, s.seed)
    ratios = np.array([[r[p] / r["OPT"] for p in ORDER] for r in per_seed])
    spread = [
        SeedSpread(
            policy=p,
            mean=float(ratios[:, i].mean()),
            p10=float(np.percentile(ratios[:, i], 10)),
            min=float(ratios[:, i].min()),
            max=float(ratios[:, i].max()),
            share_at_goal=float((ratios[:, i] >= GOAL_OPT_RATIO).mean()),
        )
        for i, p in enumerate(ORDER)
    ]
    return CeilingReport(
        command=command,
        settings=s,
        hit_rates=rates,
        vs_opt={p: rates[p] / rates["OPT"] for p in ORDER},
        spread=spread,
    )


def markdown(report: CeilingReport) -> str:
    s = report.settings
    lines = [
        "# How near OPT can an online policy get on bench.compare's trace?",
        "",
        "```",
        report.command,
        "```",
        "",
        f"One ideal cache of {s.capacity_experts} experts (all sockets' HBM together) over {s.experts} "
        f"experts, {s.requests} requests ({s.workload}, s={s.zipf_s}), replayed from cold as `bench.compare` "
        "replays OPT. ORACLE is A0: it evicts the expert the next request is least likely to want, by the "
        "law the trace is drawn from, which no online policy knows (they must learn it from the trace). "
        "Deterministic.",
        "",
        f"| policy | hit rate (seed {s.seed}) | / OPT (seed {s.seed}) | / OPT mean over {s.seeds} seeds | "
        f"10th pct | min | max | seeds >= {GOAL_OPT_RATIO}x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report.spread:
        lines.append(
            f"| {row.policy} | {report.hit_rates[row.policy]:.4f} | {report.vs_opt[row.policy]:.3f} | "
            f"{row.mean:.3f} | {row.p10:.3f} | {row.min:.3f} | {row.max:.3f} | {row.share_at_goal:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> CeilingReport:
    prog, description = "python -m bench.online_ceiling", __doc__.split("\n")[0]
    settings, out, command = parse_settings(CeilingSettings, prog, description, argv, RESULTS)
    report = build_report(settings, command)
    write_result(out, "online_ceiling", report.model_dump(), markdown(report))
    return report


if __name__ == "__main__":
    main()
