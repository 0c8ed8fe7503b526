"""The residency directory: which socket holds which expert in HBM, which node in DDR.

Pure state, no Ray: the `MemTier` actor owns one and tests drive it directly. Each socket's
HBM and each node's DDR is a `ByteBudgetLRU`, so the budgets (invariant 1) and pins
(invariant 2) are enforced by the same checked numbers everywhere. Sockets report what they
really hold; `sync_socket` makes the directory match (invariant 3) while keeping the pins of
leases still in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.config import MemtierConfig
from memtier.lru import ByteBudgetLRU
from memtier.models import Lease, NodeStatus, SocketInfo, SocketStatus
from memtier.policy import make_policy
from memtier.socket_table import SocketTable


@dataclass
class SocketEntry:
    socket_id: str
    node_id: str
    hbm: ByteBudgetLRU[str]
    leases: set[str] = field(default_factory=set)
    indexed: set[str] = field(default_factory=set)  # HBM residents as the holders index knows them
    last_used: int = 0  # directory clock tick of the last lease: ties break least recently used first
    last_seen_s: float = 0.0  # monotonic time of the last heartbeat
    kv_cache_bytes: int = 0  # the socket's KV reserve, beside `hbm` (which holds weights only)
    reported_ns: int = 0  # `SocketInfo.taken_ns` of the newest report adopted (0: none ordered yet)

    @property
    def load(self) -> int:
        return len(self.leases)


@dataclass
class NodeEntry:
    node_id: str
    ddr: ByteBudgetLRU[str]
    sockets: set[str] = field(default_factory=set)
    indexed: set[str] = field(default_factory=set)  # DDR residents as the ddr index knows them


class UnknownExpertError(KeyError):
    """An expert id that is not in the catalog."""


class ResidencyDirectory:
    """Sockets, nodes, experts and leases, with every budget checked before it changes.

    One eviction policy ranks victims on every socket's HBM (`hbm_policy`, memtier/policy.py): an
    expert's popularity is a property of the traffic, not of one socket, so all sockets share
    its request history, and its shadow caches model the sockets' HBM together.
    """

    def __init__(
        self, expert_bytes: dict[str, int], ddr_bytes_per_node: int, policy: MemtierConfig | None = None
    ) -> None:
        self.expert_bytes = dict(expert_bytes)
        self.ddr_bytes_per_node = ddr_bytes_per_node
        self.hbm_policy = make_policy(policy, 0, self.expert_bytes)  # sized as sockets register
        self.sockets: dict[str, SocketEntry] = {}
        self.nodes: dict[str, NodeEntry] = {}
        self.leases: dict[str, Lease] = {}
        self.clock = 0
        # Placement's indexes, kept by _changed(): who holds each expert in HBM, and every socket's
        # numbers as arrays (memtier/socket_table.py), so a placement never scans sockets in Python.
        self.holders: dict[str, set[str]] = {}
        self.ddr_index: dict[str, set[str]] = {}  # expert -> nodes whose DDR holds it (may name gone nodes)
        self.table = SocketTable()

    # ------------------------------------------------------------------ membership
    def size_of(self, expert: str) -> int:
        try:
            return self.expert_bytes[expert]
        except KeyError:
            raise UnknownExpertError(
                f"unknown expert {expert!r}; known: {sorted(self.expert_bytes)}"
            ) from None

    def node(self, node_id: str) -> NodeEntry:
        if node_id not in self.nodes:
            self.nodes[node_id] = NodeEntry(node_id, ByteBudgetLRU(self.ddr_bytes_per_node))
            self._ddr_changed(self.nodes[node_id])
        return self.nodes[node_id]

    def register_socket(self, info: SocketInfo, now_s: float) -> SocketEntry:
        """Add a socket (or refresh it) and adopt what it reports holding."""
        entry = self.sockets.get(info.socket_id)
        if entry is None or entry.hbm.capacity_bytes != info.hbm_bytes or entry.node_id != info.node_id:
            if entry is not None:
                self.drop_socket(info.socket_id)
            entry = SocketEntry(info.socket_id, info.node_id, ByteBudgetLRU(info.hbm_bytes, self.hbm_policy))
            entry.kv_cache_bytes = info.kv_cache_bytes
            self.sockets[info.socket_id] = entry
            self.node(info.node_id).sockets.add(info.socket_id)
            self.table.add(entry)
            self._resize_policy()
        entry.last_seen_s = now_s
        self.sync_socket(info)
        return entry

    def drop_socket(self, socket_id: str) -> list[Lease]:
        """Forget a dead socket; returns the leases that were running on it (now void)."""
        entry = self.sockets.pop(socket_id, None)
        if entry is None:
            return []
        self.table.remove(socket_id)
        for expert in entry.indexed:
            self.holders.get(expert, set()).discard(socket_id)
        self._resize_policy()
        node = self.nodes[entry.node_id]
        node.sockets.discard(socket_id)
        voided = [self.leases.pop(lease_id) for lease_id in entry.leases if lease_id in self.leases]
        for lease in voided:
            self._unpin_ddr(lease)
        if not node.sockets and not node.ddr.pinned_bytes:
            # A node without a live socket: it died, or all its sockets restart at once. Either way
            # nothing can read its DDR through us; forget it, and adopt its store's report again
            # when a socket of that node comes back (MemTier.heartbeat).
            del self.nodes[entry.node_id]
        return voided

    def sync_socket(self, info: SocketInfo) -> None:
        """Make the socket's HBM entry match its report, keeping pins of leases in flight.

        Leased experts the socket has not loaded yet stay (the lease will load them); anything
        else the directory believed but the socket does not hold is dropped, and anything the
        socket holds that the directory did not know is adopted in the socket's LRU order. A report
        taken before one already adopted is ignored: a heartbeat relayed late (memtier/node_beats.py)
        must not undo what a later release reported.
        """
        entry = self.sockets[info.socket_id]
        if info.taken_ns and info.taken_ns < entry.reported_ns:
            return
        entry.reported_ns = info.taken_ns
        snapshot = entry.hbm.snapshot()
        pinned = {key: pins for key, _, pins in snapshot if pins}
        reported = [e for e in info.residents if e in self.expert_bytes and e not in pinned]
        if reported + list(pinned) == [key for key, _, _ in snapshot]:
            return  # the report matches the directory (the usual case): nothing to rebuild
        rebuilt: ByteBudgetLRU[str] = ByteBudgetLRU(entry.hbm.capacity_bytes, self.hbm_policy)
        for expert in info.residents:
            if expert in self.expert_bytes and expert not in pinned:
                if self.expert_bytes[expert] <= rebuilt.free_bytes:
                    rebuilt.insert(expert, self.expert_bytes[expert])
        for expert, pins in pinned.items():
            for victim in rebuilt.insert(expert, self.expert_bytes[expert]):
                del victim  # a pinned lease outranks a stale report; the socket will evict it
            for _ in range(pins):
                rebuilt.pin(expert)
        rebuilt.evictions = entry.hbm.evictions
        entry.hbm = rebuilt
        self._changed(entry)

    def sync_ddr(self, node_id: str, residents: list[str]) -> None:
        """Adopt a DDR store's report of what its node holds, keeping in-flight pins."""
        node = self.node(node_id)
        pinned = {key: pins for key, _, pins in node.ddr.snapshot() if pins}
        rebuilt: ByteBudgetLRU[str] = ByteBudgetLRU(node.ddr.capacity_bytes)
        for expert in residents:
            if expert in self.expert_bytes and expert not in pinned:
                if self.expert_bytes[expert] <= rebuilt.free_bytes:
                    rebuilt.insert(expert, self.expert_bytes[expert])
        for expert, pins in pinned.items():
            rebuilt.insert(expert, self.expert_bytes[expert])
            for _ in range(pins):
                rebuilt.pin(expert)
        node.ddr = rebuilt
        self._ddr_changed(node)

    def _changed(self, entry: SocketEntry, residents: bool = True) -> None:
        """Refresh placement's indexes after `entry`'s leases or HBM changed; `residents` False: which
        experts it holds did not (a pin or an unpin only), so the holder index stands."""
        self.table.refresh(entry)
        if not residents:
            return
        now = set(entry.hbm.keys_lru_order())
        if now != entry.indexed:
            for expert in entry.indexed - now:
                self.holders[expert].discard(entry.socket_id)
            for expert in now - entry.indexed:
                self.holders.setdefault(expert, set()).add(entry.socket_id)
            entry.indexed = now

    def _ddr_changed(self, node: NodeEntry) -> None:
        """Refresh placement's DDR indexes after `node`'s DDR mirror changed."""
        self.table.refresh_node(node.node_id, node.ddr.capacity_bytes - node.ddr.pinned_bytes)
        now = set(node.ddr.keys_lru_order())
        if now != node.indexed:
            for expert in node.indexed - now:
                self.ddr_index[expert].discard(node.node_id)
            for expert in now - node.indexed:
                self.ddr_index.setdefault(expert, set()).add(node.node_id)
            node.indexed = now

    def ddr_nodes_holding(self, expert: str) -> list[str]:
        """Live nodes whose DDR holds `expert` (the index may still name a node forgotten since)."""
        return [n for n in self.ddr_index.get(expert, ()) if n in self.nodes and expert in self.nodes[n].ddr]

    def _resize_policy(self) -> None:
        self.hbm_policy.resize(sum(s.hbm.capacity_bytes for s in self.sockets.values()))

    # ------------------------------------------------------------------ queries
    def hbm_holders(self, expert: str) -> list[SocketEntry]:
        return [self.sockets[socket_id] for socket_id in self.holders.get(expert, ())]

    def ddr_holders(self, expert: str) -> list[NodeEntry]:
        return [self.nodes[node_id] for node_id in sorted(self.ddr_nodes_holding(expert))]

    def status(self) -> list[NodeStatus]:
        nodes = []
        for node in sorted(self.nodes.values(), key=lambda n: n.node_id):
            sockets = [
                SocketStatus(
                    socket_id=s.socket_id,
                    node_id=s.node_id,
                    hbm_bytes=s.hbm.capacity_bytes,
                    kv_cache_bytes=s.kv_cache_bytes,
                    used_bytes=s.hbm.used_bytes,
                    pinned_bytes=s.hbm.pinned_bytes,
                    residents=s.hbm.keys_lru_order(),
                    leases=s.load,
                )
                for s in sorted((self.sockets[i] for i in node.sockets), key=lambda s: s.socket_id)
            ]
            nodes.append(
                NodeStatus(
                    node_id=node.node_id,
                    ddr_bytes=node.ddr.capacity_bytes,
                    used_bytes=node.ddr.used_bytes,
                    residents=node.ddr.keys_lru_order(),
                    sockets=sockets,
                )
            )
        return nodes

    # ------------------------------------------------------------------ leases
    def grant(self, lease: Lease) -> list[str]:
        """Record a lease chosen by placement: pin the expert on its socket (and DDR while it
        pages in). Returns the HBM victims evicted to make room, in the policy's order; sets
        `lease.keep` False when the policy's admission test refuses to keep a page-in."""
        socket = self.sockets[lease.socket_id]
        ddr = self.node(lease.node_id).ddr
        # Check both tiers before changing either, so a refusal leaves no orphan pin behind.
        socket.hbm.plan_insert(lease.expert, lease.size_bytes)
        resident = lease.expert in socket.hbm  # then pinning it changes no residents (a reuse, most leases)
        if lease.tier != "hbm" and lease.expert not in ddr:
            ddr.plan_insert(lease.expert, lease.size_bytes)
        self.clock += 1
        socket.last_used = self.clock
        if not lease.prefetch:
            self.hbm_policy.record(lease.expert)  # one lease = one request for the expert
        victims = socket.hbm.insert(lease.expert, lease.size_bytes, pin=True)
        if victims:
            sizes = [(v, self.expert_bytes.get(v, 0)) for v in victims]
            lease.keep = self.hbm_policy.admit(lease.expert, lease.size_bytes, sizes)
        socket.hbm.touch(lease.expert)
        socket.leases.add(lease.lease_id)
        self._changed(socket, residents=not resident)
        if lease.tier != "hbm":
            if lease.expert not in ddr:
                ddr.insert(lease.expert, lease.size_bytes)
            ddr.touch(lease.expert)
            ddr.pin(lease.expert)
            self._ddr_changed(self.nodes[lease.node_id])
        self.leases[lease.lease_id] = lease
        return victims

    def count_request(self, lease: Lease) -> bool:
        """One more request ran under a lease still pinned (memtier/client.py, lease reuse): count
        it as `grant` counts one, for the policy and recency. False if its socket is gone."""
        socket = self.sockets.get(lease.socket_id)
        if socket is None:
            return False
        self.clock += 1
        socket.last_used = self.clock
        self.hbm_policy.record(lease.expert)
        if lease.expert in socket.hbm:
            socket.hbm.touch(lease.expert)
        self.table.refresh(socket)  # only its recency changed: no residency index to redo
        return True

    def release(self, lease_id: str) -> Lease | None:
        """Unpin a lease's expert; unknown ids (already released, or voided) are a no-op."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return None
        socket = self.sockets.get(lease.socket_id)
        if socket is not None:
            socket.leases.discard(lease_id)
            dropped = False
            if lease.expert in socket.hbm and socket.hbm.is_pinned(lease.expert):
                socket.hbm.unpin(lease.expert)
                socket.hbm.touch(lease.expert)
                if not lease.keep and not socket.hbm.is_pinned(lease.expert):
                    socket.hbm.remove(lease.expert)  # admission refused: the socket drops it too
                    dropped = True
            self._changed(socket, residents=dropped)
        self._unpin_ddr(lease)
        return lease

    def _unpin_ddr(self, lease: Lease) -> None:
        if lease.tier == "hbm" or lease.node_id not in self.nodes:
            return
        ddr = self.nodes[lease.node_id].ddr
        if lease.expert in ddr and ddr.is_pinned(lease.expert):
            ddr.unpin(lease.expert)
            self._ddr_changed(self.nodes[lease.node_id])
