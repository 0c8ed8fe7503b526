"""Prefetch (memtier/prefetch.py) on the real MemTierCore: what it plans, what it never evicts,
how a losing prefetch is cancelled, and how hits and waste are counted; and bench.prefetch."""

from __future__ import annotations

import json
from pathlib import Path

from bench.prefetch import PrefetchReport, main
from cluster.config import MemtierConfig
from memtier.models import ActivationReport, SocketInfo
from memtier.pager import MemTierCore

EXPERTS = dict.fromkeys(["a", "b", "c", "d"], 1)


def core_with(sockets: dict[str, str], hbm: int = 1, ddr: int = 4, policy: str = "lru") -> MemTierCore:
    core = MemTierCore("t", EXPERTS, ddr, policy=MemtierConfig(prefetch=True, policy=policy))
    for socket_id, node_id in sockets.items():
        core.heartbeat(SocketInfo(socket_id=socket_id, node_id=node_id, hbm_bytes=hbm), 0.0)
    return core


def serve(core: MemTierCore, expert: str, times: int = 1) -> None:
    for _ in range(times):
        lease = core.try_place(expert, 0.0)
        core.release(lease.lease_id, ActivationReport(tier=lease.tier))


def test_ddr_prefetch_goes_only_into_free_room_one_read_per_node() -> None:
    core = core_with({"s0": "n0"}, ddr=2)
    serve(core, "a", 3)  # a is read into n0's DDR by demand; b is wanted too
    serve(core, "b", 2)
    core.directory.sync_ddr("n0", ["a"])  # b was evicted from DDR since: one slot free
    plans = [p for p in core.prefetcher.plan() if p.kind == "ddr"]
    assert [(p.node_id, p.expert) for p in plans] == [("n0", "b")]
    core.prefetcher.ddr_started(plans[0])
    assert not [p for p in core.prefetcher.plan() if p.kind == "ddr"]  # the disk is busy with it
    core.prefetcher.ddr_done("n0", "b")
    core.directory.sync_ddr("n0", ["a", "b"])
    assert not [p for p in core.prefetcher.plan() if p.kind == "ddr"]  # DDR full: never evicts for a prefetch
    lease = core.try_place("c", 0.0)  # hbm of s0 holds a or b; c comes from the STORE
    assert lease.tier == "store"


def test_hbm_prefetch_uses_an_idle_socket_and_never_evicts_a_hotter_or_pinned_expert() -> None:
    core = core_with({"s0": "n0", "s1": "n0"})
    serve(core, "a", 4)  # hot
    serve(core, "b", 1)  # s1 now holds b (cold-ish), s0 holds a
    core.directory.sync_ddr("n0", ["a", "b", "c"])
    serve(core, "c", 3)  # c: hotter than b, goes to an idle socket... demand put it somewhere
    holders = {e: sorted(s.socket_id for s in core.directory.hbm_holders(e)) for e in "abc"}
    # whatever demand left out of HBM and is hotter than a resident (by the margin) is planned
    plans = [p for p in core.prefetcher.plan() if p.kind == "hbm"]
    for plan in plans:
        socket = core.directory.sockets[plan.socket_id]
        assert socket.load == 0 and not holders.get(plan.expert)
        for victim in socket.hbm.keys_lru_order():
            assert core.prefetcher.score(victim) * core.prefetcher.margin < plan.score
    # a pinned expert is never a victim: pin a on its socket, then nothing may be planned there
    held = core.try_place("a", 0.0)
    assert all(p.socket_id != held.socket_id for p in core.prefetcher.plan() if p.kind == "hbm")


def _prefetched(core: MemTierCore):
    """s1 idle with the cold expert b; d is hot in DDR but in no HBM: the plan pages d onto s1."""
    serve(core, "a", 6)
    serve(core, "b", 1)
    core.directory.sync_ddr("n0", ["a", "b", "d"])
    for _ in range(6):
        core.prefetcher.observe("d")  # earlier demand: d is about to be needed
    plan = next(p for p in core.prefetcher.plan() if p.kind == "hbm")
    return plan, core.grant_prefetch(plan, 0.0)


def test_a_prefetch_that_loses_is_cancelled_and_its_bytes_counted_as_wasted() -> None:
    core = core_with({"s0": "n0", "s1": "n0"})
    plan, lease = _prefetched(core)
    assert (plan.expert, lease.prefetch, lease.evict) == ("d", True, ["b"])
    serve(core, "b", 20)  # b, which the prefetch evicted, turns out hotter than d: the prefetch lost
    cancelled = core.cancel_lost_prefetches()
    assert [c.lease_id for c in cancelled] == [lease.lease_id]
    assert "d" not in core.directory.sockets[lease.socket_id].hbm  # its socket drops it (keep=False)
    assert core.prefetcher.stats.cancelled == 1 and core.prefetcher.stats.wasted_bytes == 1
    assert core.stats.leases == 6 + 1 + 20  # prefetches are not requests


def test_a_prefetch_used_by_a_request_is_a_hit_and_one_evicted_unused_is_waste() -> None:
    core = core_with({"s0": "n0", "s1": "n0"})
    plan, lease = _prefetched(core)
    core.release(lease.lease_id, None)  # the socket paged it in
    demand = core.try_place("d", 0.0)
    assert (demand.socket_id, demand.tier) == (plan.socket_id, "hbm")
    assert core.prefetcher.stats.hbm_hits == 1
    core.release(demand.lease_id, ActivationReport(tier="hbm"))
    # a second prefetch of c, evicted by demand before any request for c: wasted
    for _ in range(30):  # far hotter than what either socket holds (the margin is 2x)
        core.prefetcher.observe("c")
    core.directory.sync_ddr("n0", ["a", "b", "c", "d"])
    again = next(p for p in core.prefetcher.plan() if p.kind == "hbm")
    core.release(core.grant_prefetch(again, 0.0).lease_id, None)
    evicted_by = {s.socket_id: s for s in core.directory.sockets.values()}[again.socket_id]
    core.directory.sync_socket(
        SocketInfo(socket_id=evicted_by.socket_id, node_id="n0", hbm_bytes=1, residents=[])
    )
    core.prefetcher.plan()
    assert core.prefetcher.stats.wasted_bytes == 1


def test_bench_prefetch_small_run(tmp_path: Path) -> None:
    report = main(["--requests", "400", "--experts", "8", "--out", str(tmp_path)])
    saved = PrefetchReport.model_validate(json.loads((tmp_path / "prefetch.json").read_text()))
    assert saved == report and len(report.comparisons) == 4
    for c in report.comparisons:
        assert c.off.requests == c.on.requests == 400
        assert c.off.prefetched_bytes == 0 and c.off.prefetch_stats.hbm_started == 0
        assert c.on.wasted_bytes <= c.on.prefetched_bytes
        # 8 experts fit the 8 sockets: every law's 8 likeliest are all of them, so the floor is 0
        assert c.floor_stalled == 0.0 and c.max_reduction == 1.0
    assert "Prefetch on vs off" in (tmp_path / "prefetch.md").read_text()


def test_bench_prefetch_floor_lies_under_what_prefetch_reached(tmp_path: Path) -> None:
    """With 16 experts on 8 sockets the floor is positive on every trace and no run beats it by
    more than sampling noise (the floor is an expectation, the stalls one draw)."""
    report = main(["--requests", "3000", "--out", str(tmp_path)])
    for c in report.comparisons:
        assert 0.0 < c.floor_stalled < c.off.stalled
        assert c.on.stalled > 0.9 * c.floor_stalled
        assert c.max_reduction == 1.0 - c.floor_stalled / c.off.stalled
