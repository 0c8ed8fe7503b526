"""Getting the cluster's MemTier actor from any process (ingress, sockets, CLI)."""

from __future__ import annotations

from cluster.config import ClusterConfig
from memtier.pager import get_memtier, start_memtier


def ensure_memtier(config: ClusterConfig):
    """The MemTier actor for `config.name`, created on first use (named, detached, restartable).

    Saturation is the socket's `max_ongoing_requests`: past it a request would only queue on a
    holder, so placement pages the expert in elsewhere instead (see memtier/placement.py).
    """
    try:
        return get_memtier(config.name)
    except ValueError:
        return start_memtier(
            config.name,
            {e.id: e.size_bytes for e in config.experts},
            config.topology.ddr_per_node,
            saturation=config.serve.max_ongoing_requests,
            lease_ttl_s=config.limits.request_timeout_s * 2,
            place_timeout_s=min(config.limits.place_timeout_s, config.limits.request_timeout_s),
        )
