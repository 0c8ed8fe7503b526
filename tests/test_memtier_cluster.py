"""Memtier on a real 2-node `ray.cluster_utils.Cluster`, 2 sockets per node, tiny experts.

Each test runs its own MemTier (its own cluster name) over plain socket actors pinned to nodes,
so the scenarios do not share residency.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.config import ClusterConfig
from memtier.ddr_store import ddr_store_for_node
from memtier.models import MemtierStatus
from memtier.pager import start_memtier
from memtier.socket_agent import SocketActor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = Cluster()
    for _ in range(2):
        cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20)
    ray.init(address=cluster.address, namespace="coe-tests")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


class Rig:
    """A MemTier plus 2x2 socket actors for one test."""

    def __init__(
        self, config: ClusterConfig, *, saturation: int | None = None, socket_timeout_s: float = 2.0
    ):
        self.config = config
        self.memtier = start_memtier(
            config.name,
            {e.id: e.size_bytes for e in config.experts},
            config.topology.ddr_per_node,
            saturation=saturation,
            socket_timeout_s=socket_timeout_s,
            place_timeout_s=30.0,
        )
        ray.get(self.memtier.ready.remote())
        self.node_ids = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])[:2]
        self.sockets = {}
        for n, node_id in enumerate(self.node_ids):
            for s in range(config.topology.sockets_per_node):
                socket_id = f"n{n}-s{s}"
                actor = SocketActor.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
                ).remote(config, socket_id, 0.3)
                self.sockets[socket_id] = actor
        ray.get([a.start.remote() for a in self.sockets.values()])

    def close(self) -> None:
        """Kill this test's actors so later tests do not share the CPUs with their heartbeats."""
        for actor in self.sockets.values():
            ray.kill(actor)
        for node_id in self.node_ids:
            ray.kill(self.ddr(node_id))
        ray.kill(self.memtier)

    def status(self) -> MemtierStatus:
        return ray.get(self.memtier.status.remote())

    def place(self, expert: str):
        return ray.get(self.memtier.place.remote(expert))

    def run(self, lease, hold_s: float = 0.0, tokens: int = 0) -> dict:
        return ray.get(self.sockets[lease.socket_id].run.remote(lease, hold_s, tokens))

    def ddr(self, node_id: str):
        checkpoints = {e.id: str(self.config.checkpoint_path(e)) for e in self.config.experts}
        return ddr_store_for_node(self.config.name, node_id, self.config.topology.ddr_per_node, checkpoints)

    def assert_budgets(self) -> None:
        status = self.status()
        for node in status.nodes:
            assert node.used_bytes <= node.ddr_bytes
            for socket in node.sockets:
                assert socket.used_bytes <= socket.hbm_bytes, socket
        for actor in self.sockets.values():
            try:
                info = ray.get(actor.info.remote(), timeout=10)
            except ray.exceptions.RayActorError:
                continue
            held = sum(self.config.expert(e).size_bytes for e in info["residents"])
            assert held <= self.config.topology.weights_per_socket


@pytest.fixture()
def make_rig(ray_cluster):
    rigs: list[Rig] = []

    def make(config: ClusterConfig, **options) -> Rig:
        rigs.append(Rig(config, **options))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def _config(tiny_config: ClusterConfig, name: str) -> ClusterConfig:
    return tiny_config.model_copy(update={"name": name}, deep=True)


def _wait_for(predicate, timeout_s: float = 15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_store_miss_then_hbm_hit_then_ddr_hit_on_the_same_node(make_rig, tiny_config):
    rig = make_rig(_config(tiny_config, "tiers"), saturation=1)
    first = rig.place("tiny-00")
    assert first.tier == "store"
    result = rig.run(first, tokens=2)  # it really generates with the paged-in weights
    assert result["report"].tier == "store" and result["report"].store_read
    assert result["report"].bytes_moved == tiny_config.expert("tiny-00").size_bytes

    second = rig.place("tiny-00")
    assert (second.tier, second.socket_id) == ("hbm", first.socket_id)
    assert rig.run(second)["report"].tier == "hbm"

    # Hold the only HBM copy; with saturation 1 the next request pages in beside it, and the
    # other socket on the same node finds it in that node's DDR.
    holder = rig.place("tiny-00")
    running = rig.sockets[holder.socket_id].run.remote(holder, 1.5)
    third = rig.place("tiny-00")
    assert third.tier == "ddr" and third.node_id == first.node_id and third.socket_id != first.socket_id
    report = rig.run(third)["report"]
    assert report.tier == "ddr" and not report.store_read
    ray.get(running)

    stats = ray.get(rig.memtier.stats.remote())
    assert stats.store_reads == 1 and stats.hbm.hits >= 2 and stats.ddr.hits >= 1
    assert stats.bytes_moved_store_to_ddr == tiny_config.expert("tiny-00").size_bytes


def test_eviction_under_oversubscription_keeps_every_budget(make_rig, tiny_config):
    rig = make_rig(_config(tiny_config, "evict"))
    for expert in tiny_config.expert_ids:
        lease = rig.place(expert)
        result = rig.run(lease)
        assert not result["over_budget"]
        rig.assert_budgets()
    stats = ray.get(rig.memtier.stats.remote())
    assert stats.hbm_evictions >= len(tiny_config.experts) - 8  # 16 experts, 8 HBM slots
    status = rig.status()
    resident = [e for node in status.nodes for s in node.sockets for e in s.residents]
    assert len(resident) <= 8 and len(set(resident)) == len(resident)
    # DDR (32MiB per node, ~10 experts) also evicted on the node that saw most experts.
    assert all(node.used_bytes <= node.ddr_bytes for node in status.nodes)


def test_sixteen_concurrent_leases_over_six_experts(make_rig, tiny_config):
    rig = make_rig(_config(tiny_config, "concurrent"))
    experts = [f"tiny-0{i}" for i in range(6)]

    async def one(index: int):
        lease = await rig.memtier.place.remote(experts[index % 6])
        return await rig.sockets[lease.socket_id].run.remote(lease, 0.3)

    async def all_of_them():
        tasks = [asyncio.ensure_future(one(i)) for i in range(16)]
        results = []
        for task in asyncio.as_completed(tasks):
            results.append(await task)
            rig.assert_budgets()  # after every completed step
        return results

    results = asyncio.run(all_of_them())
    assert len(results) == 16 and not any(r["over_budget"] for r in results)
    _wait_for(lambda: not ray.get(rig.memtier.leases.remote()))
    status = rig.status()
    assert all(s.pinned_bytes == 0 for n in status.nodes for s in n.sockets)


def test_a_killed_socket_is_dropped_from_the_directory(make_rig, tiny_config):
    rig = make_rig(_config(tiny_config, "socketdeath"))
    lease = rig.place("tiny-03")
    running = rig.sockets[lease.socket_id].run.remote(lease, 30.0)
    _wait_for(lambda: any("tiny-03" in s.residents for n in rig.status().nodes for s in n.sockets))
    ray.kill(rig.sockets[lease.socket_id])
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(running)
    _wait_for(lambda: lease.socket_id not in {s.socket_id for n in rig.status().nodes for s in n.sockets})
    assert lease.lease_id not in {held.lease_id for held in ray.get(rig.memtier.leases.remote())}
    again = rig.place("tiny-03")  # served elsewhere
    assert again.socket_id != lease.socket_id
    assert rig.run(again)["report"].tier in {"ddr", "store"}


def test_memtier_restarts_and_rebuilds_the_same_directory(make_rig, tiny_config):
    rig = make_rig(_config(tiny_config, "restart"))
    for expert in ["tiny-00", "tiny-01", "tiny-02", "tiny-05", "tiny-06"]:
        rig.run(rig.place(expert))

    def residency():
        status = rig.status()
        return {s.socket_id: sorted(s.residents) for n in status.nodes for s in n.sockets}, {
            n.node_id: sorted(n.residents) for n in status.nodes
        }

    before = residency()  # releases carry the sockets' reports, so this is already true
    ray.kill(rig.memtier, no_restart=False)
    after = _wait_for(lambda: (r := residency()) == before and r)
    assert after == before
    assert sum(len(v) for v in after[0].values()) == 5
    # It still places correctly: a resident expert is an HBM hit.
    assert rig.place("tiny-05").tier == "hbm"


def test_concurrent_misses_read_the_store_once(make_rig, tiny_config):
    config = _config(tiny_config, "loadonce")
    rig = make_rig(config)
    store = rig.ddr(rig.node_ids[0])
    results = ray.get([store.get.remote("tiny-09") for _ in range(8)])
    assert sum(r["store_read"] for r in results) == 1
    assert ray.get(store.stats.remote())["store_reads"] == {"tiny-09": 1}
    # Every caller got the same object: one copy in the node's object store.
    assert len({r["ref"][0].hex() for r in results}) == 1
