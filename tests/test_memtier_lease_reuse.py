"""Lease reuse (memtier/client.py): a holder keeps finished leases for its next request.

The authority's side is tested on `MemTierCore` (time driven by the test); the client's side on
a real `MemTier` actor in a private local Ray.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from memtier.client import MemTierClient, _KeptLeases, _plain_hit
from memtier.models import ActivationReport, Lease, SocketInfo
from memtier.pager import MemTier, MemTierCore

EXPERTS = {"a": 1, "b": 1, "c": 1}


def _core(**options) -> MemTierCore:
    core = MemTierCore("reuse", EXPERTS, ddr_bytes_per_node=10, saturation=8, **options)
    core.heartbeat(SocketInfo(socket_id="s0", node_id="n0", hbm_bytes=2), 0.0)
    return core


# --------------------------------------------------------------------------- the authority
def test_a_silent_holders_leases_are_reaped_and_unpin_their_experts() -> None:
    core = _core(holder_timeout_s=10.0, socket_timeout_s=1e9)
    core.seen_holder("ingress", 0.0)
    lease = core.try_place("a", 0.0, "ingress")
    assert lease.holder == "ingress" and core.held_by == {"ingress": {lease.lease_id}}
    core.reap(9.0)
    assert lease.lease_id in core.directory.leases  # the holder may still come back
    core.seen_holder("ingress", 9.0)
    core.reap(18.0)
    assert lease.lease_id in core.directory.leases  # it did: its leases live on
    core.reap(19.5)
    assert core.directory.leases == {} and "ingress" not in core.holder_seen_s
    assert not core.directory.sockets["s0"].hbm.is_pinned("a")


def test_a_kept_lease_pins_nothing_and_a_reuse_pins_again_and_counts_a_placement() -> None:
    core = _core()
    lease = core.try_place("a", 0.0, "ingress")
    hbm = core.directory.sockets["s0"].hbm
    assert core.stats.leases == 1 and hbm.is_pinned("a")
    assert core.keep_idle(lease.lease_id)
    assert not hbm.is_pinned("a") and core.directory.leases == {} and lease.lease_id in core.idle
    assert core.reuse(lease.lease_id, 1.0)
    core.record(ActivationReport(tier="hbm"))
    assert hbm.is_pinned("a") and core.directory.leases[lease.lease_id].tier == "hbm"
    assert core.stats.leases == 2 and core.stats.lease_reuses == 1 and core.stats.hbm.hits == 1
    assert core.metrics.lease_reuses._value.get() == 1  # coe:memtier_lease_reuses_total
    assert core.lease_granted_s[lease.lease_id] == 1.0  # the TTL restarts with each request
    assert not core.reuse(lease.lease_id, 1.5)  # in use, not idle: not a reuse to count
    core.keep_idle(lease.lease_id)
    assert core.release(lease.lease_id, None) and core.idle == {}
    assert not core.reuse(lease.lease_id, 2.0) and core.stats.leases == 2  # gone: nothing to count
    assert core.held_by["ingress"] == set()


def test_a_lease_reused_before_memtier_heard_it_was_idle_only_counts_the_request() -> None:
    core = _core()
    lease = core.try_place("a", 0.0, "ingress")
    assert core.reuse_pinned(lease.lease_id, 1.0)
    assert core.directory.sockets["s0"].hbm.is_pinned("a") and core.idle == {}
    assert (core.stats.leases, core.stats.lease_reuses) == (2, 1)
    core.release(lease.lease_id, None)
    assert not core.reuse_pinned(lease.lease_id, 2.0) and core.stats.leases == 2


def test_an_eviction_revokes_the_idle_leases_kept_on_its_victim() -> None:
    core = _core()
    kept_a = core.try_place("a", 0.0, "ingress")
    kept_b = core.try_place("b", 0.0, "ingress")
    core.keep_idle(kept_a.lease_id)
    core.keep_idle(kept_b.lease_id)
    c = core.try_place("c", 1.0)  # the socket is full of idle kept experts: one is evicted for c
    assert len(c.evict) == 1
    victim = kept_a if c.evict == ["a"] else kept_b
    assert core.take_revoked("ingress") == [victim.lease_id] and core.take_revoked("ingress") == []
    assert not core.reuse(victim.lease_id, 2.0)  # revoked: its holder drops it
    survivor = kept_b if victim is kept_a else kept_a
    assert core.reuse(survivor.lease_id, 2.0)


def test_a_reuse_of_an_expert_the_socket_no_longer_holds_pins_a_page_in() -> None:
    core = _core()
    lease = core.try_place("a", 0.0, "ingress")
    core.keep_idle(lease.lease_id)
    core.directory.sync_socket(SocketInfo(socket_id="s0", node_id="n0", hbm_bytes=2, residents=[]))
    assert core.reuse(lease.lease_id, 1.0)  # the socket pages it back in; the directory agrees
    assert core.directory.leases[lease.lease_id].tier == "ddr"
    assert core.directory.sockets["s0"].hbm.is_pinned("a")


def test_a_holder_vouching_for_a_socket_keeps_it_alive() -> None:
    core = _core(socket_timeout_s=5.0)
    core.seen_socket("s0", 4.0)
    core.seen_socket("nobody", 4.0)  # unknown sockets are ignored
    assert core.reap(8.0) == []
    assert core.reap(9.5) == ["s0"]


def test_a_voided_held_lease_leaves_its_holders_set() -> None:
    core = _core()
    lease = core.try_place("b", 0.0, "ingress")
    idle = core.try_place("c", 0.0, "ingress")
    core.keep_idle(idle.lease_id)
    voided = core.drop_socket("s0")
    assert {x.lease_id for x in voided} == {lease.lease_id, idle.lease_id}
    assert core.held_by["ingress"] == set() and core.idle == {} and core.directory.leases == {}


# --------------------------------------------------------------------------- the client's kept leases
def _held(lease_id: str, expert: str, socket_id: str) -> Lease:
    return Lease(
        lease_id=lease_id, expert=expert, socket_id=socket_id, node_id="n0", tier="hbm", size_bytes=1
    )


def test_kept_leases_give_the_newest_usable_one_drop_by_id_and_expire_oldest_first() -> None:
    kept = _KeptLeases()
    for lease_id, expert, socket_id, until in [
        ("l1", "a", "s0", 1.0),
        ("l2", "a", "s1", 2.0),
        ("l3", "b", "s0", 3.0),
    ]:
        kept.add(_held(lease_id, expert, socket_id), until)
    assert kept.take("a", lambda socket_id: socket_id != "s1").lease_id == "l1"  # l2's socket is full
    assert kept.take("a", lambda socket_id: True).lease_id == "l2" and kept.take("a", lambda s: True) is None
    kept.add(_held("l4", "a", "s1"), 4.0)
    kept.drop(["l3", "unknown"])  # a revocation: only the named lease goes
    assert len(kept) == 1 and kept.on_socket("s0") == set() and kept.on_socket("s1") == {"l4"}
    kept.add(_held("l5", "b", "s1"), 5.0)
    assert [lease.lease_id for lease in kept.expired(4.5)] == ["l4"]
    assert len(kept) == 1 and kept.take("b", lambda s: True).lease_id == "l5" and len(kept) == 0


@pytest.mark.parametrize(
    ("report", "as_count"),
    [
        (ActivationReport(tier="hbm"), True),
        (ActivationReport(tier="hbm", evicted=["b"]), False),  # evictions are counted from the report
        (ActivationReport(tier="hbm", bytes_moved=1), False),
        (ActivationReport(tier="ddr", switch_s=0.1, bytes_moved=1), False),  # a miss: switch times, bytes
    ],
)
def test_only_a_report_that_says_nothing_but_hit_travels_as_a_count(report, as_count) -> None:
    assert _plain_hit(report) is as_count


# --------------------------------------------------------------------------- the client, on a real actor
@pytest.fixture(scope="module")
def memtier():
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="error", log_to_driver=False)
    actor = MemTier.remote("reuse-test", EXPERTS, 10, saturation=8)
    ray.get(actor.heartbeat.remote(SocketInfo(socket_id="s0", node_id="n0", hbm_bytes=2)))
    yield actor
    ray.shutdown()


def _lease_ids(memtier) -> list[str]:
    return sorted(lease.lease_id for lease in ray.get(memtier.leases.remote()))


@pytest.mark.integration  # a private local Ray
def test_a_finished_lease_serves_the_next_request_for_its_expert_with_no_actor_call(memtier) -> None:
    async def scenario() -> None:
        client = MemTierClient(memtier, hold_s=0.4)
        first = await client.place("a")
        assert first.holder == client.holder and first.tier == "store"
        assert await client.release(first.lease_id, ActivationReport(tier="store", store_read=True))
        assert client.kept() == 1 and _lease_ids(memtier) == [first.lease_id]  # still pinned at MemTier
        calls = client.calls
        second = await client.place("a")
        assert (second.lease_id, second.tier, second.evict) == (first.lease_id, "hbm", [])
        assert client.calls == calls and client.reused == 1  # granted here, no actor call
        other = await client.place("b")  # another expert goes to the actor
        assert other.lease_id != first.lease_id and client.calls == calls + 1
        await client.release(second.lease_id, ActivationReport(tier="hbm"))
        assert await client.release(other.lease_id, reuse=False)  # a failed request: back at once
        assert _lease_ids(memtier) == []  # that call said `first` went idle: nothing pinned for it
        assert [x.lease_id for x in await memtier.idle_leases.remote()] == [first.lease_id]
        deadline = time.monotonic() + 10
        while await memtier.idle_leases.remote() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # unused for hold_s: the sweep sends it back
        assert await memtier.idle_leases.remote() == [] and client.kept() == 0
        stats = await memtier.stats.remote()
        assert (stats.leases, stats.lease_reuses) == (3, 1)  # two placed at the actor, one reused
        assert (stats.hbm.hits, stats.hbm.misses) == (1, 1)  # reports of the kept lease's requests

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_forgotten_socket_or_a_new_memtier_incarnation_drops_the_kept_leases(memtier) -> None:
    async def scenario() -> None:
        client = MemTierClient(memtier, hold_s=30.0)
        lease = await client.place("c")
        await client.release(lease.lease_id)
        other = await client.place("a")  # a call to the actor, which carries the idle notice
        await client.release(other.lease_id, reuse=False)
        assert [x.lease_id for x in await memtier.idle_leases.remote()] == [lease.lease_id]
        client.forget_socket("s0")
        assert client.kept() == 0
        deadline = time.monotonic() + 10
        while await memtier.idle_leases.remote() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await memtier.idle_leases.remote() == []  # given back, not left idle at MemTier
        again = await client.place("c")
        assert again.lease_id != lease.lease_id  # placed by the actor, not reused
        await client.release(again.lease_id)
        assert client.kept() == 1
        client._forget_older_incarnation("0123456789ab-7")  # a lease id from a restarted MemTier
        assert client.kept() == 0
        await memtier.release.remote(lease.lease_id)
        await memtier.release.remote(again.lease_id)

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_kept_lease_is_not_reused_onto_a_socket_already_running_a_full_batch_of_ours(memtier) -> None:
    async def scenario() -> None:
        client = MemTierClient(memtier, hold_s=30.0, saturation=1)
        first, second = await asyncio.gather(client.place("b"), client.place("b"))
        await client.release(first.lease_id)
        await client.release(second.lease_id)
        kept_ids = {first.lease_id, second.lease_id}
        running = await client.place("b")
        assert running.lease_id in kept_ids  # reused: no request of ours runs there yet
        placed = await client.place("b")
        assert placed.lease_id not in kept_ids  # the socket has a full batch of ours: MemTier places it
        assert client.kept() == 1
        for lease in (running, placed):
            await client.release(lease.lease_id, reuse=False)
        for lease_id in kept_ids:
            await memtier.release.remote(lease_id)

    asyncio.run(scenario())
