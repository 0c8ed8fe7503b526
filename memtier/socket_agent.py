"""A socket's link to memtier: residency, heartbeats and lease release in one place.

The `ExpertSocket` Serve replica and the plain `SocketActor` used by memtier tests and
`bench.switch` both run one of these, so the contract with the MemTier actor (register,
heartbeat what you hold, release each lease with what really happened) is written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import ray
import torch

from cluster.config import ClusterConfig
from memtier.client import FULL_REPORT_BEATS, MemTierClient
from memtier.materialize import Materialized
from memtier.models import ActivationReport, HeldTensors, Lease, SocketInfo
from memtier.node_beats import next_beat_in
from memtier.pager import NAMESPACE, memtier_actor_name
from memtier.socket_residency import SocketResidency, current_node_id, ddr_fetcher

logger = logging.getLogger(__name__)


class SocketAgent:
    def __init__(
        self,
        config: ClusterConfig,
        socket_id: str,
        *,
        node_id: str | None = None,
        heartbeat_s: float = 1.0,
        device: str | None = None,
    ) -> None:
        self.config = config
        self.socket_id = socket_id
        self.node_id = node_id or current_node_id()
        self.heartbeat_s = heartbeat_s
        self.memtier_name = memtier_actor_name(config.name)
        checkpoints = {e.id: str(config.checkpoint_path(e)) for e in config.experts}
        self._checkpoints = checkpoints
        device = device or config.topology.device
        if device == "cuda":
            device = f"cuda:{torch.cuda.current_device()}"
        self.residency = SocketResidency(
            socket_id,
            self.node_id,
            config.topology.weights_per_socket,  # the KV reserve is the socket engine's
            {e.id: e.size_bytes for e in config.experts},
            ddr_fetcher(
                config.name,
                self.node_id,
                config.topology.ddr_per_node,
                checkpoints,
                self.memtier_name,
                config.memtier,
            ),
            device=device,
            dtypes={e.id: getattr(torch, e.dtype) for e in config.experts},
            kv_cache_bytes=config.topology.kv_cache_per_socket,
        )
        self._heartbeat_task: asyncio.Task | None = None
        self._warm_task: asyncio.Task | None = None
        self._memtier = None
        self._client: MemTierClient | None = None
        self._ddr_store = None  # the node's DDR store, which relays heartbeats (set by warm())
        self._last_release_s = float("-inf")  # a release doubles as a heartbeat (see _heartbeat_forever)
        self._last_served_s = float("-inf")  # a held lease's request ended: its holder says we are alive
        self._last_report_s = float("-inf")  # MemTier last got our residency (a beat or a release)

    def _get_memtier(self):
        if self._memtier is None:
            self._memtier = ray.get_actor(self.memtier_name, namespace=NAMESPACE)
            self._client = MemTierClient(self._memtier)
        return self._memtier

    def _get_client(self) -> MemTierClient:
        """Releases from this socket's concurrent requests go to MemTier in batches (memtier/client.py)."""
        self._get_memtier()
        return self._client

    async def start(self) -> None:
        """Register now and heartbeat from then on (also how a restarted MemTier relearns us)."""
        await self._get_memtier().heartbeat.remote(self.residency.info())
        loop = asyncio.get_running_loop()
        if self._heartbeat_task is None:
            self._heartbeat_task = loop.create_task(self._heartbeat_forever())
        if self._warm_task is None:
            self._warm_task = loop.create_task(self.warm())

    async def stop(self) -> None:
        """Stop beating and warming: MemTier stops hearing from this socket and drops it after its
        socket timeout, as it would a dead one (a SocketActor rejoining another MemTier)."""
        for task in (self._heartbeat_task, self._warm_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._heartbeat_task = self._warm_task = None

    async def warmed(self) -> int:
        """Wait for the start-up warm-up (skeletons built); 0 if `start` has not run."""
        return await self._warm_task if self._warm_task is not None else 0

    async def warm(self) -> int:
        """Take the one-off costs of a first page-in off the request path; returns skeletons built.

        Traced on `make serve` (bench/results/switch.md, "serving miss"): a socket's first STORE
        miss spent ~2-3 s starting the node's DDR store actor and ~4 s building its first model
        skeleton, against ~0.6 s for the bytes themselves. Both are started here, in the
        background, when the socket registers. A socket that cannot read the STORE's configs
        (they travel with the weights) simply skips the skeletons.
        """
        from memtier.ddr_store import ddr_store_for_node
        from memtier.store import model_config_dict

        topology = self.config.topology
        store = ddr_store_for_node(
            self.config.name,
            self.node_id,
            topology.ddr_per_node,
            self._checkpoints,
            self.memtier_name,
            self.config.memtier,
        )
        try:
            await store.residents.remote()
            self._ddr_store = store
        except Exception as err:  # the first fetch will retry creating it
            logger.warning("DDR store warm-up failed: %s", err)
        built = 0
        for expert in self.config.experts:  # one skeleton per architecture: warm() skips pooled ones
            try:
                config_dict = await asyncio.to_thread(model_config_dict, self._checkpoints[expert.id])
            except OSError:
                continue
            if config_dict is not None:
                dtype = getattr(torch, expert.dtype)
                built += await asyncio.to_thread(self.residency.materializer.warm, config_dict, dtype)
        return built

    async def _heartbeat_forever(self) -> None:
        while True:
            # On the node's common grid, so its DDR store relays all its sockets' beats in one call.
            await asyncio.sleep(next_beat_in(self.heartbeat_s))
            now = time.monotonic()
            if now - self._last_release_s < self.heartbeat_s:
                # A release carried this socket's report within the period: MemTier knows it is alive
                # and what it holds. Busy sockets skip beats, which at 512 sockets were ~40% of the
                # authority's CPU (bench/results/memtier_scale.md).
                continue
            vouched = now - self._last_served_s < self.heartbeat_s
            if vouched and now - self._last_report_s < FULL_REPORT_BEATS * self.heartbeat_s:
                continue  # a holder vouched for us; our residency goes at least every FULL_REPORT_BEATS
            try:
                work = await self._beat(self.residency.info())
                self._last_report_s = time.monotonic()
            except Exception as err:  # MemTier restarting: keep trying, it will come back
                logger.warning("memtier heartbeat failed: %s", err)
                self._memtier = None
                continue
            if work is not None:  # an HBM prefetch for this idle socket (memtier/prefetch.py)
                asyncio.get_running_loop().create_task(self._prefetch(work))

    async def _beat(self, info: SocketInfo) -> Lease | None:
        """Through the node's DDR store, which sends its sockets' beats in one call
        (memtier/node_beats.py); directly when that store cannot answer in time."""
        if self._ddr_store is not None:
            try:
                return await asyncio.wait_for(self._ddr_store.beat.remote(info), self.heartbeat_s)
            except Exception as err:  # the store restarting or MemTier away: beat directly this time
                logger.info("heartbeat relay failed, beating directly: %s", err)
        return await self._get_memtier().poll.remote(info)

    async def _prefetch(self, lease: Lease) -> None:
        """Page a prefetched expert in and release at once: the lease pins it only while it loads."""
        try:
            async with self.leased(lease):
                pass
        except Exception as err:  # a failed prefetch costs nothing but its attempt
            logger.warning("prefetch of %s failed: %s", lease.expert, err)

    async def drop(self, expert: str) -> bool:
        """Evict an unused expert and tell MemTier at once (not at the next heartbeat)."""
        dropped = await self.residency.drop(expert)
        if dropped:
            await self._get_memtier().heartbeat.remote(self.residency.info())
        return dropped

    @contextlib.asynccontextmanager
    async def leased(self, lease: Lease) -> AsyncIterator[tuple[Materialized, ActivationReport]]:
        """Hold `lease.expert` in HBM for the body; release it here and at MemTier afterwards,
        whatever happens inside (errors, cancellation by a disconnected client). A lease with a
        `holder` is released at MemTier by that holder, which saw the request end."""
        if lease.socket_id != self.socket_id:
            raise ValueError(f"lease {lease.lease_id} is for socket {lease.socket_id}, not {self.socket_id}")
        report: ActivationReport | None = None
        try:
            materialized, report = await self.residency.acquire(lease)
            yield materialized, report
        finally:
            if report is not None:
                await self.residency.release(lease.expert)
                if not lease.keep:  # admission refused to keep it: serve, then drop (unless in use)
                    await self.residency.drop(lease.expert)
            if not lease.holder:
                await self._release_at_memtier(lease, report)
            else:  # its holder (the ingress) releases it, or reuses it, and says we are alive
                self._last_served_s = time.monotonic()

    async def _release_at_memtier(self, lease: Lease, report: ActivationReport | None) -> None:
        # Awaited (one actor round trip) so the next placement sees this socket's true load.
        with contextlib.suppress(Exception):
            release = self._get_client().release(lease.lease_id, report, self.residency.info())
            await asyncio.wait_for(release, 10)
            self._last_release_s = self._last_report_s = time.monotonic()


@ray.remote(num_cpus=0)
class SocketActor:
    """A socket without Serve: holds experts for a lease for `hold_s` and reports."""

    def __init__(self, config: ClusterConfig, socket_id: str, heartbeat_s: float = 0.5) -> None:
        self.agent = SocketAgent(config, socket_id, heartbeat_s=heartbeat_s)
        self._gates: dict[str, asyncio.Event] = {}

    async def rejoin(self, config: ClusterConfig) -> str:
        """Become a new, empty socket of `config`'s MemTier in this same process, warm when this
        returns: what a freshly started actor would be, without its seconds of torch and
        transformers imports (tests/test_memtier_cluster.py reuses its sockets across tests so)."""
        await self.agent.stop()
        self.agent = SocketAgent(config, self.agent.socket_id, heartbeat_s=self.agent.heartbeat_s)
        self._gates.clear()
        return await self.start(wait_warm=True)

    async def leave(self) -> None:
        """Stop beating (its MemTier is going away); `rejoin` makes it a socket again."""
        await self.agent.stop()

    def _gate(self, name: str) -> asyncio.Event:
        return self._gates.setdefault(name, asyncio.Event())

    async def open_gate(self, name: str) -> None:
        """Let every `run(..., gate=name)` go on: a test keeps a lease in flight for exactly as long
        as a scenario needs (a MemTier restart, say) without guessing a duration."""
        self._gate(name).set()

    async def start(self, wait_warm: bool = False) -> str:
        await self.agent.start()
        if wait_warm:
            await self.agent.warmed()
        return self.agent.node_id

    async def run(
        self, lease: Lease, hold_s: float = 0.0, generate_tokens: int = 0, gate: str | None = None
    ) -> dict:
        """Hold the lease for `hold_s` and until `gate` is open (other leases page in and evict
        around it meanwhile), then generate `generate_tokens` with the model it pinned, and say
        what the socket really holds."""
        residency = self.agent.residency
        async with self.agent.leased(lease) as (materialized, report):
            over_budget = residency.lru.used_bytes > residency.lru.capacity_bytes
            await asyncio.sleep(hold_s)
            if gate is not None:
                await self._gate(gate).wait()
            generated = 0
            if generate_tokens:
                ids = torch.tensor([[1, 2, 3]])
                out = await asyncio.to_thread(
                    materialized.model.generate,
                    input_ids=ids,
                    max_new_tokens=generate_tokens,
                    min_new_tokens=generate_tokens,
                    do_sample=False,
                    pad_token_id=0,
                )
                generated = out.shape[1] - ids.shape[1]
            return {
                "report": report,
                "used_bytes": residency.lru.used_bytes,
                "over_budget": over_budget,
                "residents": residency.info().residents,
                "generated_tokens": generated,
                "held": residency.held_tensor_bytes(),
            }

    async def held_tensor_bytes(self) -> HeldTensors:
        """What this socket really holds (no engine here, so no KV): see SocketResidency. Async, so
        it reads the residency on the event loop that changes it."""
        return self.agent.residency.held_tensor_bytes()

    async def drop(self, expert: str) -> bool:
        return await self.agent.drop(expert)

    def info(self) -> dict:
        return self.agent.residency.info().model_dump()
