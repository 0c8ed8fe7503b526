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

import numpy as np

from memtier.directory import ResidencyDirectory, SocketEntry
from memtier.models import Tier

# Tied sockets whose victims a miss compares (least recently used first). 8, not 16: at 512 sockets
# the HBM hit rate was the same (bench.memtier_scale core 0.8827 vs 0.8828, sim 0.878 at 4, 8 and
# 16) and this loop was about a third of a miss's cost (cProfile, 512 sockets).
VICTIM_SAMPLE = 8


class NoCapacityNow(Exception):
    """Every socket that could hold the expert has too much pinned right now: wait and retry."""


class NeverPlaceable(Exception):
    """No registered socket can ever hold the expert (or none is registered)."""


def _holder_key(socket: SocketEntry, expert: str) -> tuple:
    """Fullest running batch of `expert` first (it has room: the caller checked), then least loaded."""
    return (-socket.hbm.pin_count(expert), socket.load, socket.last_used, socket.socket_id)


def _lru_holder_key(socket: SocketEntry) -> tuple:
    """Least loaded, then least recently used (a holder never needs to evict for its own expert)."""
    return (socket.load, socket.last_used, socket.socket_id)


def _fits_on_nodes(
    directory: ResidencyDirectory, expert: str, size_bytes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per node slot of the table: can its DDR stage the expert now (held, or room beside its pins),
    and does it hold it already (a DDR hit)."""
    table = directory.table
    holds = np.zeros(len(table.node_reclaimable_bytes), bool)
    for node_id in directory.ddr_nodes_holding(expert):
        holds[table.node_slot(node_id)] = True
    return holds | (table.node_reclaimable_bytes >= size_bytes), holds


def _best_new_home(
    directory: ResidencyDirectory, mask: np.ndarray, expert: str, size_bytes: int
) -> SocketEntry:
    """Least loaded, then no eviction, then fewest victims, then the least valuable victims, then
    least recently used, then socket id.

    The table ranks the first, second and last two keys at once. Among the sockets tied with the
    winner on load that must evict, the `VICTIM_SAMPLE` least recently used are asked for their
    victims, and the one whose victims the eviction policy values least wins: choosing the socket
    chooses the victim (with one expert per socket, entirely), so this makes the sockets' HBM act
    as one cache under the policy rather than evicting whatever the least recently used socket
    holds. Under LRU every value is 0 and the least recently used socket wins, as before. The
    sample bounds the cost of a miss at 512 sockets (bench.memtier_scale)."""
    table = directory.table
    candidates = np.flatnonzero(mask)
    ranks = table.rank(candidates, size_bytes)  # once: the tied sockets' ranks are a subset
    slot = int(candidates[np.argmin(ranks)])
    winner = table.entries[slot]
    if table.free_bytes[slot] >= size_bytes:
        return winner
    is_tied = (table.load[candidates] == table.load[slot]) & (table.free_bytes[candidates] < size_bytes)
    tied = candidates[is_tied]
    ordered = tied[np.argsort(ranks[is_tied], kind="stable")][:VICTIM_SAMPLE]
    policy, sizes = directory.hbm_policy, directory.expert_bytes
    best, best_key = winner, None
    for tied_slot in ordered:
        entry = table.entries[tied_slot]
        victims = entry.hbm.plan_insert(expert, size_bytes)
        key = (len(victims), sum(policy.value(v, sizes.get(v, 0)) for v in victims))
        if best_key is None or key < best_key:
            best, best_key = entry, key
    return best


def choose_socket(
    directory: ResidencyDirectory, expert: str, *, saturation: int | None = None
) -> tuple[SocketEntry, Tier]:
    """Pick the socket for one request of `expert` and the tier its weights come from."""
    size_bytes = directory.size_of(expert)
    if not directory.sockets:
        raise NeverPlaceable("no sockets are registered with memtier")
    table = directory.table
    if size_bytes > table.max_capacity_bytes():
        raise NeverPlaceable(
            f"expert {expert!r} ({size_bytes} bytes) is larger than every socket's HBM "
            f"(largest {table.max_capacity_bytes()} bytes)"
        )
    holders = directory.hbm_holders(expert)  # a holder can always take one more request for it
    if saturation is not None:
        with_room = [s for s in holders if s.load < saturation]
        if with_room:
            return min(with_room, key=lambda s: _holder_key(s, expert)), "hbm"
    elif holders:
        return min(holders, key=_lru_holder_key), "hbm"

    node_fits, node_holds = _fits_on_nodes(directory, expert, size_bytes)
    others = table.alive & (table.reclaimable_bytes >= size_bytes) & node_fits[table.node]
    if holders:
        others[table.slots_of(s.socket_id for s in holders)] = False
    if saturation is not None:
        unsaturated = others & (table.load < saturation)
        if unsaturated.any():
            others = unsaturated
        elif holders:
            return min(holders, key=_lru_holder_key), "hbm"  # everything is saturated: queue on a holder
    if not others.any():
        if holders:
            return min(holders, key=_lru_holder_key), "hbm"
        raise NoCapacityNow(f"every socket that could hold {expert!r} is busy with pinned experts")
    on_ddr = others & node_holds[table.node]
    if on_ddr.any():
        return _best_new_home(directory, on_ddr, expert, size_bytes), "ddr"
    return _best_new_home(directory, others, expert, size_bytes), "store"
