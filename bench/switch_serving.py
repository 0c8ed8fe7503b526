"""A STORE->HBM miss through the serving path, beside `bench.switch`'s cold STORE tier.

`bench.switch`'s `store_cold` times the bytes (DDR store read + put, map, materialise) from
the driver. Serving adds the MemTier placement, the socket's own residency and lease bookkeeping
and the release round trip; issue 17 measured 15-30x more on `make serve`. This module runs the
same experts through that path, in the same Ray session as `store_cold`, so the ratio between the
two is this run's and not a comparison across days:

* ``serving_store``: MemTier ``place`` -> ``SocketActor.run`` (the `SocketAgent` code every
  `ExpertSocket` replica runs: `SocketResidency.acquire` -> the node's named `DDRStore.get`
  (STORE read + put) -> ``ray.get`` -> materialise -> release to MemTier), timed from the
  caller, with the expert dropped from the socket and from DDR and its file from the page cache
  before each repetition. Sockets are warm (`SocketAgent.warm`), as they are after start-up.
* parallel misses: every expert missing at once, one per socket, against the sum of their
  single-miss times (overlap = sum / wall: 1 is serial, the number of experts is perfect).
* same-expert misses: two requests for one cold expert at once must read the STORE once.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import ray
from pydantic import BaseModel, Field

from cluster.config import ClusterConfig
from memtier.ddr_store import ddr_store_for_node
from memtier.pager import start_memtier
from memtier.socket_agent import SocketActor
from memtier.store import checkpoint_info

__all__ = ["ParallelMiss", "ServingRig", "serving_config"]

CLUSTER_NAME = "bench-switch-serving"
_KV_ROOM_BYTES = 64 * 2**20  # above topology.kv_cache_per_socket's default: weights still fit


class ParallelMiss(BaseModel):
    """Every expert missing at once, one socket each."""

    experts: list[str]
    wall_s: float = Field(description="Median wall time until the last of them is usable.")
    sum_single_s: float = Field(description="Sum of the same experts' serving_store medians.")
    overlap: float = Field(description="sum_single_s / wall_s: 1 = serial, len(experts) = perfect overlap.")
    same_expert_store_reads: int = Field(
        description="STORE reads when two requests for one cold expert arrived together (goal: 1)."
    )


def serving_config(checkpoints: Sequence[Path], ddr_bytes: int) -> ClusterConfig:
    """One node, one socket per expert, each socket's HBM the largest expert plus room for a KV reserve."""
    largest = max(checkpoint_info(path).size_bytes for path in checkpoints)
    return ClusterConfig.model_validate(
        {
            "name": CLUSTER_NAME,
            "topology": {
                "nodes": 1,
                "sockets_per_node": len(checkpoints),
                "hbm_per_socket": largest + _KV_ROOM_BYTES,
                "ddr_per_node": ddr_bytes,
            },
            "experts": [{"id": path.name, "checkpoint": str(path.resolve())} for path in checkpoints],
            "router": {"fallback_expert": checkpoints[0].name, "category_map": {}},
        }
    )


class ServingRig:
    """MemTier, one warm `SocketActor` per expert and the node's DDR store, in the caller's Ray."""

    def __init__(self, config: ClusterConfig) -> None:
        from bench.switch import drop_page_cache

        self.drop_page_cache = drop_page_cache
        self.config = config
        sizes = {e.id: e.size_bytes for e in config.experts}
        self.memtier = start_memtier(config.name, sizes, config.topology.ddr_per_node, saturation=8)
        ray.get(self.memtier.ready.remote())
        self.sockets = [
            SocketActor.remote(config, f"s{i}", 0.5) for i in range(config.topology.sockets_per_node)
        ]
        node_ids = ray.get([socket.start.remote(True) for socket in self.sockets])  # warm, as after start-up
        checkpoints = {e.id: str(config.checkpoint_path(e)) for e in config.experts}
        self.ddr = ddr_store_for_node(config.name, node_ids[0], config.topology.ddr_per_node, checkpoints)

    def make_cold(self, experts: Sequence[str]) -> None:
        for expert in experts:
            ray.get([socket.drop.remote(expert) for socket in self.sockets])
            ray.get(self.ddr.evict.remote(expert))
            self.drop_page_cache(self.config.checkpoint_path(self.config.expert(expert)))
        time.sleep(0.2)  # let the DDR store's report reach MemTier before the next placement

    async def miss(self, expert: str) -> dict[str, float]:
        started = time.perf_counter()
        lease = await self.memtier.place.remote(expert)
        placed = time.perf_counter()
        socket = self.sockets[int(lease.socket_id[1:])]
        report = (await socket.run.remote(lease, 0.0))["report"]
        total = time.perf_counter() - started
        if not report.store_read:
            raise RuntimeError(f"{expert} was not a STORE miss: {report}")
        place = placed - started
        return {"total": total, "place": place, **report.parts_s, "overhead": total - place - report.switch_s}

    def store_reads(self, expert: str) -> int:
        return ray.get(self.ddr.stats.remote())["store_reads"].get(expert, 0)

    def cold_miss(self, expert: str) -> dict[str, float]:
        """One serving-path STORE miss of a cold expert: seconds per step, "total" included."""
        self.make_cold([expert])
        return asyncio.run(self.miss(expert))

    def parallel(self, experts: Sequence[str], repetitions: int, sum_single_s: float) -> ParallelMiss:
        """Every expert cold and missing at once; then two requests for one cold expert."""
        walls = []
        for _ in range(repetitions):
            self.make_cold(experts)
            started = time.perf_counter()
            asyncio.run(self.gather(experts))
            walls.append(time.perf_counter() - started)
        self.make_cold(experts[:1])
        before = self.store_reads(experts[0])
        asyncio.run(self.gather([experts[0], experts[0]]))
        wall_s = float(statistics.median(walls))
        return ParallelMiss(
            experts=list(experts),
            wall_s=wall_s,
            sum_single_s=sum_single_s,
            overlap=sum_single_s / wall_s,
            same_expert_store_reads=self.store_reads(experts[0]) - before,
        )

    async def gather(self, experts: Sequence[str]) -> list:
        """Requests at once; one that shares another's page-in reports no STORE read itself."""

        async def one(expert: str):
            lease = await self.memtier.place.remote(expert)
            socket = self.sockets[int(lease.socket_id[1:])]
            return (await socket.run.remote(lease, 0.0))["report"]

        return await asyncio.gather(*(one(expert) for expert in experts))

    def close(self) -> None:
        for actor in [*self.sockets, self.ddr, self.memtier]:
            ray.kill(actor)
