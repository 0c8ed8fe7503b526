"""One cluster-wide view of metrics recorded in many processes: the `MetricsHub` actor.

GET /metrics reaches one ingress replica, but the numbers live in every ingress replica, every
socket replica and the MemTier actor, on any node. So each process pushes its whole registry
(cumulative values, not deltas) every `observability.metrics_push_interval_s`, the hub keeps the
latest snapshot of each process, and a scrape sums them. Cumulative snapshots make this safe: a lost
push costs freshness, never counts; a restarted hub is whole again one interval later for the live
processes (a dead process's counts go with the old hub: Prometheus reads that as a counter reset).

Merging, per series (name and labels): counters and histograms add up over every process ever
heard from, since a replica that died still served its requests; gauges add up over the processes
heard from within `stale_after_s`, so a dead socket's running count does not linger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import ClassVar

import ray
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from cluster.config import ClusterConfig
from memtier.head import on_head_node
from memtier.pager import NAMESPACE

logger = logging.getLogger("ray.serve")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def hub_actor_name(cluster: str) -> str:
    return f"coe_metrics_{cluster}"


def stale_after_s(config: ClusterConfig) -> float:
    """Five missed pushes: long enough for a busy process, short enough for a dashboard."""
    return max(5.0, 5 * config.observability.metrics_push_interval_s)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class MetricsHub:
    """Latest registry snapshot of each process; `collect` merges them (metadata only, tiny)."""

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self.snapshots: dict[str, tuple[float, list[Metric]]] = {}

    def push(self, source: str, families: list[Metric]) -> None:
        self.snapshots[source] = (time.monotonic(), families)

    def collect(self) -> list[Metric]:
        now = time.monotonic()
        return merge_families(
            (families, now - pushed_s <= self.stale_after_s) for pushed_s, families in self.snapshots.values()
        )

    def sources(self) -> int:
        return len(self.snapshots)


def get_hub(config: ClusterConfig):
    """The cluster's hub, created on first use (named, detached, restartable, like MemTier)."""
    return MetricsHub.options(
        name=hub_actor_name(config.name),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        **on_head_node(),
    ).remote(stale_after_s(config))


def _series_key(sample) -> tuple:
    """Histogram samples of one series together, buckets by ascending `le`, then _count and _sum."""
    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    le = sample.labels.get("le")
    return labels, 0 if le is not None else 1, float(le) if le is not None else 0.0, sample.name


def merge_families(snapshots: Iterable[tuple[list[Metric], bool]]) -> list[Metric]:
    """Sum each series over the snapshots; `(families, live)`: gauges count only from live ones.

    `*_created` samples are dropped: a creation time summed over processes means nothing.
    """
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple], float]] = {}
    for families, live in snapshots:
        for family in families:
            if family.type == "gauge" and not live:
                continue
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                series[key] = series.get(key, 0.0) + sample.value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        family.samples.sort(key=_series_key)
    return list(merged.values())


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def render(families: list[Metric]) -> bytes:
    """Prometheus text exposition (version 0.0.4) of already-collected families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([f for f in families if f.samples]))
    return generate_latest(registry)


def own_families(registry: CollectorRegistry) -> list[Metric]:
    return list(registry.collect())


class MetricsPusher:
    """A daemon thread pushing one process's registry to the hub; at most one per registry.

    A thread rather than an asyncio task: it works the same in async replicas, sync actors and
    drivers, and a slow hub never delays a request.
    """

    _running: ClassVar[dict[int, MetricsPusher]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, registry: CollectorRegistry, config: ClusterConfig) -> None:
        self.registry = registry
        self.config = config
        self.interval_s = config.observability.metrics_push_interval_s
        self.source = source_id()
        self._hub = None
        self._last_warning_s = 0.0

    @classmethod
    def start(cls, registry: CollectorRegistry, config: ClusterConfig) -> MetricsPusher | None:
        if not ray.is_initialized():
            return None
        with cls._lock:
            if id(registry) not in cls._running:
                pusher = cls(registry, config)
                threading.Thread(target=pusher._run, name="coe-metrics-pusher", daemon=True).start()
                cls._running[id(registry)] = pusher
            return cls._running[id(registry)]

    def hub(self):
        if self._hub is None:
            self._hub = get_hub(self.config)
        return self._hub

    def push_now(self) -> None:
        ray.get(self.hub().push.remote(self.source, own_families(self.registry)), timeout=30)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            try:
                self.push_now()
            except Exception as err:  # hub restarting or the cluster going down: retry next interval
                self._hub = None
                if time.monotonic() - self._last_warning_s > 60:
                    self._last_warning_s = time.monotonic()
                    logger.warning("pushing metrics to the hub failed (will retry): %s", err)


def source_id() -> str:
    """This process, uniquely in the cluster (a restarted replica is a new source)."""
    return ray.get_runtime_context().get_worker_id()
