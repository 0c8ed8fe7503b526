"""`ExpertSocket`: one Serve replica per socket (a GPU, or a CPU worker with a byte budget).

Each replica registers with MemTier under its Serve replica id (the id the `LeaseRouter`
dispatches on), pages experts into its HBM as leases demand, runs every request through its
continuous-batching engine (deployments/engine.py: a request joins its expert's running batch
at the next step; KV cache inside the socket's budget), and streams tokens back. The lease is
released whatever happens: completion, an error, or the client going away (the ingress cancels
the stream).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import asdict

from ray import serve

from cluster.config import ClusterConfig
from deployments.engine import SocketEngine
from deployments.generation import GenRequest, eos_token_ids
from deployments.sampling import SamplingParams
from deployments.tokenizers import TokenizerCache
from deployments.wire import LeaseMismatch, SocketEvent, SocketRequest
from memtier.models import Lease
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
        logger.info("socket %s on node %s registered with memtier", self.socket_id, self.agent.node_id)

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
            gen = GenRequest(
                input_ids=req.input_ids,
                max_tokens=req.max_tokens,
                params=SamplingParams(**req.sampling.model_dump()),
                stop=req.stop,
            )
            events = self.engine.submit(
                req.expert, materialized.model, tokenizer, eos_token_ids(materialized.model, tokenizer), gen
            )
            try:
                while True:
                    event = await events.get()
                    yield SocketEvent(
                        type="token",
                        text=event.text,
                        completion_tokens=event.completion_tokens,
                        finish_reason=event.finish_reason,
                        queue_s=event.queue_s,
                    ).model_dump()
                    if event.finish_reason is not None:
                        return
            finally:
                gen.cancelled.set()  # a cancelled stream stops its row at the next step
                self.engine.wake()  # ...or leaves the queue now, if it was waiting for KV room

    async def engine_stats(self) -> dict:
        """Running and waiting rows, KV bytes reserved and really held (tests, metrics)."""
        return asdict(self.engine.stats())

    async def info(self) -> dict:
        return self.agent.residency.info().model_dump()

    async def check_health(self) -> None:
        if self.agent._heartbeat_task is not None and self.agent._heartbeat_task.done():
            raise RuntimeError("memtier heartbeat loop stopped")
