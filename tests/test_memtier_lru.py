"""ByteBudgetLRU: scenarios walked step by step, then a stateful property test against a model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from memtier.lru import AllPinnedError, ByteBudgetLRU, CapacityError, NeverFitsError, PinnedError

GiB = 2**30


def keys(cache: ByteBudgetLRU[str]) -> list[str]:
    return cache.keys_lru_order()


# --------------------------------------------------------------------------- scenarios
def test_evicts_least_recently_used_and_touch_refreshes_recency() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(3 * GiB)
    assert cache.insert("a", GiB) == []
    assert cache.insert("b", GiB) == []
    assert cache.insert("c", GiB) == []
    assert keys(cache) == ["a", "b", "c"]
    assert (cache.used_bytes, cache.free_bytes) == (3 * GiB, 0)

    cache.touch("a")
    assert keys(cache) == ["b", "c", "a"]

    assert cache.insert("d", GiB) == ["b"]
    assert keys(cache) == ["c", "a", "d"]

    assert cache.insert("e", GiB) == ["c"]
    assert keys(cache) == ["a", "d", "e"]
    assert (cache.evictions, cache.evicted_bytes) == (2, 2 * GiB)
    assert cache.used_bytes == 3 * GiB


def test_pinned_entry_is_never_evicted_and_unpin_makes_it_evictable() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(3 * GiB)
    for key in "abc":
        cache.insert(key, GiB)
    cache.pin("a")
    assert (cache.pinned_bytes, cache.evictable_bytes) == (GiB, 2 * GiB)

    assert cache.insert("d", GiB) == ["b"]  # "a" is LRU but leased, so "b" goes
    assert keys(cache) == ["a", "c", "d"]
    assert cache.insert("e", GiB) == ["c"]
    assert keys(cache) == ["a", "d", "e"]

    cache.unpin("a")
    assert (cache.pinned_bytes, cache.evictable_bytes) == (0, 3 * GiB)
    assert cache.insert("f", GiB) == ["a"]
    assert keys(cache) == ["d", "e", "f"]


def test_pins_nest_and_only_the_last_unpin_releases_bytes() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(2 * GiB)
    cache.insert("a", GiB)
    cache.pin("a")
    cache.pin("a")
    assert cache.pin_count("a") == 2
    assert cache.pinned_bytes == GiB  # counted once however many leases

    cache.unpin("a")
    assert cache.is_pinned("a") and cache.pinned_bytes == GiB

    cache.unpin("a")
    assert not cache.is_pinned("a")
    assert (cache.pinned_bytes, cache.evictable_bytes) == (0, GiB)
    with pytest.raises(ValueError, match="'a'.*no pins"):
        cache.unpin("a")


def test_unequal_sizes_evict_several_lru_entries_until_the_new_one_fits() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(10)
    cache.insert("small1", 2)
    cache.insert("small2", 2)
    cache.insert("mid", 4)
    assert cache.free_bytes == 2

    assert cache.plan_insert("big", 6) == ["small1", "small2"]  # 2 free + 2 + 2 = 6
    assert keys(cache) == ["small1", "small2", "mid"]  # planning changed nothing
    assert cache.insert("big", 6) == ["small1", "small2"]
    assert cache.snapshot() == [("mid", 4, 0), ("big", 6, 0)]
    assert cache.free_bytes == 0


def test_unequal_sizes_plan_matches_insert() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(10)
    cache.insert("small1", 2)
    cache.insert("small2", 2)
    cache.insert("mid", 4)

    assert cache.plan_insert("big", 8) == ["small1", "small2", "mid"]
    assert cache.insert("big", 8) == ["small1", "small2", "mid"]
    assert cache.snapshot() == [("big", 8, 0)]
    assert cache.free_bytes == 2


def test_insert_of_a_resident_key_touches_it_and_evicts_nothing() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(2 * GiB)
    cache.insert("a", GiB)
    cache.insert("b", GiB)
    assert cache.plan_insert("a", GiB) == []
    assert cache.insert("a", GiB) == []
    assert keys(cache) == ["b", "a"]
    assert cache.used_bytes == 2 * GiB

    with pytest.raises(ValueError, match="'a' is resident with 1073741824 bytes"):
        cache.insert("a", 2 * GiB)


def test_insert_with_pin_pins_in_the_same_step() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(2 * GiB)
    cache.insert("a", GiB, pin=True)
    assert cache.snapshot() == [("a", GiB, 1)]
    cache.insert("a", GiB, pin=True)  # a second lease on a resident expert
    assert cache.pin_count("a") == 2
    cache.insert("b", GiB)
    assert cache.insert("c", GiB) == ["b"]


def test_never_fits_error_names_the_numbers_and_changes_nothing() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.insert("a", 40)
    before = cache.snapshot()
    with pytest.raises(NeverFitsError) as info:
        cache.insert("huge", 101)
    err = info.value
    assert isinstance(err, CapacityError)
    assert (err.key, err.size_bytes, err.capacity_bytes, err.pinned_bytes) == ("huge", 101, 100, 0)
    for text in ("'huge'", "101 bytes", "100 bytes", "0 bytes pinned"):
        assert text in str(err)
    assert cache.snapshot() == before
    with pytest.raises(NeverFitsError):
        cache.plan_insert("huge", 101)


def test_all_pinned_error_until_a_lease_is_released() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.insert("a", 60, pin=True)
    cache.insert("b", 30)
    before = cache.snapshot()

    with pytest.raises(AllPinnedError) as info:
        cache.insert("c", 50)
    assert not isinstance(info.value, NeverFitsError)
    for text in ("'c'", "50 bytes", "100 bytes", "60 bytes pinned", "at most 40 bytes"):
        assert text in str(info.value)
    assert cache.snapshot() == before
    assert (cache.evictions, cache.used_bytes) == (0, 90)

    cache.unpin("a")
    assert cache.insert("c", 50) == ["a"]
    assert keys(cache) == ["b", "c"]


def test_remove_frees_bytes_but_refuses_pinned_and_absent_entries() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.insert("a", 30)
    cache.insert("b", 20, pin=True)
    assert cache.remove("a") == 30
    assert "a" not in cache and len(cache) == 1
    with pytest.raises(PinnedError, match="'b' \\(20 bytes\\).*1 pin"):
        cache.remove("b")
    assert isinstance(PinnedError("x"), ValueError)
    with pytest.raises(KeyError):
        cache.remove("a")
    assert (cache.used_bytes, cache.pinned_bytes) == (20, 20)


def test_operations_on_absent_keys_raise_key_error() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(10)
    for op in (cache.touch, cache.pin, cache.unpin, cache.size_of):
        with pytest.raises(KeyError):
            op("ghost")
    assert cache.pin_count("ghost") == 0 and not cache.is_pinned("ghost")


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="-1"):
        ByteBudgetLRU(-1)
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(0)
    with pytest.raises(ValueError, match="size_bytes must be >= 0"):
        cache.insert("a", -5)
    assert cache.insert("empty", 0) == []  # a zero-byte entry fits a zero budget
    with pytest.raises(NeverFitsError):
        cache.insert("a", 1)


# --------------------------------------------------------------------------- properties
class _Model:
    """The simplest correct model: a list in LRU order, evictions by a linear scan."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.entries: list[list] = []  # [key, size_bytes, pins]

    def find(self, key: str) -> list | None:
        return next((e for e in self.entries if e[0] == key), None)

    def pinned_bytes(self) -> int:
        return sum(e[1] for e in self.entries if e[2])

    def used_bytes(self) -> int:
        return sum(e[1] for e in self.entries)

    def insert(self, key: str, size_bytes: int, pin: bool) -> list[str] | type[CapacityError]:
        entry = self.find(key)
        if entry is not None:
            self.entries.remove(entry)
            self.entries.append(entry)
            entry[2] += int(pin)
            return []
        if size_bytes > self.capacity_bytes:
            return NeverFitsError
        if size_bytes > self.capacity_bytes - self.pinned_bytes():
            return AllPinnedError
        victims = []
        while self.capacity_bytes - self.used_bytes() < size_bytes:
            victim = next(e for e in self.entries if not e[2])
            self.entries.remove(victim)
            victims.append(victim[0])
        self.entries.append([key, size_bytes, int(pin)])
        return victims


KEYS = [f"e{i}" for i in range(6)]


class LRUMachine(RuleBasedStateMachine):
    @initialize(
        capacity_bytes=st.integers(0, 20),
        sizes=st.lists(st.integers(0, 12), min_size=len(KEYS), max_size=len(KEYS)),
    )
    def setup(self, capacity_bytes: int, sizes: list[int]) -> None:
        self.cache: ByteBudgetLRU[str] = ByteBudgetLRU(capacity_bytes)
        self.model = _Model(capacity_bytes)
        self.sizes = dict(zip(KEYS, sizes, strict=True))

    @rule(key=st.sampled_from(KEYS), pin=st.booleans())
    def insert(self, key: str, pin: bool) -> None:
        size_bytes = self.sizes[key]
        pinned_before = {k for k, _, pins in self.cache.snapshot() if pins}
        before = self.cache.snapshot()
        expected = self.model.insert(key, size_bytes, pin)
        if isinstance(expected, type):
            with pytest.raises(expected) as info:
                self.cache.plan_insert(key, size_bytes)
            with pytest.raises(expected) as info:
                self.cache.insert(key, size_bytes, pin=pin)
            assert self.cache.snapshot() == before, "a failed insert changed the cache"
            message = str(info.value)
            assert f"{key!r}" in message and f"({size_bytes} bytes)" in message
            assert f"{self.cache.capacity_bytes} bytes" in message
            assert f"{self.cache.pinned_bytes} bytes pinned" in message
            return
        planned = self.cache.plan_insert(key, size_bytes)
        assert self.cache.snapshot() == before, "plan_insert mutated the cache"
        victims = self.cache.insert(key, size_bytes, pin=pin)
        assert victims == planned == expected
        assert not pinned_before & set(victims), "a pinned entry was evicted"
        assert pinned_before <= set(self.cache.keys_lru_order())

    @rule(key=st.sampled_from(KEYS))
    def touch(self, key: str) -> None:
        entry = self.model.find(key)
        if entry is None:
            with pytest.raises(KeyError):
                self.cache.touch(key)
            return
        self.cache.touch(key)
        self.model.entries.remove(entry)
        self.model.entries.append(entry)

    @rule(key=st.sampled_from(KEYS))
    def pin(self, key: str) -> None:
        entry = self.model.find(key)
        if entry is None:
            with pytest.raises(KeyError):
                self.cache.pin(key)
            return
        self.cache.pin(key)
        entry[2] += 1

    @rule(key=st.sampled_from(KEYS))
    def unpin(self, key: str) -> None:
        entry = self.model.find(key)
        if entry is None or entry[2] == 0:
            with pytest.raises(KeyError if entry is None else ValueError):
                self.cache.unpin(key)
            return
        self.cache.unpin(key)
        entry[2] -= 1

    @precondition(lambda self: len(self.model.entries) > 0)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        key, size_bytes, pins = data.draw(st.sampled_from(self.model.entries))
        if pins:
            with pytest.raises(PinnedError):
                self.cache.remove(key)
            return
        assert self.cache.remove(key) == size_bytes
        self.model.entries.remove(self.model.find(key))

    @invariant()
    def matches_model_and_budget(self) -> None:
        if not hasattr(self, "cache"):
            return
        assert self.cache.snapshot() == [tuple(e) for e in self.model.entries]
        assert 0 <= self.cache.used_bytes <= self.cache.capacity_bytes
        assert self.cache.pinned_bytes == self.model.pinned_bytes()
        assert self.cache.evictable_bytes == self.model.used_bytes() - self.model.pinned_bytes()
        assert self.cache.free_bytes == self.cache.capacity_bytes - self.cache.used_bytes
        assert len(self.cache) == len(self.model.entries)


TestLRUMachine = LRUMachine.TestCase
TestLRUMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@settings(max_examples=200, deadline=None)
@given(
    capacity_units=st.integers(1, 6),
    trace=st.lists(st.integers(0, 9), max_size=60),
)
def test_equal_size_eviction_order_is_exactly_lru(capacity_units: int, trace: list[int]) -> None:
    """With equal sizes the cache must hold exactly the last `capacity` distinct keys used."""
    cache: ByteBudgetLRU[int] = ByteBudgetLRU(capacity_units * 8)
    for t, key in enumerate(trace):
        cache.insert(key, 8)
        recent: list[int] = []
        for k in reversed(trace[: t + 1]):
            if k not in recent:
                recent.append(k)
        assert cache.keys_lru_order() == list(reversed(recent[:capacity_units]))
