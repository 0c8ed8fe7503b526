"""Regimes: the comparison's ratios across output length and HBM oversubscription.

    python -m bench.sweep --quick     # 3 lengths x 2 oversubscriptions, ~20 min on 2 cores

Output lengths 4, 16 and 64 tokens move the balance between switching experts (dominant for
short answers) and generating (dominant for long ones). Oversubscription 2x and 4x is the
catalog's bytes over the total HBM of all sockets (HBM holds half, then a quarter, of the experts).

To fit the time, a cluster serves every output length of its regime in turn (each run preceded
by the same warm-up of the same trace, so caches return to steady state) instead of being
restarted per run; the ceiling does not depend on the HBM budget, so it runs once per length.
That is 5 cluster starts instead of 18. Writes `sweep.json`, `sweep.md` and `sweep.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from bench import pagecache
from bench.baseline import models_per_replica
from bench.compare import RESULTS, machine_info, opt_hit_rates
from bench.experts import build_bench_experts
from bench.load import LoadReport, LoadSettings, run_benchmark
from bench.requests import build_requests
from bench.systems import bench_config, start_system
from cluster.config import ClusterConfig

__all__ = ["SweepReport", "SweepRow", "main"]

LENGTHS = (4, 16, 64)
OVERSUBSCRIPTIONS = (2, 4)


class SweepRow(BaseModel):
    max_tokens: int
    oversubscription: float = Field(description="Catalog bytes / total HBM bytes.")
    hbm_experts_total: int
    K: int
    throughput_ratio: float
    p99_ratio: float
    ideal_throughput_ratio: float
    baseline_ideal_throughput_ratio: float
    hbm_hit_rate: float
    baseline_hit_rate: float
    opt_hbm_hit_rate: float = Field(description="OPT over the whole trace from cold at the total HBM.")
    hbm_hit_rate_with_warmup: float = Field(description="CoE over the whole trace (comparable to OPT).")
    coe_rps: float
    baseline_rps: float
    ideal_rps: float
    coe_e2el_p99_ms: float
    baseline_e2el_p99_ms: float
    baseline_peak_models_in_use: int = Field(
        description="Most distinct models one baseline replica ran at once, since its cluster started (> K: "
        "over the per-socket budget, which multiplexing does not pin)."
    )
    failed: int = Field(description="Failed requests over the three systems.")


class SweepReport(BaseModel):
    command: str
    experts: int
    expert_bytes: int
    sockets: int
    concurrency: int
    zipf: float
    requests: int
    warmup: int
    seed: int
    rows: list[SweepRow]
    reports: dict[str, LoadReport] = Field(description="'system/oversubscription/max_tokens' -> report.")
    machine: dict[str, str]


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _run_lengths(
    system: str, config: ClusterConfig, specs, base: LoadSettings, lengths: Sequence[int]
) -> dict[int, LoadReport]:
    """One fresh cluster for `system`; one warmed-up run per output length on it."""
    out: dict[int, LoadReport] = {}
    print(f"[{system}] starting a fresh cluster", flush=True)
    with start_system(system, config) as rig:
        for max_tokens in lengths:
            settings = base.model_copy(update={"url": rig.base_url, "max_tokens": max_tokens})
            report, _ = asyncio.run(run_benchmark(settings, specs))
            out[max_tokens] = report
            print(
                f"[{system}] max_tokens {max_tokens}: {report.request_throughput:.2f} req/s, "
                f"hit rate {report.server.hbm_hit_rate:.3f}, failed {report.failed}",
                flush=True,
            )
    return out


def _row(
    config: ClusterConfig,
    oversub: float,
    max_tokens: int,
    coe: LoadReport,
    base: LoadReport,
    ceiling: LoadReport,
    opt: float,
) -> SweepRow:
    largest = max(e.size_bytes for e in config.experts)
    topo = config.topology
    return SweepRow(
        max_tokens=max_tokens,
        oversubscription=oversub,
        hbm_experts_total=topo.total_sockets * (topo.weights_per_socket // largest),
        K=models_per_replica(config),
        throughput_ratio=_ratio(coe.request_throughput, base.request_throughput),
        p99_ratio=_ratio(coe.e2el.p99_ms, base.e2el.p99_ms),
        ideal_throughput_ratio=_ratio(coe.request_throughput, ceiling.request_throughput),
        baseline_ideal_throughput_ratio=_ratio(base.request_throughput, ceiling.request_throughput),
        hbm_hit_rate=coe.server.hbm_hit_rate,
        baseline_hit_rate=base.server.hbm_hit_rate,
        opt_hbm_hit_rate=opt,
        hbm_hit_rate_with_warmup=coe.server_with_warmup.hbm_hit_rate,
        coe_rps=coe.request_throughput,
        baseline_rps=base.request_throughput,
        ideal_rps=ceiling.request_throughput,
        coe_e2el_p99_ms=coe.e2el.p99_ms,
        baseline_e2el_p99_ms=base.e2el.p99_ms,
        baseline_peak_models_in_use=base.server.peak_models_in_use,
        failed=coe.failed + base.failed + ceiling.failed,
    )


def markdown(report: SweepReport) -> str:
    lines = [
        "# Regimes: output length x HBM oversubscription",
        "",
        "```",
        report.command,
        "```",
        "",
        f"{report.experts} experts of {report.expert_bytes / 1e6:.1f} MB, {report.sockets} sockets, Zipf "
        f"s={report.zipf}, closed loop at concurrency {report.concurrency}, {report.warmup} warm-up + "
        f"{report.requests} measured requests per run. Oversubscription = catalog bytes / total HBM; "
        "K = the baseline's models per replica; 'base peak models' = the most distinct models one baseline "
        "replica ran at once (above K it held more than its budget). Hit rates: measured requests; OPT and "
        "'CoE (all)' cover the whole trace from an empty cache.",
        "",
        "| oversub | max_tokens | HBM experts | K | CoE/base tput | CoE/base p99 | CoE/ceiling | "
        "base/ceiling | CoE hit | base hit | CoE hit (all) | OPT (all) | CoE / base / ceiling req/s "
        "| base peak models | failed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.oversubscription:g}x | {r.max_tokens} | {r.hbm_experts_total} | {r.K} | "
            f"{r.throughput_ratio:.2f} | {r.p99_ratio:.2f} | {r.ideal_throughput_ratio:.2f} | "
            f"{r.baseline_ideal_throughput_ratio:.2f} | {r.hbm_hit_rate:.3f} | {r.baseline_hit_rate:.3f} | "
            f"{r.hbm_hit_rate_with_warmup:.3f} | {r.opt_hbm_hit_rate:.3f} | "
            f"{r.coe_rps:.2f} / {r.baseline_rps:.2f} / {r.ideal_rps:.2f} | {r.baseline_peak_models_in_use} | "
            f"{r.failed} |"
        )
    lines += [
        "",
        f"Machine: {report.machine['cpus']} CPUs, load average at the end "
        f"{report.machine['loadavg_1m_5m_at_end']} (shared with other jobs).",
        "",
        "![sweep](sweep.png)",
    ]
    return "\n".join(lines) + "\n"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per run (~20 min on 2 cores)")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--expert-mb", type=int, default=40)
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="max_tokens values")
    parser.add_argument(
        "--oversubscriptions",
        default=",".join(map(str, OVERSUBSCRIPTIONS)),
        help="catalog / total HBM; must give a whole number of experts per socket",
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=None, help="measured per run (quick 100, full 400)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up per run (quick 40, full 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.requests = args.requests or (100 if args.quick else 400)
    args.warmup = args.warmup if args.warmup is not None else (40 if args.quick else 100)
    return args


def main(argv: Sequence[str] | None = None) -> SweepReport:
    from memtier.store import checkpoint_info

    args = _parse_args(argv)
    command = "python -m bench.sweep " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    lengths = [int(x) for x in args.lengths.split(",")]
    oversubs = [float(x) for x in args.oversubscriptions.split(",")]
    paths = build_bench_experts(args.experts, args.expert_mb)
    sizes = [checkpoint_info(p).size_bytes for p in paths]
    sockets = 4  # bench_config's default topology: 2 nodes x 2 sockets

    def config_for(oversub: float) -> ClusterConfig:
        per_socket = args.experts / (oversub * sockets)
        if per_socket < 1 or per_socket != int(per_socket):
            raise SystemExit(
                f"--oversubscriptions {oversub:g}: {args.experts} experts / ({oversub:g} x "
                f"{sockets} sockets) is not a whole number >= 1 of experts per socket"
            )
        return bench_config(paths, sizes, experts_per_socket=int(per_socket), max_tokens=max(lengths))

    configs = {o: config_for(o) for o in oversubs}
    any_config = configs[oversubs[0]]
    specs = build_requests(
        any_config.expert_ids, args.warmup + args.requests, zipf_s=args.zipf, seed=args.seed
    )
    pagecache.warm(any_config.checkpoint_path(e) for e in any_config.experts)
    base = LoadSettings(
        url="",
        concurrency=args.concurrency,
        num_requests=args.requests,
        warmup=args.warmup,
        zipf_s=args.zipf,
        experts=any_config.expert_ids,
        seed=args.seed,
    )
    reports: dict[str, LoadReport] = {}
    ceiling = _run_lengths("ceiling", any_config, specs, base, lengths)
    for length, report in ceiling.items():
        reports[f"ceiling/-/{length}"] = report
    rows = []
    size_of = {e.id: e.size_bytes for e in any_config.experts}
    trace = [s.model for s in specs]
    for oversub, config in configs.items():
        coe = _run_lengths("coe", config, specs, base, lengths)
        baseline = _run_lengths("baseline", config, specs, base, lengths)
        total_hbm = config.topology.total_hbm_bytes
        opt = opt_hit_rates(trace, size_of, total_hbm)["OPT"]
        for length in lengths:
            reports[f"coe/{oversub:g}/{length}"] = coe[length]
            reports[f"baseline/{oversub:g}/{length}"] = baseline[length]
            rows.append(_row(config, oversub, length, coe[length], baseline[length], ceiling[length], opt))
    report = SweepReport(
        command=command,
        experts=args.experts,
        expert_bytes=max(sizes),
        sockets=sockets,
        concurrency=args.concurrency,
        zipf=args.zipf,
        requests=args.requests,
        warmup=args.warmup,
        seed=args.seed,
        rows=rows,
        reports=reports,
        machine=machine_info(),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(report.model_dump_json(indent=2) + "\n")
    text = markdown(report)
    (args.out / "sweep.md").write_text(text)
    from bench.plots import plot_sweep

    plot_sweep(args.out)
    print(text)
    return report


if __name__ == "__main__":
    main()
