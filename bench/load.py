"""Load generator: drive an OpenAI-compatible server with a workload and report what it did.

    python -m bench.load --url http://127.0.0.1:8000 --concurrency 8 --num-requests 200 \
        --workload zipf --zipf-s 1.0 --max-tokens 16 --goodput ttft:500 e2el:3000 --out run.json

Closed loop (`--concurrency N`): N clients, each sends its next request when the previous one
ends. Open loop (`--rate R`): Poisson arrivals at R req/s whatever the server does (with
`--concurrency` as an optional cap, like vLLM's `--max-concurrency`). `--warmup W` sends W
requests of the same trace first, unmeasured, so caches reach steady state. The report has the
field names `vllm bench serve` users read, plus the server's tier hit rates and bytes moved
(its counters before and after the measured requests). Every request sent is counted as
completed or failed; nothing is retried. `--grpc HOST:PORT` generates over gRPC
(`coe.v1.CoE/GenerateStream`) instead of HTTP; counters still come from `--url`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import numpy as np
from pydantic import BaseModel, Field
from tqdm import tqdm

from bench.http_client import auth_headers, stream_chat
from bench.metrics import (
    GoodputReport,
    LatencyStats,
    RequestRecord,
    meets_slo,
    parse_goodput,
    summarize_latencies,
)
from bench.requests import WORKLOADS, RequestSpec, build_requests
from bench.server_stats import TierStats, fetch_counters, tier_stats

__all__ = ["LoadReport", "LoadSettings", "main", "run_benchmark", "run_requests", "summarize"]

Sender = Callable[[RequestSpec], Awaitable[RequestRecord]]
SETTLE_S = 0.5  # server counters land as leases are released: let the last releases arrive


class LoadSettings(BaseModel):
    """Everything that defines a run; stored in the report so it can be repeated."""

    url: str
    grpc: str | None = Field(None, description="HOST:PORT: generate over gRPC; counters still from `url`.")
    grpc_app: str = Field("coe", description="Serve application name sent as gRPC metadata.")
    concurrency: int | None = Field(8, description="Closed-loop clients, or the cap in open loop.")
    rate: float | None = Field(None, description="Open loop: Poisson arrivals per second; None = closed.")
    num_requests: int = 200
    warmup: int = Field(0, description="Unmeasured requests sent first (the trace's first W).")
    workload: str = "zipf"
    zipf_s: float = 1.0
    experts: list[str] = Field(default_factory=list, description="Rank order of popularity.")
    model: str | None = Field(None, description="'coe' = routed prompts; None = explicit expert ids.")
    max_tokens: int = 16
    temperature: float = 1.0
    seed: int = 0
    timeout_s: float = 300.0
    goodput_slo_ms: dict[str, float] = Field(default_factory=dict)


class LoadReport(BaseModel):
    """The measured requests of one run (warm-up excluded)."""

    sent: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float = Field(description="completed / duration_s (req/s).")
    output_throughput: float = Field(description="output tokens / duration_s (tokens/s).")
    total_output_tokens: int
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2el: LatencyStats
    goodput: GoodputReport
    server: TierStats = Field(description="Server counters over the measured requests.")
    server_with_warmup: TierStats = Field(description="Over warm-up + measured (from the first request).")
    errors: dict[str, int] = Field(default_factory=dict, description="Error message -> count.")
    settings: LoadSettings
    command: str = ""


async def run_requests(
    specs: Sequence[RequestSpec],
    send: Sender,
    *,
    concurrency: int | None,
    rate: float | None,
    seed: int = 0,
    progress: tqdm | None = None,
) -> list[RequestRecord]:
    """Send every spec (closed loop if `rate` is None, else Poisson open loop); records in spec order."""
    records: list[RequestRecord | None] = [None] * len(specs)
    limit = asyncio.Semaphore(concurrency) if concurrency else None

    async def send_one(i: int) -> None:
        spec = specs[i]
        try:
            records[i] = await send(spec)
        except Exception as err:  # a sender bug is a failed request, never a lost one
            now_s = time.perf_counter()
            records[i] = RequestRecord(
                index=spec.index,
                model=spec.model,
                start_s=now_s,
                end_s=now_s,
                error=f"{type(err).__name__}: {err}",
            )
        if progress is not None:
            progress.update()

    async def one(i: int) -> None:
        if limit is None:
            await send_one(i)
        else:
            async with limit:
                await send_one(i)

    if rate is None:
        if not concurrency:
            raise ValueError("closed loop needs --concurrency N (or give --rate for an open loop)")
        # Each client takes the next spec as soon as it is free: trace order is kept.
        cursor = iter(range(len(specs)))

        async def client() -> None:
            for i in cursor:
                await send_one(i)

        await asyncio.gather(*(client() for _ in range(min(concurrency, len(specs)))))
    else:
        rng = np.random.default_rng(seed + 7)
        tasks = []
        for i in range(len(specs)):
            if i:  # exponential gaps between arrivals: a Poisson process at `rate`
                await asyncio.sleep(float(rng.exponential(1.0 / rate)))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return [r for r in records if r is not None]


def summarize(records: Sequence[RequestRecord], duration_s: float, slo_ms: dict[str, float]) -> dict:
    """The client-side half of a LoadReport."""
    done = [r for r in records if r.ok]
    latencies = summarize_latencies(records)
    tokens = sum(r.output_tokens for r in done)
    good = sum(1 for r in done if meets_slo(r, slo_ms)) if slo_ms else len(done)
    duration_s = max(duration_s, 1e-9)
    errors = Counter((r.error or "")[:200] for r in records if not r.ok)
    return {
        "sent": len(records),
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": duration_s,
        "request_throughput": len(done) / duration_s,
        "output_throughput": tokens / duration_s,
        "total_output_tokens": tokens,
        **latencies,
        "goodput": GoodputReport(slo_ms=slo_ms, good_requests=good, request_goodput=good / duration_s),
        "errors": dict(errors.most_common(10)),
    }


def http_sender(client: httpx.AsyncClient, settings: LoadSettings) -> Sender:
    async def send(spec: RequestSpec) -> RequestRecord:
        return await stream_chat(
            client,
            settings.url,
            spec,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            timeout_s=settings.timeout_s,
        )

    return send


@contextlib.asynccontextmanager
async def open_sender(settings: LoadSettings, client: httpx.AsyncClient) -> AsyncIterator[Sender]:
    """HTTP (the OpenAI API at `url`) or, with `grpc`, `coe.v1.CoE/GenerateStream` at that target."""
    if not settings.grpc:
        yield http_sender(client, settings)
        return
    from bench.grpc_client import GrpcSender

    sender = GrpcSender(
        settings.grpc,
        app=settings.grpc_app,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        timeout_s=settings.timeout_s,
    )
    try:
        yield sender.send
    finally:
        await sender.close()


def list_experts(url: str) -> list[str]:
    models = httpx.get(f"{url}/v1/models", headers=auth_headers(), timeout=30).json()["data"]
    return [m["id"] for m in models if m["id"] != "coe"]


async def run_benchmark(
    settings: LoadSettings, specs: Sequence[RequestSpec] | None = None, *, show_progress: bool = True
) -> tuple[LoadReport, list[RequestRecord]]:
    """Warm up, then send the measured requests; returns the report and every record (warm-up too)."""
    if specs is None:
        if not settings.experts and settings.model is None:  # record what was discovered
            settings = settings.model_copy(update={"experts": list_experts(settings.url)})
        specs = build_requests(
            settings.experts,
            settings.warmup + settings.num_requests,
            workload=settings.workload,
            zipf_s=settings.zipf_s,
            seed=settings.seed,
            model=settings.model,
        )
    warm, measured = list(specs[: settings.warmup]), list(specs[settings.warmup :])
    limits = httpx.Limits(max_connections=max(settings.concurrency or 0, 64 if settings.rate else 0, 8))
    stats_client = httpx.Client(headers=auth_headers())
    async with (
        httpx.AsyncClient(limits=limits, timeout=settings.timeout_s, headers=auth_headers()) as client,
        open_sender(settings, client) as send,
    ):
        first = fetch_counters(stats_client, settings.url)
        warm_records: list[RequestRecord] = []
        if warm:
            bar = tqdm(total=len(warm), desc="warm-up", unit="req", disable=not show_progress, leave=False)
            warm_records = await run_requests(
                warm, send, concurrency=settings.concurrency or 8, rate=None, progress=bar
            )
            bar.close()
            await asyncio.sleep(SETTLE_S)
        before = fetch_counters(stats_client, settings.url)
        bar = tqdm(total=len(measured), desc="measured", unit="req", disable=not show_progress)
        started = time.perf_counter()
        records = await run_requests(
            measured,
            send,
            concurrency=settings.concurrency,
            rate=settings.rate,
            seed=settings.seed,
            progress=bar,
        )
        duration_s = time.perf_counter() - started
        bar.close()
        await asyncio.sleep(SETTLE_S)
        after = fetch_counters(stats_client, settings.url)
    stats_client.close()
    if len(records) != len(measured):
        raise RuntimeError(f"sent {len(measured)} requests but recorded {len(records)}")
    report = LoadReport(
        **summarize(records, duration_s, settings.goodput_slo_ms),
        server=tier_stats(before, after),
        server_with_warmup=tier_stats(first, after),
        settings=settings,
    )
    all_records = warm_records + records
    origin = min((r.start_s for r in all_records), default=0.0)
    for r in all_records:  # times relative to the first request, so records of runs line up
        r.start_s, r.end_s = r.start_s - origin, r.end_s - origin
        r.chunk_s = [t - origin for t in r.chunk_s]
    return report, all_records


def format_report(report: LoadReport) -> str:
    """The report as `vllm bench serve` prints it."""
    rows = [
        ("Successful requests", report.completed),
        ("Failed requests", report.failed),
        ("Benchmark duration (s)", f"{report.duration_s:.2f}"),
        ("Request throughput (req/s)", f"{report.request_throughput:.2f}"),
        ("Output token throughput (tok/s)", f"{report.output_throughput:.2f}"),
        ("Total generated tokens", report.total_output_tokens),
    ]
    if report.goodput.slo_ms:
        rows.append(("Request goodput (req/s)", f"{report.goodput.request_goodput:.2f}"))
    lines = ["{s:{c}^60}".format(s=" Serving Benchmark Result ", c="=")]
    lines += [f"{name:<44}{value:>16}" for name, value in rows]
    for name, stats in (
        ("TTFT", report.ttft),
        ("TPOT", report.tpot),
        ("ITL", report.itl),
        ("E2EL", report.e2el),
    ):
        lines.append("{s:{c}^60}".format(s=f" {name} (ms) ", c="-"))
        lines += [
            f"{'Mean ' + name:<44}{stats.mean_ms:>16.2f}",
            f"{'P50 ' + name:<44}{stats.p50_ms:>16.2f}",
            f"{'P90 ' + name:<44}{stats.p90_ms:>16.2f}",
            f"{'P99 ' + name:<44}{stats.p99_ms:>16.2f}",
        ]
    s = report.server
    lines.append("{s:{c}^60}".format(s=f" Server tiers ({s.source}) ", c="-"))
    lines += [
        f"{'HBM hit rate':<44}{s.hbm_hit_rate:>16.3f}",
        f"{'DDR hit rate':<44}{s.ddr_hit_rate:>16.3f}",
        f"{'STORE reads':<44}{s.store_reads:>16}",
        f"{'MB moved STORE->DDR':<44}{s.bytes_store_to_ddr / 1e6:>16.1f}",
        f"{'MB moved DDR->HBM':<44}{s.bytes_ddr_to_hbm / 1e6:>16.1f}",
        f"{'MB moved STORE->HBM (baseline loads)':<44}{s.bytes_store_to_hbm / 1e6:>16.1f}",
    ]
    if report.errors:
        lines.append("errors: " + "; ".join(f"{n}x {msg}" for msg, n in report.errors.items()))
    lines.append("=" * 60)
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (no /v1)")
    parser.add_argument(
        "--grpc",
        default=None,
        metavar="TARGET",
        help="generate over gRPC (coe.v1.CoE/GenerateStream) at HOST:PORT; stats from --url",
    )
    parser.add_argument("--grpc-app", default="coe", help="Serve application name (gRPC metadata)")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="closed-loop clients (open loop: a cap)"
    )
    parser.add_argument("--rate", type=float, default=None, help="open loop: Poisson arrivals per second")
    parser.add_argument("--num-requests", type=int, default=200, help="measured requests")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured requests sent first")
    parser.add_argument("--workload", choices=WORKLOADS, default="zipf")
    parser.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent (zipf and phase)")
    parser.add_argument(
        "--experts",
        default=None,
        help="comma-separated expert ids in popularity order (default: GET /v1/models order)",
    )
    parser.add_argument(
        "--model", default=None, help="'coe': Zipf over prompt categories, routed by the server"
    )
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per request")
    parser.add_argument(
        "--goodput",
        nargs="*",
        default=[],
        metavar="METRIC:MS",
        help="SLOs for goodput, e.g. ttft:500 e2el:3000 (also tpot)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--records", type=Path, default=None, help="write per-request records (JSONL) here")
    args = parser.parse_args(argv)
    if args.rate is None and args.concurrency is None:
        args.concurrency = 8
    return args


def main(argv: Sequence[str] | None = None) -> LoadReport:
    args = _parse_args(argv)
    settings = LoadSettings(
        url=args.url.rstrip("/"),
        grpc=args.grpc,
        grpc_app=args.grpc_app,
        concurrency=args.concurrency,
        rate=args.rate,
        num_requests=args.num_requests,
        warmup=args.warmup,
        workload=args.workload,
        zipf_s=args.zipf_s,
        experts=[e for e in (args.experts or "").split(",") if e],
        model=args.model,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        timeout_s=args.timeout_s,
        goodput_slo_ms=parse_goodput(args.goodput),
    )
    report, records = asyncio.run(run_benchmark(settings))
    report.command = "python -m bench.load " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    print(format_report(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report.model_dump_json(indent=2) + "\n")
    if args.records:
        args.records.parent.mkdir(parents=True, exist_ok=True)
        args.records.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return report


if __name__ == "__main__":
    main()
