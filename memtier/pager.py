"""The `MemTier` actor: the cluster-wide authority on where experts live and run.

One named, detached, restartable actor per cluster, holding metadata only (never weights).
`place` turns a request for an expert into a `Lease` on one socket (invariant 5), pinning the
expert there until `release`. Sockets heartbeat what they hold; a socket that stops
heartbeating is dropped (invariant 3), and after a restart the directory is rebuilt from the
same heartbeats and from each node's DDR store.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque

import ray

from cluster.config import MemtierConfig
from memtier.directory import ResidencyDirectory, UnknownExpertError
from memtier.head import on_head_node
from memtier.lru import AllPinnedError, NeverFitsError
from memtier.metrics import MemtierMetrics
from memtier.models import ActivationReport, Lease, MemtierStats, MemtierStatus, SocketInfo, Tier
from memtier.placement import NeverPlaceable, NoCapacityNow, choose_socket
from memtier.prefetch import Prefetcher, PrefetchPlan

NAMESPACE = "coe"
PREFETCH_ROUND_S = 0.5  # how often prefetch plans are redone: sockets poll every heartbeat (~1 s)


def memtier_actor_name(cluster: str) -> str:
    return f"coe_memtier_{cluster}"


_LEASE_FIELDS = (
    "lease_id",
    "expert",
    "socket_id",
    "node_id",
    "tier",
    "size_bytes",
    "evict",
    "keep",
    "holder",
)


def lease_tuple(lease: Lease) -> tuple:
    """A Lease as a plain tuple for the batched wire (`lease_from_tuple` is its inverse)."""
    return tuple(getattr(lease, name) for name in _LEASE_FIELDS)


def lease_from_tuple(values: tuple) -> Lease:
    return Lease.model_construct(**dict(zip(_LEASE_FIELDS, values, strict=True)))


class PlacementTimeout(Exception):
    """No socket could take the expert within the wait: the cluster is saturated (HTTP 503)."""


class MemTierCore:
    """The actor's logic without Ray, so tests can drive time and failures directly."""

    def __init__(
        self,
        cluster: str,
        expert_bytes: dict[str, int],
        ddr_bytes_per_node: int,
        *,
        saturation: int | None = None,
        socket_timeout_s: float = 5.0,
        lease_ttl_s: float = 600.0,
        holder_timeout_s: float = 10.0,
        policy: MemtierConfig | None = None,
    ) -> None:
        self.cluster = cluster
        self.directory = ResidencyDirectory(expert_bytes, ddr_bytes_per_node, policy)
        # Lease ids: random per incarnation (a restarted actor never reuses an old id), then a counter.
        self._lease_prefix = uuid.uuid4().hex[:12] + "-"
        self._lease_numbers = itertools.count()
        enabled = policy.prefetch if policy is not None else MemtierConfig().prefetch
        self.prefetcher = Prefetcher(self.directory, ddr=enabled, hbm=enabled)
        # prefetch lease id -> (expert, socket, victims it evicted)
        self._prefetch_leases: dict[str, tuple[str, str, list[str]]] = {}
        self.saturation = saturation
        self.socket_timeout_s = socket_timeout_s
        self.lease_ttl_s = lease_ttl_s
        self.lease_granted_s: dict[str, float] = {}
        # Lease reuse (memtier/client.py): a holder keeps leases between its requests, so a holder
        # that goes silent (its process died) has its leases reaped after holder_timeout_s, not
        # after the 10-minute lease TTL meant for lost releases.
        self.holder_timeout_s = holder_timeout_s
        self.holder_seen_s: dict[str, float] = {}
        self.held_by: dict[str, set[str]] = {}  # holder -> its lease ids
        # Kept leases between requests pin nothing (an idle lease never blocks a placement or an
        # eviction): lease id -> lease, indexed by (socket, expert) to revoke when it is evicted.
        self.idle: dict[str, Lease] = {}
        self._idle_at: dict[tuple[str, str], set[str]] = {}
        self.revoked: dict[str, list[str]] = {}  # holder -> idle leases whose expert was evicted
        self.stats = MemtierStats()
        self._switch_s: deque[float] = deque(maxlen=20_000)
        self.metrics = MemtierMetrics(cluster)
        self.metrics.count_leases_with(lambda: len(self.directory.leases))

    # ------------------------------------------------------------------ sockets
    def heartbeat(self, info: SocketInfo, now_s: float) -> bool:
        """Register or refresh a socket; returns True if it was new to this directory."""
        new = info.socket_id not in self.directory.sockets
        self.directory.register_socket(info, now_s)
        return new

    def drop_socket(self, socket_id: str) -> list[Lease]:
        voided = self.directory.drop_socket(socket_id)
        voided += [self._unidle(i) for i, lease in list(self.idle.items()) if lease.socket_id == socket_id]
        for lease in voided:
            self.lease_granted_s.pop(lease.lease_id, None)
            self._unhold(lease)
        return voided

    def reap(self, now_s: float) -> list[str]:
        """Drop sockets that stopped heartbeating and leases nobody released in time."""
        dead = [
            s.socket_id
            for s in self.directory.sockets.values()
            if now_s - s.last_seen_s > self.socket_timeout_s
        ]
        for socket_id in dead:
            self.drop_socket(socket_id)
        for lease_id, granted_s in list(self.lease_granted_s.items()):
            if now_s - granted_s > self.lease_ttl_s:
                self.release(lease_id, None)
        for holder, seen_s in list(self.holder_seen_s.items()):
            if now_s - seen_s > self.holder_timeout_s:
                for lease_id in self.held_by.pop(holder, set()):
                    self.release(lease_id, None)
                del self.holder_seen_s[holder]
        return dead

    def seen_socket(self, socket_id: str, now_s: float) -> None:
        """A holder saw a request finish on the socket: it is alive (it skips that heartbeat)."""
        entry = self.directory.sockets.get(socket_id)
        if entry is not None:
            entry.last_seen_s = max(entry.last_seen_s, now_s)

    def seen_holder(self, holder: str, now_s: float) -> None:
        """A lease holder called: it is alive, and so are the leases it keeps."""
        self.holder_seen_s[holder] = now_s

    # ------------------------------------------------------------------ leases
    def try_place(self, expert: str, now_s: float, holder: str = "") -> Lease:
        """Place now or raise NoCapacityNow / NeverPlaceable / UnknownExpertError; a `holder`
        releases the lease itself, possibly after reusing it (memtier/client.py)."""
        size_bytes = self.directory.size_of(expert)
        socket, tier = choose_socket(self.directory, expert, saturation=self.saturation)
        # Built without re-validating fields placement just produced: this is the authority's hot path.
        lease = Lease.model_construct(
            lease_id=f"{self._lease_prefix}{next(self._lease_numbers)}",
            expert=expert,
            socket_id=socket.socket_id,
            node_id=socket.node_id,
            tier=tier,
            size_bytes=size_bytes,
            evict=[],
            keep=True,
            holder=holder,
        )
        lease.evict = self.directory.grant(lease)
        self._revoke(lease.socket_id, lease.evict)
        self.lease_granted_s[lease.lease_id] = now_s
        if holder:
            self.held_by.setdefault(holder, set()).add(lease.lease_id)
        self.stats.leases += 1
        self.prefetcher.observe(expert)
        self.prefetcher.on_demand(expert, lease.socket_id, lease.node_id, tier)
        if tier == "store":
            self.prefetcher.demand_read(lease.node_id, expert)
        return lease

    # ------------------------------------------------------------------ prefetch
    def grant_prefetch(self, plan: PrefetchPlan, now_s: float) -> Lease:
        """Lease an idle socket for an HBM prefetch (`plan.kind == "hbm"`): the socket pages the
        expert in and releases at once; the policy does not count it as a request."""
        lease = Lease.model_construct(
            lease_id=f"{self._lease_prefix}{next(self._lease_numbers)}",
            expert=plan.expert,
            socket_id=plan.socket_id,
            node_id=plan.node_id,
            tier="ddr",
            size_bytes=plan.size_bytes,
            evict=[],
            keep=True,
            prefetch=True,
        )
        lease.evict = self.directory.grant(lease)
        self._revoke(lease.socket_id, lease.evict)
        self.lease_granted_s[lease.lease_id] = now_s
        self._prefetch_leases[lease.lease_id] = (plan.expert, plan.socket_id, list(lease.evict))
        self.prefetcher.hbm_started(lease.lease_id, plan.socket_id)
        return lease

    def cancel_lost_prefetches(self) -> list[Lease]:
        """Release HBM prefetch leases that lost (memtier/prefetch.py) and forget their expert on
        the socket, which drops it when its own release arrives (lease.keep is False)."""
        cancelled = []
        for lease_id in self.prefetcher.losers(self._prefetch_leases):
            lease = self.directory.leases.get(lease_id)
            expert, socket_id, _ = self._prefetch_leases.pop(lease_id)
            self.prefetcher.hbm_done(lease_id, expert, cancelled=True)
            if lease is not None:
                lease.keep = False  # the directory drops it from the socket's HBM on release
                self._release(lease_id, None)
                cancelled.append(lease)
        return cancelled

    def release(
        self,
        lease_id: str,
        report: ActivationReport | None,
        socket: SocketInfo | None = None,
        now_s: float | None = None,
    ) -> bool:
        """Unpin a lease; `socket` (the socket's own report, sent with the release) re-syncs its HBM
        and, like a heartbeat, shows the socket alive at `now_s` (a busy socket skips heartbeats)."""
        released = self._release(lease_id, report)
        if socket is not None and socket.socket_id in self.directory.sockets:
            self.directory.sync_socket(socket)
            if now_s is not None:
                self.directory.sockets[socket.socket_id].last_seen_s = now_s
        return released

    # ------------------------------------------------------------------ lease reuse (memtier/client.py)
    def keep_idle(self, lease_id: str) -> bool:
        """Its holder kept a finished lease for its next request: unpin the expert (recency
        refreshed, as any release), so an idle kept lease never blocks a placement or an eviction.
        The lease stays its holder's until released. False if the lease is gone."""
        lease = self.directory.release(lease_id)
        self.lease_granted_s.pop(lease_id, None)
        if lease is None:
            return False
        self.idle[lease_id] = lease
        self._idle_at.setdefault((lease.socket_id, lease.expert), set()).add(lease_id)
        return True

    def reuse(self, lease_id: str, now_s: float) -> bool:
        """Its holder gave a kept lease to one more request, which never came here to be placed:
        pin the expert again and count a placement, so the policy sees every request (the
        request's own report, hit or miss, comes through `record`). If the expert was evicted
        meanwhile, the socket pages it back in and the pin covers that too. False if the lease
        is gone (released, voided, revoked and not yet heard of by its holder)."""
        if lease_id not in self.idle:
            return False
        lease = self._unidle(lease_id)
        socket = self.directory.sockets.get(lease.socket_id)
        if socket is None:
            return False
        if lease.evict:  # (pydantic assignments cost microseconds: only what changes)
            lease.evict = []
        tier: Tier = "hbm"
        if lease.expert not in socket.hbm:
            node = self.directory.nodes.get(lease.node_id)
            tier = "ddr" if node is not None and lease.expert in node.ddr else "store"
        if lease.tier != tier:
            lease.tier = tier
        try:
            self._revoke(lease.socket_id, self.directory.grant(lease))
        except (AllPinnedError, NeverFitsError):
            return False  # no room beside the pins there now: the socket waits for room itself
        self._count_reuse(lease, now_s)
        return True

    def reuse_pinned(self, lease_id: str, now_s: float) -> bool:
        """A kept lease given to another request before MemTier heard it was idle: still pinned,
        so only the request is counted (placement, the policy's access, recency). False if gone."""
        lease = self.directory.leases.get(lease_id)
        if lease is None or not self.directory.count_request(lease):
            return False
        self._count_reuse(lease, now_s)
        return True

    def _count_reuse(self, lease: Lease, now_s: float) -> None:
        """A reused lease's request, counted as a placement (its TTL restarts with it)."""
        self.lease_granted_s[lease.lease_id] = now_s
        self.stats.leases += 1
        self.stats.lease_reuses += 1
        self.metrics.reused()
        self.prefetcher.observe(lease.expert)

    def _unhold(self, lease: Lease) -> None:
        """The lease is no longer its holder's (released, voided or revoked)."""
        if lease.holder:
            self.held_by.get(lease.holder, set()).discard(lease.lease_id)

    def _unidle(self, lease_id: str) -> Lease:
        lease = self.idle.pop(lease_id)
        at = self._idle_at.get((lease.socket_id, lease.expert))
        if at is not None:
            at.discard(lease_id)
            if not at:
                del self._idle_at[(lease.socket_id, lease.expert)]
        return lease

    def _revoke(self, socket_id: str, evicted: list[str]) -> None:
        """Experts evicted from a socket end the idle leases kept on them there: their holders
        hear of it in their next batch and stop reusing them."""
        for expert in evicted:
            for lease_id in list(self._idle_at.get((socket_id, expert), ())):
                lease = self._unidle(lease_id)
                self._unhold(lease)
                self.revoked.setdefault(lease.holder, []).append(lease_id)

    def take_revoked(self, holder: str) -> list[str]:
        return self.revoked.pop(holder, [])

    def _release(self, lease_id: str, report: ActivationReport | None) -> bool:
        if lease_id in self.idle:  # a kept lease its holder gave back: nothing is pinned for it
            self._unhold(self._unidle(lease_id))
            return True
        if lease_id in self._prefetch_leases:  # a prefetch finished: not a request, nothing to record
            expert, _, _ = self._prefetch_leases.pop(lease_id)
            self.prefetcher.hbm_done(lease_id, expert)
            report = None
        lease = self.directory.release(lease_id)
        self.lease_granted_s.pop(lease_id, None)
        if lease is not None:
            self._unhold(lease)
        if lease is None or report is None:
            return lease is not None
        self.record(report)
        return True

    def record_hits(self, count: int) -> None:
        """`count` requests that found their expert in HBM and moved nothing: what `record` counts
        for such a report, sent by a holder as one number (memtier/client.py)."""
        self.stats.hbm.hits += count
        self.metrics.hit("hbm", count)

    def record(self, report: ActivationReport) -> None:
        """What a finished request found on its socket, for the stats: sent with its release, or
        in its holder's batch when the lease was kept (memtier/client.py)."""
        stats = self.stats
        if report.tier == "hbm":
            self.record_hits(1)
        else:
            stats.hbm.misses += 1
            self.metrics.miss("hbm")
            if report.store_read or report.tier == "store":
                stats.ddr.misses += 1
                self.metrics.miss("ddr")
            else:
                stats.ddr.hits += 1
                self.metrics.hit("ddr")
            stats.bytes_moved_ddr_to_hbm += report.bytes_moved
            self.metrics.moved("hbm", report.bytes_moved)
            self._switch_s.append(report.switch_s)
            self.metrics.switched(report.switch_s, "store" if report.store_read else report.tier)
        stats.hbm_evictions += len(report.evicted)
        self.metrics.evicted("hbm", len(report.evicted))

    def _sorted_switches(self) -> list[float]:
        return sorted(self._switch_s)

    def record_ddr(self, store_reads: int, bytes_read: int, evictions: int) -> None:
        self.stats.store_reads += store_reads
        self.stats.bytes_moved_store_to_ddr += bytes_read
        self.stats.ddr_evictions += evictions
        self.metrics.moved("ddr", bytes_read)
        self.metrics.evicted("ddr", evictions)

    def snapshot_stats(self) -> MemtierStats:
        stats = self.stats.model_copy(deep=True)
        switches = self._sorted_switches()
        if switches:

            def pct(q: float) -> float:
                return switches[min(len(switches) - 1, int(q * len(switches)))]

            stats.switch_s_p50, stats.switch_s_p90, stats.switch_s_p99 = pct(0.5), pct(0.9), pct(0.99)
        stats.switches = len(switches)
        stats.hbm_hit_rate = stats.hbm.hit_rate
        stats.ddr_hit_rate = stats.ddr.hit_rate
        return stats

    def status(self) -> MemtierStatus:
        return MemtierStatus(
            nodes=self.directory.status(),
            stats=self.snapshot_stats(),
            experts=dict(self.directory.expert_bytes),
        )


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class MemTier:
    """Ray actor around `MemTierCore`: async so `place` can wait for capacity without blocking."""

    def __init__(
        self,
        cluster: str,
        expert_bytes: dict[str, int],
        ddr_bytes_per_node: int,
        *,
        saturation: int | None = None,
        socket_timeout_s: float = 5.0,
        lease_ttl_s: float = 600.0,
        holder_timeout_s: float = 10.0,
        place_timeout_s: float = 60.0,
        policy: MemtierConfig | None = None,
    ) -> None:
        self.core = MemTierCore(
            cluster,
            expert_bytes,
            ddr_bytes_per_node,
            saturation=saturation,
            socket_timeout_s=socket_timeout_s,
            lease_ttl_s=lease_ttl_s,
            holder_timeout_s=holder_timeout_s,
            policy=policy,
        )
        self.place_timeout_s = place_timeout_s
        self._capacity_changed: asyncio.Event | None = None
        self._reaper: asyncio.Task | None = None
        self._prefetcher_task: asyncio.Task | None = None
        self._plans_cache: list[PrefetchPlan] = []
        self._plans_at_s = float("-inf")
        self._ddr_synced: set[str] = set()
        self._waiting: dict[str, int] = {}  # expert -> placements waiting for room now

    def _changed(self) -> asyncio.Event:
        if self._capacity_changed is None:
            self._capacity_changed = asyncio.Event()
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())
        return self._capacity_changed

    def _notify(self) -> None:
        event = self._changed()
        event.set()
        self._capacity_changed = asyncio.Event()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.core.socket_timeout_s / 4))
            if self.core.reap(time.monotonic()):
                self._notify()

    async def ready(self) -> bool:
        self._changed()
        return True

    async def heartbeat(self, info: SocketInfo) -> bool:
        return self._heartbeat(info)

    def _heartbeat(self, info: SocketInfo) -> bool:
        returning_node = info.node_id not in self.core.directory.nodes  # new, or forgotten when it died
        new = self.core.heartbeat(info, time.monotonic())
        if returning_node or info.node_id not in self._ddr_synced:
            self._ddr_synced.add(info.node_id)
            asyncio.get_running_loop().create_task(self._sync_ddr_from_store(info.node_id))
        self._notify()
        return new

    async def _sync_ddr_from_store(self, node_id: str) -> None:
        from memtier.ddr_store import ddr_store_name

        try:
            store = ray.get_actor(ddr_store_name(self.core.cluster, node_id), namespace=NAMESPACE)
            residents = await store.residents.remote()
        except ValueError:
            return  # no DDR store on that node yet: nothing to adopt
        self.core.directory.sync_ddr(node_id, residents)

    async def drop_socket(self, socket_id: str) -> int:
        """Called by the ingress when a socket failed a request: forget it now, not at timeout."""
        voided = self.core.drop_socket(socket_id)
        self._notify()
        return len(voided)

    async def place(self, expert: str, timeout_s: float | None = None, holder: str = "") -> Lease:
        deadline = time.monotonic() + (self.place_timeout_s if timeout_s is None else timeout_s)
        while True:
            try:
                if holder:
                    self.core.seen_holder(holder, time.monotonic())
                return self.core.try_place(expert, time.monotonic(), holder)
            except (NoCapacityNow, NeverPlaceable) as err:
                if isinstance(err, NeverPlaceable) and self.core.directory.sockets:
                    raise  # larger than every socket: waiting cannot help
                # NeverPlaceable with no socket registered yet: MemTier just restarted (the sockets
                # re-register within a heartbeat) or every socket is restarting. Wait, as for room.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PlacementTimeout(str(err)) from None
                self._waiting[expert] = self._waiting.get(expert, 0) + 1
                try:
                    await asyncio.wait_for(self._changed().wait(), timeout=remaining)
                except TimeoutError:
                    pass
                finally:
                    self._waiting[expert] -= 1
            except UnknownExpertError:
                raise

    async def waiting(self) -> dict[str, int]:
        """Placements waiting for capacity now, per expert (a saturated cluster, seen from inside)."""
        return {expert: n for expert, n in self._waiting.items() if n}

    async def release(
        self, lease_id: str, report: ActivationReport | None = None, socket: SocketInfo | None = None
    ) -> bool:
        released = self.core.release(lease_id, report, socket, time.monotonic())
        self._notify()
        return released

    async def batch(
        self,
        places: list[str],
        releases: list[tuple[str, ActivationReport | None, SocketInfo | None]],
        holder: str = "",
        holds: list[tuple[str, str]] | None = None,
        reports: list[ActivationReport] | None = None,
        served: list[str] | None = None,
        hits: int = 0,
    ) -> tuple[list[tuple | BaseException | None], list[bool | BaseException], list[str], int]:
        """Many releases, then many placements, in one actor call (memtier/client.py batches them).

        A `holder` (a client that reuses its leases) gets leases it releases itself, and is seen
        alive. `holds` says, in order, which of its leases it kept idle after a request ("idle"), gave
        to another request ("reused"), or gave to another request before this call could say it
        was idle ("again": still pinned, only the request is counted) since its last call;
        `reports` what the requests
        whose leases it kept found on their sockets (`hits` counts those that were plain HBM hits,
        most of them, so they cost no report on the wire), and `served` the sockets those requests
        finished on: alive, as a heartbeat would say (they skip beats then). The answer adds the
        holder's kept leases revoked by an eviction, and how many placements wait for room (a
        holder then sends its idle leases at once: they free room).

        Each placement is a Lease as a plain tuple (`lease_tuple`: a tenth of a pydantic model's
        pickling cost, paid by the one authority), an exception for its caller (unknown expert,
        never placeable), or None when there is no capacity now: the caller then waits with
        `place`. Releases go first, so the capacity they free is there for the placements of the
        same batch.
        """
        released: list[bool | BaseException] = []
        now_s = time.monotonic()
        if holder:
            self.core.seen_holder(holder, now_s)
        for lease_id, event in holds or ():
            if event == "idle":
                self.core.keep_idle(lease_id)
            elif event == "reused":
                self.core.reuse(lease_id, now_s)
            else:
                self.core.reuse_pinned(lease_id, now_s)
        for report in reports or ():
            self.core.record(report)
        self.core.record_hits(hits)
        for socket_id in served or ():
            self.core.seen_socket(socket_id, now_s)
        for lease_id, report, socket in releases:
            try:
                released.append(self.core.release(lease_id, report, socket, now_s))
            except Exception as err:  # a bad report must not fail the other callers' releases
                released.append(err)
        if releases or holds:
            self._notify()
        placed: list[tuple | BaseException | None] = []
        now_s = time.monotonic()
        for expert in places:
            try:
                placed.append(lease_tuple(self.core.try_place(expert, now_s, holder)))
            except NoCapacityNow:
                placed.append(None)
            except NeverPlaceable as err:  # with no socket registered yet, `place` decides whether to wait
                placed.append(None if not self.core.directory.sockets else err)
            except Exception as err:
                placed.append(err)
        revoked = self.core.take_revoked(holder) if holder else []
        return placed, released, revoked, sum(self._waiting.values())

    async def poll(self, info: SocketInfo) -> Lease | None:
        """A socket's heartbeat that may come back with work: an HBM prefetch lease for an idle
        socket (memtier/prefetch.py), which the socket pages in and releases at once."""
        return self._poll(info)

    async def polls(self, infos: list[SocketInfo]) -> list[Lease | None]:
        """One node's sockets' heartbeats in one call (memtier/node_beats.py); answers in order."""
        return [self._poll(info) for info in infos]

    def _poll(self, info: SocketInfo) -> Lease | None:
        self._heartbeat(info)
        core = self.core
        if not (core.prefetcher.hbm_enabled or core.prefetcher.ddr_enabled):
            return None
        if self._prefetcher_task is None:
            self._prefetcher_task = asyncio.get_running_loop().create_task(self._prefetch_forever())
        socket = core.directory.sockets.get(info.socket_id)
        if socket is None or socket.load or not core.prefetcher.hbm_enabled:
            return None
        for plan in self._plans():
            if plan.kind == "hbm" and plan.socket_id == info.socket_id:
                return core.grant_prefetch(plan, time.monotonic())
        return None

    def _plans(self) -> list[PrefetchPlan]:
        """This round's plans, recomputed at most every PREFETCH_ROUND_S (every socket polls each second)."""
        now_s = time.monotonic()
        if now_s - self._plans_at_s >= PREFETCH_ROUND_S:
            self.core.cancel_lost_prefetches()  # their sockets drop them on release (keep=False)
            self._plans_cache, self._plans_at_s = self.core.prefetcher.plan(), now_s
        return self._plans_cache

    async def _prefetch_forever(self) -> None:
        """STORE -> DDR prefetches: one read at a time per node, into free DDR room (the plans say)."""
        from memtier.ddr_store import ddr_store_name

        prefetcher = self.core.prefetcher

        async def read(node_id: str, expert: str) -> None:
            try:
                store = ray.get_actor(ddr_store_name(self.core.cluster, node_id), namespace=NAMESPACE)
                await store.prefetch.remote(expert)
                prefetcher.ddr_done(node_id, expert)
            except Exception:  # a node gone or a store restarting: nothing was prefetched
                prefetcher.ddr_done(node_id, expert, cancelled=True)

        while True:
            await asyncio.sleep(PREFETCH_ROUND_S)
            for plan in self._plans():
                if plan.kind == "ddr" and plan.node_id not in prefetcher.ddr_in_flight:
                    prefetcher.ddr_started(plan)
                    asyncio.get_running_loop().create_task(read(plan.node_id, plan.expert))

    async def node_id(self) -> str:
        """Where the authority runs (memtier/head.py: the head node when it can)."""
        return ray.get_runtime_context().get_node_id()

    async def cpu_s(self) -> float:
        """CPU seconds this actor process has used: how busy the authority is (bench.memtier_scale)."""
        return time.process_time()

    async def ddr_report(
        self,
        node_id: str,
        residents: list[str],
        store_reads: int = 0,
        bytes_read: int = 0,
        evictions: int = 0,
    ) -> None:
        self.core.directory.sync_ddr(node_id, residents)
        self.core.record_ddr(store_reads, bytes_read, evictions)

    async def prefetch(self, expert: str, node_id: str) -> bool:
        """Warm `node_id`'s DDR with `expert` (a STORE read if it is not there yet)."""
        from memtier.ddr_store import ddr_store_name

        self.core.directory.size_of(expert)
        store = ray.get_actor(ddr_store_name(self.core.cluster, node_id), namespace=NAMESPACE)
        return await store.prefetch.remote(expert)

    async def stats(self) -> MemtierStats:
        return self.core.snapshot_stats()

    async def status(self) -> MemtierStatus:
        return self.core.status()

    async def metrics(self) -> list:
        """Prometheus families (`coe:memtier_*`) for the ingress's GET /metrics: counters and residency."""
        return self.core.metrics.families(self.core.directory.status())

    async def idle_leases(self) -> list[Lease]:
        """Leases their holders keep between requests (memtier/client.py): nothing pinned for them."""
        return list(self.core.idle.values())

    async def leases(self) -> list[Lease]:
        return list(self.core.directory.leases.values())


def start_memtier(cluster: str, expert_bytes: dict[str, int], ddr_bytes_per_node: int, **options):
    """Get or create the cluster's MemTier actor (named, detached, restartable)."""
    return MemTier.options(
        name=memtier_actor_name(cluster),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        **on_head_node(),
    ).remote(cluster, expert_bytes, ddr_bytes_per_node, **options)


def get_memtier(cluster: str):
    return ray.get_actor(memtier_actor_name(cluster), namespace=NAMESPACE)
