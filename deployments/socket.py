"""`ExpertSocket`: one Serve replica per socket (a GPU, or a CPU worker with a byte budget).

Each replica registers with MemTier under its Serve replica id (the id the `LeaseRouter`
dispatches on), pages experts into its HBM as leases demand, batches concurrent requests for
the same expert, and streams tokens back. The lease is released whatever happens: completion,
an error, or the client going away (the ingress cancels the stream).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from ray import serve

from cluster.config import ClusterConfig
from deployments.batcher import ExpertBatcher
from deployments.generation import GenRequest, eos_token_ids
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
        self.batcher = ExpertBatcher(config.serve.max_batch_size, config.serve.batch_wait_timeout_s)
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
                temperature=req.temperature,
                top_p=req.top_p,
                stop=req.stop,
                seed=req.seed,
            )
            events = self.batcher.submit(
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
                    ).model_dump()
                    if event.finish_reason is not None:
                        return
            finally:
                gen.cancelled.set()  # a cancelled stream stops its row at the next step

    async def info(self) -> dict:
        return self.agent.residency.info().model_dump()

    async def check_health(self) -> None:
        if self.agent._heartbeat_task is not None and self.agent._heartbeat_task.done():
            raise RuntimeError("memtier heartbeat loop stopped")
