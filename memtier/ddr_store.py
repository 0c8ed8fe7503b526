"""The DDR tier: one actor per node holding experts in that node's Ray object store.

`ray.put` of an expert's name -> array dict places its bytes once in the node's shared memory;
every socket on the node then maps them zero-copy with `ray.get`. The store keeps its own
byte-budgeted LRU (the node's DDR budget), reads the STORE only on a miss (invariant 6), and
loads an expert once however many sockets ask for it at the same time (STYLE: "load once under
concurrency", as Ray's multiplex.py does).
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.config import MemtierConfig
from memtier.lru import AllPinnedError, ByteBudgetLRU
from memtier.models import HeldObjects, Lease, SocketInfo
from memtier.node_beats import NodeBeats, NodeBeatsStats
from memtier.policy import make_policy
from memtier.store import checkpoint_info, model_config_dict, read_weights

logger = logging.getLogger(__name__)
NAMESPACE = "coe"


def ddr_store_name(cluster: str, node_id: str) -> str:
    return f"coe_ddr_{cluster}_{node_id}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class DDRStore:
    """Per-node DDR: expert id -> object ref of its weights, within `ddr_bytes`."""

    def __init__(
        self,
        cluster: str,
        node_id: str,
        ddr_bytes: int,
        checkpoints: dict[str, str],
        memtier_name: str | None = None,
        policy: MemtierConfig | None = None,
    ) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.checkpoints = checkpoints
        self.memtier_name = memtier_name
        self._sizes: dict[str, int] = {}
        # The node's own request stream (its sockets' page-ins) drives its policy: what one node's
        # sockets miss is not what another's do.
        self.policy = make_policy(policy, ddr_bytes, self._sizes)
        self.lru: ByteBudgetLRU[str] = ByteBudgetLRU(ddr_bytes, self.policy)
        self.refs: dict[str, ray.ObjectRef] = {}
        self.store_reads: dict[str, int] = {}
        self.bytes_read = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._room = asyncio.Condition()
        self._memtier = None  # MemTier's handle, looked up once (see _report)
        self.beats = NodeBeats(self._get_memtier)

    def _size(self, expert: str) -> int:
        if expert not in self._sizes:
            if expert not in self.checkpoints:
                raise KeyError(f"unknown expert {expert!r}")
            self._sizes[expert] = checkpoint_info(self.checkpoints[expert]).size_bytes
        return self._sizes[expert]

    async def get(self, expert: str) -> dict:
        """`{"ref": [ObjectRef], "store_read": bool, "seconds": float}` for `expert`'s weights.

        The ref is wrapped in a list so Ray hands it over instead of resolving it here.
        """
        started = time.perf_counter()
        parts_s: dict[str, float] = {}
        self._size(expert)  # known before the policy records it, so it weighs the right bytes
        self.policy.record(expert)
        store_read = await self._ensure(expert, pin=True, parts_s=parts_s)
        try:
            ref = self.refs[expert]
        finally:
            self.lru.unpin(expert)
            async with self._room:
                self._room.notify_all()
        seconds = time.perf_counter() - started
        return {"ref": [ref], "store_read": store_read, "seconds": seconds, "parts_s": parts_s}

    async def prefetch(self, expert: str) -> bool:
        """Warm DDR with `expert`; True if that took a STORE read."""
        return await self._ensure(expert, pin=False)

    async def _ensure(self, expert: str, *, pin: bool, parts_s: dict[str, float] | None = None) -> bool:
        parts_s = {} if parts_s is None else parts_s
        started = time.perf_counter()
        lock = self._locks.setdefault(expert, asyncio.Lock())
        async with lock:
            # Look again under the lock: a concurrent caller may have just loaded it.
            if expert in self.lru:
                self.lru.touch(expert)
                if pin:
                    self.lru.pin(expert)
                return False
            size = self._size(expert)
            evicted = await self._reserve(expert, size)
            parts_s["store_wait"] = time.perf_counter() - started
            try:
                weights = await asyncio.to_thread(self._read_and_put, expert, parts_s)
            except BaseException:
                self.lru.unpin(expert)
                self.lru.remove(expert)
                raise
            self.refs[expert] = weights
            if not pin:
                self.lru.unpin(expert)
            self.store_reads[expert] = self.store_reads.get(expert, 0) + 1
            self.bytes_read += size
        self._report(store_reads=1, bytes_read=size, evictions=len(evicted))
        return True

    async def _reserve(self, expert: str, size: int) -> list[str]:
        """Reserve `size` bytes (pinned), evicting LRU unpinned experts; wait while all are pinned."""
        async with self._room:
            while True:
                try:
                    victims = self.lru.insert(expert, size, pin=True)
                    break
                except AllPinnedError:
                    await self._room.wait()
        for victim in victims:
            self.refs.pop(victim, None)  # the object is freed once no socket still maps it
        return victims

    def _read_and_put(self, expert: str, parts_s: dict[str, float]) -> ray.ObjectRef:
        started = time.perf_counter()
        checkpoint = self.checkpoints[expert]
        weights = read_weights(checkpoint)
        parts_s["read"] = time.perf_counter() - started
        # Plain ndarrays, not np.memmap views: Ray stores those out of band and hands sockets on this
        # node zero-copy views; a memmap subclass would be pickled and copied on every ray.get.
        payload = {
            "arrays": {name: np.asarray(array) for name, array in weights.arrays.items()},
            "dtypes": weights.torch_dtypes,
            "config": model_config_dict(checkpoint),
        }
        put_started = time.perf_counter()
        ref = ray.put(payload)
        parts_s["put"] = time.perf_counter() - put_started
        return ref

    def _report(self, store_reads: int = 0, bytes_read: int = 0, evictions: int = 0) -> None:
        """Tell MemTier what this node's DDR holds now (fire and forget).

        The handle is cached: `ray.get_actor` is a blocking GCS lookup, and on the miss path it
        cost ~30 ms of a 25 MB expert's ~70 ms fetch (bench.switch `serving_store`). A restarted
        MemTier keeps its name, so the cached handle reaches the new instance.
        """
        try:
            memtier = self._get_memtier()
        except ValueError:
            return
        memtier.ddr_report.remote(self.node_id, self.lru.keys_lru_order(), store_reads, bytes_read, evictions)

    def _get_memtier(self):
        """MemTier's handle, cached; ValueError while there is none to reach."""
        if self.memtier_name is None:
            raise ValueError("this DDR store was started without a MemTier to report to")
        if self._memtier is None:
            self._memtier = ray.get_actor(self.memtier_name, namespace=NAMESPACE)
        return self._memtier

    async def beat(self, info: SocketInfo) -> Lease | None:
        """Relay a heartbeat of a socket on this node to MemTier with its neighbours' (one call per
        node, memtier/node_beats.py); returns MemTier's answer for it (a prefetch lease or None)."""
        return await self.beats.beat(info)

    def beat_stats(self) -> NodeBeatsStats:
        return self.beats.stats

    def evict(self, expert: str) -> bool:
        if expert not in self.lru or self.lru.is_pinned(expert):
            return False
        self.lru.remove(expert)
        self.refs.pop(expert, None)
        self._report(evictions=1)
        return True

    def residents(self) -> list[str]:
        return self.lru.keys_lru_order()

    async def held_object_bytes(self) -> HeldObjects:
        """What this node's DDR really holds, as Ray sizes each object (invariant 1's DDR half).

        Counted by the object store, not the ledger, so a check against `ddr_per_node` can fail
        where the ledger cannot. An evicted expert's object lives on while a socket still maps it
        (its HBM copy on CPU); it is no longer this store's, and not counted here.
        """
        refs = dict(self.refs)
        locations = ray.experimental.get_object_locations(list(refs.values())) if refs else {}
        where = {expert: locations.get(ref, {}) for expert, ref in refs.items()}
        return HeldObjects(
            object_bytes=sum(int(found.get("object_size") or 0) for found in where.values()),
            held=sorted(refs),
            ledger=self.lru.keys_lru_order(),
            off_node=sorted(e for e, found in where.items() if self.node_id not in found.get("node_ids", [])),
        )

    def stats(self) -> dict:
        return {
            "node_id": self.node_id,
            "capacity_bytes": self.lru.capacity_bytes,
            "used_bytes": self.lru.used_bytes,
            "residents": self.lru.keys_lru_order(),
            "store_reads": dict(self.store_reads),
            "bytes_read": self.bytes_read,
            "evictions": self.lru.evictions,
        }


def ddr_store_for_node(
    cluster: str,
    node_id: str,
    ddr_bytes: int,
    checkpoints: dict[str, str],
    memtier_name: str | None = None,
    policy: MemtierConfig | None = None,
):
    """Get or create `node_id`'s DDR store, pinned to that node (hard node affinity)."""
    return DDRStore.options(
        name=ddr_store_name(cluster, node_id),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote(cluster, node_id, ddr_bytes, checkpoints, memtier_name, policy)
