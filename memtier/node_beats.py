"""One MemTier call per node for its sockets' heartbeats, not one per socket.

At 512 sockets (64 nodes x 8) the sockets' own heartbeats cost the authority about a third of
its CPU (bench/results/memtier_scale_held_run{1,2}.md: a probe without them reached ~5,000
place+release pairs/s, 3,300-3,800 with them): each is a Ray call whose fixed cost (receive,
deserialise, schedule a coroutine, reply) dwarfs the directory update it carries. A node's
sockets share one DDR store actor already (memtier/ddr_store.py), so it relays their beats:
the sockets beat on a common grid (`next_beat_in`), the relay gathers what arrives within
`window_s` and sends it as one `MemTier.polls` call, and hands each socket its own answer (an
HBM prefetch lease or None), as `MemTier.poll` would have. Liveness is unchanged: a socket that
stops beating stops appearing in its node's calls and is reaped as before. A relay that cannot
answer (its actor restarting, MemTier away) fails the beat, and the socket beats directly
(memtier/socket_agent.py), so the relay is never a single point of failure.

Measured (bench.memtier_scale, mode ``relayed``, bench/results/memtier_scale_relayed_run{1,2}.md):
at 512 sockets with lease reuse the authority received 2.2-3.0x fewer heartbeat calls (26-33/s
against 73-77/s), but its place+release rate moved within the box's noise, since busy sockets
already skip their beats. The saving is whole for idle sockets: 8 beats, one call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from memtier.models import Lease, SocketInfo

__all__ = ["NodeBeats", "NodeBeatsStats", "next_beat_in"]

DEFAULT_WINDOW_S = 0.05  # beats on one grid arrive within a few ms; 50 ms absorbs a slow event loop


def next_beat_in(period_s: float, now_s: float | None = None) -> float:
    """Seconds to the next multiple of `period_s` on the monotonic clock, which every process of a
    machine shares: the sockets of one node beat together, so their relay sends one call."""
    now_s = time.monotonic() if now_s is None else now_s
    return period_s - (now_s % period_s)


class NodeBeatsStats(BaseModel):
    beats: int = 0
    calls: int = 0
    failed_calls: int = 0


class NodeBeats:
    """Coalesces heartbeats of a node's sockets into `MemTier.polls` calls; holds nothing else."""

    def __init__(self, get_memtier: Callable[[], Any], window_s: float = DEFAULT_WINDOW_S) -> None:
        self._get_memtier = get_memtier  # looked up lazily: MemTier may start after the relay
        self.window_s = window_s
        self._pending: list[tuple[SocketInfo, asyncio.Future]] = []
        self._flush: asyncio.Task | None = None
        self.stats = NodeBeatsStats()

    async def beat(self, info: SocketInfo) -> Lease | None:
        """Send `info` with the node's next call; returns MemTier's answer for this socket."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()
        self._pending.append((info, answer))
        self.stats.beats += 1
        if self._flush is None:
            self._flush = loop.create_task(self._flush_after_window())
        return await answer

    async def _flush_after_window(self) -> None:
        await asyncio.sleep(self.window_s)
        pending, self._pending, self._flush = self._pending, [], None
        self.stats.calls += 1
        try:
            answers = await self._get_memtier().polls.remote([info for info, _ in pending])
        except Exception as err:  # each socket falls back to beating directly
            self.stats.failed_calls += 1
            for _, answer in pending:
                if not answer.done():
                    answer.set_exception(err)
            return
        for (_, answer), work in zip(pending, answers, strict=True):
            if not answer.done():
                answer.set_result(work)
