"""The numbers placement ranks sockets by, one array slot per socket, so a miss is ranked in C.

`bench.memtier_scale` measured the old placement, which asked every socket's budget for a plan
per request, at ~90 place+release pairs/s with 512 sockets registered. Placement only needs, per
socket, its load, when it was last used, its free and its reclaimable (unpinned) bytes and its
node; the directory refreshes a socket's slot whenever one of them changes (a lease granted or
released, a sync), and placement ranks all sockets with a few vectorised numpy operations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from memtier.directory import SocketEntry

__all__ = ["SocketTable"]

# A composite rank (load, needs eviction, last used, socket id order) packed into one int64, so
# numpy's argmin returns the lexicographic minimum: 13 + 1 + 37 + 12 bits.
_ID_BITS = 12
_USED_BITS = 37
_LOAD_SHIFT = _ID_BITS + _USED_BITS + 1
_FLAG_SHIFT = _ID_BITS + _USED_BITS
_MAX_LOAD = (1 << 13) - 1


class SocketTable:
    def __init__(self, capacity: int = 64) -> None:
        self.load = np.zeros(capacity, np.int64)
        self.last_used = np.zeros(capacity, np.int64)
        self.free_bytes = np.zeros(capacity, np.int64)
        self.reclaimable_bytes = np.zeros(capacity, np.int64)  # budget less pinned bytes
        self.capacity_bytes = np.zeros(capacity, np.int64)
        self.node = np.zeros(capacity, np.int64)
        self.alive = np.zeros(capacity, bool)
        self.id_rank = np.zeros(capacity, np.int64)
        self.slot_of: dict[str, int] = {}
        self.entries: list[SocketEntry | None] = [None] * capacity
        self.node_slot_of: dict[str, int] = {}
        self.node_ids: list[str] = []
        # Per node slot: DDR bytes an expert may still take beside the experts pinned there.
        self.node_reclaimable_bytes = np.zeros(16, np.int64)
        self._max_capacity: int | None = None  # cached: membership changes are rare, placements not

    # ------------------------------------------------------------------ membership
    def add(self, entry: SocketEntry) -> None:
        if entry.socket_id in self.slot_of:
            self.remove(entry.socket_id)
        free = np.flatnonzero(~self.alive)
        if free.size == 0:
            self._grow()
            free = np.flatnonzero(~self.alive)
        slot = int(free[0])
        self.slot_of[entry.socket_id] = slot
        self.entries[slot] = entry
        self.alive[slot] = True
        self.node[slot] = self.node_slot(entry.node_id)
        self.refresh(entry)
        self._rank_ids()
        self._max_capacity = None

    def remove(self, socket_id: str) -> None:
        slot = self.slot_of.pop(socket_id, None)
        if slot is not None:
            self.alive[slot] = False
            self.entries[slot] = None
            self._rank_ids()
            self._max_capacity = None

    def refresh(self, entry: SocketEntry) -> None:
        """Copy the socket's numbers into its slot: call after any change to its leases or HBM."""
        slot = self.slot_of.get(entry.socket_id)
        if slot is None:
            return
        hbm = entry.hbm
        self.load[slot] = min(entry.load, _MAX_LOAD)
        self.last_used[slot] = entry.last_used
        self.free_bytes[slot] = hbm.free_bytes
        self.reclaimable_bytes[slot] = hbm.capacity_bytes - hbm.pinned_bytes
        if self.capacity_bytes[slot] != hbm.capacity_bytes:
            self.capacity_bytes[slot] = hbm.capacity_bytes
            self._max_capacity = None

    def node_slot(self, node_id: str) -> int:
        slot = self.node_slot_of.get(node_id)
        if slot is None:
            slot = self.node_slot_of[node_id] = len(self.node_ids)
            self.node_ids.append(node_id)
            if slot >= len(self.node_reclaimable_bytes):
                grown = np.zeros(2 * len(self.node_reclaimable_bytes), np.int64)
                grown[:slot] = self.node_reclaimable_bytes[:slot]
                self.node_reclaimable_bytes = grown
        return slot

    def refresh_node(self, node_id: str, reclaimable_bytes: int) -> None:
        slot = self.node_slot(node_id)  # first: it may grow (replace) the array
        self.node_reclaimable_bytes[slot] = reclaimable_bytes

    def _grow(self) -> None:
        size = len(self.alive)
        for name in (
            "load",
            "last_used",
            "free_bytes",
            "reclaimable_bytes",
            "capacity_bytes",
            "node",
            "id_rank",
        ):
            array = getattr(self, name)
            setattr(self, name, np.concatenate([array, np.zeros(size, array.dtype)]))
        self.alive = np.concatenate([self.alive, np.zeros(size, bool)])
        self.entries.extend([None] * size)

    def _rank_ids(self) -> None:
        """Socket-id order, the last tie-break (two sockets never used share last_used 0)."""
        for rank, socket_id in enumerate(sorted(self.slot_of)):
            self.id_rank[self.slot_of[socket_id]] = rank

    # ------------------------------------------------------------------ queries
    def max_capacity_bytes(self) -> int:
        if self._max_capacity is None:
            self._max_capacity = int(self.capacity_bytes[self.alive].max()) if self.alive.any() else 0
        return self._max_capacity

    def slots_of(self, socket_ids) -> np.ndarray:
        return np.fromiter((self.slot_of[s] for s in socket_ids), np.int64)

    def rank(self, slots: np.ndarray, size_bytes: int) -> np.ndarray:
        """Per slot, (load, needs eviction, last used, socket id) packed in one int64: the lowest is
        the best new home for an expert of `size_bytes` (memtier/placement.py)."""
        needs_eviction = (self.free_bytes[slots] < size_bytes).astype(np.int64)
        return (
            (self.load[slots] << _LOAD_SHIFT)
            | (needs_eviction << _FLAG_SHIFT)
            | (np.minimum(self.last_used[slots], (1 << _USED_BITS) - 1) << _ID_BITS)
            | np.minimum(self.id_rank[slots], (1 << _ID_BITS) - 1)  # past 4,096 sockets: slot order
        )
