"""A byte-budgeted LRU cache with pinning: the policy behind every HBM and DDR tier.

Entries are only a key and a byte size, so the policy is testable without any hardware
(the STYLE.md "test without the hardware" rule). An expert in use is *pinned* (leased): it
is never evicted, and its bytes are kept apart from the evictable bytes, as SGLang's
``radix_cache.py`` keeps ``evictable_size_`` and ``protected_size_`` apart. Bytes move
between the two counters only on pin/unpin (a lease taken or released) and on
insert/remove, so the budget is one checked number: every insert is checked, with the
numbers, *before* anything changes (as vLLM's ``block_pool.py`` refuses an allocation).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from memtier.policy import EvictionPolicy

K = TypeVar("K", bound=Hashable)

__all__ = [
    "AllPinnedError",
    "ByteBudgetLRU",
    "CapacityError",
    "NeverFitsError",
    "PinnedError",
]


class CapacityError(Exception):
    """An entry does not fit the budget; carries the numbers so callers can report them.

    Attributes mirror the message so that a router or an API error mapper can decide what
    to do (wait for a lease to end, or reject the request) without parsing text.
    """

    def __init__(self, key: object, size_bytes: int, capacity_bytes: int, pinned_bytes: int, reason: str):
        self.key = key
        self.size_bytes = size_bytes
        self.capacity_bytes = capacity_bytes
        self.pinned_bytes = pinned_bytes
        super().__init__(
            f"cannot insert {key!r} ({size_bytes} bytes) into a budget of {capacity_bytes} bytes "
            f"with {pinned_bytes} bytes pinned: {reason}"
        )


class NeverFitsError(CapacityError):
    """The entry is larger than the whole budget: no amount of eviction or waiting helps."""


class AllPinnedError(CapacityError):
    """The entry fits the budget, but not beside the entries pinned now: retry after an unpin."""


class PinnedError(ValueError):
    """A pinned (leased) entry cannot be removed: removing it would free bytes still in use."""


@dataclass(slots=True)
class _Entry:
    size_bytes: int
    pins: int = 0


class ByteBudgetLRU(Generic[K]):
    """A byte budget over entries in LRU order, where pinned entries are never evicted.

    Recency changes only on ``touch`` and ``insert`` (pinning is a lease, not a use; callers
    touch when they use an entry). All operations are O(1) except eviction, which walks the
    LRU order past pinned entries: amortised O(1) per evicted entry plus the pinned entries
    it skips, which are few (one lease per running request).

    Victims are least recently used first unless a ``policy`` (memtier/policy.py) is given: it
    then orders the unpinned entries and victims are taken in its order. The policy only ranks;
    the bytes and the pins stay checked here, so no policy can overfill a budget or evict a
    leased entry.
    """

    def __init__(self, capacity_bytes: int, policy: EvictionPolicy | None = None) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self._capacity_bytes = capacity_bytes
        self.policy = policy
        # Least recently used first; move_to_end() makes an entry the most recently used.
        self._entries: OrderedDict[K, _Entry] = OrderedDict()
        # The only two byte counters; used_bytes is their sum, never stored separately.
        self._pinned_bytes = 0
        self._evictable_bytes = 0
        # State-change counters (STYLE.md "count every state change").
        self.evictions = 0
        self.evicted_bytes = 0

    # ----------------------------------------------------------------- byte accounting
    @property
    def capacity_bytes(self) -> int:
        return self._capacity_bytes

    @property
    def pinned_bytes(self) -> int:
        """Bytes of entries with at least one pin: in use, so never evictable."""
        return self._pinned_bytes

    @property
    def evictable_bytes(self) -> int:
        """Bytes an insert may reclaim by eviction."""
        return self._evictable_bytes

    @property
    def used_bytes(self) -> int:
        return self._pinned_bytes + self._evictable_bytes

    @property
    def free_bytes(self) -> int:
        return self._capacity_bytes - self.used_bytes

    # ----------------------------------------------------------------- queries
    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def size_of(self, key: K) -> int:
        """Byte size of a resident entry; KeyError if absent."""
        return self._entries[key].size_bytes

    def pin_count(self, key: K) -> int:
        """Number of pins (leases) on ``key``; 0 when absent, since a non-resident has no lease."""
        entry = self._entries.get(key)
        return entry.pins if entry is not None else 0

    def is_pinned(self, key: K) -> bool:
        return self.pin_count(key) > 0

    def keys_lru_order(self) -> list[K]:
        """Resident keys, least recently used first (the order eviction would take them)."""
        return list(self._entries)

    def snapshot(self) -> list[tuple[K, int, int]]:
        """``(key, size_bytes, pins)`` per entry in LRU order: for tests, metrics and debugging."""
        return [(key, e.size_bytes, e.pins) for key, e in self._entries.items()]

    # ----------------------------------------------------------------- recency
    def touch(self, key: K) -> None:
        """Mark ``key`` most recently used; KeyError if absent."""
        self._entries.move_to_end(key)

    # ----------------------------------------------------------------- insert / remove
    def plan_insert(self, key: K, size_bytes: int) -> list[K]:
        """The victims ``insert`` would evict, LRU first, without changing anything.

        Raises exactly as ``insert`` would, so a caller (the pager) can decide whether to
        page in, and what it will have to page out, before touching any memory.
        """
        if size_bytes < 0:
            raise ValueError(f"size_bytes must be >= 0, got {size_bytes} for {key!r}")
        entry = self._entries.get(key)
        if entry is not None:
            if entry.size_bytes != size_bytes:
                # Silently keeping the old size would make the budget lie about real memory.
                raise ValueError(
                    f"{key!r} is resident with {entry.size_bytes} bytes, insert asked for {size_bytes}; "
                    "remove it first to change its size"
                )
            return []
        self._check_fits(key, size_bytes)
        return self._victims_for(size_bytes)

    def insert(self, key: K, size_bytes: int, *, pin: bool = False) -> list[K]:
        """Insert ``key`` as most recently used, evicting LRU unpinned entries until it fits.

        Returns the evicted keys, LRU first, so the caller can free their memory. If ``key``
        is already resident it is touched and nothing is evicted. With ``pin=True`` the entry
        is also pinned in the same step, so no other insert can evict it between the two.
        On any error nothing has changed.
        """
        victims = self.plan_insert(key, size_bytes)
        if key in self._entries:
            self.touch(key)
            if pin:
                self.pin(key)
            return []
        for victim in victims:
            self._evict(victim)
        self._entries[key] = _Entry(size_bytes=size_bytes, pins=1 if pin else 0)
        if pin:
            self._pinned_bytes += size_bytes
        else:
            self._evictable_bytes += size_bytes
        return victims

    def remove(self, key: K) -> int:
        """Remove an unpinned entry and return the bytes freed.

        KeyError if absent; PinnedError (a ValueError) if pinned, because its memory is in use.
        """
        entry = self._entries[key]
        if entry.pins:
            raise PinnedError(
                f"cannot remove {key!r} ({entry.size_bytes} bytes): it has {entry.pins} pin(s); unpin first"
            )
        del self._entries[key]
        self._evictable_bytes -= entry.size_bytes
        return entry.size_bytes

    # ----------------------------------------------------------------- pins (leases)
    def pin(self, key: K) -> None:
        """Take one lease on ``key``; the first pin moves its bytes from evictable to pinned."""
        entry = self._entries[key]
        if entry.pins == 0:
            self._evictable_bytes -= entry.size_bytes
            self._pinned_bytes += entry.size_bytes
        entry.pins += 1

    def unpin(self, key: K) -> None:
        """Release one lease; the last unpin makes the bytes evictable again.

        ValueError if ``key`` has no pins: an unmatched unpin is a leak elsewhere, not a no-op.
        """
        entry = self._entries[key]
        if entry.pins == 0:
            raise ValueError(f"cannot unpin {key!r}: it has no pins")
        entry.pins -= 1
        if entry.pins == 0:
            self._pinned_bytes -= entry.size_bytes
            self._evictable_bytes += entry.size_bytes

    # ----------------------------------------------------------------- internals
    def _check_fits(self, key: K, size_bytes: int) -> None:
        """Raise before mutation if no sequence of evictions can make room for ``size_bytes``."""
        if size_bytes > self._capacity_bytes:
            raise NeverFitsError(
                key,
                size_bytes,
                self._capacity_bytes,
                self._pinned_bytes,
                "it is larger than the whole budget; raise the budget or place it on a larger tier",
            )
        reclaimable_bytes = self._capacity_bytes - self._pinned_bytes
        if size_bytes > reclaimable_bytes:
            raise AllPinnedError(
                key,
                size_bytes,
                self._capacity_bytes,
                self._pinned_bytes,
                f"at most {reclaimable_bytes} bytes can be freed; retry after a lease is released",
            )

    def _victims_for(self, size_bytes: int) -> list[K]:
        """Unpinned keys, in eviction order, whose eviction frees enough room; assumes _check_fits passed."""
        needed_bytes = size_bytes - self.free_bytes
        victims: list[K] = []
        if needed_bytes <= 0:
            return victims
        if self.policy is None:
            order: Iterable[K] = (key for key, entry in self._entries.items() if entry.pins == 0)
        else:
            unpinned = [key for key, entry in self._entries.items() if entry.pins == 0]
            order = self.policy.rank(unpinned, self.size_of)
        for key in order:
            if needed_bytes <= 0:
                break
            victims.append(key)
            needed_bytes -= self._entries[key].size_bytes
        return victims

    def _evict(self, key: K) -> None:
        entry = self._entries.pop(key)
        self._evictable_bytes -= entry.size_bytes
        self.evictions += 1
        self.evicted_bytes += entry.size_bytes
