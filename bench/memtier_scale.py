"""How many placements per second can one MemTier authority grant? (issue 17, point 5)

Every request calls MemTier twice (``place``, then ``release``), so the authority bounds the
cluster's request rate: a 64-node cluster of 5-second requests at batch 8 needs ~800 pairs/s.
This bench measures the ceiling with the real code:

* ``core``: `MemTierCore` alone (no Ray): placement and bookkeeping cost per pair.
* ``actor``: the real `MemTier` actor in a local Ray, C concurrent callers (coroutines in this
  process, as requests in an ingress replica), each looping place -> release with the socket's
  report, while every simulated socket heartbeats once a second (the load a live cluster adds).
  ``single`` calls the actor once per place and once per release (what the ingress and the
  sockets did before); ``batched`` goes through `memtier.client.MemTierClient`, which coalesces
  whatever callers of one process have pending into one actor call; ``held`` is that client as
  the ingress runs it, keeping each finished lease for ``--hold-s`` to grant the next request for
  its expert locally (lease reuse: such a pair waits for no actor call; the actor hears of it in
  the client's next batch). The sockets then skip a heartbeat only when the client vouched for
  them and their last full report is under FULL_REPORT_BEATS periods old, as SocketAgent does.
  ``relayed`` is ``held`` with each node's sockets heartbeating through a real `NodeBeats` relay
  (memtier/node_beats.py, run by each node's DDR store): one actor call per node and period.
* ``sim``: a 64-node x 8-socket cluster's placement with the real `MemTierCore`, in virtual time:
  requests arrive at a given rate, hold their socket for a given time, and the hit rate is
  compared with LRU and Belady's OPT on the same trace over the summed HBM.

Sockets hold 2 experts each; the catalog has ``--experts-per-socket`` experts per socket (4: HBM
holds half of it, as in the demo), requested with Zipf(s) popularity. Run
``python -m bench.memtier_scale --help``; results go to ``bench/results/memtier_scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from bench.workloads import zipf_trace
from cluster.config import MemtierConfig
from memtier.client import FULL_REPORT_BEATS
from memtier.models import ActivationReport, Lease, SocketInfo
from memtier.pager import MemTierCore
from memtier.placement import NoCapacityNow

__all__ = ["ScaleReport", "main", "measure_actor", "measure_core", "simulate_cluster"]

EXPERT_BYTES = 100 * 10**6
SLOTS_PER_SOCKET = 2
SOCKETS_PER_NODE = 8
SATURATION = 8  # one full batch, as ensure_memtier configures it
GOAL_PAIRS_PER_S = 5000  # issue 17: >= 5,000 place+release pairs/s, 512 sockets, 16 callers
GOAL_SOCKETS = 512
GOAL_CALLERS = 16
RETRIES_PER_RELEASE = 4  # simulation: waiters that retry after one release
INGRESS_HOLD_S = MemtierConfig().lease_hold_s  # held modes keep leases as long as the ingress does


class Rate(BaseModel):
    mode: str = Field(description="core | actor-single | actor-batched | actor-held | actor-relayed")
    sockets: int
    callers: int
    pairs: int
    seconds: float
    pairs_per_s: float
    hbm_hit_rate: float
    authority_cpu_s: float = Field(
        0.0,
        description="CPU seconds the MemTier actor used during the run (actor modes; heartbeats included).",
    )
    pairs_per_authority_cpu_s: float = Field(
        0.0,
        description="pairs / authority_cpu_s: the authority's rate with a core to itself, which a box shared "
        "with other jobs cannot show in wall time.",
    )
    reused_share: float = Field(
        0.0, description="actor-held: the share of placements granted from a kept lease, with no actor call."
    )
    leases_left: int = Field(0, description="Actor modes: leases MemTier still held after the run (leaks).")
    callers_cpu_share: float = Field(
        0.0,
        description="Actor modes: CPU seconds of the callers' process (clients, simulated sockets) per wall "
        "second; near 1.0 the callers, not the authority, bound the wall rate on this box.",
    )
    client_calls_per_s: float = Field(
        0.0, description="Actor modes: place/release/batch calls the callers made per second of the run."
    )
    heartbeat_calls_per_s: float = Field(
        0.0, description="Actor modes: heartbeat calls the authority received per second of the run."
    )


class SimResult(BaseModel):
    sockets: int
    experts: int
    requests: int
    arrival_per_s: float
    hold_s: float
    hbm_hit_rate: float
    lru_hit_rate: float = Field(description="One LRU cache of the summed HBM, same trace.")
    opt_hit_rate: float = Field(
        description="Belady's OPT of the summed HBM, same trace (equal sizes: a bound)."
    )
    waited: int = Field(0, description="Requests that found no capacity and waited for a release.")
    mean_wait_s: float = Field(0.0, description="Their mean wait, in virtual seconds.")
    wall_s: float
    placements_per_s: float = Field(description="place + release pairs per wall second of the simulation.")
    placements_per_cpu_s: float = Field(0.0, description="The same per CPU second of this process.")


class ScaleReport(BaseModel):
    command: str
    cpu_count: int
    load_average: list[float]
    experts_per_socket: int
    zipf_s: float
    rates: list[Rate]
    sim: SimResult | None = None


# --------------------------------------------------------------------------- fixtures
def catalog(sockets: int, experts_per_socket: int) -> dict[str, int]:
    return {f"e{i:05d}": EXPERT_BYTES for i in range(sockets * experts_per_socket)}


def socket_infos(sockets: int) -> list[SocketInfo]:
    return [
        SocketInfo(
            socket_id=f"n{i // SOCKETS_PER_NODE:02d}-s{i % SOCKETS_PER_NODE}",
            node_id=f"n{i // SOCKETS_PER_NODE:02d}",
            hbm_bytes=SLOTS_PER_SOCKET * EXPERT_BYTES,
        )
        for i in range(sockets)
    ]


def make_core(sockets: int, experts_per_socket: int) -> MemTierCore:
    experts = catalog(sockets, experts_per_socket)
    core = MemTierCore(
        "scale", experts, ddr_bytes_per_node=len(experts) * EXPERT_BYTES, saturation=SATURATION
    )
    for info in socket_infos(sockets):
        core.heartbeat(info, 0.0)
    return core


def trace_for(sockets: int, experts_per_socket: int, n: int, s: float, seed: int = 0) -> list[str]:
    return zipf_trace(sorted(catalog(sockets, experts_per_socket)), n, s, seed)


def report_for(lease: Lease) -> ActivationReport:
    """What the socket would say (memtier/socket_residency.py): a hit moves nothing; a page-in moves
    the expert's bytes from where placement said."""
    moved = 0 if lease.tier == "hbm" else lease.size_bytes
    return ActivationReport(tier=lease.tier, store_read=lease.tier == "store", bytes_moved=moved)


def info_of(core: MemTierCore, socket_id: str) -> SocketInfo:
    """The socket's own report after a release: what the directory believes it holds."""
    entry = core.directory.sockets[socket_id]
    return SocketInfo(
        socket_id=socket_id,
        node_id=entry.node_id,
        hbm_bytes=entry.hbm.capacity_bytes,
        residents=entry.hbm.keys_lru_order(),
    )


# --------------------------------------------------------------------------- core
def measure_core(sockets: int, callers: int, pairs: int, experts_per_socket: int, s: float) -> Rate:
    """`callers` leases in flight: each step places one request and releases the oldest."""
    core = make_core(sockets, experts_per_socket)
    trace = trace_for(sockets, experts_per_socket, pairs, s)
    in_flight: deque[Lease] = deque()
    cpu_started = time.process_time()
    started = time.perf_counter()
    for expert in trace:
        in_flight.append(core.try_place(expert, 0.0))
        if len(in_flight) >= callers:
            lease = in_flight.popleft()
            core.release(lease.lease_id, report_for(lease), info_of(core, lease.socket_id))
    while in_flight:
        lease = in_flight.popleft()
        core.release(lease.lease_id, report_for(lease), info_of(core, lease.socket_id))
    seconds = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    stats = core.snapshot_stats()
    return Rate(
        mode="core",
        sockets=sockets,
        callers=callers,
        pairs=pairs,
        seconds=seconds,
        pairs_per_s=pairs / seconds,
        hbm_hit_rate=stats.hbm_hit_rate,
        authority_cpu_s=cpu_s,
        pairs_per_authority_cpu_s=pairs / cpu_s if cpu_s > 0 else 0.0,
    )


# --------------------------------------------------------------------------- actor
def _due_beat(sockets: SimSockets, socket_id: str, now: float, period_s: float) -> SocketInfo | None:
    """What `socket_id` heartbeats now, or None when SocketAgent would skip this beat: it released a
    lease within the period (the release carried its report), or a holder vouched for it and its
    last full report is under FULL_REPORT_BEATS periods old."""
    if now - sockets.reported_s.get(socket_id, float("-inf")) < period_s:
        return None
    vouched = now - sockets.served_s.get(socket_id, float("-inf")) < period_s
    if vouched and now - sockets.full_s.get(socket_id, float("-inf")) < FULL_REPORT_BEATS * period_s:
        return None
    sockets.full_s[socket_id] = now
    return sockets.infos[socket_id].model_copy(update={"residents": list(sockets.residents[socket_id])})


class BeatTally:
    """Heartbeat calls the authority received so far (read before and after the measured run)."""

    def __init__(self) -> None:
        self.direct = 0
        self.relays: list = []  # NodeBeats relays, which count their own calls

    @property
    def calls(self) -> int:
        return self.direct + sum(relay.stats.calls for relay in self.relays)


async def _heartbeats(
    memtier, sockets: SimSockets, stop: asyncio.Event, tally: BeatTally, period_s: float = 1.0
) -> None:
    """Every socket heartbeats what it holds once per period, spread over the period (the load a live
    cluster adds), unless SocketAgent would skip the beat (`_due_beat`); each call is awaited before
    the run ends, so none is left queued."""
    ids = list(sockets.infos)
    # Ticks of 10 ms, each beating its share of the sockets: spread over the period as one beat per
    # socket would be, without waking this process (the callers') 512 times a second.
    ticks = max(1, min(len(ids), round(period_s / 0.01)))
    groups = [ids[k::ticks] for k in range(ticks)]
    calls = []
    while period_s > 0 and not stop.is_set():
        for group in groups:
            if stop.is_set():
                break
            await asyncio.sleep(period_s / ticks)
            now = time.monotonic()
            for socket_id in group:
                info = _due_beat(sockets, socket_id, now, period_s)
                if info is not None:
                    calls.append(memtier.heartbeat.remote(info))
                    tally.direct += 1
    await asyncio.gather(*calls)


async def _relayed_heartbeats(
    memtier, sockets: SimSockets, stop: asyncio.Event, tally: BeatTally, period_s: float = 1.0
) -> None:
    """As `_heartbeats`, but each simulated node's sockets beat together through a real `NodeBeats`
    relay (what the node's DDR store does, memtier/node_beats.py): one `MemTier.polls` call per node
    and period. Nodes beat at phases spread over the period, as machines' clocks are."""
    from memtier.node_beats import NodeBeats

    by_node: dict[str, list[str]] = {}
    for socket_id, info in sockets.infos.items():
        by_node.setdefault(info.node_id, []).append(socket_id)
    relays = {node_id: NodeBeats(lambda: memtier) for node_id in by_node}
    tally.relays += relays.values()

    async def node(node_id: str, phase_s: float) -> None:
        beats = []
        await asyncio.sleep(phase_s)
        while not stop.is_set():
            now = time.monotonic()
            due = [_due_beat(sockets, socket_id, now, period_s) for socket_id in by_node[node_id]]
            beats += [asyncio.ensure_future(relays[node_id].beat(info)) for info in due if info is not None]
            await asyncio.sleep(period_s)
        await asyncio.gather(*beats)

    if period_s > 0:
        gap_s = period_s / len(by_node)
        await asyncio.gather(*(node(node_id, i * gap_s) for i, node_id in enumerate(sorted(by_node))))


class SimSockets:
    """What each simulated socket holds, as a real one would after doing what its leases said:
    evict the named victims, keep the leased expert (most recently used last). `releases` False:
    the sockets do not release (a holder does), so no release stands in for their heartbeat."""

    def __init__(self, infos: list[SocketInfo], releases: bool = True) -> None:
        self.releases = releases
        self.infos = {info.socket_id: info for info in infos}
        self.residents: dict[str, list[str]] = {info.socket_id: [] for info in infos}
        self.reported_s: dict[str, float] = {}  # last release (which carries the report), as SocketAgent
        self.served_s: dict[str, float] = {}  # last request that ended under a holder's lease
        self.full_s: dict[str, float] = {}  # last heartbeat sent

    def run(self, lease: Lease) -> SocketInfo | None:
        """Do what the lease says; the report a releasing socket sends with its release (None when a
        holder releases: the socket sends nothing then)."""
        held = [e for e in self.residents[lease.socket_id] if e not in lease.evict and e != lease.expert]
        held.append(lease.expert)
        self.residents[lease.socket_id] = held
        if not self.releases:
            self.served_s[lease.socket_id] = time.monotonic()
            return None
        self.reported_s[lease.socket_id] = time.monotonic()
        return self.infos[lease.socket_id].model_copy(update={"residents": list(held)})


async def _drive(client, trace: list[str], callers: int, sockets: SimSockets) -> int:
    """`callers` coroutines share the trace; each places, then releases with the socket's report."""
    position = 0

    async def caller() -> int:
        nonlocal position
        done = 0
        while position < len(trace):
            expert = trace[position]
            position += 1
            lease = await client.place(expert)
            await client.release(lease.lease_id, report_for(lease), sockets.run(lease))
            done += 1
        return done

    return sum(await asyncio.gather(*(caller() for _ in range(callers))))


class _SingleCalls:
    """The pre-batching API: one actor call per place and per release."""

    def __init__(self, memtier) -> None:
        self.memtier = memtier
        self.calls = 0  # as MemTierClient counts them
        self.reused = 0  # it never keeps a lease

    async def place(self, expert: str) -> Lease:
        self.calls += 1
        return await self.memtier.place.remote(expert)

    async def release(self, lease_id: str, report: ActivationReport, socket: SocketInfo) -> bool:
        self.calls += 1
        return await self.memtier.release.remote(lease_id, report, socket)


def measure_actor(
    sockets: int,
    callers: int,
    pairs: int,
    experts_per_socket: int,
    s: float,
    mode: str,
    heartbeat_s: float = 1.0,
    hold_s: float = INGRESS_HOLD_S,
) -> Rate:
    """Through the real MemTier actor, in the caller's Ray session; `mode` is single, batched, held, or
    relayed (held, with each node's heartbeats in one call, memtier/node_beats.py)."""
    import ray

    from memtier.client import MemTierClient
    from memtier.pager import MemTier

    experts = catalog(sockets, experts_per_socket)
    memtier = MemTier.options(name=f"scale-{sockets}-{callers}-{mode}", namespace="coe-bench").remote(
        f"scale-{sockets}", experts, len(experts) * EXPERT_BYTES, saturation=SATURATION
    )
    ray.get(memtier.ready.remote())
    infos = socket_infos(sockets)
    ray.get([memtier.heartbeat.remote(info) for info in infos])
    trace = trace_for(sockets, experts_per_socket, pairs, s)
    holds = mode in ("held", "relayed")
    sim = SimSockets(infos, releases=not holds)

    async def run() -> dict:
        """The run's counts, as Rate fields."""
        if mode == "single":
            client = _SingleCalls(memtier)
        else:
            client = MemTierClient(memtier, hold_s=hold_s if holds else 0.0, saturation=SATURATION)
        stop = asyncio.Event()
        beat = _relayed_heartbeats if mode == "relayed" else _heartbeats
        tally = BeatTally()
        beating = asyncio.ensure_future(beat(memtier, sim, stop, tally, heartbeat_s))
        await _drive(client, trace[: max(callers * 4, 64)], callers, sim)  # warm-up: connections, imports
        cpu_before = await memtier.cpu_s.remote()
        callers_cpu_before = time.process_time()
        reused_before, beats_before, calls_before = client.reused, tally.calls, client.calls
        started = time.perf_counter()
        done = await _drive(client, trace, callers, sim)
        seconds = time.perf_counter() - started
        callers_cpu = time.process_time() - callers_cpu_before
        cpu_s = await memtier.cpu_s.remote() - cpu_before
        reused, beats, calls = (
            client.reused - reused_before,
            tally.calls - beats_before,
            client.calls - calls_before,
        )
        stop.set()
        await beating
        return {
            "pairs": done,
            "seconds": seconds,
            "pairs_per_s": done / seconds,
            "authority_cpu_s": cpu_s,
            "pairs_per_authority_cpu_s": done / cpu_s if cpu_s > 0 else 0.0,
            "reused_share": reused / done if done else 0.0,
            "leases_left": await _drain(client, memtier),
            "heartbeat_calls_per_s": beats / seconds,
            "callers_cpu_share": callers_cpu / seconds,
            "client_calls_per_s": calls / seconds,
        }

    counts = asyncio.run(run())
    stats = ray.get(memtier.stats.remote())
    ray.kill(memtier)
    return Rate(
        mode=f"actor-{mode}", sockets=sockets, callers=callers, hbm_hit_rate=stats.hbm_hit_rate, **counts
    )


async def _drain(client, memtier, timeout_s: float = 10.0) -> int:
    """Wait until MemTier holds no lease, in use or kept idle (a holding client sends its kept ones
    back after hold_s); returns how many were still out at the timeout: any is a leak."""

    async def out() -> int:
        return len(await memtier.leases.remote()) + len(await memtier.idle_leases.remote())

    deadline = time.monotonic() + timeout_s
    while (left := await out()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return left


# --------------------------------------------------------------------------- simulated cluster
def simulate_cluster(
    nodes: int, requests: int, arrival_per_s: float, hold_s: float, experts_per_socket: int, s: float
) -> SimResult:
    """Virtual time: a request arrives every 1/arrival_per_s s, holds its socket for hold_s, then
    releases. The real MemTierCore places every one; a request that finds no capacity (every socket
    that could take it has its HBM pinned) waits until a release frees room, as `MemTier.place`
    waits, each waiter on its own (no head-of-line blocking). The hit rate is what the policy and
    placement earned."""
    from bench.policy import replay

    sockets = nodes * SOCKETS_PER_NODE
    core = make_core(sockets, experts_per_socket)
    trace = trace_for(sockets, experts_per_socket, requests, s, seed=1)
    ends: list[tuple[float, str]] = []  # (virtual end time, lease id)
    leases: dict[str, Lease] = {}
    waiting: deque[tuple[float, str]] = deque()  # (arrival time, expert)
    waits_s: list[float] = []

    def start(now_s: float, arrived_s: float, expert: str) -> bool:
        try:
            lease = core.try_place(expert, now_s)
        except NoCapacityNow:
            return False
        leases[lease.lease_id] = lease
        heapq.heappush(ends, (now_s + hold_s, lease.lease_id))
        if now_s > arrived_s:
            waits_s.append(now_s - arrived_s)
        return True

    def finish_until(now_s: float) -> None:
        while ends and ends[0][0] <= now_s:
            end_s, lease_id = heapq.heappop(ends)
            lease = leases.pop(lease_id)
            core.release(lease_id, report_for(lease), info_of(core, lease.socket_id))
            # A release frees one socket's room: the oldest few waiters retry (retrying all of them on
            # every release costs a failed placement each, which is what the simulation would measure).
            for _ in range(min(RETRIES_PER_RELEASE, len(waiting))):
                if not start(end_s, *waiting[0]):
                    waiting.rotate(-1)
                    continue
                waiting.popleft()

    cpu_started = time.process_time()
    started = time.perf_counter()
    for i, expert in enumerate(trace):
        now_s = i / arrival_per_s
        finish_until(now_s)
        if not start(now_s, now_s, expert):
            waiting.append((now_s, expert))
    finish_until(float("inf"))
    wall_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    if waiting:
        raise RuntimeError(f"{len(waiting)} requests never placed: the simulated cluster cannot hold them")
    sizes = catalog(sockets, experts_per_socket)
    total_hbm = sockets * SLOTS_PER_SOCKET * EXPERT_BYTES
    return SimResult(
        sockets=sockets,
        experts=len(catalog(sockets, experts_per_socket)),
        requests=requests,
        arrival_per_s=arrival_per_s,
        hold_s=hold_s,
        hbm_hit_rate=core.snapshot_stats().hbm_hit_rate,
        lru_hit_rate=replay(trace, sizes, total_hbm, "LRU").hit_rate,
        opt_hit_rate=replay(trace, sizes, total_hbm, "OPT").hit_rate,
        waited=len(waits_s),
        mean_wait_s=sum(waits_s) / len(waits_s) if waits_s else 0.0,
        wall_s=wall_s,
        placements_per_s=requests / wall_s,
        placements_per_cpu_s=requests / cpu_s if cpu_s > 0 else 0.0,
    )


# --------------------------------------------------------------------------- CLI
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.memtier_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", default="8,64,512", help="directory sizes (multiples of 8)")
    parser.add_argument("--callers", default="1,16,64", help="concurrent callers for the actor runs")
    parser.add_argument("--pairs", type=int, default=4000, help="place+release pairs per measurement")
    parser.add_argument("--experts-per-socket", type=int, default=4, help="catalog size per socket")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of expert popularity")
    parser.add_argument(
        "--modes",
        default="core,single,batched,held,relayed",
        help="which of core,single,batched,held,relayed,sim",
    )
    parser.add_argument(
        "--hold-s",
        type=float,
        default=INGRESS_HOLD_S,
        help="held mode: how long a finished lease is kept for reuse (default: the ingress's lease_hold_s)",
    )
    parser.add_argument(
        "--heartbeat-s", type=float, default=1.0, help="each simulated socket's heartbeat period (0: none)"
    )
    parser.add_argument(
        "--sim-experts-per-socket",
        type=int,
        default=2,
        help="catalog per socket in the 64x8 simulation (2: as many experts as HBM slots)",
    )
    parser.add_argument("--sim-requests", type=int, default=100_000, help="requests in the 64x8 simulation")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run(args: argparse.Namespace) -> ScaleReport:
    modes = set(args.modes.split(","))
    sockets, callers = _ints(args.sockets), _ints(args.callers)
    rates: list[Rate] = []
    if "core" in modes:
        for n in sockets:
            rates.append(measure_core(n, GOAL_CALLERS, args.pairs, args.experts_per_socket, args.zipf))
            print(rates[-1].model_dump_json(), flush=True)
    actor_modes = [m for m in ("single", "batched", "held", "relayed") if m in modes]
    if actor_modes:
        import ray

        ray.init(
            address="local", num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False
        )
        try:
            for n in sockets:
                for c in callers:
                    for mode in actor_modes:  # both APIs in the same session, back to back
                        rate = measure_actor(
                            n,
                            c,
                            args.pairs,
                            args.experts_per_socket,
                            args.zipf,
                            mode,
                            args.heartbeat_s,
                            args.hold_s,
                        )
                        rates.append(rate)
                        print(rate.model_dump_json(), flush=True)
        finally:
            ray.shutdown()
    sim = None
    if "sim" in modes:
        # 64 nodes x 8 sockets, 5-second requests at 800/s: ~4,000 in flight, ~1 per socket on average
        sim = simulate_cluster(64, args.sim_requests, 800.0, 5.0, args.sim_experts_per_socket, args.zipf)
        print(sim.model_dump_json(), flush=True)
    return ScaleReport(
        command=_command(args),
        cpu_count=os.cpu_count() or 0,
        load_average=list(os.getloadavg()),
        experts_per_socket=args.experts_per_socket,
        zipf_s=args.zipf,
        rates=rates,
        sim=sim,
    )


def _command(args: argparse.Namespace) -> str:
    return (
        f"python -m bench.memtier_scale --sockets {args.sockets} --callers {args.callers} "
        f"--pairs {args.pairs} --experts-per-socket {args.experts_per_socket} --zipf {args.zipf} "
        f"--modes {args.modes} --heartbeat-s {args.heartbeat_s} --hold-s {args.hold_s} "
        f"--sim-experts-per-socket {args.sim_experts_per_socket} --sim-requests {args.sim_requests} "
        f"--out {args.out}"
    )


def markdown(report: ScaleReport) -> str:
    lines = [
        "# MemTier authority at scale",
        "",
        "```",
        report.command,
        "```",
        "",
        f"{report.cpu_count} CPUs shared with other agents' jobs while measuring (load average at the end "
        f"{' '.join(f'{x:.1f}' for x in report.load_average)}); ratios come from one run, both APIs back to "
        f"back in the same Ray session. Sockets hold {SLOTS_PER_SOCKET} experts of equal size; the catalog "
        f"has {report.experts_per_socket} experts per socket, Zipf s={report.zipf_s}; saturation "
        f"{SATURATION}.",
        "",
        "`pairs/s` is wall time on this shared box; `per authority CPU-s` divides the pairs by the CPU "
        "seconds the MemTier actor itself used (its heartbeat work included): the rate it sustains with one "
        "core to itself. `core` runs MemTierCore in this process and counts this process's CPU seconds.",
        "",
        "`held` reuses finished leases for the next request of the same expert (memtier/client.py): the "
        "`reused` column is the share of placements granted that way, with no actor call. `relayed` is "
        "`held` with each node's socket heartbeats sent in one call by the node's relay "
        "(memtier/node_beats.py); `beats/s` counts the heartbeat calls the authority received.",
        "",
        "| mode | sockets | callers | pairs | pairs/s | per authority CPU-s | HBM hit rate | reused "
        "| beats/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rates:
        per_cpu = f"{r.pairs_per_authority_cpu_s:,.0f}" if r.authority_cpu_s else ""
        cells = [
            r.mode,
            r.sockets,
            r.callers,
            r.pairs,
            f"{r.pairs_per_s:,.0f}",
            per_cpu,
            f"{r.hbm_hit_rate:.3f}",
            f"{r.reused_share:.2f}" if r.mode in ("actor-held", "actor-relayed") else "",
            f"{r.heartbeat_calls_per_s:,.0f}" if r.mode.startswith("actor-") else "",
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    single = {(r.sockets, r.callers): r for r in report.rates if r.mode == "actor-single"}
    actor_runs = [r for r in report.rates if r.mode.startswith("actor-")]
    if actor_runs:
        leaked = sum(r.leases_left for r in actor_runs)
        lines += ["", f"Leases MemTier still held after the actor runs: {leaked} (0: none leaked)."]
    lines += ["", "## Against the goal", ""]
    for mode in ("actor-batched", "actor-held", "actor-relayed"):
        goal = next(
            (
                r
                for r in report.rates
                if r.mode == mode and (r.sockets, r.callers) == (GOAL_SOCKETS, GOAL_CALLERS)
            ),
            None,
        )
        if goal is None:
            continue
        base = single.get((GOAL_SOCKETS, GOAL_CALLERS))
        ratio = (
            f", {goal.pairs_per_s / base.pairs_per_s:.1f}x the single-call API in the same run"
            if base
            else ""
        )
        met = "met" if goal.pairs_per_s >= GOAL_PAIRS_PER_S else "**not met**"
        cpu_met = "met" if goal.pairs_per_authority_cpu_s >= GOAL_PAIRS_PER_S else "**not met**"
        name = mode.removeprefix("actor-")
        lines.append(
            f"- {GOAL_SOCKETS} sockets, {GOAL_CALLERS} callers, through the real actor: "
            f"**{goal.pairs_per_s:,.0f} pairs/s** wall, {name}{ratio} (goal >= {GOAL_PAIRS_PER_S:,}: "
            f"{met}); "
            f"**{goal.pairs_per_authority_cpu_s:,.0f} pairs per authority CPU-second** ({cpu_met})."
        )
    if report.sim is not None:
        sim = report.sim
        lines.append(
            f"- Simulated {sim.sockets} sockets ({sim.sockets // SOCKETS_PER_NODE} nodes x "
            f"{SOCKETS_PER_NODE}), {sim.experts:,} experts, {sim.requests:,} requests of {sim.hold_s:g} s at "
            f"{sim.arrival_per_s:g}/s "
            f"through the real MemTierCore: HBM hit rate {sim.hbm_hit_rate:.3f} (one LRU of the summed HBM "
            f"{sim.lru_hit_rate:.3f}, Belady OPT {sim.opt_hit_rate:.3f}: "
            f"{sim.hbm_hit_rate / sim.opt_hit_rate:.2f}x OPT); {sim.waited:,} requests waited for capacity "
            f"(mean {sim.mean_wait_s:.2f} s); placement ran at {sim.placements_per_s:,.0f} pairs per wall "
            f"second, {sim.placements_per_cpu_s:,.0f} per CPU-second."
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> ScaleReport:
    args = _parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memtier_scale.json").write_text(report.model_dump_json(indent=2) + "\n")
    (args.out / "memtier_scale.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
