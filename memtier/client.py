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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from memtier.models import ActivationReport, Lease, SocketInfo
from memtier.pager import lease_from_tuple

__all__ = ["MemTierClient"]

MAX_BATCH = 512  # one actor call stays well under a millisecond of bookkeeping at this size


@dataclass
class _Pending:
    places: list[tuple[str, asyncio.Future]] = field(default_factory=list)
    releases: list[tuple[tuple[str, ActivationReport | None, SocketInfo | None], asyncio.Future]] = field(
        default_factory=list
    )


class MemTierClient:
    """Batches `place` and `release` for one event loop; the same results as the actor's own calls."""

    def __init__(self, memtier) -> None:
        self.memtier = memtier
        self._pending = _Pending()
        self._sending = False
        self.calls = 0  # actor calls made: pairs / calls is the batching achieved

    async def place(self, expert: str, timeout_s: float | None = None) -> Lease:
        result = await self._enqueue_place(expert)
        if result is None:  # no capacity now: wait on the actor like an unbatched caller
            return await self.memtier.place.remote(expert, timeout_s)
        return result

    async def release(
        self, lease_id: str, report: ActivationReport | None = None, socket: SocketInfo | None = None
    ) -> bool:
        future = asyncio.get_running_loop().create_future()
        self._pending.releases.append(((lease_id, report, socket), future))
        self._kick()
        return await future

    def _enqueue_place(self, expert: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._pending.places.append((expert, future))
        self._kick()
        return future

    def _kick(self) -> None:
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while self._pending.places or self._pending.releases:
                places = self._pending.places[:MAX_BATCH]
                releases = self._pending.releases[:MAX_BATCH]
                del self._pending.places[: len(places)]
                del self._pending.releases[: len(releases)]
                self.calls += 1
                try:
                    placed, released = await self.memtier.batch.remote(
                        [expert for expert, _ in places], [args for args, _ in releases]
                    )
                except Exception as err:  # the actor call itself failed: every caller sees it
                    for _, future in places + releases:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, future), result in zip(places, placed, strict=True):
                    if isinstance(result, tuple):
                        result = lease_from_tuple(result)
                    if future.cancelled() and isinstance(result, Lease):
                        self._orphan(result)  # its caller went away: give the lease straight back
                    _settle(future, result)
                for (_, future), result in zip(releases, released, strict=True):
                    _settle(future, result)
        finally:
            self._sending = False

    def _orphan(self, lease: Lease) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.releases.append(((lease.lease_id, None, None), future))


def _settle(future: asyncio.Future, result) -> None:
    if future.done():
        return  # the caller went away (cancelled)
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
