"""The authority at scale: indexed placement equals the old scan, the batching client, bench.memtier_scale.

The placement property test replays random histories (mixed sizes, pins, DDR reports, socket
reports, saturation on and off) and checks every decision against the straightforward scan
placement used before the indexes (kept here as the reference), so the speed-up changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.memtier_scale import ScaleReport, main
from cluster.config import MemtierConfig
from memtier.client import MemTierClient
from memtier.directory import ResidencyDirectory, SocketEntry, UnknownExpertError
from memtier.lru import AllPinnedError, NeverFitsError
from memtier.models import Lease, SocketInfo
from memtier.node_beats import NodeBeats, next_beat_in
from memtier.pager import MemTier, lease_from_tuple, lease_tuple
from memtier.placement import NeverPlaceable, NoCapacityNow, choose_socket


# --------------------------------------------------------------------------- the reference placement
def _ref_fits(d: ResidencyDirectory, socket: SocketEntry, expert: str, size: int) -> bool:
    if expert in socket.hbm:
        return True
    try:
        socket.hbm.plan_insert(expert, size)
        ddr = d.node(socket.node_id).ddr
        if expert not in ddr:
            ddr.plan_insert(expert, size)
    except (AllPinnedError, NeverFitsError):
        return False
    return True


def _ref_rank(socket: SocketEntry, expert: str, size: int) -> tuple:
    evicts = 0 if expert in socket.hbm else len(socket.hbm.plan_insert(expert, size))
    return (socket.load, evicts, socket.last_used, socket.socket_id)


def reference_choose(d: ResidencyDirectory, expert: str, saturation: int | None) -> tuple[str, str]:
    """memtier/placement.py before the socket table: every socket asked in Python."""
    size = d.size_of(expert)
    sockets = list(d.sockets.values())
    if not sockets or all(size > s.hbm.capacity_bytes for s in sockets):
        raise NeverPlaceable(expert)
    candidates = [s for s in sockets if _ref_fits(d, s, expert, size)]
    if not candidates:
        raise NoCapacityNow(expert)
    holders = sorted((s for s in candidates if expert in s.hbm), key=lambda s: _ref_rank(s, expert, size))
    if saturation is not None:
        with_room = [s for s in holders if s.load < saturation]
        if with_room:
            best = min(with_room, key=lambda s: (-s.hbm.pin_count(expert), s.load, s.last_used, s.socket_id))
            return best.socket_id, "hbm"
        if holders and not any(s.load < saturation for s in candidates):
            return holders[0].socket_id, "hbm"
    elif holders:
        return holders[0].socket_id, "hbm"
    ddr_nodes = {n.node_id for n in d.nodes.values() if expert in n.ddr}
    others = [s for s in candidates if expert not in s.hbm]
    if saturation is not None and any(s.load < saturation for s in others):
        others = [s for s in others if s.load < saturation]
    on_ddr = sorted((s for s in others if s.node_id in ddr_nodes), key=lambda s: _ref_rank(s, expert, size))
    if on_ddr:
        return on_ddr[0].socket_id, "ddr"
    if others:
        return min(others, key=lambda s: _ref_rank(s, expert, size)).socket_id, "store"
    return holders[0].socket_id, "hbm"


EXPERTS = {"a": 1, "b": 1, "c": 2, "d": 3, "e": 1, "f": 2}
steps = st.lists(
    st.one_of(
        st.tuples(st.just("place"), st.sampled_from(sorted(EXPERTS))),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("ddr"), st.integers(0, 2), st.lists(st.sampled_from(sorted(EXPERTS)), max_size=3)),
        st.tuples(
            st.just("report"), st.integers(0, 5), st.lists(st.sampled_from(sorted(EXPERTS)), max_size=3)
        ),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=steps,
    hbm=st.lists(st.integers(2, 5), min_size=1, max_size=6),
    saturation=st.sampled_from([None, 1, 2]),
    policy=st.sampled_from(["adaptive", "lru"]),
)
def test_indexed_placement_decides_exactly_as_the_scan_did(steps, hbm, saturation, policy) -> None:
    d = ResidencyDirectory(EXPERTS, 6, MemtierConfig(policy=policy))
    for i, budget in enumerate(hbm):
        d.register_socket(SocketInfo(socket_id=f"s{i}", node_id=f"n{i % 3}", hbm_bytes=budget), 0.0)
    leases: list[Lease] = []
    for step in steps:
        if step[0] == "place":
            expert = step[1]
            try:
                expected = reference_choose(d, expert, saturation)
            except (NeverPlaceable, NoCapacityNow) as err:
                with pytest.raises(type(err)):
                    choose_socket(d, expert, saturation=saturation)
                continue
            socket, tier = choose_socket(d, expert, saturation=saturation)
            assert (socket.socket_id, tier) == expected
            lease = Lease(
                lease_id=f"L{len(leases)}",
                expert=expert,
                socket_id=socket.socket_id,
                node_id=socket.node_id,
                tier=tier,
                size_bytes=EXPERTS[expert],
            )
            lease.evict = d.grant(lease)
            leases.append(lease)
        elif step[0] == "release" and leases:
            d.release(leases[step[1] % len(leases)].lease_id)
        elif step[0] == "ddr" and f"n{step[1]}" in d.nodes:
            d.sync_ddr(f"n{step[1]}", step[2])
        elif step[0] == "report" and f"s{step[1]}" in d.sockets:
            socket = d.sockets[f"s{step[1]}"]
            d.sync_socket(
                SocketInfo(
                    socket_id=socket.socket_id,
                    node_id=socket.node_id,
                    hbm_bytes=socket.hbm.capacity_bytes,
                    residents=step[2],
                )
            )
        # the indexes stay true to the budgets they summarise
        for socket in d.sockets.values():
            assert d.table.free_bytes[d.table.slot_of[socket.socket_id]] == socket.hbm.free_bytes
            assert d.table.load[d.table.slot_of[socket.socket_id]] == socket.load
        for expert in EXPERTS:
            assert {s.socket_id for s in d.hbm_holders(expert)} == {
                s.socket_id for s in d.sockets.values() if expert in s.hbm
            }


def test_a_lease_survives_the_compact_wire() -> None:
    lease = Lease(
        lease_id="x-1",
        expert="a",
        socket_id="s0",
        node_id="n0",
        tier="ddr",
        size_bytes=5,
        evict=["b"],
        keep=False,
    )
    assert lease_from_tuple(lease_tuple(lease)) == lease


# --------------------------------------------------------------------------- the client, on a real actor
@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="error", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.integration  # a private local Ray
def test_the_client_batches_concurrent_calls_and_keeps_their_answers_apart(local_ray) -> None:
    experts = {"a": 1, "b": 1, "c": 2, "big": 5}
    memtier = MemTier.remote("client-test", experts, 10, saturation=1, place_timeout_s=5.0)
    for i in range(2):
        ray.get(memtier.heartbeat.remote(SocketInfo(socket_id=f"s{i}", node_id="n0", hbm_bytes=2)))

    async def scenario():
        client = MemTierClient(memtier)
        results = await asyncio.gather(
            *(client.place(expert) for expert in ["a", "b", "a", "b"]),
            client.place("nope"),
            client.place("big"),
            return_exceptions=True,
        )
        leases, unknown, too_big = results[:4], results[4], results[5]
        # "c" needs a whole socket, and each has an expert pinned: no capacity now, so it waits
        # (the blocking place) until the releases below free one
        waiting = asyncio.ensure_future(client.place("c"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        released = await asyncio.gather(*(client.release(lease.lease_id) for lease in leases))
        fifth = await asyncio.wait_for(waiting, 5)
        await client.release(fifth.lease_id)
        return leases, unknown, too_big, released, fifth, client.calls

    leases, unknown, too_big, released, fifth, calls = asyncio.run(scenario())
    assert all(isinstance(lease, Lease) for lease in leases)
    assert len({lease.lease_id for lease in leases}) == 4
    assert sorted(lease.socket_id for lease in leases) == ["s0", "s0", "s1", "s1"]
    assert isinstance(unknown, UnknownExpertError) and isinstance(too_big, NeverPlaceable)
    assert released == [True] * 4 and fifth.expert == "c"
    assert calls < 4 + 1 + 4 + 1  # six places in one batch at most, four releases coalesced too
    assert ray.get(memtier.leases.remote()) == []
    ray.kill(memtier)


@pytest.mark.integration
def test_the_held_mode_reuses_leases_and_leaves_none_behind(local_ray) -> None:
    from bench.memtier_scale import measure_actor

    rate = measure_actor(8, 4, 300, 2, 1.0, "held", heartbeat_s=0.5, hold_s=0.2)
    assert (rate.mode, rate.pairs) == ("actor-held", 300)
    assert 0 < rate.reused_share < 1  # some pairs granted from kept leases, the first ones placed
    assert rate.leases_left == 0  # every kept lease went back once unused


@pytest.mark.integration
def test_the_relayed_mode_sends_each_nodes_heartbeats_in_shared_calls(local_ray) -> None:
    from bench.memtier_scale import measure_actor

    held = measure_actor(64, 4, 600, 2, 1.0, "held", heartbeat_s=0.2, hold_s=0.2)
    relayed = measure_actor(64, 4, 600, 2, 1.0, "relayed", heartbeat_s=0.2, hold_s=0.2)
    assert (relayed.mode, relayed.pairs, relayed.leases_left) == ("actor-relayed", 600, 0)
    assert 0 < relayed.reused_share < 1
    # 64 sockets on 8 nodes: at most 8 heartbeat calls per period relayed, one per beat when direct
    assert 0 < relayed.heartbeat_calls_per_s <= 8 / 0.2 * 1.5
    assert held.heartbeat_calls_per_s > relayed.heartbeat_calls_per_s


@pytest.mark.integration
def test_a_relay_sends_concurrent_beats_in_one_call_and_answers_each(local_ray) -> None:
    memtier = MemTier.remote("relay-test", {"a": 1, "b": 1}, 10)
    relay = NodeBeats(lambda: memtier)
    infos = [SocketInfo(socket_id=f"s{i}", node_id="n0", hbm_bytes=2) for i in range(8)]

    async def beat_all():
        return await asyncio.gather(*(relay.beat(info) for info in infos))

    answers = asyncio.run(beat_all())
    assert len(answers) == 8 and all(a is None or isinstance(a, Lease) for a in answers)
    assert (relay.stats.beats, relay.stats.calls, relay.stats.failed_calls) == (8, 1, 0)
    status = ray.get(memtier.status.remote())
    assert sorted(s.socket_id for node in status.nodes for s in node.sockets) == [f"s{i}" for i in range(8)]
    ray.kill(memtier)


def test_a_relay_without_memtier_fails_every_beat_so_sockets_beat_directly() -> None:
    def no_memtier():
        raise ValueError("Failed to look up actor 'coe_memtier_x'")

    relay = NodeBeats(no_memtier, window_s=0.0)
    infos = [SocketInfo(socket_id=f"s{i}", node_id="n0", hbm_bytes=2) for i in range(3)]

    async def beat_all():
        return await asyncio.gather(*(relay.beat(info) for info in infos), return_exceptions=True)

    answers = asyncio.run(beat_all())
    assert all(isinstance(a, ValueError) for a in answers)
    assert (relay.stats.calls, relay.stats.failed_calls) == (1, 1)


@pytest.mark.parametrize("now_s", [10.0, 10.3, 10.999])
def test_sockets_beat_on_a_grid_shared_across_processes(now_s: float) -> None:
    # any two processes that sleep next_beat_in(period) wake at the same multiple of the period
    assert now_s + next_beat_in(1.0, now_s) == pytest.approx(11.0)
    assert 0 < next_beat_in(0.5, now_s) <= 0.5


# --------------------------------------------------------------------------- the bench
def test_scale_bench_core_and_simulation(tmp_path: Path) -> None:
    report = main(
        [
            "--modes",
            "core,sim",
            "--sockets",
            "8,16",
            "--pairs",
            "300",
            "--sim-requests",
            "3000",
            "--out",
            str(tmp_path),
        ]
    )
    saved = ScaleReport.model_validate(json.loads((tmp_path / "memtier_scale.json").read_text()))
    assert saved == report
    assert [(r.mode, r.sockets) for r in report.rates] == [("core", 8), ("core", 16)]
    assert all(r.pairs == 300 and r.pairs_per_s > 0 and 0 < r.hbm_hit_rate <= 1 for r in report.rates)
    sim = report.sim
    assert sim is not None and sim.sockets == 512 and sim.requests == 3000
    assert sim.hbm_hit_rate <= sim.opt_hit_rate + 1e-9  # OPT of the summed HBM bounds any placement
    assert "MemTier authority at scale" in (tmp_path / "memtier_scale.md").read_text()
