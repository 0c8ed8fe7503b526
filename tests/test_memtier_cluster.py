"""Memtier on a real 2-node `ray.cluster_utils.Cluster`, 2 sockets per node, tiny experts.

Each test runs its own MemTier and DDR stores (its own cluster name) over plain socket actors
pinned to nodes, so the scenarios do not share residency: the socket processes are reused, but
each test's sockets start empty (`SocketActor.rejoin`), as new ones would.
"""

from __future__ import annotations

import asyncio

import pytest
import ray
from ray.actor import ActorHandle
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.config import ClusterConfig
from memtier.ddr_store import ddr_store_for_node
from memtier.models import MemtierStatus
from memtier.pager import start_memtier
from memtier.socket_agent import SocketActor
from tests.budgets import check_ddr, check_socket
from tests.waiting import wait_for

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
    """A MemTier plus up to 2x2 sockets for one test, taken from the module's socket pool."""

    def __init__(
        self,
        config: ClusterConfig,
        pool: dict[str, ActorHandle],
        *,
        saturation: int | None = None,
        socket_timeout_s: float = 2.0,
        holder_timeout_s: float = 10.0,
        sockets_per_node: int | None = None,
    ):
        """`sockets_per_node` (default: the topology's) is lower for a test that needs fewer."""
        self.config = config
        self.pool = pool
        self.memtier = start_memtier(
            config.name,
            {e.id: e.size_bytes for e in config.experts},
            config.topology.ddr_per_node,
            saturation=saturation,
            socket_timeout_s=socket_timeout_s,
            holder_timeout_s=holder_timeout_s,
            place_timeout_s=30.0,
        )
        ray.get(self.memtier.ready.remote())
        self.node_ids = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])[:2]
        self.sockets = {}
        per_node = config.topology.sockets_per_node if sockets_per_node is None else sockets_per_node
        joined = []
        for n, node_id in enumerate(self.node_ids):
            for s in range(per_node):
                socket_id = f"n{n}-s{s}"
                if socket_id in pool:  # an empty socket of this test's MemTier, in the same process
                    joined.append(pool[socket_id].rejoin.remote(config))
                else:
                    pool[socket_id] = SocketActor.options(
                        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
                    ).remote(config, socket_id, 0.3)
                    joined.append(pool[socket_id].start.remote(wait_warm=True))
                self.sockets[socket_id] = pool[socket_id]
        # Each test starts from warm sockets (skeletons built, the node's DDR store found): the
        # warm-up is seconds of imports per new socket, which on a loaded 2-core box outlasted
        # place_timeout_s for requests queued behind the first ones, and left sockets beating
        # MemTier directly while a test counted their node's relayed beats.
        ray.get(joined)

    def close(self) -> None:
        """Silence this test's sockets (the pool keeps their processes; one the test killed leaves
        the pool) and kill its MemTier and DDR stores, so later tests do not share the CPUs with
        their heartbeats."""
        for socket_id, actor in self.sockets.items():
            try:
                ray.get(actor.leave.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                self.pool.pop(socket_id, None)
                ray.kill(actor)
        for node_id in self.node_ids:
            ray.kill(self.ddr(node_id))
        ray.kill(self.memtier)

    def status(self) -> MemtierStatus:
        return ray.get(self.memtier.status.remote())

    def place(self, expert: str):
        return ray.get(self.memtier.place.remote(expert))

    def run(self, lease, hold_s: float = 0.0, tokens: int = 0) -> dict:
        result = ray.get(self.sockets[lease.socket_id].run.remote(lease, hold_s, tokens))
        assert result["generated_tokens"] == tokens  # the leased model ran, so it was really there
        return result

    def ddr(self, node_id: str):
        checkpoints = {e.id: str(self.config.checkpoint_path(e)) for e in self.config.experts}
        return ddr_store_for_node(self.config.name, node_id, self.config.topology.ddr_per_node, checkpoints)

    def assert_budgets(self, dead: frozenset[str] = frozenset()) -> None:
        """Invariant 1 on real bytes: every live socket's tensors and every node's DDR objects
        (tests/budgets.py). Only sockets named in `dead` (killed by the test) may fail to answer."""
        sizes = {e.id: e.size_bytes for e in self.config.experts}
        topology = self.config.topology
        for socket_id, actor in self.sockets.items():
            if socket_id in dead:
                continue
            held = ray.get(actor.held_tensor_bytes.remote(), timeout=30)
            check_socket(held, topology.hbm_per_socket, sizes, socket_id)
        for node_id in self.node_ids:
            held = ray.get(self.ddr(node_id).held_object_bytes.remote(), timeout=30)
            check_ddr(held, topology.ddr_per_node, sizes, node_id)


@pytest.fixture(scope="module")
def socket_pool(ray_cluster):
    """Socket actors by socket id ("n0-s1"), shared by the module's rigs: each rig makes them empty
    sockets of its own MemTier (`SocketActor.rejoin`). A socket process costs ~8 CPU-s of torch and
    transformers imports to start; this module started 24 of them, one rig at a time."""
    pool: dict[str, ActorHandle] = {}
    yield pool
    for actor in pool.values():
        ray.kill(actor)


@pytest.fixture()
def make_rig(socket_pool):
    rigs: list[Rig] = []

    def make(config: ClusterConfig, **options) -> Rig:
        rigs.append(Rig(config, socket_pool, **options))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def _config(tiny_config: ClusterConfig, name: str) -> ClusterConfig:
    return tiny_config.model_copy(update={"name": name}, deep=True)


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
    running = rig.sockets[holder.socket_id].run.remote(holder, 0.0, 0, "hold")
    third = rig.place("tiny-00")
    assert third.tier == "ddr" and third.node_id == first.node_id and third.socket_id != first.socket_id
    report = rig.run(third, tokens=2)["report"]
    assert report.tier == "ddr" and not report.store_read
    ray.get(rig.sockets[holder.socket_id].open_gate.remote("hold"))
    ray.get(running)
    rig.assert_budgets()

    stats = ray.get(rig.memtier.stats.remote())
    assert stats.store_reads == 1 and stats.hbm.hits >= 2 and stats.ddr.hits >= 1
    assert stats.bytes_moved_store_to_ddr == tiny_config.expert("tiny-00").size_bytes


def test_eviction_under_oversubscription_keeps_every_budget(make_rig, tiny_config):
    rig = make_rig(_config(tiny_config, "evict"))
    sizes = {e.id: e.size_bytes for e in tiny_config.experts}
    for expert in tiny_config.expert_ids:
        result = rig.run(rig.place(expert), tokens=2)  # generates with the page-in that just evicted
        check_socket(result["held"], tiny_config.topology.hbm_per_socket, sizes, expert)
        assert expert in result["held"].materialised
        rig.assert_budgets()
    stats = ray.get(rig.memtier.stats.remote())
    assert stats.hbm_evictions >= len(tiny_config.experts) - 8  # 16 experts, 8 HBM slots
    held = [ray.get(a.held_tensor_bytes.remote()).materialised for a in rig.sockets.values()]
    resident = [e for experts in held for e in experts]
    assert len(resident) <= 8 and len(set(resident)) == len(resident)


def test_sixteen_concurrent_leases_over_twelve_experts_generate_under_eviction(make_rig, tiny_config):
    """12 experts for 8 HBM slots, 16 requests at once: pages in evict around leased experts, and
    every request generates with its model after holding it through that pressure."""
    rig = make_rig(_config(tiny_config, "concurrent"))
    experts = [f"tiny-{i:02d}" for i in range(12)]
    sizes = {e.id: e.size_bytes for e in tiny_config.experts}

    async def one(index: int):
        lease = await rig.memtier.place.remote(experts[index % 12])
        return await rig.sockets[lease.socket_id].run.remote(lease, 0.3, 3)

    async def all_of_them():
        tasks = [asyncio.ensure_future(one(i)) for i in range(16)]
        results = []
        for task in asyncio.as_completed(tasks):
            results.append(await task)
            rig.assert_budgets()  # after every completed step, while the others still run
        return results

    results = asyncio.run(all_of_them())
    assert len(results) == 16 and all(r["generated_tokens"] == 3 for r in results)
    for result in results:  # measured while its lease was held, others paging in around it
        check_socket(result["held"], tiny_config.topology.hbm_per_socket, sizes)
    assert ray.get(rig.memtier.stats.remote()).hbm_evictions > 0  # the pressure was on
    wait_for(lambda: not ray.get(rig.memtier.leases.remote()))
    status = rig.status()
    assert all(s.pinned_bytes == 0 for n in status.nodes for s in n.sockets)


def test_a_killed_socket_is_dropped_from_the_directory(make_rig, tiny_config):
    rig = make_rig(_config(tiny_config, "socketdeath"), sockets_per_node=1)  # one per node: one left
    lease = rig.place("tiny-03")
    running = rig.sockets[lease.socket_id].run.remote(lease, 0.0, 0, "never")  # in flight until killed
    wait_for(lambda: any("tiny-03" in s.residents for n in rig.status().nodes for s in n.sockets))
    ray.kill(rig.sockets[lease.socket_id])
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(running)
    rig.assert_budgets(dead=frozenset({lease.socket_id}))  # the only socket allowed not to answer
    wait_for(lambda: lease.socket_id not in {s.socket_id for n in rig.status().nodes for s in n.sockets})
    assert lease.lease_id not in {held.lease_id for held in ray.get(rig.memtier.leases.remote())}
    again = rig.place("tiny-03")  # served elsewhere
    assert again.socket_id != lease.socket_id
    assert rig.run(again)["report"].tier in {"ddr", "store"}


def test_memtier_restarts_with_a_lease_in_flight_and_rebuilds_the_same_directory(make_rig, tiny_config):
    rig = make_rig(_config(tiny_config, "restart"))
    for expert in ["tiny-00", "tiny-01", "tiny-02", "tiny-05", "tiny-06"]:
        rig.run(rig.place(expert))

    def residency():
        status = rig.status()
        return {s.socket_id: sorted(s.residents) for n in status.nodes for s in n.sockets}, {
            n.node_id: sorted(n.residents) for n in status.nodes
        }

    # A request in flight across the restart: tiny-05 leased, held on its socket until the gate opens.
    flight = rig.place("tiny-05")
    assert flight.tier == "hbm"
    socket = rig.sockets[flight.socket_id]
    running = socket.run.remote(flight, 0.0, 2, "restart")
    wait_for(lambda: "tiny-05" in ray.get(socket.info.remote())["in_use"])
    before = residency()  # releases carry the sockets' reports, so this is already true
    assert ray.get(rig.memtier.stats.remote()).leases == 6

    ray.kill(rig.memtier, no_restart=False)
    # A new instance: its counters start from zero (the old one would say 6 leases).
    wait_for(lambda: ray.get(rig.memtier.stats.remote()).leases == 0)
    after = wait_for(lambda: (r := residency()) == before and r)
    assert sum(len(v) for v in after[0].values()) == 5
    # Page-ins on every socket while the lease is still out: the leased expert must stay.
    for expert in ["tiny-08", "tiny-09", "tiny-10", "tiny-11"]:
        rig.run(rig.place(expert), tokens=1)
    rig.assert_budgets()
    assert "tiny-05" in ray.get(socket.held_tensor_bytes.remote()).materialised
    ray.get(socket.open_gate.remote("restart"))
    result = ray.get(running)  # generates with the model it leased before the restart
    assert result["generated_tokens"] == 2 and result["report"].tier == "hbm"
    # Its release reached a MemTier that never granted it: harmless, and nothing stays pinned.
    wait_for(lambda: all(s.pinned_bytes == 0 for n in rig.status().nodes for s in n.sockets))
    assert not ray.get(socket.info.remote())["in_use"]
    assert rig.place("tiny-05").tier == "hbm"  # still resident: an HBM hit


def test_concurrent_misses_read_the_store_once(make_rig, tiny_config):
    config = _config(tiny_config, "loadonce")
    rig = make_rig(config, sockets_per_node=0)  # the node's DDR store alone is under test
    store = rig.ddr(rig.node_ids[0])
    results = ray.get([store.get.remote("tiny-09") for _ in range(8)])
    assert sum(r["store_read"] for r in results) == 1
    assert ray.get(store.stats.remote())["store_reads"] == {"tiny-09": 1}
    # Every caller got the same object: one copy in the node's object store.
    assert len({r["ref"][0].hex() for r in results}) == 1


def test_a_socket_leaves_a_held_lease_to_its_holder(make_rig, tiny_config):
    """A lease with a holder (the ingress, memtier/client.py) is not released by the socket when
    its request ends: the holder keeps it for the next request, so the expert stays pinned."""
    # The holder never calls again here: a timeout longer than the test keeps its lease its own.
    rig = make_rig(_config(tiny_config, "held"), saturation=1, holder_timeout_s=600.0, sockets_per_node=1)
    held = ray.get(rig.memtier.place.remote("tiny-00", None, "ingress-1"))
    plain = rig.place("tiny-01")
    assert held.holder == "ingress-1" and plain.holder == ""
    rig.run(held, tokens=1)
    rig.run(plain, tokens=1)
    assert [lease.lease_id for lease in ray.get(rig.memtier.leases.remote())] == [held.lease_id]
    assert ray.get(rig.memtier.release.remote(held.lease_id))
    assert ray.get(rig.memtier.leases.remote()) == []


def test_a_nodes_sockets_heartbeat_through_its_ddr_store_in_shared_calls(make_rig, tiny_config):
    """Idle sockets beat every 0.3 s on a common grid; each node's DDR store relays its sockets'
    beats to MemTier in one call (memtier/node_beats.py), and the sockets stay registered well past
    MemTier's 2 s socket timeout on those relayed beats alone."""
    rig = make_rig(_config(tiny_config, "relayed"))
    stores = [rig.ddr(node_id) for node_id in rig.node_ids]

    def beat_stats():
        return [ray.get(store.beat_stats.remote()) for store in stores]

    # Counted once both sockets of each node relay (a socket beats directly until its warm-up
    # has found the node's store).
    start = wait_for(lambda: (stats := beat_stats()) and all(s.calls >= 3 for s in stats) and stats)
    end = wait_for(
        lambda: (
            (stats := beat_stats())
            and all(e.calls >= s.calls + 6 for s, e in zip(start, stats, strict=True))
            and stats
        )
    )
    for first, last in zip(start, end, strict=True):
        assert last.failed_calls == 0
        # Two sockets per node: a relay that coalesced nothing would send one call per beat. How
        # many coalesce is timing (a 50 ms window; idle, ~2 beats a call; a CPU-starved box woke
        # the sockets apart, 10 beats in 7 calls), so the check is that some calls carried two.
        assert last.beats - first.beats > last.calls - first.calls, (first, last)
    assert sorted(s.socket_id for node in rig.status().nodes for s in node.sockets) == sorted(rig.sockets)
