"""Resident memory of every actor of one `ray.cluster_utils.Cluster`, for the soak's growth check.

Only this cluster's processes: the descendants of its raylets (other agents' clusters may run on
the same machine). An actor process is titled `ray::<Class>` (idle workers `ray::IDLE`); a
restarted actor is a new pid, so growth is judged per pid over the time that pid lived.
"""

from __future__ import annotations

import statistics

import psutil
from pydantic import BaseModel
from ray.cluster_utils import Cluster

MIB = 2**20


class RssSample(BaseModel):
    t_s: float
    pid: int
    title: str
    rss_bytes: int


class RssGrowth(BaseModel):
    """One process that lived long enough to judge: median RSS of its first and last thirds."""

    pid: int
    title: str
    lived_s: float
    first_mib: float
    last_mib: float

    @property
    def growth_mib(self) -> float:
        return self.last_mib - self.first_mib


def _raylet_pids(cluster: Cluster) -> list[int]:
    nodes = [cluster.head_node, *cluster.worker_nodes] if cluster.head_node else list(cluster.worker_nodes)
    pids = []
    for node in nodes:
        for info in node.all_processes.get("raylet", []):
            pids.append(info.process.pid)
    return pids


def sample_actors(cluster: Cluster, t_s: float) -> list[RssSample]:
    """RSS of every live actor process (ray::..., not idle workers) under this cluster's raylets."""
    samples = []
    for pid in _raylet_pids(cluster):
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            continue
        for child in children:
            try:
                title = " ".join(child.cmdline()).strip()
                if not title.startswith("ray::") or title.startswith("ray::IDLE"):
                    continue
                samples.append(
                    RssSample(t_s=t_s, pid=child.pid, title=title[:80], rss_bytes=child.memory_info().rss)
                )
            except psutil.Error:
                continue
    return samples


def growth(samples: list[RssSample], *, min_lived_s: float, after_s: float = 0.0) -> list[RssGrowth]:
    """Per pid sampled over at least `min_lived_s` after `after_s`: first- vs last-third median RSS.

    `after_s` skips the warm-up (imports, skeletons, allocator pools filling), which is growth
    that stops, not creep.
    """
    by_pid: dict[int, list[RssSample]] = {}
    for sample in samples:
        if sample.t_s >= after_s:
            by_pid.setdefault(sample.pid, []).append(sample)
    out = []
    for pid, series in by_pid.items():
        series.sort(key=lambda s: s.t_s)
        lived = series[-1].t_s - series[0].t_s
        if lived < min_lived_s or len(series) < 6:
            continue
        third = len(series) // 3
        first = statistics.median(s.rss_bytes for s in series[:third]) / MIB
        last = statistics.median(s.rss_bytes for s in series[-third:]) / MIB
        out.append(RssGrowth(pid=pid, title=series[0].title, lived_s=lived, first_mib=first, last_mib=last))
    return sorted(out, key=lambda g: -g.growth_mib)
