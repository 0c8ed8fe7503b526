"""Eviction policies (memtier/policy.py): invariants under random use, adaptivity, size weights, admission.

Entries are byte sizes only (STYLE: test without the hardware), except the last test, which pages
a real tiny expert into a `SocketResidency` to show an admission refusal frees the socket's HBM.
"""

from __future__ import annotations

import asyncio
import math
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.traces import session_trace
from bench.workloads import zipf_trace
from cluster.config import MemtierConfig
from memtier.directory import ResidencyDirectory
from memtier.lru import AllPinnedError, ByteBudgetLRU, NeverFitsError
from memtier.models import Lease, SocketInfo
from memtier.policy import AdaptiveLRFU, LRUPolicy, make_policy

KEYS = "abcdefgh"
SIZES = {key: size for key, size in zip(KEYS, [1, 1, 2, 3, 1, 2, 5, 1], strict=True)}

# --------------------------------------------------------------------------- invariants
ops = st.lists(
    st.tuples(st.sampled_from(["request", "pin", "unpin", "remove"]), st.sampled_from(KEYS)),
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(ops=ops, capacity=st.integers(5, 12), fixed=st.sampled_from([0, 1, 10]))
def test_a_policy_never_overfills_the_budget_evicts_a_pin_or_changes_a_size(ops, capacity, fixed) -> None:
    policy = AdaptiveLRFU(capacity, SIZES, fixed_cost_bytes=fixed, half_lives=(math.inf, 8, 1))
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(capacity, policy)
    pins: dict[str, int] = {}
    for op, key in ops:
        if op == "request":
            policy.record(key)
            try:
                planned = cache.plan_insert(key, SIZES[key])
                victims = cache.insert(key, SIZES[key])
            except (AllPinnedError, NeverFitsError):
                assert key not in cache
                continue
            assert victims == planned  # plan and act agree: the caller frees exactly these
            assert not any(pins.get(v) for v in victims), "a pinned expert was evicted"
            assert key not in victims
        elif op == "pin" and key in cache:
            cache.pin(key)
            pins[key] = pins.get(key, 0) + 1
        elif op == "unpin" and pins.get(key):
            cache.unpin(key)
            pins[key] -= 1
        elif op == "remove" and key in cache and not pins.get(key):
            cache.remove(key)
        assert cache.used_bytes <= cache.capacity_bytes
        assert all(key in cache for key, n in pins.items() if n)
        assert all(size == SIZES[key] for key, size, _ in cache.snapshot())
        assert cache.pinned_bytes == sum(SIZES[k] for k, n in pins.items() if n)


@settings(max_examples=60, deadline=None)
@given(trace=st.lists(st.sampled_from(KEYS), min_size=1, max_size=80), capacity=st.integers(5, 9))
def test_the_shadows_respect_their_byte_budget(trace: list[str], capacity: int) -> None:
    policy = AdaptiveLRFU(capacity, SIZES)
    for key in trace:
        policy.record(key)
        for shadow in policy.shadows:
            assert shadow.used_bytes <= capacity
            assert shadow.used_bytes == sum(shadow.resident.values())
    assert policy.now == len(trace)


# --------------------------------------------------------------------------- scenarios
def test_a_hot_expert_survives_a_scan_of_one_offs_that_lru_lets_evict_it() -> None:
    sizes = dict.fromkeys("hxyz", 1)
    for policy, survives in [(LRUPolicy(), False), (AdaptiveLRFU(2, sizes), True)]:
        cache: ByteBudgetLRU[str] = ByteBudgetLRU(2, policy)
        for key in "hhhh" + "xyz":
            policy.record(key)
            if key in cache:
                cache.touch(key)
            else:
                cache.insert(key, 1)
        assert ("h" in cache) is survives, policy.name


def test_the_half_life_follows_the_traffic() -> None:
    experts = [f"e{i:02d}" for i in range(16)]
    sizes = dict.fromkeys(experts, 1)
    stationary = AdaptiveLRFU(4, sizes)
    for key in zipf_trace(experts, 3000, 1.0, seed=0):
        stationary.record(key)
    chatty = AdaptiveLRFU(4, sizes)
    for key in session_trace(experts, 3000, 1.0, seed=0, concurrent=2, mean_turns=8):
        chatty.record(key)
    assert stationary.half_life >= 1024  # frequency pays on a stationary skew
    assert chatty.half_life <= 16  # recency pays when each conversation sticks to one expert


def test_at_cluster_scale_the_shadows_replay_a_sample_and_still_follow_the_traffic() -> None:
    """1,024 experts' worth of budget: the shadows replay a 1/8 sample at 1/8 of the budget (SHARDS),
    every expert still has a CRF to be ranked by, and the half-life still follows the traffic."""
    experts = [f"e{i:04d}" for i in range(4096)]
    sizes = dict.fromkeys(experts, 1)
    stationary = AdaptiveLRFU(1024, sizes)
    assert stationary.sample_bits == 3 and all(s.capacity_bytes == 128 for s in stationary.shadows)
    trace = zipf_trace(experts, 30_000, 1.0, seed=0)
    for key in trace:
        stationary.record(key)
    sampled = {k for k in set(trace) if zlib.crc32(k.encode()) % 8 == 0}
    assert 0 < len(sampled) < len(set(trace)) / 4
    assert all(set(s.resident) <= sampled and s.used_bytes <= 128 for s in stationary.shadows)
    assert all(stationary.value(k, 1) > 0 for k in set(trace) - sampled)  # ranked though not replayed
    assert stationary.half_life >= 1024
    chatty = AdaptiveLRFU(1024, sizes)
    for key in session_trace(experts, 30_000, 0.0, seed=0, concurrent=1024, mean_turns=8):
        chatty.record(key)
    assert not math.isinf(chatty.half_life)  # popularity is flat, sessions repeat: recency pays
    assert chatty.scores[0] < 0.8 * max(chatty.scores)  # the LFU shadow hits clearly less
    chatty.resize(100)  # sockets left: the whole catalog is replayed again, at the whole budget
    assert chatty.sample_bits == 0 and all(s.capacity_bytes == 100 and not s.resident for s in chatty.shadows)


def test_equal_scores_evict_the_bigger_expert_first_when_misses_have_a_fixed_cost() -> None:
    sizes = {"small": 1, "big": 4, "new": 4}
    for fixed, first_victim in [(0, "small"), (4, "big")]:
        policy = AdaptiveLRFU(5, sizes, fixed_cost_bytes=fixed, half_lives=(math.inf,))
        cache: ByteBudgetLRU[str] = ByteBudgetLRU(5, policy)
        for key in ("small", "big"):  # one request each: equal frequency, small least recent
            policy.record(key)
            cache.insert(key, sizes[key])
        policy.record("new")
        # fixed 0: cost per byte is equal, so recency breaks the tie; fixed 4: big costs less per byte
        assert cache.plan_insert("new", 4)[0] == first_victim


def test_make_policy_follows_the_config() -> None:
    assert isinstance(make_policy(MemtierConfig(policy="lru"), 10), LRUPolicy)
    adaptive = make_policy(MemtierConfig(fixed_cost_bytes=7, admission=True), 10, {"a": 1})
    assert isinstance(adaptive, AdaptiveLRFU) and adaptive.fixed_cost_bytes == 7 and adaptive.admission
    assert isinstance(make_policy(None, 10), AdaptiveLRFU)  # the default


# --------------------------------------------------------------------------- admission
def _directory(admission: bool) -> ResidencyDirectory:
    directory = ResidencyDirectory(
        dict.fromkeys("abcz", 1), 100, MemtierConfig(admission=admission, fixed_cost_bytes=0)
    )
    directory.register_socket(SocketInfo(socket_id="s0", node_id="n0", hbm_bytes=2), 0.0)
    return directory


def _lease(directory: ResidencyDirectory, expert: str, n: int) -> Lease:
    lease = Lease(lease_id=f"L{n}", expert=expert, socket_id="s0", node_id="n0", tier="store", size_bytes=1)
    lease.evict = directory.grant(lease)
    return lease


@pytest.mark.parametrize("admission", [True, False])
def test_admission_refuses_to_keep_a_one_off_and_frees_its_room(admission: bool) -> None:
    d = _directory(admission)
    n = 0
    for expert in "ababab":  # two hot experts fill the socket
        n += 1
        d.release(_lease(d, expert, n).lease_id)
    one_off = _lease(d, "z", 99)
    assert one_off.evict  # it still has to evict to run at all
    assert one_off.keep is (not admission)
    d.release(one_off.lease_id)
    resident = d.sockets["s0"].hbm.keys_lru_order()
    assert ("z" in resident) is (not admission)
    assert d.sockets["s0"].hbm.free_bytes == (1 if admission else 0)


def test_a_warm_socket_serves_then_drops_a_refused_expert(tiny_zoo) -> None:
    """A real tiny expert: paged into a socket whose skeleton was built at start, then dropped
    after its request because its lease says keep=False."""
    from memtier.socket_residency import SocketResidency
    from memtier.store import checkpoint_info, model_config_dict, read_weights

    path = tiny_zoo[0]
    size = checkpoint_info(path).size_bytes

    async def fetch(expert: str) -> dict:
        weights = read_weights(path)
        payload = {
            "arrays": weights.arrays,
            "dtypes": weights.torch_dtypes,
            "config": model_config_dict(path),
        }
        ready = asyncio.get_running_loop().create_future()
        ready.set_result(payload)
        return {"ref": [ready], "store_read": True}

    async def scenario() -> tuple[list[str], list[str], bool]:
        residency = SocketResidency("s0", "n0", 2 * size, {"one-off": size}, fetch)
        # a socket builds its skeleton at start (SocketAgent.warm), so the page-in takes it from the pool
        pool = residency.materializer._pool
        assert residency.materializer.warm(model_config_dict(path)) is True
        assert residency.materializer.warm(model_config_dict(path)) is False  # one per architecture
        assert sum(len(models) for models in pool.values()) == 1
        lease = Lease(
            lease_id="L",
            expert="one-off",
            socket_id="s0",
            node_id="n0",
            tier="store",
            size_bytes=size,
            keep=False,
        )
        model, report = await residency.acquire(lease)
        assert sum(len(models) for models in pool.values()) == 0  # the warm skeleton was used
        during = residency.info().residents
        assert report.tier == "store" and report.parts_s["materialize"] >= 0
        await residency.release("one-off")
        dropped = await residency.drop("one-off")
        return during, residency.info().residents, dropped

    during, after, dropped = asyncio.run(scenario())
    assert during == ["one-off"] and after == [] and dropped
