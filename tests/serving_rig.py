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
from ray.exceptions import RayTaskError

from bench.rig import shut_down
from cluster.config import ClusterConfig
from deployments.app import build_app_from_config
from deployments.grpc_options import grpc_options
from deployments.wire import LeaseMismatch
from memtier.ddr_store import NAMESPACE as DDR_NAMESPACE
from memtier.ddr_store import ddr_store_name
from tests.budgets import check_ddr, check_socket


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
        self._sockets = None
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        try:
            ray.init(address=self.cluster.address, namespace="coe")
            serve.start(
                http_options={"host": "127.0.0.1", "port": http_port}, grpc_options=grpc_options(self.config)
            )
            app = build_app_from_config(self.config, heartbeat_s=0.5)
            serve.run(app, name="coe", route_prefix="/", blocking=False)
            self.wait_ready()
        except BaseException:
            self.close()  # a rig that failed to start must not leave Ray up for the next module
            raise

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

    def socket_ids(self) -> list[str]:
        return [s["socket_id"] for node in self.memtier()["nodes"] for s in node["sockets"]]

    def on_socket(self, socket_id: str, method: str, timeout_s: float = 60):
        """Call an `ExpertSocket` method on one replica: `socket=` steers the LeaseRouter (as the
        ingress's calls are steered); a replica that is not the target refuses, and we ask again."""
        if self._sockets is None:
            self._sockets = serve.get_deployment_handle("ExpertSocket", app_name=self.config.serve.app_name)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return getattr(self._sockets, method).remote(socket=socket_id).result(timeout_s=timeout_s)
            except RayTaskError as err:  # Serve's wrapper around the replica's own exception
                missed = isinstance(getattr(err, "cause", err), LeaseMismatch)
                if not missed or time.monotonic() > deadline:
                    raise

    def assert_budgets(self) -> None:
        """Invariant 1 on real bytes (tests/budgets.py): each socket's weights and KV tensors, each
        node's DDR objects; every socket MemTier lists must answer."""
        topology = self.config.topology
        sizes = {e.id: e.size_bytes for e in self.config.experts}
        for node in self.memtier()["nodes"]:
            for entry in node["sockets"]:
                held = self.on_socket(entry["socket_id"], "held_tensor_bytes")
                check_socket(held, topology.hbm_per_socket, sizes, entry["socket_id"])
            store = ray.get_actor(ddr_store_name(self.config.name, node["node_id"]), namespace=DDR_NAMESPACE)
            held = ray.get(store.held_object_bytes.remote())
            check_ddr(held, topology.ddr_per_node, sizes, node["node_id"])

    def close(self) -> None:
        shut_down(self.cluster)
