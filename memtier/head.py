"""Where the cluster-wide actors live: on the head node when it can, so a worker's loss spares them.

MemTier and the MetricsHub are named, detached and restartable, and by default Ray places a
zero-CPU actor beside whoever first asked for it: usually a socket replica on a worker node. Then
removing that worker restarted the authority too, resetting its counters and stalling every
placement for a restart, although nothing on the head had failed (a fresh-clone run of
tests/test_node_loss.py caught it). The head node already holds the cluster's control state (GCS,
Serve's controller), so its loss ends the cluster anyway. The affinity is soft: with no head in
sight (a client-only driver, a head that died) Ray places the actor as before. Ray's docs say a
soft affinity to a live, feasible node is honoured, yet in 1-2 of 6 runs of tests/test_node_loss.py
MemTier still started on a socket node (cause not found), so nothing may rely on where it runs.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

HEAD_RESOURCE = "node:__internal_head__"  # Ray's marker resource, present only on the head node


def head_node_id() -> str | None:
    """The live head node's id, or None when this Ray session cannot see one."""
    for node in ray.nodes():
        if node.get("Alive") and HEAD_RESOURCE in node.get("Resources", {}):
            return node["NodeID"]
    return None


def on_head_node() -> dict:
    """`.options(**on_head_node())` for a cluster-wide actor: soft affinity to the head node."""
    node_id = head_node_id()
    if node_id is None:
        return {}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)}
