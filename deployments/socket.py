"""`ExpertSocket`: one Serve replica per socket (a GPU, or a CPU worker with a byte budget).

Each replica registers with MemTier under its Serve replica id (the id the `LeaseRouter`
dispatches on), pages experts into its HBM as leases demand, runs every request through its
continuous-batching engine (deployments/engine.py: a request joins its expert's running batch
at the next step; KV cache inside the socket's budget), and streams tokens back. The lease is
released whatever happens: completion, an error, or the client going away (the ingress cancels
the stream).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict

from ray import serve

from cluster.config import ClusterConfig
from deployments.engine import SocketEngine
from deployments.generation import GenRequest, TokenEvent, eos_token_ids
from deployments.sampling import SamplingParams, TokenLogprob
from deployments.structured import json_constraint
from deployments.tokenizers import TokenizerCache
from deployments.wire import LeaseMismatch, SocketEvent, SocketRequest, WireLogprob
from memtier.models import HeldTensors, Lease
from memtier.socket_agent import SocketAgent

logger = logging.getLogger("ray.serve")


class ExpertSocket:
    async def __init__(self, config: ClusterConfig, heartbeat_s: float = 1.0) -> None:
        from deployments.memtier_client import ensure_memtier

        self.config = config
        context = serve.get_replica_context()
        self.socket_id = context.replica_id.unique_id
        ensure_memtier(config)
        self.agent = SocketAgent(config, self.socket_id, heartbeat_s=heartbeat_s)
        await self.agent.start()
        self.tokenizers = TokenizerCache(config)
        self.engine = SocketEngine(
            max_batch_size=config.serve.max_batch_size,
            prefill_chunk_tokens=config.serve.prefill_chunk_tokens,
            kv_capacity_bytes=config.topology.kv_cache_per_socket,
            name=self.socket_id,
        )
        from deployments import metrics

        metrics.start_pushing(config)
        self._gauges = asyncio.get_running_loop().create_task(self._publish_rows(metrics))
        logger.info("socket %s on node %s registered with memtier", self.socket_id, self.agent.node_id)

    async def _publish_rows(self, metrics, period_s: float = 1.0) -> None:
        """num_requests_running / num_requests_waiting per expert, from the engine, every second."""
        shown: set[str] = set()
        while True:
            counts = self.engine.rows_by_expert()
            for expert in shown | set(counts):
                running, waiting = counts.get(expert, (0, 0))
                metrics.set_running(self.socket_id, expert, running)
                metrics.set_waiting(self.socket_id, expert, waiting)
            shown = set(counts)
            await asyncio.sleep(period_s)

    async def generate(self, request: dict, socket: str, lease: Lease) -> AsyncIterator[dict]:
        """Stream `SocketEvent` dicts: one activation event, then tokens until a finish_reason."""
        if lease.socket_id != self.socket_id or socket != self.socket_id:
            raise LeaseMismatch(
                f"lease {lease.lease_id} names socket {lease.socket_id}, this is {self.socket_id}"
            )
        req = SocketRequest.model_validate(request)
        async with self.agent.leased(lease) as (materialized, report):
            yield SocketEvent(
                type="activation", report=report, socket_id=self.socket_id, node_id=self.agent.node_id
            ).model_dump()
            tokenizer = self.tokenizers.get(req.expert)
            model = materialized.model
            eos_ids = eos_token_ids(model, tokenizer)
            rows = await self._rows(req, model, tokenizer, eos_ids)
            # One queue for the request's n rows: each event says its row (`index`).
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()
            for index, gen in enumerate(rows):
                gen.emit = lambda event, i=index: loop.call_soon_threadsafe(events.put_nowait, (i, event))
            self.engine.add(req.expert, model, tokenizer, eos_ids, *rows)
            try:
                running = len(rows)
                while running:
                    index, event = await events.get()
                    yield _wire_event(index, event)
                    running -= event.finish_reason is not None
            finally:
                for gen in rows:
                    gen.cancelled.set()  # a cancelled stream stops its rows at the next step
                self.engine.wake()  # ...or they leave the queue now, if they were waiting for KV room

    async def _rows(self, req: SocketRequest, model, tokenizer, eos_ids: set[int]) -> list[GenRequest]:
        """The request's rows, n per prompt (prompt-major): choice j samples with seed + j (its own
        stream), each with its own grammar matcher when the answer must match a JSON schema (built
        off the event loop: the first one per tokenizer takes about a second)."""
        prompts = [req.input_ids, *req.more_prompts]
        count = len(prompts) * req.n
        constraints: list = [None] * count
        if req.json_schema is not None:
            vocab_size = int(model.get_output_embeddings().weight.shape[0])
            schema = req.json_schema
            constraints = await asyncio.to_thread(
                lambda: [json_constraint(tokenizer, vocab_size, eos_ids, schema) for _ in range(count)]
            )
        sampling = req.sampling.model_dump()
        return [
            GenRequest(
                input_ids=prompts[row // req.n],
                max_tokens=req.max_tokens,
                params=SamplingParams(
                    **{
                        **sampling,
                        "seed": None if req.sampling.seed is None else req.sampling.seed + row % req.n,
                    },
                    logprobs=req.logprobs,
                ),
                stop=req.stop,
                constraint=constraints[row],
                prompt_logprobs=req.prompt_logprobs,
            )
            for row in range(count)
        ]

    def _check_target(self, socket: str | None) -> None:
        """`socket` (a replica id) makes the LeaseRouter send a call to that replica; one that reached
        another (the caller's router did not know the target yet) says so rather than answer for it."""
        if socket is not None and socket != self.socket_id:
            raise LeaseMismatch(f"call for socket {socket}, this is {self.socket_id}")

    async def engine_stats(self, socket: str | None = None) -> dict:
        """Running and waiting rows, KV bytes reserved and really held (tests, metrics)."""
        self._check_target(socket)
        return asdict(self.engine.stats())

    async def held_tensor_bytes(self, socket: str | None = None) -> HeldTensors:
        """The tensors this socket really holds: its models' weights and its engine's KV cache, and
        which experts have rows running (tests check invariant 1 with it, not with the ledger)."""
        self._check_target(socket)
        held = self.agent.residency.held_tensor_bytes()
        rows = self.engine.rows_by_expert()
        busy = sorted(expert for expert, (running, waiting) in rows.items() if running or waiting)
        return held.model_copy(update={"kv_tensor_bytes": self.engine.kv_cache_bytes(), "running": busy})

    async def info(self) -> dict:
        return self.agent.residency.info().model_dump()

    async def check_health(self) -> None:
        if self.agent._heartbeat_task is not None and self.agent._heartbeat_task.done():
            raise RuntimeError("memtier heartbeat loop stopped")


def _wire_logprobs(logprobs: list[TokenLogprob]) -> list[WireLogprob]:
    return [WireLogprob(token_id=lp.token_id, logprob=lp.logprob, top=lp.top) for lp in logprobs]


def _wire_event(index: int, event: TokenEvent) -> dict:
    """A row's `TokenEvent` as the `SocketEvent` dict the ingress reads (token ids, not token text)."""
    return SocketEvent(
        type="token",
        index=index,
        text=event.text,
        completion_tokens=event.completion_tokens,
        finish_reason=event.finish_reason,
        token_ids=event.token_ids,
        logprobs=_wire_logprobs(event.logprobs),
        prompt_logprobs=_wire_logprobs(event.prompt_logprobs) if event.prompt_logprobs is not None else None,
        queue_s=event.queue_s,
    ).model_dump()
