"""Prometheus metrics for memtier, via `ray.util.metrics` (Ray prefixes names with `ray_`).

The same numbers as `MemTier.stats()`; exported so the dashboards users already run see tier
hit rates, evictions, bytes moved and switch times without calling the API.
"""

from __future__ import annotations

from ray.util import metrics


class MemtierMetrics:
    def __init__(self, cluster: str) -> None:
        tags = ("cluster", "tier")
        self._tags = {"cluster": cluster}
        self.hits = metrics.Counter("coe_memtier_hits_total", "Activations served from a tier.", tags)
        self.misses = metrics.Counter("coe_memtier_misses_total", "Activations that missed a tier.", tags)
        self.evictions = metrics.Counter("coe_memtier_evictions_total", "Experts evicted from a tier.", tags)
        self.bytes_moved = metrics.Counter(
            "coe_memtier_bytes_moved_total", "Bytes paged into a tier (ddr: from STORE, hbm: from DDR).", tags
        )
        self.switch_seconds = metrics.Histogram(
            "coe_memtier_switch_seconds",
            "Time to make a non-resident expert usable on its socket.",
            boundaries=[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
            tag_keys=("cluster",),
        )
        self.leases = metrics.Gauge("coe_memtier_leases", "Leases in flight.", ("cluster",))

    def _t(self, tier: str) -> dict[str, str]:
        return {**self._tags, "tier": tier}

    def hit(self, tier: str) -> None:
        self.hits.inc(1, self._t(tier))

    def miss(self, tier: str) -> None:
        self.misses.inc(1, self._t(tier))

    def evicted(self, tier: str, count: int) -> None:
        if count:
            self.evictions.inc(count, self._t(tier))

    def moved(self, tier: str, num_bytes: int) -> None:
        if num_bytes:
            self.bytes_moved.inc(num_bytes, self._t(tier))

    def switched(self, seconds: float) -> None:
        self.switch_seconds.observe(seconds, self._tags)

    def in_flight(self, count: int) -> None:
        self.leases.set(count, self._tags)
