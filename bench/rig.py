"""A fresh local multi-node Ray cluster serving one system, for one benchmark run.

The same shape as tests/serving_rig.py (which bench must not import): `topology.nodes` nodes of
a `ray.cluster_utils.Cluster`, each advertising `coe_socket = sockets_per_node` and an object
store sized for its DDR budget. Every system (CoE, the ceiling, the baseline) gets its own
cluster, so none inherits another's caches, actors or page-ins.

`head_node=True` (chaos and node-loss runs) adds a head node without sockets that advertises
`coe_head`; `build` pins the ingress there (`head_build`), and MemTier, the Serve controller and
the only proxy live there too, so any socket node can be removed without taking the front door.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from contextlib import closing

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from cluster.config import ClusterConfig

__all__ = ["LocalServe", "free_port"]

SOCKET_RESOURCE = "coe_socket"
HEAD_RESOURCE = "coe_head"
_STORE_HEADROOM_BYTES = 150 * 2**20  # Ray's own objects beside the DDR budget
READY_TIMEOUT_S = 300.0


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shut_down(cluster: Cluster) -> None:
    """Serve, this process's Ray session and the local cluster, also after a start that failed
    half-way (Ray up, Serve not): a later rig in this process must find no session."""
    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


class LocalServe:
    """Start a cluster, deploy `build(config)` at `/`, wait until `ready(health)` says so; `close()`."""

    def __init__(
        self,
        config: ClusterConfig,
        build: Callable[[ClusterConfig], object],
        *,
        cpus_per_node: int = 2,
        expect_sockets: bool = True,
        with_grpc: bool = False,
        head_node: bool = False,
    ) -> None:
        http_port, grpc_port = free_port(), free_port()
        serve_settings = config.serve.model_copy(update={"http_port": http_port, "grpc_port": grpc_port})
        self.config = config.model_copy(update={"serve": serve_settings})
        self.cluster = Cluster()
        self.cpus_per_node = cpus_per_node
        topo = config.topology
        if head_node:
            self.cluster.add_node(
                num_cpus=1, resources={HEAD_RESOURCE: 1}, object_store_memory=_STORE_HEADROOM_BYTES
            )
        for _ in range(topo.nodes):
            self.add_socket_node()
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        try:
            ray.init(address=self.cluster.address, namespace="coe", log_to_driver=False)
            grpc_options = None
            if with_grpc:
                from deployments.grpc_options import grpc_options as coe_grpc_options

                grpc_options = coe_grpc_options(self.config)
            serve.start(
                http_options={"host": "127.0.0.1", "port": http_port},
                grpc_options=grpc_options,
                proxy_location="HeadOnly" if head_node else None,
            )
            serve.run(build(self.config), name=config.serve.app_name, route_prefix="/", blocking=False)
            self._wait_ready(expect_sockets)
        except BaseException:
            self.close()  # one that failed to start must not leave Ray up for the next user in this process
            raise

    @staticmethod
    def head_build(build: Callable[..., object]) -> Callable[[ClusterConfig], object]:
        """`build` with the ingress pinned to the head node (`build(config, ingress_actor_options=...)`)."""
        return lambda config: build(config, ingress_actor_options={"resources": {HEAD_RESOURCE: 0.01}})

    def add_socket_node(self):
        """One more node of the topology's shape (its sockets start if the deployment wants them)."""
        topo = self.config.topology
        return self.cluster.add_node(
            num_cpus=self.cpus_per_node,
            resources={SOCKET_RESOURCE: topo.sockets_per_node},
            object_store_memory=max(150 * 2**20, topo.ddr_per_node + _STORE_HEADROOM_BYTES),
        )

    def _wait_ready(self, expect_sockets: bool) -> None:
        """CoE is ready when every socket registered with memtier; the baseline when /healthz answers."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{self.base_url}/healthz", timeout=5).json()
                if not expect_sockets and health.get("status") == "ok":
                    return
                if health.get("sockets") == self.config.topology.total_sockets:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the app did not become ready within {READY_TIMEOUT_S:.0f}s")

    def close(self) -> None:
        shut_down(self.cluster)

    def __enter__(self) -> LocalServe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
