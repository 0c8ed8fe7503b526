"""Start an embedded local Ray cluster sized from a config (the `make serve` default).

A single machine stands in for `topology.nodes` nodes only when nodes == 1; larger topologies
belong on a real cluster (`cluster.deploy`). The node advertises `coe_socket` = sockets per node
so the socket replicas land as configured, and its object store is sized to hold the DDR budget.
"""

from __future__ import annotations

import os

import ray

from cluster.config import ClusterConfig
from cluster.sizes import format_size

SOCKET_RESOURCE = "coe_socket"
_OBJECT_STORE_HEADROOM_BYTES = 512 * 2**20  # Ray's own objects (Serve configs, small results)


def object_store_bytes(config: ClusterConfig) -> int:
    return config.topology.ddr_per_node + _OBJECT_STORE_HEADROOM_BYTES


def start_local_ray(config: ClusterConfig) -> None:
    """`ray.init` a fresh local cluster with this config's socket resources and DDR-sized object store."""
    topo = config.topology
    if topo.nodes != 1:
        raise SystemExit(
            f"config {config.name!r} has topology.nodes={topo.nodes}: a local cluster is one node. Deploy it "
            f"onto a real Ray cluster with `python -m cluster.deploy --config ...`, or set nodes: 1."
        )
    resources = {SOCKET_RESOURCE: float(topo.sockets_per_node)}
    store_bytes = object_store_bytes(config)
    print(f"starting local Ray: {topo.sockets_per_node} sockets, object store {format_size(store_bytes)}")
    ray.init(
        address="local",  # always a fresh cluster, never one that happens to run on this machine
        num_cpus=max(os.cpu_count() or 1, int(topo.cpus_per_socket * topo.sockets_per_node + 0.999)),
        num_gpus=topo.sockets_per_node if topo.device == "cuda" else 0,
        resources=resources,
        object_store_memory=store_bytes,
        include_dashboard=False,
        namespace="coe",
    )
