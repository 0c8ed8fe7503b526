"""CoE vs the multiplexing baseline vs the ceiling: one trace, one warm-up, one run each.

    python -m bench.compare --quick      # ~16 experts of 40 MB, 2 nodes x 2 sockets, < 10 min on 2 cores

Every system gets a fresh local cluster (`bench.rig`), the same request list (same experts,
prompts and seeds, in the same order), the same closed-loop concurrency and the same warm-up
(the trace's first `--warmup` requests, unmeasured). The checkpoint files are read once before
the first system so the page cache is warm for all three; the resident fraction is recorded
before each. Ratios are taken within the run, since the machine is shared and noisy.

Writes `compare.json` (the `CompareReport` model), `compare.md`, `compare_records.jsonl` (one
line per request and system, for the plots) and the figures of `bench.plots`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from bench import pagecache
from bench.baseline import models_per_replica
from bench.experts import build_bench_experts
from bench.load import LoadReport, LoadSettings, run_benchmark
from bench.metrics import RequestRecord, SystemRecord, parse_goodput
from bench.policy import GOAL_OPT_RATIO, replay
from bench.requests import RequestSpec, build_requests
from bench.systems import SYSTEMS, bench_config, start_system
from cluster.config import ClusterConfig

__all__ = ["CompareReport", "CompareSettings", "main", "measure_system", "opt_hit_rates"]

RESULTS = Path("bench/results")
GOAL_IDEAL_RATIO = 0.95
GOAL_P99_RATIO = 0.5


class CompareSettings(BaseModel):
    experts: int
    expert_bytes: int = Field(description="Size of the largest expert (the unit budgets are counted in).")
    hbm_bytes_per_socket: int
    hbm_experts_total: int = Field(description="Experts the HBM of all sockets holds together.")
    K: int = Field(description="Baseline max_num_models_per_replica: experts that fit one socket's HBM.")
    sockets: int
    nodes: int
    cpus_per_socket: float
    concurrency: int
    max_tokens: int
    zipf: float
    workload: str
    requests: int
    warmup: int
    seed: int
    max_ongoing_requests: int
    max_batch_size: int


class Goal(BaseModel):
    target: str
    measured: float
    met: bool


class SystemRun(BaseModel):
    report: LoadReport
    startup_s: float = Field(description="Cluster start to app ready.")
    page_cache_resident: float = Field(description="Fraction of checkpoint pages in the page cache at start.")


class CompareReport(BaseModel):
    command: str
    settings: CompareSettings
    throughput_ratio: float = Field(description="CoE / baseline request throughput.")
    p99_ratio: float = Field(description="CoE / baseline e2el p99.")
    ideal_throughput_ratio: float = Field(description="CoE / ceiling request throughput.")
    baseline_ideal_throughput_ratio: float = Field(description="baseline / ceiling request throughput.")
    hbm_hit_rate: float = Field(description="CoE, measured requests (after warm-up).")
    hbm_hit_rate_with_warmup: float = Field(description="CoE, every request from a cold start.")
    opt_hbm_hit_rate: float = Field(
        description="Belady's OPT over the whole trace from a cold start, one cache of the total HBM."
    )
    lru_hbm_hit_rate: float = Field(description="A single global LRU of the total HBM, same trace.")
    hit_rate_vs_opt: float = Field(description="hbm_hit_rate_with_warmup / opt_hbm_hit_rate.")
    baseline_hit_rate: float = Field(description="Baseline, measured requests: model already loaded.")
    baseline_hit_rate_with_warmup: float
    coe_rps: float
    baseline_rps: float
    ideal_rps: float
    goals: dict[str, Goal]
    runs: dict[str, SystemRun]
    machine: dict[str, str]


# --------------------------------------------------------------------------- pieces
def opt_hit_rates(trace: Sequence[str], sizes: dict[str, int], total_hbm_bytes: int) -> dict[str, float]:
    """OPT and LRU hit rates of one cache holding the whole HBM of all sockets.

    Several sockets are modelled as one cache of their summed budget: whatever the sockets hold
    together is a set of experts within that budget, so every socket-level hit is a hit of some
    policy on the aggregate cache, and OPT (optimal for equal sizes) bounds it from above.
    """
    return {policy: replay(list(trace), sizes, total_hbm_bytes, policy).hit_rate for policy in ("OPT", "LRU")}


def measure_system(
    system: str,
    config: ClusterConfig,
    specs: Sequence[RequestSpec],
    settings: LoadSettings,
    *,
    show_progress: bool = True,
) -> tuple[SystemRun, list[RequestRecord]]:
    """Start `system` on a fresh cluster, run the specs (warm-up first), stop it."""
    resident = pagecache.resident_fraction(config.checkpoint_path(e) for e in config.experts)
    started = time.perf_counter()
    print(f"[{system}] starting a fresh cluster", flush=True)
    with start_system(system, config) as rig:
        startup_s = time.perf_counter() - started
        print(
            f"[{system}] ready in {startup_s:.0f}s; {settings.warmup} warm-up + "
            f"{settings.num_requests} measured requests",
            flush=True,
        )
        run_settings = settings.model_copy(update={"url": rig.base_url})
        report, records = asyncio.run(run_benchmark(run_settings, specs, show_progress=show_progress))
    return SystemRun(report=report, startup_s=startup_s, page_cache_resident=resident), records


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def build_report(
    runs: dict[str, SystemRun], settings: CompareSettings, opt: dict[str, float], command: str
) -> CompareReport:
    coe, base, ceiling = (runs[s].report for s in SYSTEMS)
    hit_full = coe.server_with_warmup.hbm_hit_rate
    ideal_ratio = _ratio(coe.request_throughput, ceiling.request_throughput)
    p99_ratio = _ratio(coe.e2el.p99_ms, base.e2el.p99_ms)
    vs_opt = _ratio(hit_full, opt["OPT"])
    half = settings.hbm_experts_total <= settings.experts / 2
    goals = {
        "ideal_throughput_ratio": Goal(
            target=f">= {GOAL_IDEAL_RATIO} with HBM holding <= half the experts "
            f"({settings.hbm_experts_total}/{settings.experts})",
            measured=ideal_ratio,
            met=ideal_ratio >= GOAL_IDEAL_RATIO and half,
        ),
        "p99_ratio": Goal(target=f"<= {GOAL_P99_RATIO}", measured=p99_ratio, met=p99_ratio <= GOAL_P99_RATIO),
        "hit_rate_vs_opt": Goal(target=f">= {GOAL_OPT_RATIO}", measured=vs_opt, met=vs_opt >= GOAL_OPT_RATIO),
    }
    return CompareReport(
        command=command,
        settings=settings,
        throughput_ratio=_ratio(coe.request_throughput, base.request_throughput),
        p99_ratio=p99_ratio,
        ideal_throughput_ratio=ideal_ratio,
        baseline_ideal_throughput_ratio=_ratio(base.request_throughput, ceiling.request_throughput),
        hbm_hit_rate=coe.server.hbm_hit_rate,
        hbm_hit_rate_with_warmup=hit_full,
        opt_hbm_hit_rate=opt["OPT"],
        lru_hbm_hit_rate=opt["LRU"],
        hit_rate_vs_opt=vs_opt,
        baseline_hit_rate=base.server.hbm_hit_rate,
        baseline_hit_rate_with_warmup=base.server_with_warmup.hbm_hit_rate,
        coe_rps=coe.request_throughput,
        baseline_rps=base.request_throughput,
        ideal_rps=ceiling.request_throughput,
        goals=goals,
        runs=runs,
        machine=machine_info(),
    )


def machine_info() -> dict[str, str]:
    load1, load5, _ = os.getloadavg()
    return {
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1m_5m_at_end": f"{load1:.2f} {load5:.2f}",
    }


# --------------------------------------------------------------------------- output
def markdown(report: CompareReport) -> str:
    s = report.settings
    base_server, coe_server = report.runs["baseline"].report.server, report.runs["coe"].report.server
    lines = [
        "# CoE vs Ray Serve multiplexing vs the ceiling",
        "",
        "```",
        report.command,
        "```",
        "",
        f"{s.experts} random-weight experts of {s.expert_bytes / 1e6:.1f} MB (largest), {s.nodes} nodes x "
        f"{s.sockets // s.nodes} sockets, {s.cpus_per_socket} CPU per socket; HBM "
        f"{s.hbm_bytes_per_socket / 1e6:.1f} MB per socket = {s.K} experts (the baseline's K), "
        f"{s.hbm_experts_total} of {s.experts} experts in all sockets' HBM together. {s.workload} "
        f"s={s.zipf} over experts, closed loop at concurrency {s.concurrency}, max_tokens {s.max_tokens}, "
        f"{s.warmup} warm-up + {s.requests} measured requests (seed {s.seed}). "
        "Ceiling: CoE with HBM = the whole catalog.",
        "",
        "| system | req/s | out tok/s | TTFT p50 / p99 (ms) | E2EL p50 / p99 (ms) | HBM hit rate | "
        "MB loaded | failed | startup (s) | page cache |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system, run in report.runs.items():
        r, t = run.report, run.report.server
        loaded_mb = (t.bytes_ddr_to_hbm + t.bytes_store_to_hbm) / 1e6
        lines.append(
            f"| {system} | {r.request_throughput:.2f} | {r.output_throughput:.1f} | "
            f"{r.ttft.p50_ms:.0f} / {r.ttft.p99_ms:.0f} | {r.e2el.p50_ms:.0f} / {r.e2el.p99_ms:.0f} | "
            f"{t.hbm_hit_rate:.3f} | {loaded_mb:.0f} | {r.failed} | {run.startup_s:.0f} | "
            f"{run.page_cache_resident:.2f} |"
        )
    lines += [
        "",
        "| ratio | value |",
        "|---|---:|",
        f"| throughput_ratio (CoE / baseline) | {report.throughput_ratio:.3f} |",
        f"| p99_ratio (CoE / baseline, e2el) | {report.p99_ratio:.3f} |",
        f"| ideal_throughput_ratio (CoE / ceiling) | {report.ideal_throughput_ratio:.3f} |",
        "| baseline_ideal_throughput_ratio (baseline / ceiling) | "
        f"{report.baseline_ideal_throughput_ratio:.3f} |",
        "",
        "| HBM hit rate | measured requests | whole trace from cold |",
        "|---|---:|---:|",
        f"| CoE | {report.hbm_hit_rate:.3f} | {report.hbm_hit_rate_with_warmup:.3f} |",
        f"| baseline (`@serve.multiplexed`) | {report.baseline_hit_rate:.3f} | "
        f"{report.baseline_hit_rate_with_warmup:.3f} |",
        f"| one global LRU of the total HBM | | {report.lru_hbm_hit_rate:.3f} |",
        f"| Belady OPT of the total HBM | | {report.opt_hbm_hit_rate:.3f} |",
        "",
        "| goal | target | measured | met |",
        "|---|---|---:|---|",
    ]
    for name, goal in report.goals.items():
        lines.append(f"| {name} | {goal.target} | {goal.measured:.3f} | {'yes' if goal.met else 'no'} |")
    lines += [
        "",
        f"Baseline misses: {base_server.store_reads} `from_pretrained` loads, "
        f"{1000 * base_server.load_s_total / max(1, base_server.store_reads):.0f} ms each on average "
        f"(page cache warm); at most {base_server.peak_models_in_use} distinct models ran at once on one "
        f"replica (K = {s.K}: above K, models evicted mid-batch stayed in memory). CoE misses: "
        f"{coe_server.hbm_misses} page-ins, {coe_server.ddr_misses} of them from the STORE, "
        f"{coe_server.bytes_ddr_to_hbm / 1e6:.0f} MB mapped DDR->HBM; {coe_server.lease_reuses} of "
        f"{coe_server.placements} placements were kept leases the ingress reused (no MemTier call).",
        "",
        "OPT and LRU replay the same expert sequence (warm-up + measured) from an empty cache of the summed "
        "HBM of all sockets, an upper bound for any placement over the sockets; CoE's hit rate over the same "
        "requests from its cold start is the comparable number. A request that finds its expert being "
        "loaded by another request counts as a hit for CoE and the baseline alike, as consecutive "
        "requests do in the replay.",
        "",
        f"Machine: {report.machine['cpus']} CPUs, load average at the end "
        f"{report.machine['loadavg_1m_5m_at_end']} (shared with other jobs; ratios come from one run).",
        "",
        "![latency CDF](latency_cdf.png)",
        "",
        "![throughput and hit rate over time](over_time.png)",
    ]
    return "\n".join(lines) + "\n"


def write_records(path: Path, records: dict[str, list[RequestRecord]], regime: str = "") -> None:
    """Per-request records for the plots, one JSON line each (chunk times beyond the first are
    dropped: the plots need TTFT, not every ITL sample)."""
    with path.open("w") as fh:
        for system, rows in records.items():
            for r in rows:
                row = SystemRecord(
                    **r.model_dump(exclude={"chunk_s"}), chunk_s=r.chunk_s[:1], system=system, regime=regime
                )
                fh.write(row.model_dump_json() + "\n")


# --------------------------------------------------------------------------- CLI
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests: under 10 minutes on 2 cores")
    parser.add_argument("--experts", type=int, default=16, help="bench experts in the catalog")
    parser.add_argument("--expert-mb", type=int, default=40, help="size of each bench expert (MB)")
    parser.add_argument("--experts-per-socket", type=int, default=2, help="HBM per socket, in experts")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--sockets-per-node", type=int, default=2)
    parser.add_argument("--cpus-per-socket", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--workload", choices=("zipf", "uniform", "phase"), default="zipf")
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=None, help="measured requests (quick 300, full 1000)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up requests (quick 100, full 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goodput", nargs="*", default=["ttft:1000", "e2el:3000"], metavar="METRIC:MS")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.requests = args.requests or (300 if args.quick else 1000)
    args.warmup = args.warmup if args.warmup is not None else (100 if args.quick else 200)
    return args


def config_from_args(args: argparse.Namespace, paths: Sequence[Path], sizes: Sequence[int]) -> ClusterConfig:
    """The systems' cluster config from the topology flags compare and mixed share."""
    return bench_config(
        paths,
        sizes,
        experts_per_socket=args.experts_per_socket,
        nodes=args.nodes,
        sockets_per_node=args.sockets_per_node,
        cpus_per_socket=args.cpus_per_socket,
        max_tokens=args.max_tokens,
    )


def prepare(args: argparse.Namespace) -> tuple[ClusterConfig, list[RequestSpec]]:
    """Build (once) the experts, the config and the request list every system gets."""
    from memtier.store import checkpoint_info

    paths = build_bench_experts(args.experts, args.expert_mb)
    config = config_from_args(args, paths, [checkpoint_info(p).size_bytes for p in paths])
    specs = build_requests(
        config.expert_ids,
        args.warmup + args.requests,
        workload=args.workload,
        zipf_s=args.zipf,
        seed=args.seed,
    )
    pagecache.warm(config.checkpoint_path(e) for e in config.experts)
    return config, specs


def compare_settings(args: argparse.Namespace, config: ClusterConfig) -> CompareSettings:
    topo = config.topology
    largest = max(e.size_bytes for e in config.experts)
    return CompareSettings(
        experts=len(config.experts),
        expert_bytes=largest,
        hbm_bytes_per_socket=topo.hbm_per_socket,
        hbm_experts_total=topo.total_sockets * (topo.weights_per_socket // largest),
        K=models_per_replica(config),
        sockets=topo.total_sockets,
        nodes=topo.nodes,
        cpus_per_socket=topo.cpus_per_socket,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        zipf=args.zipf,
        workload=args.workload,
        requests=args.requests,
        warmup=args.warmup,
        seed=args.seed,
        max_ongoing_requests=config.serve.max_ongoing_requests,
        max_batch_size=config.serve.max_batch_size,
    )


def main(argv: Sequence[str] | None = None) -> CompareReport:
    args = _parse_args(argv)
    command = "python -m bench.compare " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    config, specs = prepare(args)
    settings = compare_settings(args, config)
    load = LoadSettings(
        url="",
        concurrency=args.concurrency,
        num_requests=args.requests,
        warmup=args.warmup,
        workload=args.workload,
        zipf_s=args.zipf,
        experts=config.expert_ids,
        max_tokens=args.max_tokens,
        seed=args.seed,
        goodput_slo_ms=parse_goodput(args.goodput),
    )
    runs: dict[str, SystemRun] = {}
    records: dict[str, list[RequestRecord]] = {}
    for system in SYSTEMS:
        runs[system], records[system] = measure_system(system, config, specs, load)
        r = runs[system].report
        print(
            f"[{system}] {r.request_throughput:.2f} req/s, e2el p99 {r.e2el.p99_ms:.0f} ms, "
            f"hit rate {r.server.hbm_hit_rate:.3f}, failed {r.failed}",
            flush=True,
        )
    sizes = {e.id: e.size_bytes for e in config.experts}
    opt = opt_hit_rates([s.model for s in specs], sizes, config.topology.total_hbm_bytes)
    report = build_report(runs, settings, opt, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(report.model_dump_json(indent=2) + "\n")
    write_records(args.out / "compare_records.jsonl", records)
    text = markdown(report)
    (args.out / "compare.md").write_text(text)
    from bench.plots import plot_compare

    plot_compare(args.out)
    print(text)
    return report


if __name__ == "__main__":
    main()
