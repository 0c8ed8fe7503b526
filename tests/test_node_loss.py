"""A socket node dies under load: a head node (ingress, MemTier, the only proxy) and two nodes of two
sockets each, tiny experts, four clients sending non-streaming requests without pause. One node is
removed from the `ray.cluster_utils.Cluster` while a request runs on it (its sockets and its DDR
store die together). Nothing may be lost: the request in flight is retried on the other node,
MemTier forgets the dead node's sockets and DDR residency, its experts page in on the survivor, and
no lease or pin is left behind.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import ray

from bench.rig import LocalServe
from deployments.app import build_app_from_config
from memtier.pager import get_memtier
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

CLIENTS = 4
LONG_TOKENS = 240  # about a second a request on a tiny expert: some are always mid-generation
EXPERTS = [f"tiny-{i:02d}" for i in range(8)]


@dataclass
class Answer:
    start_s: float
    end_s: float
    status: int
    expert: str
    node: str | None = None
    retried: bool = False
    error: str | None = None


class Load:
    """CLIENTS threads, each sending its next request as soon as the last one is answered."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self._next = itertools.count()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                expert = EXPERTS[next(self._next) % len(EXPERTS)]
                body = {
                    "model": expert,
                    "messages": [{"role": "user", "content": "count to many"}],
                    "max_tokens": LONG_TOKENS,
                }
                start = time.monotonic()
                try:
                    response = client.post(f"{self.base_url}/v1/chat/completions", json=body)
                    data = response.json()
                    coe = data.get("coe") or {}
                    answer = Answer(
                        start,
                        time.monotonic(),
                        response.status_code,
                        expert,
                        coe.get("node"),
                        bool(coe.get("retried")),
                        (data.get("error") or {}).get("message"),
                    )
                except httpx.HTTPError as err:
                    answer = Answer(start, time.monotonic(), 0, expert, error=f"{type(err).__name__}: {err}")
                self.answers.append(answer)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=180)


def _memtier(url: str) -> dict:
    return httpx.get(f"{url}/v1/memtier", timeout=30).json()


@pytest.fixture(scope="module")
def rig(tiny_config, router_artifact):
    limits = tiny_config.limits.model_copy(update={"max_tokens": LONG_TOKENS})
    config = tiny_config.model_copy(update={"name": "nodeloss", "limits": limits})
    with LocalServe(config, LocalServe.head_build(build_app_from_config), head_node=True) as rig:
        yield rig


def test_a_node_removed_under_load_loses_no_non_streaming_request(rig):
    url = rig.base_url
    socket_nodes = {n["node_id"] for n in _memtier(url)["nodes"] if n["sockets"]}
    assert len(socket_nodes) == 2
    # The victim is a socket node that does not host the authority, so MemTier and its counters
    # live through the removal and the lease count checked at the end spans the whole run.
    # memtier/head.py asks Ray for the head node (soft affinity), but in 1-2 of 6 runs here MemTier
    # still started on a socket node (cause not found); losing MemTier itself is
    # test_requests_sent_while_memtier_restarts_... and bench.chaos's business, not this test's.
    authority_node = ray.get(get_memtier(rig.config.name).node_id.remote())
    with Load(url) as load:
        wait_for(lambda: len(load.answers) >= 2 * len(EXPERTS), "every expert to be served", 240)

        def victim_busy() -> tuple[dict, str] | None:
            status = _memtier(url)
            for node in status["nodes"]:
                if node["node_id"] != authority_node and any(s["leases"] for s in node["sockets"]):
                    return status, node["node_id"]
            return None

        before, victim = wait_for(victim_busy, "a request running on a socket node", 60)
        (dead,) = [n for n in rig.cluster.worker_nodes if n.node_id == victim]
        rig.cluster.remove_node(dead, allow_graceful=False)  # sockets and DDR store die at once
        removed_s = time.monotonic()
        lost = {
            e
            for n in before["nodes"]
            if n["node_id"] == victim
            for e in [*n["residents"], *(r for s in n["sockets"] for r in s["residents"])]
        }
        wait_for(
            lambda: len([a for a in load.answers if a.start_s > removed_s]) >= 2 * len(EXPERTS),
            "requests after the removal",
            240,
        )
    assert [a for a in load.answers if a.status != 200] == []
    assert any(a.retried for a in load.answers if a.start_s < removed_s < a.end_s), "none was in flight"

    after = [a for a in load.answers if a.start_s > removed_s + 1]
    assert after and {a.node for a in after} == socket_nodes - {victim}
    assert lost and lost <= {a.expert for a in after}  # the dead node's experts paged in on the survivor

    def forgotten() -> dict | None:
        status = _memtier(url)
        return status if victim not in {n["node_id"] for n in status["nodes"]} else None

    status = wait_for(forgotten, "MemTier to drop the dead node's sockets and DDR residency", 30)
    sockets = [s for n in status["nodes"] for s in n["sockets"]]
    wait_for(
        lambda: all(
            not s["leases"] and not s["pinned_bytes"] for n in _memtier(url)["nodes"] for s in n["sockets"]
        ),
        "every lease released",
        30,
    )
    assert len(sockets) == 2 and {s["node_id"] for s in sockets} == socket_nodes - {victim}
    assert status["stats"]["leases"] >= len(load.answers)


def test_requests_sent_while_memtier_restarts_wait_for_the_sockets_instead_of_a_503(rig):
    """A restarted MemTier knows no socket until their next heartbeat: that is a wait, not 'never'."""
    import ray

    from memtier.pager import get_memtier

    ray.kill(get_memtier(rig.config.name), no_restart=False)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        codes = list(
            pool.map(
                lambda expert: (
                    httpx.post(
                        f"{rig.base_url}/v1/chat/completions", json={**body, "model": expert}, timeout=120
                    ).status_code
                ),
                EXPERTS[:CLIENTS],
            )
        )
    assert codes == [200] * CLIENTS


def test_memtier_forgets_a_node_with_no_live_socket_and_adopts_it_again_when_one_returns():
    from memtier.models import SocketInfo
    from memtier.pager import MemTierCore

    core = MemTierCore("t", {"a": 1, "b": 1}, ddr_bytes_per_node=10)
    sockets = {"s0": "n0", "s1": "n0", "s2": "n1"}
    for socket_id, node_id in sockets.items():
        core.heartbeat(SocketInfo(socket_id=socket_id, node_id=node_id, hbm_bytes=2), 0.0)
    core.directory.sync_ddr("n0", ["a", "b"])
    lease = core.try_place("a", 0.0)
    assert lease.node_id == "n0"  # its DDR holds it
    core.drop_socket("s0")
    assert "n0" in core.directory.nodes  # s1 still lives there
    core.drop_socket("s1")
    assert set(core.directory.nodes) == {"n1"} and core.directory.leases == {}
    assert core.try_place("a", 0.0).socket_id == "s2"  # paged in from the STORE on the survivor
    core.heartbeat(SocketInfo(socket_id="s3", node_id="n0", hbm_bytes=2), 1.0)
    assert set(core.directory.nodes) == {"n0", "n1"}
