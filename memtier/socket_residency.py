"""What one socket holds in HBM, enforced locally: the socket half of the memtier contract.

MemTier decides placement and names victims, but the socket is where bytes really live, so it
keeps its own `ByteBudgetLRU` with the same budget and never exceeds it (invariant 1), never
evicts an expert a running request uses (invariant 2), and reports what it really holds back to
MemTier with every release and heartbeat (invariant 3). Used by the `ExpertSocket` Serve replica
and by plain actors in the memtier tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import ray
import torch

from cluster.config import MemtierConfig
from memtier.lru import AllPinnedError, ByteBudgetLRU
from memtier.materialize import Materialized, Materializer
from memtier.models import ActivationReport, HeldTensors, Lease, SocketInfo, Tier
from memtier.weights import ExpertWeights

# expert -> {"ref": [ObjectRef], "store_read": bool}, from the node's DDR store
DDRFetch = Callable[[str], Awaitable[dict]]


class SocketBusyError(Exception):
    """The socket could not make room before the deadline: every resident is in use."""


class SocketResidency:
    def __init__(
        self,
        socket_id: str,
        node_id: str,
        hbm_bytes: int,
        expert_bytes: dict[str, int],
        fetch_from_ddr: DDRFetch,
        *,
        device: str = "cpu",
        dtypes: dict[str, torch.dtype] | None = None,
        kv_cache_bytes: int = 0,
    ) -> None:
        self.socket_id = socket_id
        self.kv_cache_bytes = kv_cache_bytes  # the engine's KV reserve, reported so MemTier sees it
        self.node_id = node_id
        self.expert_bytes = expert_bytes
        self.fetch_from_ddr = fetch_from_ddr
        self.dtypes = dtypes or {}
        self.lru: ByteBudgetLRU[str] = ByteBudgetLRU(hbm_bytes)
        self.models: dict[str, Materialized] = {}
        self.materializer = Materializer(device)
        self._loading: dict[str, asyncio.Future] = {}
        self._room: asyncio.Condition | None = None
        self.activations = 0
        self.evictions = 0

    def _condition(self) -> asyncio.Condition:
        if self._room is None:
            self._room = asyncio.Condition()
        return self._room

    def info(self) -> SocketInfo:
        return SocketInfo(
            socket_id=self.socket_id,
            node_id=self.node_id,
            hbm_bytes=self.lru.capacity_bytes,
            kv_cache_bytes=self.kv_cache_bytes,
            residents=[e for e in self.lru.keys_lru_order() if e in self.models],
            in_use=[e for e in self.lru.keys_lru_order() if self.lru.is_pinned(e)],
            taken_ns=time.monotonic_ns(),
        )

    def held_tensor_bytes(self) -> HeldTensors:
        """The bytes of the models this socket really holds (weights; the engine adds its KV).

        Counted from the tensors, so a check against `hbm_per_socket` can fail where the ledger
        cannot. A model whose tensors went back to the meta device (freed while still listed) is
        not counted as materialised. CPU sockets map DDR zero-copy: these bytes live in the node's
        object store, but they are what this socket holds.
        """
        seen: set[tuple[str, int]] = set()
        weights_bytes = 0
        materialised: list[str] = []
        for expert, materialized in self.models.items():
            tensors = [*materialized.model.parameters(), *materialized.model.buffers()]
            if any(t.device.type == "meta" for t in tensors):
                continue
            materialised.append(expert)
            for tensor in tensors:
                key = (str(tensor.device), tensor.data_ptr())
                if key not in seen:  # tied weights (lm_head = embed_tokens) are one tensor
                    seen.add(key)
                    weights_bytes += tensor.nbytes
        return HeldTensors(
            weights_tensor_bytes=weights_bytes,
            materialised=materialised,
            ledger=self.lru.keys_lru_order(),
            loading=sorted(self._loading),
        )

    def _free(self, expert: str) -> None:
        materialized = self.models.pop(expert, None)
        if materialized is not None:
            self.materializer.free(materialized)
        self.evictions += 1

    async def acquire(self, lease: Lease, timeout_s: float = 120.0) -> tuple[Materialized, ActivationReport]:
        """Pin `lease.expert` here, paging it in if needed; the caller must `release` it."""
        expert = lease.expert
        room = self._condition()
        evicted: list[str] = []
        deadline = time.monotonic() + timeout_s
        async with room:
            if expert in self.lru:
                self.lru.pin(expert)
                self.lru.touch(expert)
                loading = self._loading.get(expert)
                tier: Tier = "hbm"
            else:
                loading = None
                for victim in lease.evict:  # MemTier's choice, unless a request here still uses it
                    if victim in self.lru and not self.lru.is_pinned(victim):
                        self.lru.remove(victim)
                        self._free(victim)
                        evicted.append(victim)
                while True:
                    try:
                        for victim in self.lru.insert(expert, self.expert_bytes[expert], pin=True):
                            self._free(victim)
                            evicted.append(victim)
                        break
                    except AllPinnedError:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise SocketBusyError(
                                f"socket {self.socket_id}: no room for {expert!r} within {timeout_s}s; "
                                f"in use: {self.info().in_use}"
                            ) from None
                        try:
                            await asyncio.wait_for(room.wait(), remaining)
                        except TimeoutError:
                            pass
                tier = "ddr"
                self._loading[expert] = asyncio.get_running_loop().create_future()
        if loading is not None:  # someone else is paging it in: share their load
            try:
                await asyncio.shield(loading)
            except BaseException:
                await self.release(expert)
                raise
            return self.models[expert], self._report("hbm", 0.0, 0, False, evicted)
        if tier == "hbm":
            return self.models[expert], self._report("hbm", 0.0, 0, False, evicted)
        return await self._page_in(expert, evicted)

    async def _page_in(self, expert: str, evicted: list[str]) -> tuple[Materialized, ActivationReport]:
        started = time.perf_counter()
        future = self._loading[expert]
        parts_s: dict[str, float] = {}
        try:
            fetched = await self.fetch_from_ddr(expert)
            fetched_at = time.perf_counter()
            payload = await fetched["ref"][0]
            mapped_at = time.perf_counter()
            weights = ExpertWeights(arrays=payload["arrays"], torch_dtypes=payload["dtypes"])
            dtype = self.dtypes.get(expert, torch.bfloat16)
            materialized = await asyncio.to_thread(
                self.materializer.materialize, expert, weights, payload["config"], dtype
            )
            parts_s = {
                **fetched.get("parts_s", {}),
                "fetch": fetched_at - started,
                "map": mapped_at - fetched_at,
                "materialize": time.perf_counter() - mapped_at,
            }
        except BaseException as err:
            async with self._condition():
                self._loading.pop(expert, None)
                self.lru.unpin(expert)
                self.lru.remove(expert)
                self._condition().notify_all()
            future.set_exception(err)
            future.exception()  # mark retrieved: waiters re-raise their own copy
            raise
        self.models[expert] = materialized
        self._loading.pop(expert, None)
        future.set_result(True)
        self.activations += 1
        tier: Tier = "store" if fetched["store_read"] else "ddr"
        report = self._report(
            tier, time.perf_counter() - started, materialized.size_bytes, fetched["store_read"], evicted
        )
        report.parts_s = parts_s
        return materialized, report

    def _report(
        self, tier: Tier, switch_s: float, bytes_moved: int, store_read: bool, evicted: list[str]
    ) -> ActivationReport:
        return ActivationReport(
            tier=tier,
            switch_s=switch_s,
            bytes_moved=bytes_moved,
            store_read=store_read,
            evicted=evicted,
            residents=self.info().residents,
        )

    async def drop(self, expert: str) -> bool:
        """Evict `expert` now if it is resident and no request uses it; True if it was dropped.

        For admission (a one-off expert is served, then dropped so it does not displace hotter
        ones) and for benches that need a cold socket; a pinned or loading expert stays.
        """
        async with self._condition():
            if expert not in self.models or self.lru.is_pinned(expert) or expert in self._loading:
                return False
            self.lru.remove(expert)
            self._free(expert)
            self._condition().notify_all()
            return True

    async def release(self, expert: str) -> None:
        async with self._condition():
            if expert in self.lru and self.lru.is_pinned(expert):
                self.lru.unpin(expert)
                self.lru.touch(expert)
            self._condition().notify_all()


def ddr_fetcher(
    cluster: str,
    node_id: str,
    ddr_bytes: int,
    checkpoints: dict[str, str],
    memtier_name: str | None,
    policy: MemtierConfig | None = None,
) -> DDRFetch:
    """A `fetch_from_ddr` bound to this node's DDR store actor (created on first use)."""
    from memtier.ddr_store import ddr_store_for_node

    store = None

    async def fetch(expert: str) -> dict:
        nonlocal store
        if store is None:
            store = ddr_store_for_node(cluster, node_id, ddr_bytes, checkpoints, memtier_name, policy)
        return await store.get.remote(expert)

    return fetch


def current_node_id() -> str:
    return ray.get_runtime_context().get_node_id()
