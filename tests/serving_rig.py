"""A CoE app on a real 2-node `ray.cluster_utils.Cluster` (2 sockets per node, tiny experts).

Shared by the HTTP, gRPC and bench tests: one cluster per test module, torn down after.
"""

from __future__ import annotations

import socket
import time
from contextlib import closing

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from cluster.config import ClusterConfig
from deployments.app import build_app_from_config
from deployments.grpc_options import grpc_options


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServingRig:
    def __init__(self, config: ClusterConfig, *, cpus_per_node: int = 2) -> None:
        http_port, grpc_port = free_port(), free_port()
        serve_settings = config.serve.model_copy(update={"http_port": http_port, "grpc_port": grpc_port})
        self.config = config.model_copy(update={"serve": serve_settings})
        self.cluster = Cluster()
        for _ in range(config.topology.nodes):
            self.cluster.add_node(
                num_cpus=cpus_per_node,
                resources={"coe_socket": config.topology.sockets_per_node},
                object_store_memory=max(150 * 2**20, config.topology.ddr_per_node + 100 * 2**20),
            )
        ray.init(address=self.cluster.address, namespace="coe")
        serve.start(
            http_options={"host": "127.0.0.1", "port": http_port}, grpc_options=grpc_options(self.config)
        )
        serve.run(
            build_app_from_config(self.config, heartbeat_s=0.5), name="coe", route_prefix="/", blocking=False
        )
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{self.base_url}/healthz", timeout=5).json()
                if health.get("sockets") == self.config.topology.total_sockets:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError("CoE app did not become ready")

    def memtier(self) -> dict:
        return httpx.get(f"{self.base_url}/v1/memtier", timeout=30).json()

    def close(self) -> None:
        serve.shutdown()
        ray.shutdown()
        self.cluster.shutdown()
