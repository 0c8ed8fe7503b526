"""`MemTierClient`: one process's place and release calls, coalesced into batched actor calls.

Every request calls the MemTier actor twice, and an actor call costs far more than the
bookkeeping it carries (bench.memtier_scale: ~300 pairs/s through one call each at 512 sockets
on 2 cores). A process (an ingress replica, a socket) usually has many requests in flight, so
the client sends at most one `MemTier.batch` call at a time and queues whatever arrives while it
is in flight; when it returns, everything queued goes in the next call. An idle process waits
for nothing (its call goes at once); a busy one pays one actor call per batch instead of per
request, and the authority's cost per pair falls to the bookkeeping itself.

A placement that must wait for capacity (every socket busy) is answered "wait" in the batch and
retried with the blocking `MemTier.place`, so one saturated expert never holds up the batch.

**Lease reuse** (`hold_s` > 0; issue 17, point 5): a client that releases its own leases (the
ingress, which sees every request end) keeps a released lease for `hold_s` instead of sending
the release. Its next request for that expert takes the kept lease: routed at once, with no
actor call, to the socket that just ran the expert. The actor hears, in the next batch, that the
lease went idle (it unpins the expert: an idle kept lease never blocks a placement or an
eviction) and that it was reused (it pins it again and counts the request, so policy and hit
counts see every request). An eviction of the expert revokes the idle lease, and the answer
tells the client to drop it; a reuse that races an eviction is still served, the socket paging
the expert back in. Kept leases go back when `hold_s` passes unused; a holder that stops calling
(its process died) loses them after MemTier's `holder_timeout_s`. On a Zipf catalog most
requests are for experts asked for within the last fraction of a second, so most pairs never
reach the actor (bench.memtier_scale, mode ``held``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from memtier.models import ActivationReport, Lease, SocketInfo
from memtier.pager import lease_from_tuple

__all__ = ["FULL_REPORT_BEATS", "MemTierClient"]

MAX_BATCH = 512  # one actor call stays well under a millisecond of bookkeeping at this size
# A socket whose requests' holder vouches for it (`served`) still sends its residency every this many
# heartbeats (10 s at the default 1 s), to correct drift; the vouching keeps it alive meanwhile.
FULL_REPORT_BEATS = 10
PING_S = 2.0  # a holder with leases calls at least this often (MemTier's holder_timeout_s is 10 s)
# How late MemTier may hear of a reuse (it pins the expert again) or a kept request's report, when no
# other call goes sooner: independent of hold_s, so a longer hold never leaves a running expert
# unpinned at MemTier for longer (a 0.5 s lag at a 1 s hold is the likely cause of two serving-test
# failures in a fresh clone at cfa3107).
SWEEP_S = 0.125
IDLE, REUSED, AGAIN = "idle", "reused", "again"  # what a holder tells MemTier of its kept leases


class _KeptLeases:
    """Finished leases kept for reuse: per expert, oldest first, and by id, so that dropping the
    revoked ones after each batch costs what was revoked, not a pass over every kept lease (at a
    1 s hold that pass was 13 % of a busy ingress's CPU, bench.memtier_scale under py-spy)."""

    def __init__(self) -> None:
        self.by_expert: dict[str, deque[tuple[float, Lease]]] = {}  # expert -> (kept until, lease)
        self.expert_of: dict[str, str] = {}  # lease id -> expert

    def __len__(self) -> int:
        return len(self.expert_of)

    def add(self, lease: Lease, until: float) -> None:
        self.by_expert.setdefault(lease.expert, deque()).append((until, lease))
        self.expert_of[lease.lease_id] = lease.expert

    def take(self, expert: str, usable: Callable[[str], bool]) -> Lease | None:
        """The most recently kept lease of `expert` whose socket is `usable`: its socket is the
        most likely to be batching the expert now."""
        kept = self.by_expert.get(expert)
        if not kept:
            return None
        index = next((i for i in range(len(kept) - 1, -1, -1) if usable(kept[i][1].socket_id)), None)
        return None if index is None else self._forget(kept, index)

    def drop(self, lease_ids: Iterable[str]) -> None:
        for lease_id in lease_ids:
            expert = self.expert_of.get(lease_id)
            if expert is None:
                continue
            kept = self.by_expert[expert]
            index = next(i for i, (_, lease) in enumerate(kept) if lease.lease_id == lease_id)
            self._forget(kept, index)

    def _forget(self, kept: deque[tuple[float, Lease]], index: int) -> Lease:
        _, lease = kept[index]
        del kept[index]
        del self.expert_of[lease.lease_id]
        if not kept:
            del self.by_expert[lease.expert]
        return lease

    def expired(self, now: float) -> list[Lease]:
        """Take out the leases kept past their time."""
        gone = []
        for expert in list(self.by_expert):
            kept = self.by_expert[expert]
            while kept and kept[0][0] <= now:
                gone.append(kept.popleft()[1])
            if not kept:
                del self.by_expert[expert]
        for lease in gone:
            del self.expert_of[lease.lease_id]
        return gone

    def on_socket(self, socket_id: str) -> set[str]:
        return {
            lease.lease_id
            for kept in self.by_expert.values()
            for _, lease in kept
            if lease.socket_id == socket_id
        }

    def clear(self) -> None:
        self.by_expert.clear()
        self.expert_of.clear()


@dataclass
class _Pending:
    places: list[tuple[str, asyncio.Future]] = field(default_factory=list)
    releases: list[tuple[tuple[str, ActivationReport | None, SocketInfo | None], asyncio.Future]] = field(
        default_factory=list
    )


class MemTierClient:
    """Batches `place` and `release` for one event loop; the same results as the actor's own calls."""

    def __init__(self, memtier, *, hold_s: float = 0.0, saturation: int | None = None) -> None:
        self.memtier = memtier
        self.hold_s = hold_s
        # A kept lease is reused only while this client runs fewer than `saturation` requests on its
        # socket (the engine's batch): past that, MemTier places the request, and may replicate the
        # expert onto another socket (invariant 5) instead of queueing it behind a full batch.
        self.saturation = saturation
        self._busy: Counter[str] = Counter()  # socket -> this client's held leases in use there
        self.holder = f"client-{uuid.uuid4().hex[:12]}" if hold_s > 0 else ""
        self._pending = _Pending()
        self._sending = False
        self.calls = 0  # actor calls made: pairs / calls is the batching achieved
        self.reused = 0  # placements granted here from a kept lease, with no actor call
        self._out: dict[str, Lease] = {}  # held leases in use by a request now
        self._kept = _KeptLeases()
        # Since the last call, in order: (lease, event), event one of IDLE (kept after its request),
        # REUSED (given to a request after MemTier heard it was idle) or AGAIN (given to a request
        # before MemTier heard it was idle: the two cancel, MemTier only counts the request).
        self._holds: list[tuple[str, str]] = []
        self._unsent_idle: set[str] = set()
        self._memtier_waiting = 0  # placements waiting for room at MemTier, as its last answer said
        self._reports: list[ActivationReport] = []  # of requests whose leases were kept, for stats
        self._hits = 0  # of those, plain HBM hits: sent as a count (most held requests are hits)
        self._served: set[str] = set()  # sockets those requests finished on: alive, said for them
        self._sweeper: asyncio.Task | None = None
        self._last_call_s = float("-inf")
        self._incarnation = ""

    async def place(self, expert: str, timeout_s: float | None = None) -> Lease:
        kept = self._take_kept(expert)
        if kept is not None:
            return kept
        result = await self._enqueue_place(expert)
        if result is None:  # no capacity now: wait on the actor like an unbatched caller
            result = await self.memtier.place.remote(expert, timeout_s, self.holder)
        if result.holder:
            self._forget_older_incarnation(result.lease_id)
            self._out[result.lease_id] = result
            self._busy[result.socket_id] += 1
            self._ensure_sweeper()
        return result

    async def release(
        self,
        lease_id: str,
        report: ActivationReport | None = None,
        socket: SocketInfo | None = None,
        *,
        reuse: bool = True,
    ) -> bool:
        """Give a lease back. A held lease is kept for reuse when `reuse` (its request ended
        normally); `reuse=False` (the request failed, its socket may be gone) sends it back now."""
        lease = self._out.pop(lease_id, None)
        if lease is not None:
            self._busy[lease.socket_id] -= 1
        if lease is not None and reuse and lease.keep and not lease.prefetch:
            self._keep(lease)
            self._holds.append((lease_id, IDLE))
            self._unsent_idle.add(lease_id)
            self._served.add(lease.socket_id)
            if report is not None and _plain_hit(report):
                self._hits += 1  # goes with the next call, within SWEEP_S (the sweep)
            elif report is not None:
                self._reports.append(report)
            if self._memtier_waiting:
                self._kick()  # a placement waits for room at MemTier: unpinning this one may give it
            return True
        future = asyncio.get_running_loop().create_future()
        self._pending.releases.append(((lease_id, report, socket), future))
        self._kick()
        return await future

    def forget_socket(self, socket_id: str) -> None:
        """A socket failed or no replica answers for it: keep no lease there. They go back to
        MemTier too (a no-op for the ones it voided when it dropped the socket)."""
        dropped = self._kept.on_socket(socket_id)
        self._kept.drop(dropped)
        for lease_id in dropped:
            self._pending.releases.append(((lease_id, None, None), _unawaited()))
        if dropped:
            self._kick()

    def _forget_older_incarnation(self, lease_id: str) -> None:
        """Lease ids start with their MemTier's incarnation (memtier/pager.py): one from a new
        incarnation means MemTier restarted, and knows none of the leases kept before."""
        incarnation = lease_id.rsplit("-", 1)[0]
        if incarnation != self._incarnation:
            self._incarnation = incarnation
            self._kept.clear()

    def kept(self) -> int:
        """Leases kept for reuse now."""
        return len(self._kept)

    # ------------------------------------------------------------------ lease reuse
    def _take_kept(self, expert: str) -> Lease | None:
        lease = self._kept.take(
            expert,
            # at a full batch of ours there, MemTier places it instead (it may replicate the expert)
            lambda socket_id: self.saturation is None or self._busy[socket_id] < self.saturation,
        )
        if lease is None:
            return None
        self._out[lease.lease_id] = lease
        self._busy[lease.socket_id] += 1
        if lease.lease_id in self._unsent_idle:  # MemTier still has it pinned: only count the request
            self._unsent_idle.discard(lease.lease_id)
            self._holds.remove((lease.lease_id, IDLE))
            self._holds.append((lease.lease_id, AGAIN))
        else:
            self._holds.append((lease.lease_id, REUSED))
        self.reused += 1  # the actor hears of it with the next call, within SWEEP_S (the sweep)
        return lease

    def _keep(self, lease: Lease) -> None:
        """Kept as its next request will see it: an HBM hit that evicts nothing (copied once, not at
        every reuse; one request at a time holds it)."""
        if lease.tier != "hbm" or lease.evict:
            lease = lease.model_copy(update={"tier": "hbm", "evict": []})
        self._kept.add(lease, time.monotonic() + self.hold_s)
        self._ensure_sweeper()

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Send back kept leases whose `hold_s` passed unused, and keep the holder seen alive
        while it has leases (a long generation holds one for longer than MemTier's timeout)."""
        while self._kept or self._out:
            await asyncio.sleep(min(self.hold_s / 2, SWEEP_S))
            now = time.monotonic()
            expired = self._kept.expired(now)
            for lease in expired:
                self._pending.releases.append(((lease.lease_id, None, None), _unawaited()))
            if expired or self._holds or self._reports or self._hits or now - self._last_call_s > PING_S:
                self._kick()

    # ------------------------------------------------------------------ batching
    def _enqueue_place(self, expert: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._pending.places.append((expert, future))
        self._kick()
        return future

    def _has_work(self) -> bool:
        pending = self._pending
        return bool(pending.places or pending.releases or self._holds or self._reports or self._hits)

    def _kick(self) -> None:
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while self._has_work() or self.holder:
                places = self._pending.places[:MAX_BATCH]
                releases = self._pending.releases[:MAX_BATCH]
                del self._pending.places[: len(places)]
                del self._pending.releases[: len(releases)]
                holds, self._holds = self._holds, []
                self._unsent_idle.clear()
                reports, self._reports = self._reports, []
                hits, self._hits = self._hits, 0
                served, self._served = list(self._served), set()
                self.calls += 1
                self._last_call_s = time.monotonic()
                try:
                    placed, released, revoked, self._memtier_waiting = await self.memtier.batch.remote(
                        [expert for expert, _ in places],
                        [args for args, _ in releases],
                        self.holder,
                        holds,
                        reports,
                        served,
                        hits,
                    )
                except Exception as err:  # the actor call itself failed: every caller sees it
                    self._kept.clear()  # a restarted MemTier knows none of them
                    for _, future in places + releases:
                        if not future.done():
                            future.set_exception(err)
                    if not self._has_work():
                        break
                    continue
                for (_, future), result in zip(places, placed, strict=True):
                    if isinstance(result, tuple):
                        result = lease_from_tuple(result)
                    if future.cancelled() and isinstance(result, Lease):
                        self._orphan(result)  # its caller went away: give the lease straight back
                    _settle(future, result)
                for (_, future), result in zip(releases, released, strict=True):
                    _settle(future, result)
                if revoked:
                    self._kept.drop(revoked)
                if not self._has_work():
                    break  # a holder's call doubles as its liveness ping: one per kick is enough
        finally:
            self._sending = False

    def _orphan(self, lease: Lease) -> None:
        if self._out.pop(lease.lease_id, None) is not None:
            self._busy[lease.socket_id] -= 1
        future = asyncio.get_running_loop().create_future()
        self._pending.releases.append(((lease.lease_id, None, None), future))


def _plain_hit(report: ActivationReport) -> bool:
    """A request that found its expert in HBM and changed nothing: all MemTier records of it is
    one hit, so it travels as a count: no report to pickle here or to unpickle at the authority."""
    return report.tier == "hbm" and not report.evicted and not report.bytes_moved and not report.store_read


def _unawaited() -> asyncio.Future:
    """The future of a release nobody awaits (a kept lease expiring): an error is retrieved here,
    so asyncio does not log it; MemTier's holder timeout reaps what a failed release left."""
    future = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future


def _settle(future: asyncio.Future, result) -> None:
    if future.done():
        return  # the caller went away (cancelled)
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
