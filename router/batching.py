"""Route requests that arrive together in one encoder pass: `RouteBatcher` (Serve's `@serve.batch`).

The ingress routes every `model: "coe"` request. One call per request makes 32 concurrent
requests 32 tokenizer calls and 32 forward passes queued on a worker thread each; batched,
they are one tokenizer call and one pass (`Router.route_batch`), and the thread pool is not
flooded. Each item is checked on its own BEFORE it joins a batch, so one bad request gets its
own 400 and never fails the others (`route_batch` would fail the whole batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ray import serve

from router.conversation import routing_text
from router.decision import RouteDecision
from router.prompt import Prompt
from router.routing import Router

# Why 32: the concurrency the latency target names; a batch of 32 short prompts is still one
# small matrix for the encoder. Why 2 ms: the wait a lone request pays at most for company,
# well under the 5 ms p50 budget; under load batches fill before it runs out.
MAX_BATCH_SIZE = 32
BATCH_WAIT_S = 0.002


class RouteBatcher:
    """`await batcher.route(prompt, session)` -> RouteDecision, batched with concurrent callers."""

    def __init__(self, get_router: Callable[[], Router]):
        self._get_router = get_router
        self.batches = 0  # counted so tests and benches can see that batching happened
        self.items = 0

    async def route(self, prompt: Prompt, session: str | None = None) -> RouteDecision:
        routing_text(prompt)  # raises InvalidPromptError for this caller alone
        return await self._batched((prompt, session))

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, items: list[tuple[Prompt, str | None]]) -> list[RouteDecision]:
        self.batches += 1
        self.items += len(items)
        router = self._get_router()
        prompts = [p for p, _ in items]
        sessions = [s for _, s in items]
        return await asyncio.to_thread(router.route_batch, prompts, sessions=sessions)
