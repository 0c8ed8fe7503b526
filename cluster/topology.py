"""Sockets as the running Ray cluster sees them: which nodes offer how many.

A socket is one unit of the `coe_socket` custom resource (CPU nodes) or one GPU (device cuda).
`cluster.deploy` checks a config against this before deploying, so a cluster short of sockets
fails with a message instead of replicas that never schedule; with `topology.from_cluster`
the topology is taken from here.
"""

from __future__ import annotations

from pydantic import BaseModel

from cluster.config import ClusterConfig
from cluster.local import SOCKET_RESOURCE


class NodeSockets(BaseModel):
    node_id: str
    address: str
    sockets: int


def cluster_sockets(device: str) -> list[NodeSockets]:
    """Alive nodes offering sockets, from `ray.nodes()` (needs a connected driver)."""
    import ray

    found = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        count = resources.get(SOCKET_RESOURCE, 0)
        if device == "cuda":
            count = min(count, resources.get("GPU", 0)) if count else resources.get("GPU", 0)
        if count >= 1:
            found.append(
                NodeSockets(
                    node_id=node["NodeID"], address=node.get("NodeManagerAddress", ""), sockets=int(count)
                )
            )
    return sorted(found, key=lambda n: n.node_id)


class TopologyMismatch(Exception):
    """The cluster cannot host the sockets the config asks for."""


def resolve_topology(config: ClusterConfig, nodes: list[NodeSockets]) -> ClusterConfig:
    """The config with its topology checked against (or, with from_cluster, taken from) `nodes`."""
    topo = config.topology
    unit = "GPUs" if topo.device == "cuda" else f"'{SOCKET_RESOURCE}' resources"
    if not nodes:
        raise TopologyMismatch(
            f"no node in the cluster offers {unit}: start workers with "
            f"`ray start --resources='{{\"{SOCKET_RESOURCE}\": {topo.sockets_per_node}}}'`"
            + (" --num-gpus=N" if topo.device == "cuda" else "")
        )
    if topo.from_cluster:
        per_node = min(n.sockets for n in nodes)
        new_topo = topo.model_copy(update={"nodes": len(nodes), "sockets_per_node": per_node})
        return config.model_copy(update={"topology": new_topo})
    big_enough = [n for n in nodes if n.sockets >= topo.sockets_per_node]
    if len(big_enough) < topo.nodes:
        seen = ", ".join(f"{n.node_id[:8]}@{n.address}: {n.sockets}" for n in nodes)
        raise TopologyMismatch(
            f"config {config.name!r} needs {topo.nodes} node(s) with {topo.sockets_per_node} {unit} each "
            f"({topo.total_sockets} sockets); the cluster has {len(big_enough)} such node(s) [{seen}]. Add "
            f"nodes, lower topology.nodes/sockets_per_node, or set topology.from_cluster: true"
        )
    return config
