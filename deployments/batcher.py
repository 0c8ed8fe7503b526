"""Per-expert batching on a socket: concurrent requests for one expert share forward passes.

Requests for the same expert that arrive within `wait_s` of each other (up to `max_batch_size`)
run as one batch in a worker thread; each request's tokens flow back to its own asyncio queue.
Requests for different experts on one socket run as separate batches. A request that arrives
while its expert's batch is running waits for the next batch (static batching, stated plainly).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch

from deployments.generation import GenRequest, TokenEvent, generate_batch


@dataclass
class _Queued:
    request: GenRequest
    model: torch.nn.Module
    tokenizer: object
    eos_ids: set[int]


class ExpertBatcher:
    def __init__(self, max_batch_size: int, wait_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._queues: dict[str, list[_Queued]] = {}
        self._running: set[str] = set()
        self.batches = 0
        self.batched_requests = 0

    def submit(
        self, expert: str, model: torch.nn.Module, tokenizer, eos_ids: set[int], request: GenRequest
    ) -> asyncio.Queue[TokenEvent]:
        """Queue `request`; returns the queue its TokenEvents arrive on (last one has a finish_reason)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        request.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
        self._queues.setdefault(expert, []).append(_Queued(request, model, tokenizer, eos_ids))
        if expert not in self._running:
            self._running.add(expert)
            loop.create_task(self._drain(expert))
        return events

    async def _drain(self, expert: str) -> None:
        try:
            while self._queues.get(expert):
                await asyncio.sleep(self.wait_s)  # let concurrent requests join
                queue = self._queues[expert]
                batch, self._queues[expert] = queue[: self.max_batch_size], queue[self.max_batch_size :]
                batch = [q for q in batch if not q.request.cancelled.is_set()] or batch[:0]
                if not batch:
                    continue
                self.batches += 1
                self.batched_requests += len(batch)
                head = batch[0]
                try:
                    await asyncio.to_thread(
                        generate_batch, head.model, head.tokenizer, [q.request for q in batch], head.eos_ids
                    )
                except Exception as err:  # fail every request of the batch, keep the socket alive
                    for q in batch:
                        q.request.emit(
                            TokenEvent(f"[generation failed: {type(err).__name__}: {err}]", 0, "error")
                        )
        finally:
            self._running.discard(expert)
