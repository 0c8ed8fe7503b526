"""Route requests that arrive together in one encoder pass: `RouteBatcher`.

The ingress routes every `model: "coe"` request. One call per request makes 32 concurrent
requests 32 tokenizer calls and 32 encoder passes on worker threads; batched, they are one
call to `Router.route_batch`. This is `@serve.batch`'s rule (flush at `MAX_BATCH_SIZE` items or
`BATCH_WAIT_S` after the first), written out because `@serve.batch` in Ray 2.60 only runs
inside a Serve replica and the same batcher must run in benches and tests. Each item is
checked on its own BEFORE it joins a batch, so one bad request gets its own 400 and never
fails the others (`route_batch` would fail the whole batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
    """`await batcher.route(prompt, session)` -> RouteDecision, batched with concurrent callers.

    One instance per event loop (one per ingress replica).
    """

    def __init__(self, get_router: Callable[[], Router]):
        self._get_router = get_router
        self._pending: list[tuple[tuple[Prompt, str | None], asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0  # counted so tests and benches can see that batching happened
        self.items = 0

    async def route(self, prompt: Prompt, session: str | None = None) -> RouteDecision:
        routing_text(prompt)  # raises InvalidPromptError for this caller alone
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(((prompt, session), future))
        if len(self._pending) >= MAX_BATCH_SIZE:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(BATCH_WAIT_S, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._pending = self._pending, []
        if items:
            asyncio.ensure_future(self._run(items))

    async def _run(self, items: list[tuple[tuple[Prompt, str | None], asyncio.Future]]) -> None:
        self.batches += 1
        self.items += len(items)
        prompts = [p for (p, _), _ in items]
        sessions = [s for (_, s), _ in items]
        try:
            results = await asyncio.to_thread(self._get_router().route_batch, prompts, sessions=sessions)
        except Exception as err:  # noqa: BLE001 - handed to every waiting caller
            for _, future in items:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), result in zip(items, results, strict=True):
            if not future.done():
                future.set_result(result)
