"""Chaos and soak: constant load on a multi-node CoE cluster while sockets, MemTier, DDR stores and
whole nodes are killed on a schedule. Nothing sent may be lost.

    python -m bench.chaos                                   # ~3 min: every fault kind, twice
    python -m bench.chaos --soak 3600 --faults memtier,ddr  # an hour of paging: RSS of every actor

The cluster is a `ray.cluster_utils.Cluster` (bench/rig.py, head-node mode): a head with the
ingress, MemTier, Serve's controller and its only proxy, and `topology.nodes` socket nodes that
faults may remove. `--clients` closed-loop clients send chat completions without pause over every
expert (more than HBM holds, so paging never stops); `--stream-fraction` of them stream.
With COE_API_KEY in the environment the cluster runs with auth on and the clients send the key.

Reported: requests sent and failed, by cause; end-to-end p50/p99 during faults (a fault's window
runs from its injection until full capacity) vs steady state; each fault's time to full capacity;
MemTier's budgets sampled every second (resident bytes never above a socket's HBM or a node's
DDR); leases and pinned bytes left at the end. `--soak` also samples the RSS of every actor
process of the cluster every `--rss-every-s` and fails when one grew by more than
`--rss-growth-mb` between the first and last third of its life. Exit status 1 on any lost
non-streaming request, budget breach, leftover pin, unrecovered fault or RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from bench.faults import KINDS, FaultRecord, Injector
from bench.rig import LocalServe
from bench.rss import RssGrowth, RssSample, growth, sample_actors
from cluster.config import ClusterConfig, load_config
from cluster.paths import REPO_ROOT
from deployments.app import build_app_from_config
from deployments.grpc_client import env_api_key

RESULTS = REPO_ROOT / "bench" / "results"


class ChaosSettings(BaseModel):
    config: str = "cluster/configs/tiny.yaml"
    nodes: int = Field(2, description="Socket nodes (the head holds none); a node fault needs two.")
    clients: int = 8
    duration_s: float = 150.0
    warmup_s: float = 20.0
    interval_s: float = 15.0
    faults: list[str] = Field(default_factory=lambda: list(KINDS))
    node_downtime_s: float = 5.0
    recovery_timeout_s: float = 90.0
    max_tokens: int = 16
    stream_fraction: float = 0.0
    soak_s: float | None = None
    rss_every_s: float = 10.0
    rss_warmup_s: float | None = Field(
        None, description="RSS before this is warm-up, not creep; None = max(warmup_s, 10% of the soak)."
    )
    rss_growth_mb: float = 64.0
    seed: int = 0


class Answer(BaseModel):
    start_s: float
    end_s: float
    expert: str
    stream: bool
    cause: str | None = None  # None: answered in full
    message: str | None = None
    retried: bool = False


class BudgetSample(BaseModel):
    t_s: float
    ok: bool  # MemTier answered
    sockets: int = 0
    leases: int = 0
    max_hbm_fill: float = 0.0  # used / budget, the fullest socket
    max_ddr_fill: float = 0.0
    over_budget: list[str] = Field(default_factory=list)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


# --------------------------------------------------------------------------- load


async def _one(
    client: httpx.AsyncClient, url: str, expert: str, stream: bool, max_tokens: int, t0: float
) -> Answer:
    body = {
        "model": expert,
        "messages": [{"role": "user", "content": f"Tell me about {expert}."}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    start = time.monotonic() - t0
    cause = message = None
    retried = False
    try:
        if not stream:
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            data = response.json()
            if response.status_code != 200:
                error = data.get("error") or {}
                cause, message = f"{response.status_code} {error.get('code')}", error.get("message")
            retried = bool((data.get("coe") or {}).get("retried"))
        else:
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    error = json.loads(await response.aread()).get("error") or {}
                    cause, message = f"{response.status_code} {error.get('code')}", error.get("message")
                done = False
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: ") and '"error"' in line:
                        error = json.loads(line[6:]).get("error") or {}
                        cause, message = f"stream error {error.get('code')}", error.get("message")
                if cause is None and not done:
                    cause = "stream cut"
    except (httpx.HTTPError, ValueError) as err:
        cause, message = type(err).__name__, str(err)
    end = time.monotonic() - t0
    return Answer(
        start_s=start, end_s=end, expert=expert, stream=stream, cause=cause, message=message, retried=retried
    )


async def _clients(
    settings: ChaosSettings,
    url: str,
    experts: list[str],
    headers: dict,
    t0: float,
    stop: threading.Event,
    answers: list[Answer],
) -> None:
    rng = random.Random(settings.seed)
    limits = httpx.Limits(max_connections=settings.clients + 4)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=180) as client:

        async def loop() -> None:
            while not stop.is_set():
                stream = rng.random() < settings.stream_fraction
                answers.append(await _one(client, url, rng.choice(experts), stream, settings.max_tokens, t0))

        await asyncio.gather(*(loop() for _ in range(settings.clients)))


# --------------------------------------------------------------------------- samplers


def _budget_sample(injector: Injector, t_s: float) -> BudgetSample:
    status = injector.memtier_status()
    if status is None:
        return BudgetSample(t_s=t_s, ok=False)
    sample = BudgetSample(t_s=t_s, ok=True)
    for node in status["nodes"]:
        sample.max_ddr_fill = max(sample.max_ddr_fill, node["used_bytes"] / node["ddr_bytes"])
        if node["used_bytes"] > node["ddr_bytes"]:
            sample.over_budget.append(f"ddr {node['node_id'][:8]} {node['used_bytes']}>{node['ddr_bytes']}")
        for s in node["sockets"]:
            sample.sockets += 1
            sample.leases += s["leases"]
            sample.max_hbm_fill = max(sample.max_hbm_fill, s["used_bytes"] / s["hbm_bytes"])
            if s["used_bytes"] > s["hbm_bytes"]:
                sample.over_budget.append(f"hbm {s['socket_id'][:8]} {s['used_bytes']}>{s['hbm_bytes']}")
    return sample


def _every(period_s: float, stop: threading.Event, action: Callable[[], None]) -> threading.Thread:
    """Run `action` every `period_s` on a thread of its own until `stop`."""

    def loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            action()
            stop.wait(max(0.0, period_s - (time.monotonic() - started)))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _schedule(settings: ChaosSettings, injector: Injector, t0: float, run_s: float, on_fault) -> None:
    """Fault i at warmup + i * interval, cycling through the kinds; each waits for the last recovery.

    On the main thread: adding a node back (`ray.cluster_utils`) installs signal handlers.
    """
    for i in range(10**6):
        at_s = settings.warmup_s + i * settings.interval_s
        if at_s > run_s - settings.interval_s / 2:
            return
        time.sleep(max(0.0, at_s - (time.monotonic() - t0)))
        kind = settings.faults[i % len(settings.faults)]
        on_fault(injector.inject(kind, time.monotonic() - t0, settings.recovery_timeout_s))


# --------------------------------------------------------------------------- the run


class ChaosReport(BaseModel):
    settings: ChaosSettings
    command: str
    auth: bool
    duration_s: float
    sent: int
    failed: int
    failed_non_streaming: int
    causes: dict[str, int]
    retried: int
    p50_steady_s: float | None
    p99_steady_s: float | None
    p50_faults_s: float | None
    p99_faults_s: float | None
    requests_steady: int
    requests_faults: int
    faults: list[FaultRecord]
    failures: list[Answer] = Field(default_factory=list, description="The first 50 failed requests.")
    budget_samples: int
    budget_samples_unanswered: int
    budget_breaches: list[str]
    max_hbm_fill: float
    max_ddr_fill: float
    leases_at_end: int | None
    pinned_bytes_at_end: int | None
    rss_samples: int = 0
    rss_growth: list[RssGrowth] = Field(default_factory=list)
    rss_grew: list[str] = Field(default_factory=list)
    passed: bool = False


def _chaos_config(settings: ChaosSettings) -> ClusterConfig:
    config = load_config(REPO_ROOT / settings.config)
    topology = config.topology.model_copy(update={"nodes": settings.nodes})
    return config.model_copy(update={"name": f"chaos{settings.seed}", "topology": topology})


def _pins_at_end(injector: Injector, settle_s: float = 15.0) -> tuple[int | None, int | None]:
    deadline = time.monotonic() + settle_s
    leases = pinned = None
    while time.monotonic() < deadline:
        status = injector.memtier_status()
        if status is not None:
            sockets = [s for n in status["nodes"] for s in n["sockets"]]
            leases, pinned = sum(s["leases"] for s in sockets), sum(s["pinned_bytes"] for s in sockets)
            if leases == 0 and pinned == 0:
                break
        time.sleep(0.5)
    return leases, pinned


def _run(settings: ChaosSettings, rig: LocalServe, headers: dict) -> ChaosReport:
    injector = Injector(rig, headers, node_downtime_s=settings.node_downtime_s, seed=settings.seed)
    experts = [e.id for e in rig.config.experts]
    run_s = settings.soak_s or settings.duration_s
    answers: list[Answer] = []
    faults: list[FaultRecord] = []
    samples: list[BudgetSample] = []
    rss: list[RssSample] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def load() -> None:
        asyncio.run(_clients(settings, rig.base_url, experts, headers, t0, stop, answers))

    def progress(fault: FaultRecord) -> None:
        faults.append(fault)
        failed = sum(1 for a in answers if a.cause)
        took = "not recovered" if fault.recovered_s is None else f"full in {fault.recovered_s:.1f} s"
        print(
            f"t={fault.at_s:6.0f}s {fault.kind:8s} {fault.target}: {took}; sent={len(answers)} "
            f"failed={failed}",
            flush=True,
        )

    threads = [threading.Thread(target=load, daemon=True)]
    threads[0].start()
    threads.append(_every(1.0, stop, lambda: samples.append(_budget_sample(injector, time.monotonic() - t0))))
    if settings.soak_s:
        sample_rss = lambda: rss.extend(sample_actors(rig.cluster, time.monotonic() - t0))  # noqa: E731
        threads.append(_every(settings.rss_every_s, stop, sample_rss))
    _schedule(settings, injector, t0, run_s, progress)
    time.sleep(max(0.0, run_s - (time.monotonic() - t0)))
    stop.set()
    for thread in threads:
        thread.join(timeout=300)
    duration_s = time.monotonic() - t0
    leases, pinned = _pins_at_end(injector)
    return _report(settings, answers, faults, samples, rss, duration_s, leases, pinned, bool(headers))


def _report(
    settings: ChaosSettings,
    answers: list[Answer],
    faults: list[FaultRecord],
    samples: list[BudgetSample],
    rss: list[RssSample],
    duration_s: float,
    leases: int | None,
    pinned: int | None,
    auth: bool,
) -> ChaosReport:
    windows = [f.window for f in faults]

    def in_fault(a: Answer) -> bool:
        return any(a.start_s < end and a.end_s > start for start, end in windows)

    measured = [a for a in answers if a.start_s >= settings.warmup_s / 2 and a.cause is None]
    steady = [a.end_s - a.start_s for a in measured if not in_fault(a)]
    during = [a.end_s - a.start_s for a in measured if in_fault(a)]
    failed = [a for a in answers if a.cause]
    breaches = [b for s in samples for b in s.over_budget]
    rss_growth: list[RssGrowth] = []
    if settings.soak_s:
        after_s = settings.rss_warmup_s
        after_s = max(settings.warmup_s, 0.1 * settings.soak_s) if after_s is None else after_s
        rss_growth = growth(rss, min_lived_s=(settings.soak_s - after_s) / 2, after_s=after_s)
    grew = [
        f"{g.title} pid {g.pid}: +{g.growth_mib:.1f} MiB"
        for g in rss_growth
        if g.growth_mib > settings.rss_growth_mb
    ]
    report = ChaosReport(
        settings=settings,
        command="python -m bench.chaos " + shlex.join(sys.argv[1:]),
        auth=auth,
        duration_s=duration_s,
        sent=len(answers),
        failed=len(failed),
        failed_non_streaming=sum(1 for a in failed if not a.stream),
        causes=dict(Counter(a.cause for a in failed).most_common()),
        retried=sum(1 for a in answers if a.retried),
        p50_steady_s=_percentile(steady, 50),
        p99_steady_s=_percentile(steady, 99),
        p50_faults_s=_percentile(during, 50),
        p99_faults_s=_percentile(during, 99),
        requests_steady=len(steady),
        requests_faults=len(during),
        faults=faults,
        failures=failed[:50],
        budget_samples=len(samples),
        budget_samples_unanswered=sum(1 for s in samples if not s.ok),
        budget_breaches=breaches[:20],
        max_hbm_fill=max((s.max_hbm_fill for s in samples), default=0.0),
        max_ddr_fill=max((s.max_ddr_fill for s in samples), default=0.0),
        leases_at_end=leases,
        pinned_bytes_at_end=pinned,
        rss_samples=len(rss),
        rss_growth=rss_growth,
        rss_grew=grew,
    )
    report.passed = (
        report.failed_non_streaming == 0
        and not breaches
        and leases == 0
        and pinned == 0
        and all(f.recovered_s is not None for f in faults)
        and not grew
    )
    return report


def format_report(report: ChaosReport) -> str:
    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    ratio = (
        (report.p99_faults_s / report.p99_steady_s) if report.p99_faults_s and report.p99_steady_s else None
    )
    lines = [
        f"auth {'on' if report.auth else 'off'}; {report.settings.clients} clients for "
        f"{report.duration_s:.0f} s; faults: {', '.join(report.settings.faults)}",
        f"sent {report.sent}, failed {report.failed} (non-streaming {report.failed_non_streaming}), "
        f"retried on another socket {report.retried}",
        f"failures by cause: {report.causes or 'none'}",
        *(
            f"  at {a.start_s:.0f}-{a.end_s:.0f} s {a.expert}: {a.cause}: {(a.message or '')[:150]}"
            for a in report.failures[:10]
        ),
        f"e2e p50/p99 steady {s(report.p50_steady_s)} / {s(report.p99_steady_s)} "
        f"({report.requests_steady} req); "
        f"during faults {s(report.p50_faults_s)} / {s(report.p99_faults_s)} ({report.requests_faults} req)"
        + (f"; p99 ratio {ratio:.2f}x" if ratio else ""),
        "",
        "| # | at | fault | time to full capacity |",
        "|---|---|---|---|",
        *(
            f"| {i} | {f.at_s:.0f} s | {f.kind}: {f.target} | {s(f.recovered_s)} |"
            for i, f in enumerate(report.faults, 1)
        ),
        "",
        f"budget samples (1/s): {report.budget_samples}, "
        f"MemTier unanswered {report.budget_samples_unanswered}, "
        f"over budget {len(report.budget_breaches)}; fullest socket HBM {report.max_hbm_fill:.0%}, "
        f"fullest DDR {report.max_ddr_fill:.0%}",
        f"at the end: leases {report.leases_at_end}, pinned bytes {report.pinned_bytes_at_end}",
    ]
    if report.settings.soak_s:
        lines.append(f"RSS samples {report.rss_samples}; largest growth per long-lived actor:")
        lines += [
            f"  {g.title} pid {g.pid}: {g.first_mib:.0f} -> {g.last_mib:.0f} MiB over {g.lived_s:.0f} s"
            for g in report.rss_growth[:12]
        ]
        lines.append(f"grew over {report.settings.rss_growth_mb:g} MiB: {report.rss_grew or 'none'}")
    lines.append(f"PASSED: {report.passed}")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> tuple[ChaosSettings, str | None]:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    defaults = ChaosSettings()
    parser.add_argument("--config", default=defaults.config, help="cluster config (relative to the repo)")
    parser.add_argument("--nodes", type=int, default=defaults.nodes, help="socket nodes (the head has none)")
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds of load")
    parser.add_argument(
        "--warmup", type=float, default=defaults.warmup_s, help="seconds before the 1st fault"
    )
    parser.add_argument("--interval", type=float, default=defaults.interval_s, help="seconds between faults")
    parser.add_argument(
        "--faults", default=",".join(defaults.faults), help=f"comma list of {', '.join(KINDS)}"
    )
    parser.add_argument("--node-downtime", type=float, default=defaults.node_downtime_s)
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--stream-fraction", type=float, default=defaults.stream_fraction)
    parser.add_argument("--soak", type=float, help="soak for this many seconds (faults keep coming)")
    parser.add_argument("--rss-every", type=float, default=defaults.rss_every_s)
    parser.add_argument(
        "--rss-warmup", type=float, help="seconds of RSS warm-up to ignore (see the settings)"
    )
    parser.add_argument("--rss-growth-mb", type=float, default=defaults.rss_growth_mb)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", help="write <out>.json and <out>.md (e.g. bench/results/chaos)")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if unknown := set(faults) - set(KINDS):
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    if "node" in faults and args.nodes < 2:
        parser.error("a node fault needs --nodes 2 or more: the survivors keep serving")
    settings = ChaosSettings(
        config=args.config,
        nodes=args.nodes,
        clients=args.clients,
        duration_s=args.duration,
        warmup_s=args.warmup,
        interval_s=args.interval,
        faults=faults,
        node_downtime_s=args.node_downtime,
        max_tokens=args.max_tokens,
        stream_fraction=args.stream_fraction,
        soak_s=args.soak,
        rss_every_s=args.rss_every,
        rss_warmup_s=args.rss_warmup,
        rss_growth_mb=args.rss_growth_mb,
        seed=args.seed,
    )
    return settings, args.out


def main(argv: list[str] | None = None) -> int:
    settings, out = _parse(argv)
    key = env_api_key()
    headers = {"authorization": f"Bearer {key}"} if key else {}
    config = _chaos_config(settings)
    print(
        f"starting a head node and {settings.nodes} socket nodes "
        f"({config.topology.total_sockets} sockets) ..."
    )
    with LocalServe(config, LocalServe.head_build(build_app_from_config), head_node=True) as rig:
        report = _run(settings, rig, headers)
    text = format_report(report)
    print(text)
    if out:
        Path(f"{out}.json").write_text(report.model_dump_json(indent=2))
        Path(f"{out}.md").write_text(f"```\n{report.command}\n```\n\n{text}\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
