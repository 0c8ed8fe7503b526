"""Getting the cluster's MemTier actor from any process (ingress, sockets, CLI)."""

from __future__ import annotations

from cluster.config import ClusterConfig
from memtier.pager import get_memtier, start_memtier


def ensure_memtier(config: ClusterConfig):
    """The MemTier actor for `config.name`, created on first use (named, detached, restartable).

    Saturation is one full batch (`max_batch_size`): past it a request would wait for the holder's
    next batch, so placement pages the hot expert in on another socket instead (memtier/placement.py).
    """
    try:
        return get_memtier(config.name)
    except ValueError:
        return start_memtier(
            config.name,
            {e.id: e.size_bytes for e in config.experts},
            config.topology.ddr_per_node,
            saturation=config.serve.max_batch_size,
            lease_ttl_s=config.limits.request_timeout_s * 2,
            place_timeout_s=min(config.limits.place_timeout_s, config.limits.request_timeout_s),
            policy=config.memtier,
        )
