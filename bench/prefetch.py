"""Prefetch on vs off on the same trace: how many requests stall on a page-in? (issue 17, point 2)

A virtual-time simulation around the real `MemTierCore` (placement, policy, directory and the
`Prefetcher` of memtier/prefetch.py): requests arrive (Poisson) with experts drawn from a trace,
each holds its socket for `run_s`, and a miss stalls its request for the page-in:

* HBM hit: no stall (or what is left of a page-in of that expert still under way there);
* DDR hit on the socket's node: `ddr_s` (DDR -> HBM);
* STORE miss: the node's disk reads it (`store_s`, one read at a time per node, queued), then
  `ddr_s`. A demand read cancels the node's prefetch read of another expert; one of the same
  expert is joined.

With prefetch on, after every event the prefetcher's plans run: a STORE -> DDR read into free
DDR room on a node whose disk is idle, and a DDR -> HBM page-in onto an idle socket (the socket
is busy for `ddr_s`). The same trace and arrival times are replayed with prefetch off; the
numbers are deterministic for a seed (no wall clock involved).

Run ``python -m bench.prefetch --help``; results go to ``bench/results/prefetch.{json,md}``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from bench.settings_cli import parse_settings
from bench.traces import bursty_forecast, bursty_trace, session_forecast, session_trace
from bench.workloads import Forecast, phase_shift_forecast, phase_shift_trace, zipf_forecast, zipf_trace
from cluster.config import MemtierConfig
from memtier.models import ActivationReport, SocketInfo
from memtier.pager import MemTierCore
from memtier.placement import NoCapacityNow
from memtier.prefetch import PrefetchStats

__all__ = ["PrefetchReport", "SimSettings", "main", "simulate"]

GOAL_STALL_REDUCTION = 0.30  # issue 17: misses that stall a request down by >= 30%
EXPERT_BYTES = 10**9


class SimSettings(BaseModel):
    """Defaults mirror cluster/configs/demo.yaml: one node of 8 sockets holding one expert each (half
    the 16-expert catalog), DDR holding every expert."""

    nodes: int = 1
    sockets_per_node: int = 8
    hbm_experts: int = Field(1, description="Experts one socket's HBM holds.")
    ddr_experts: int = Field(16, description="Experts one node's DDR holds.")
    experts: int = 16
    requests: int = 20_000
    arrival_per_s: float = Field(3.0, description="Poisson arrivals; 8 sockets x 1 s requests: ~40% busy.")
    run_s: float = 1.0
    ddr_s: float = Field(0.1, description="DDR -> HBM page-in (about 1 GB over PCIe with staging).")
    store_s: float = Field(1.0, description="STORE -> DDR read of one expert (about 1 GB at 1 GB/s).")
    zipf_s: float = 1.0
    seed: int = 0


class SimResult(BaseModel):
    workload: str
    prefetch: bool
    requests: int
    stalled: int = Field(
        description="Requests that waited for a page-in (HBM miss, or a page-in still under way)."
    )
    store_stalls: int = Field(description="Requests that waited for a STORE read.")
    stall_s_total: float
    latency_p50_s: float
    latency_p99_s: float
    hbm_hit_rate: float
    prefetch_stats: PrefetchStats
    prefetched_bytes: int
    wasted_bytes: int


class Comparison(BaseModel):
    workload: str
    off: SimResult
    on: SimResult
    stalled_reduction: float = Field(description="1 - stalled(on) / stalled(off).")
    stall_time_reduction: float
    met: bool
    floor_stalled: float = Field(
        description="Expected stalls of a cache that always holds the k likeliest experts of the next "
        "request (k = HBM slots in all), paged in for free, by the law the trace generator drew it from "
        "(`bench.workloads.Forecast.miss_floor`): no online policy or prefetcher can expect fewer."
    )
    max_reduction: float = Field(
        description="1 - floor_stalled / stalled(off): about the most any prefetcher could cut here."
    )


class PrefetchReport(BaseModel):
    command: str
    settings: SimSettings
    comparisons: list[Comparison]


# --------------------------------------------------------------------------- the simulation
def _traces(s: SimSettings) -> dict[str, tuple[list[str], Forecast]]:
    """Each workload's trace and the law of each of its requests (for the floor)."""
    experts = [f"e{i:02d}" for i in range(s.experts)]
    n, z, seed = s.requests, s.zipf_s, s.seed
    return {
        f"bursty s={z}": (bursty_trace(experts, n, z, seed), bursty_forecast(experts, n, z, seed)),
        f"phase shift s={z}": (phase_shift_trace(experts, n, z, seed), phase_shift_forecast(experts, n, z)),
        f"sessions s={z}": (session_trace(experts, n, z, seed), session_forecast(experts, n, z, seed)),
        f"zipf s={z}": (zipf_trace(experts, n, z, seed), zipf_forecast(experts, n, z)),
    }


def _core(s: SimSettings, prefetch: bool) -> MemTierCore:
    experts = {f"e{i:02d}": EXPERT_BYTES for i in range(s.experts)}
    core = MemTierCore(
        "prefetch-sim",
        experts,
        ddr_bytes_per_node=s.ddr_experts * EXPERT_BYTES,
        saturation=8,
        policy=MemtierConfig(prefetch=prefetch),
    )
    for n in range(s.nodes):
        for k in range(s.sockets_per_node):
            core.heartbeat(
                SocketInfo(socket_id=f"n{n}-s{k}", node_id=f"n{n}", hbm_bytes=s.hbm_experts * EXPERT_BYTES),
                0.0,
            )
    return core


class _Sim:
    """Event loop: arrivals, completions, disk reads and prefetch page-ins, in virtual seconds."""

    def __init__(self, s: SimSettings, trace: list[str], prefetch: bool) -> None:
        self.s = s
        self.trace = trace
        self.prefetch = prefetch
        self.core = _core(s, prefetch)
        self.events: list[tuple[float, int, str, tuple]] = []
        self.seq = itertools.count()
        self.ready_at: dict[tuple[str, str], float] = {}  # (socket, expert) -> when its page-in ends
        self.disk_free_at: dict[str, float] = {}
        self.ddr_read: dict[str, tuple[str, float, int]] = {}  # node -> (expert, done at, event id) prefetch
        self.cancelled_events: set[int] = set()
        self.waiting: deque[tuple[float, str]] = deque()
        self.latencies: list[float] = []
        self.stalled = self.store_stalls = 0
        self.stall_s = 0.0
        self.prefetched_bytes = 0

    def push(self, at: float, kind: str, payload: tuple) -> int:
        seq = next(self.seq)
        heapq.heappush(self.events, (at, seq, kind, payload))
        return seq

    def run(self) -> None:
        rng = np.random.default_rng(self.s.seed + 1)
        arrivals = np.cumsum(rng.exponential(1.0 / self.s.arrival_per_s, len(self.trace)))
        for at, expert in zip(arrivals, self.trace, strict=True):
            self.push(float(at), "arrive", (expert, float(at)))
        while self.events:
            now, seq, kind, payload = heapq.heappop(self.events)
            if seq in self.cancelled_events:
                continue
            getattr(self, f"_on_{kind}")(now, *payload)
            if self.prefetch:
                self._prefetch(now)

    # -- demand
    def _on_arrive(self, now: float, expert: str, arrived: float) -> None:
        if not self._start(now, expert, arrived):
            self.waiting.append((arrived, expert))

    def _start(self, now: float, expert: str, arrived: float) -> bool:
        try:
            lease = self.core.try_place(expert, now)
        except NoCapacityNow:
            return False
        key = (lease.socket_id, expert)
        if lease.tier == "hbm":
            ready = max(now, self.ready_at.get(key, now))
        elif lease.tier == "ddr":
            ready = self._ddr_ready(now, lease.node_id, expert) + self.s.ddr_s
        else:
            ready = self._store_read(now, lease.node_id, expert) + self.s.ddr_s
            self.store_stalls += 1
        self.ready_at[key] = max(self.ready_at.get(key, 0.0), ready)
        stall = ready - now
        if stall > 0:
            self.stalled += 1
            self.stall_s += stall
        done = ready + self.s.run_s
        self.latencies.append(done - arrived)
        self.push(done, "finish", (lease.lease_id, lease.tier))
        return True

    def _ddr_ready(self, now: float, node: str, expert: str) -> float:
        inflight = self.ddr_read.get(node)
        if inflight is not None and inflight[0] == expert:
            return inflight[1]  # a prefetch read of it is under way: join it
        return now

    def _store_read(self, now: float, node: str, expert: str) -> float:
        inflight = self.ddr_read.pop(node, None)
        if inflight is not None:
            if inflight[0] == expert:  # join the prefetch read of the same expert
                self.ddr_read[node] = inflight
                return inflight[1]
            # the demand needs the disk: the prefetch read of another expert is cancelled
            # (MemTierCore.try_place told the prefetcher already: prefetcher.demand_read)
            self.cancelled_events.add(inflight[2])
            self.disk_free_at[node] = now
        start = max(now, self.disk_free_at.get(node, 0.0))
        self.disk_free_at[node] = start + self.s.store_s
        return start + self.s.store_s

    def _on_finish(self, now: float, lease_id: str, tier: str) -> None:
        self.core.release(lease_id, ActivationReport(tier=tier, store_read=tier == "store"))
        for _ in range(len(self.waiting)):
            arrived, expert = self.waiting.popleft()
            if not self._start(now, expert, arrived):
                self.waiting.append((arrived, expert))

    # -- prefetch
    def _prefetch(self, now: float) -> None:
        core = self.core
        for lease in core.cancel_lost_prefetches():
            self.ready_at.pop((lease.socket_id, lease.expert), None)
        for plan in core.prefetcher.plan():
            if plan.kind == "ddr":
                if self.disk_free_at.get(plan.node_id, 0.0) > now:
                    continue  # the disk is busy with demand reads: prefetch only when it is idle
                done = now + self.s.store_s
                core.prefetcher.ddr_started(plan)
                event = self.push(done, "ddr_done", (plan.node_id, plan.expert))
                self.ddr_read[plan.node_id] = (plan.expert, done, event)
                self.disk_free_at[plan.node_id] = done
                self.prefetched_bytes += plan.size_bytes
            else:
                lease = core.grant_prefetch(plan, now)
                ready = self._ddr_ready(now, plan.node_id, plan.expert) + self.s.ddr_s
                self.ready_at[(plan.socket_id, plan.expert)] = ready
                self.push(ready, "hbm_done", (lease.lease_id,))
                self.prefetched_bytes += plan.size_bytes

    def _on_ddr_done(self, now: float, node: str, expert: str) -> None:
        self.ddr_read.pop(node, None)
        self.core.prefetcher.ddr_done(node, expert)
        residents = self.core.directory.nodes[node].ddr.keys_lru_order()
        self.core.directory.sync_ddr(node, [*residents, expert])  # what the DDR store reports after the read

    def _on_hbm_done(self, now: float, lease_id: str) -> None:
        self.core.release(lease_id, None)  # unknown ids (cancelled meanwhile) are a no-op

    def result(self, workload: str) -> SimResult:
        stats = self.core.prefetcher.stats
        latencies = np.array(self.latencies)
        return SimResult(
            workload=workload,
            prefetch=self.prefetch,
            requests=len(self.latencies),
            stalled=self.stalled,
            store_stalls=self.store_stalls,
            stall_s_total=self.stall_s,
            latency_p50_s=float(np.percentile(latencies, 50)),
            latency_p99_s=float(np.percentile(latencies, 99)),
            hbm_hit_rate=1.0 - self.stalled / max(1, len(self.latencies)),
            prefetch_stats=stats.model_copy(),
            prefetched_bytes=self.prefetched_bytes,
            wasted_bytes=stats.wasted_bytes,
        )


def simulate(s: SimSettings, workload: str, trace: list[str], prefetch: bool) -> SimResult:
    sim = _Sim(s, trace, prefetch)
    sim.run()
    if sim.waiting:
        raise RuntimeError(f"{len(sim.waiting)} requests were never placed")
    return sim.result(workload)


def compare(s: SimSettings) -> list[Comparison]:
    out = []
    slots = s.nodes * s.sockets_per_node * s.hbm_experts
    for workload, (trace, forecast) in _traces(s).items():
        off, on = simulate(s, workload, trace, False), simulate(s, workload, trace, True)
        reduction = 1.0 - on.stalled / off.stalled if off.stalled else 0.0
        time_reduction = 1.0 - on.stall_s_total / off.stall_s_total if off.stall_s_total else 0.0
        floor = forecast.miss_floor(slots)
        out.append(
            Comparison(
                workload=workload,
                off=off,
                on=on,
                stalled_reduction=reduction,
                stall_time_reduction=time_reduction,
                met=reduction >= GOAL_STALL_REDUCTION,
                floor_stalled=floor,
                max_reduction=max(0.0, 1.0 - floor / off.stalled) if off.stalled else 0.0,
            )
        )
    return out


# --------------------------------------------------------------------------- CLI
def markdown(report: PrefetchReport) -> str:
    s = report.settings
    lines = [
        "# Prefetch on vs off",
        "",
        "```",
        report.command,
        "```",
        "",
        f"Virtual time around the real MemTierCore: {s.nodes} nodes x {s.sockets_per_node} sockets, HBM "
        f"{s.hbm_experts} experts per socket, DDR {s.ddr_experts} per node, {s.experts} experts of 1 GB, "
        f"{s.requests:,} requests (Poisson, {s.arrival_per_s:g}/s, {s.run_s:g} s each); a DDR->HBM page-in "
        f"takes {s.ddr_s:g} s, a STORE read {s.store_s:g} s (one per node at a time). The same trace and "
        "arrivals with prefetch off and on; deterministic (no wall clock), so the machine does not matter.",
        "",
        "| workload | stalled off | stalled on | reduction | stall s off / on | STORE stalls off / on | "
        "p99 s off / on | prefetched GB | wasted GB | hits HBM / DDR | cancelled | floor | "
        "most any prefetcher could cut |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report.comparisons:
        st = c.on.prefetch_stats
        lines.append(
            f"| {c.workload} | {c.off.stalled:,} | {c.on.stalled:,} | **{c.stalled_reduction:.0%}** | "
            f"{c.off.stall_s_total:,.0f} / {c.on.stall_s_total:,.0f} | "
            f"{c.off.store_stalls:,} / {c.on.store_stalls:,} | "
            f"{c.off.latency_p99_s:.2f} / {c.on.latency_p99_s:.2f} | {c.on.prefetched_bytes / 1e9:,.0f} | "
            f"{c.on.wasted_bytes / 1e9:,.0f} | {st.hbm_hits:,} / {st.ddr_hits:,} | {st.cancelled:,} | "
            f"{c.floor_stalled:,.0f} | {c.max_reduction:.0%} |"
        )
    met = sum(c.met for c in report.comparisons)
    lines += [
        "",
        f"Goal: requests stalled by a miss down by >= {GOAL_STALL_REDUCTION:.0%} with prefetch on: met on "
        f"**{met} of {len(report.comparisons)}** workloads. Wasted = prefetched, then evicted or cancelled "
        "before any request used it.",
    ]
    slots = s.nodes * s.sockets_per_node * s.hbm_experts
    lines += [
        "",
        f"Floor: the stalls to expect from a cache that always holds the {slots} likeliest experts of the"
        " next request (HBM slots in all), paged in for free and at once, by the law the trace's "
        "generator drew that request from: its popularity ranking (bursty: the hidden state, even the "
        "moment it switches), its phase, or for sessions the conversation slot of every past request "
        "(but not when a conversation ends, which no server knows). Such a request hits with probability"
        " at most the mass of what is held, whatever was prefetched (for i.i.d. requests the A0 argument"
        " of Aho, Denning and Ullman, JACM 1971), so no prefetcher can expect fewer stalls; cold misses "
        "are not counted, which lowers the floor. The last column, 1 - floor / stalled off, is then "
        "about the most any prefetcher could cut on that trace, against the goal of "
        f"{GOAL_STALL_REDUCTION:.0%}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> PrefetchReport:
    prog, description = "python -m bench.prefetch", __doc__.split("\n")[0]
    settings, out, command = parse_settings(SimSettings, prog, description, argv, Path("bench/results"))
    report = PrefetchReport(command=command, settings=settings, comparisons=compare(settings))
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefetch.json").write_text(report.model_dump_json(indent=2) + "\n")
    (out / "prefetch.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
