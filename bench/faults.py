"""Faults for bench.chaos, each injected into a `LocalServe` cluster and timed back to full capacity.

Kinds, as they happen on a real cluster:
  socket   one ExpertSocket replica killed (Serve starts a replacement with a new socket id)
  memtier  the MemTier actor killed (it restarts and rebuilds its directory from heartbeats)
  ddr      one node's DDR store killed (it restarts empty; its objects are gone)
  node     one socket node removed from the Cluster (its sockets and DDR store die together);
           a fresh node joins `node_downtime_s` later and Serve places the lost sockets on it
Full capacity: every socket registered with MemTier again, none of them a dead one, and the
killed actor answering again (for memtier: its counters restarted from zero).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import httpx
import ray
from pydantic import BaseModel

from bench.rig import LocalServe
from memtier.ddr_store import ddr_store_name
from memtier.pager import NAMESPACE, get_memtier

KINDS = ("socket", "memtier", "ddr", "node")
SERVE_NAMESPACE = "serve"


class FaultRecord(BaseModel):
    """One injected fault: when (s since the run started), what, and how long until full capacity."""

    kind: str
    at_s: float
    target: str
    recovered_s: float | None = None  # None: not back within the recovery timeout

    @property
    def window(self) -> tuple[float, float]:
        return self.at_s, self.at_s + (self.recovered_s if self.recovered_s is not None else 1e9)


class Injector:
    """Injects faults into one rig; `memtier_status` reads /v1/memtier (with the API key, if any)."""

    def __init__(self, rig: LocalServe, headers: dict[str, str], *, node_downtime_s: float, seed: int = 0):
        self.rig, self.headers, self.node_downtime_s = rig, headers, node_downtime_s
        self.cluster_name = rig.config.name
        self.expected_sockets = rig.config.topology.total_sockets
        self.random = random.Random(seed)

    def memtier_status(self) -> dict | None:
        try:
            response = httpx.get(f"{self.rig.base_url}/v1/memtier", headers=self.headers, timeout=5)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _sockets(self, status: dict) -> list[dict]:
        return [s for node in status["nodes"] for s in node["sockets"]]

    def _full(
        self, status: dict | None, dead_socket: str | None = None, dead_node: str | None = None
    ) -> bool:
        if status is None:
            return False
        sockets = self._sockets(status)
        return (
            len(sockets) == self.expected_sockets
            and all(s["socket_id"] != dead_socket for s in sockets)
            and all(s["node_id"] != dead_node for s in sockets)
        )

    # ------------------------------------------------------------------ the faults
    def inject(self, kind: str, at_s: float, timeout_s: float) -> FaultRecord:
        """Inject `kind` now, then wait (up to `timeout_s`) for full capacity; blocking."""
        start = time.monotonic()
        target, recovered = getattr(self, f"_{kind}")()
        recovered_s = None
        while time.monotonic() - start < timeout_s:
            if recovered():
                recovered_s = time.monotonic() - start
                break
            time.sleep(0.25)
        return FaultRecord(kind=kind, at_s=at_s, target=target, recovered_s=recovered_s)

    def _socket(self) -> tuple[str, Callable[[], bool]]:
        names = sorted(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == SERVE_NAMESPACE and "#ExpertSocket#" in a["name"]
        )
        name = self.random.choice(names)
        ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)
        socket_id = name.rsplit("#", 1)[-1]
        return f"socket {socket_id}", lambda: self._full(self.memtier_status(), dead_socket=socket_id)

    def _memtier(self) -> tuple[str, Callable[[], bool]]:
        before = self.memtier_status()
        granted = before["stats"]["leases"] if before else 0
        ray.kill(get_memtier(self.cluster_name), no_restart=False)  # it restarts: detached, max_restarts=-1

        def recovered() -> bool:
            status = self.memtier_status()
            return status is not None and status["stats"]["leases"] < granted and self._full(status)

        return "memtier", recovered

    def _ddr(self) -> tuple[str, Callable[[], bool]]:
        node_id = self.random.choice(sorted(n.node_id for n in self.rig.cluster.worker_nodes))
        name = ddr_store_name(self.cluster_name, node_id)
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=False)

        def recovered() -> bool:
            try:
                ray.get(ray.get_actor(name, namespace=NAMESPACE).residents.remote(), timeout=2)
            except Exception:
                return False
            return self._full(self.memtier_status())

        return f"ddr {node_id[:8]}", recovered

    def _node(self) -> tuple[str, Callable[[], bool]]:
        node = self.random.choice(sorted(self.rig.cluster.worker_nodes, key=lambda n: n.node_id))
        node_id = node.node_id
        self.rig.cluster.remove_node(node, allow_graceful=False)
        rejoin_at = time.monotonic() + self.node_downtime_s
        joined: list[bool] = []

        def recovered() -> bool:
            if not joined and time.monotonic() >= rejoin_at:
                self.rig.add_socket_node()
                joined.append(True)
            return bool(joined) and self._full(self.memtier_status(), dead_node=node_id)

        return f"node {node_id[:8]}", recovered
