"""Typed messages between memtier and its callers (the ingress and the socket replicas).

Router and memtier hand `deployments/` small pydantic models, never dicts or tuples, so each
side can change its internals without the other parsing them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Tier = Literal["hbm", "ddr", "store"]


class SocketInfo(BaseModel):
    """What a socket tells MemTier when it registers or heartbeats."""

    socket_id: str = Field(description="Serve replica id (unique_id) or any unique name; dispatch key.")
    node_id: str = Field(description="Ray node id: sockets on one node share its DDR store.")
    hbm_bytes: int = Field(ge=0, description="HBM for expert weights: the socket's budget less KV.")
    kv_cache_bytes: int = Field(
        0, ge=0, description="HBM kept for its requests' KV cache (invariant 8), beside hbm_bytes."
    )
    residents: list[str] = Field(default_factory=list, description="Experts materialised now, LRU first.")
    in_use: list[str] = Field(default_factory=list, description="Experts pinned by running requests.")
    taken_ns: int = Field(
        0,
        ge=0,
        description="When the socket took this report (its monotonic clock, ns): MemTier adopts no report "
        "older than one it already has, so a heartbeat relayed late cannot undo a newer release's report. "
        "0: unordered, always adopted.",
    )


class Lease(BaseModel):
    """MemTier's answer to `place(expert)`: where the request runs and what that costs.

    The expert stays pinned on `socket_id` until `release(lease_id)`. `evict` lists the LRU
    victims MemTier chose to make room; the socket evicts them (unless a request there still
    uses one, in which case it makes room from its own LRU and reports what it did).
    """

    lease_id: str
    expert: str
    socket_id: str
    node_id: str
    tier: Tier = Field(description="Where the expert comes from: hbm (hit), ddr (this node), store.")
    size_bytes: int
    evict: list[str] = Field(default_factory=list)
    keep: bool = Field(
        True,
        description="False when admission refused to keep this page-in (it scored below every expert it "
        "displaced): the socket serves the request, then drops the expert.",
    )
    prefetch: bool = Field(
        False,
        description="A page-in with no request behind it (memtier/prefetch.py): the socket loads the expert "
        "while idle and releases the lease at once; it is not counted as a request.",
    )
    holder: str = Field(
        "",
        description="The client that releases this lease (memtier/client.py, lease reuse): it may hand the "
        "lease to its next request for the same expert instead. Empty: the socket releases it when its "
        "request ends.",
    )


class ActivationReport(BaseModel):
    """What really happened on the socket, sent back with `release` to keep the directory true."""

    tier: Tier
    switch_s: float = Field(0.0, description="Time to make the expert usable (0 for an HBM hit).")
    bytes_moved: int = Field(0, description="DDR->HBM bytes copied or mapped for this activation.")
    store_read: bool = Field(False, description="The node's DDR had to read the STORE for it.")
    evicted: list[str] = Field(default_factory=list)
    residents: list[str] = Field(default_factory=list, description="Socket residents after activation.")
    parts_s: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds per step of a page-in (fetch: DDR store round trip, inside it store_wait, "
        "read and put on a STORE miss; map: ray.get of the ref; materialize), so a slow switch says "
        "where its time went.",
    )


class HeldTensors(BaseModel):
    """What a socket really holds, counted from its tensors, not from its ledger.

    The ledger (`ByteBudgetLRU`) plans before it changes anything, so it can never show itself over
    budget; invariant 1 is about memory. Tests compare these bytes with `hbm_per_socket` and these
    names with the ledger, so a model freed too late (or too early) shows here.
    """

    weights_tensor_bytes: int = Field(
        description="Parameters and buffers of every materialised model, each tensor counted once."
    )
    kv_tensor_bytes: int = Field(0, description="KV cache tensors the socket's engine holds now.")
    materialised: list[str] = Field(description="Experts with a built model whose every tensor is real.")
    ledger: list[str] = Field(description="Experts the socket's byte budget charges, LRU first.")
    loading: list[str] = Field(default_factory=list, description="Charged, still paging in (no model yet).")
    running: list[str] = Field(default_factory=list, description="Experts with rows in the engine now.")


class HeldObjects(BaseModel):
    """What a node's DDR store really holds in the object store, as Ray reports each object's size."""

    object_bytes: int = Field(description="Sum of Ray's object_size (data + metadata) over the store's refs.")
    held: list[str] = Field(description="Experts the store holds a ref for.")
    ledger: list[str] = Field(description="Experts the store's DDR budget charges, LRU first.")
    off_node: list[str] = Field(
        default_factory=list, description="Held experts with no copy of their object on this node."
    )


class TierCounters(BaseModel):
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class SocketStatus(BaseModel):
    socket_id: str
    node_id: str
    hbm_bytes: int
    kv_cache_bytes: int = 0
    used_bytes: int
    pinned_bytes: int
    residents: list[str]
    leases: int


class NodeStatus(BaseModel):
    node_id: str
    ddr_bytes: int
    used_bytes: int
    residents: list[str]
    sockets: list[SocketStatus]


class MemtierStats(BaseModel):
    """Counters since the actor started (they restart with it; the directory does not)."""

    leases: int = 0
    lease_reuses: int = Field(
        0, description="Of `leases`, those an ingress granted from a lease it kept (memtier/client.py)."
    )
    hbm: TierCounters = TierCounters()
    ddr: TierCounters = TierCounters()
    store_reads: int = 0
    hbm_evictions: int = 0
    ddr_evictions: int = 0
    bytes_moved_ddr_to_hbm: int = 0
    bytes_moved_store_to_ddr: int = 0
    switch_s_p50: float = 0.0
    switch_s_p90: float = 0.0
    switch_s_p99: float = 0.0
    switches: int = 0
    hbm_hit_rate: float = 0.0
    ddr_hit_rate: float = 0.0


class MemtierStatus(BaseModel):
    """Residency per node and socket, budgets and stats: the body of GET /v1/memtier."""

    nodes: list[NodeStatus]
    stats: MemtierStats
    experts: dict[str, int] = Field(description="Expert id -> size in bytes.")
