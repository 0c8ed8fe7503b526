"""Prometheus metrics of memtier (`coe:memtier_*`), kept in the MemTier actor's own registry.

The same numbers as `MemTier.stats()`, plus residency per socket and node, in the form dashboards
chart: hits and misses per tier, evictions, bytes paged, a switch-time histogram. The ingress
fetches `MemTier.metrics()` at each scrape and serves it on `GET /metrics` beside the serving
metrics; there is one MemTier actor per cluster, so its view needs no merging.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from memtier.models import NodeStatus

# 2^-10 s (1 ms) .. 64 s, each edge sqrt(2) above the last: a DDR->HBM map takes milliseconds, a
# STORE read of a large expert tens of seconds; a quantile read from these is within 41%.
SWITCH_BUCKETS_S: tuple[float, ...] = tuple(round(2 ** (k / 2), 6) for k in range(-20, 13))


class MemtierMetrics:
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.registry = r = CollectorRegistry()
        tier = ("tier",)
        self.hits = Counter("coe:memtier_hits", "Activations served from a tier.", tier, registry=r)
        self.misses = Counter("coe:memtier_misses", "Activations that missed a tier.", tier, registry=r)
        self.evictions = Counter("coe:memtier_evictions", "Experts evicted from a tier.", tier, registry=r)
        self.paged_bytes = Counter(
            "coe:memtier_paged_bytes",
            "Bytes paged into a tier: hbm from the node's DDR, ddr from the STORE.",
            tier,
            registry=r,
        )
        self.switch_seconds = Histogram(
            "coe:memtier_switch_seconds",
            "Time to make a non-resident expert usable on its socket, by where it came from (ddr, store).",
            ("source",),
            buckets=SWITCH_BUCKETS_S,
            registry=r,
        )
        self.leases = Gauge("coe:memtier_leases", "Leases in flight (pinned experts).", registry=r)
        self.lease_reuses = Counter(
            "coe:memtier_lease_reuses",
            "Placements an ingress granted from a lease it kept (memtier.lease_hold_s): no MemTier call.",
            registry=r,
        )

    def hit(self, tier: str, count: int = 1) -> None:
        if count:
            self.hits.labels(tier).inc(count)

    def miss(self, tier: str) -> None:
        self.misses.labels(tier).inc()

    def evicted(self, tier: str, count: int) -> None:
        if count:
            self.evictions.labels(tier).inc(count)

    def moved(self, tier: str, num_bytes: int) -> None:
        if num_bytes:
            self.paged_bytes.labels(tier).inc(num_bytes)

    def switched(self, seconds: float, source: str) -> None:
        self.switch_seconds.labels(source).observe(seconds)

    def reused(self) -> None:
        self.lease_reuses.inc()

    def count_leases_with(self, count: Callable[[], int]) -> None:
        """The leases gauge reads `count` at each scrape: setting it on every grant and release cost
        more than the bookkeeping it reports (bench.memtier_scale, 4 gauge sets per reused request)."""
        self.leases.set_function(count)

    def families(self, nodes: list[NodeStatus]) -> list[Metric]:
        """Everything above, plus residency now: bytes used, budget and pinned per socket and node."""
        labels = ["tier", "node", "socket"]
        resident = GaugeMetricFamily(
            "coe:memtier_resident_bytes",
            "Expert bytes resident: per socket (hbm), per node (ddr).",
            labels=labels,
        )
        budget = GaugeMetricFamily(
            "coe:memtier_budget_bytes", "Byte budget: per socket (hbm), per node (ddr).", labels=labels
        )
        pinned = GaugeMetricFamily(
            "coe:memtier_pinned_bytes",
            "HBM bytes pinned by leases (never evictable).",
            labels=["node", "socket"],
        )
        sockets = GaugeMetricFamily("coe:memtier_sockets", "Sockets registered with MemTier.")
        for node in nodes:
            resident.add_metric(["ddr", node.node_id, ""], node.used_bytes)
            budget.add_metric(["ddr", node.node_id, ""], node.ddr_bytes)
            for s in node.sockets:
                resident.add_metric(["hbm", node.node_id, s.socket_id], s.used_bytes)
                budget.add_metric(["hbm", node.node_id, s.socket_id], s.hbm_bytes)
                pinned.add_metric([node.node_id, s.socket_id], s.pinned_bytes)
        sockets.add_metric([], sum(len(node.sockets) for node in nodes))
        return [*self.registry.collect(), resident, budget, pinned, sockets]
