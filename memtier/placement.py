"""Where a request for an expert runs: ARCHITECTURE invariant 5 as one pure function.

Order: a socket that holds the expert in HBM; then a socket on a node whose DDR holds it;
then the least-loaded socket. Ties break by LRU (the socket used least recently).

Among HBM holders, batching beats spreading: with `saturation` set (the socket engine's batch
size), the holder already running the most requests *for this expert* wins while its batch has
room, because a continuous batcher adds a row to a running batch almost for free (a decode step
of 8 rows costs about 2x one row on CPU, see deployments/engine.py), while a request spread to
an idle copy runs alone. Without `saturation` the least-loaded holder wins, as before.

A socket is a candidate only if the expert can fit beside what is pinned there now, so a
placement never asks a socket to evict an expert in use.

One refinement, for hot experts: an HBM holder whose in-flight leases have reached
`saturation` would only queue the request, so while a non-saturated socket exists the
expert is paged in there instead, replicating the hot expert (the multiplexing baseline's
"hot model stuck on one replica" complaint).
"""

from __future__ import annotations

from memtier.directory import ResidencyDirectory, SocketEntry
from memtier.lru import AllPinnedError, NeverFitsError
from memtier.models import Tier


class NoCapacityNow(Exception):
    """Every socket that could hold the expert has too much pinned right now: wait and retry."""


class NeverPlaceable(Exception):
    """No registered socket can ever hold the expert (or none is registered)."""


def _fits_now(directory: ResidencyDirectory, socket: SocketEntry, expert: str, size_bytes: int) -> bool:
    """The socket can take the expert now: HBM room beside its pins and, for a page-in, room in
    its node's DDR beside the experts pinned there (the weights pass through DDR)."""
    if expert in socket.hbm:
        return True
    try:
        socket.hbm.plan_insert(expert, size_bytes)
        ddr = directory.node(socket.node_id).ddr
        if expert not in ddr:
            ddr.plan_insert(expert, size_bytes)
    except (AllPinnedError, NeverFitsError):
        return False
    return True


def _rank_key(socket: SocketEntry, expert: str, size_bytes: int) -> tuple:
    """Least loaded, then no eviction needed, then least recently used."""
    evicts = 0 if expert in socket.hbm else len(socket.hbm.plan_insert(expert, size_bytes))
    return (socket.load, evicts, socket.last_used, socket.socket_id)


def _holder_key(socket: SocketEntry, expert: str) -> tuple:
    """Fullest running batch of `expert` first (it has room: the caller checked), then least loaded."""
    return (-socket.hbm.pin_count(expert), socket.load, socket.last_used, socket.socket_id)


def choose_socket(
    directory: ResidencyDirectory, expert: str, *, saturation: int | None = None
) -> tuple[SocketEntry, Tier]:
    """Pick the socket for one request of `expert` and the tier its weights come from."""
    size_bytes = directory.size_of(expert)
    sockets = list(directory.sockets.values())
    if not sockets:
        raise NeverPlaceable("no sockets are registered with memtier")
    if all(size_bytes > s.hbm.capacity_bytes for s in sockets):
        raise NeverPlaceable(
            f"expert {expert!r} ({size_bytes} bytes) is larger than every socket's HBM "
            f"(largest {max(s.hbm.capacity_bytes for s in sockets)} bytes)"
        )
    candidates = [s for s in sockets if _fits_now(directory, s, expert, size_bytes)]
    if not candidates:
        raise NoCapacityNow(f"every socket that could hold {expert!r} is busy with pinned experts")

    holders = sorted(
        (s for s in candidates if expert in s.hbm), key=lambda s: _rank_key(s, expert, size_bytes)
    )
    if saturation is not None:
        with_room = [s for s in holders if s.load < saturation]
        if with_room:
            return min(with_room, key=lambda s: _holder_key(s, expert)), "hbm"
        if holders and not any(s.load < saturation for s in candidates):
            return holders[0], "hbm"  # everything is saturated: queue on the least-loaded holder
    elif holders:
        return holders[0], "hbm"

    ddr_nodes = {n.node_id for n in directory.ddr_holders(expert)}
    others = [s for s in candidates if expert not in s.hbm]
    if saturation is not None and any(s.load < saturation for s in others):
        others = [s for s in others if s.load < saturation]
    on_ddr = sorted(
        (s for s in others if s.node_id in ddr_nodes), key=lambda s: _rank_key(s, expert, size_bytes)
    )
    if on_ddr:
        return on_ddr[0], "ddr"
    if others:
        best = min(others, key=lambda s: _rank_key(s, expert, size_bytes))
        return best, "store"
    # Only saturated holders remain: queue on the least loaded one.
    return holders[0], "hbm"
