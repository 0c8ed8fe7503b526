"""`python -m cluster.deploy --config PATH`: deploy the CoE app onto an existing Ray cluster.

Connects to `RAY_ADDRESS` (or the cluster this process runs in, e.g. under `ray job submit`),
checks the cluster has the sockets the topology asks for, deploys, and exits 0 once every
deployment is RUNNING and every socket has registered with memtier, printing the endpoints.

    ray job submit --working-dir . -- python -m cluster.deploy --config /shared/coe.yaml

A job's working dir does not carry the zoo (it is git-ignored): the config's `store_root` must
be an absolute path every node mounts. Unless the config names a router artifact, the demo router
is kept there too (`<store_root>/router`, trained by this command if missing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cluster.config import ClusterConfig, load_config
from cluster.topology import TopologyMismatch, cluster_sockets, resolve_topology


def _fail(message: str) -> int:
    print(f"cluster.deploy: {message}", file=sys.stderr)
    return 1


def wait_running(app_name: str, expected_sockets: int, memtier_cluster: str, timeout_s: float) -> None:
    import ray
    from ray import serve

    from memtier.pager import get_memtier

    deadline = time.monotonic() + timeout_s
    status_text = "unknown"
    while time.monotonic() < deadline:
        app = serve.status().applications.get(app_name)
        if app is not None:
            status_text = f"{app.status}: " + ", ".join(f"{n}={d.status}" for n, d in app.deployments.items())
            if app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"deploy failed: {app.message}")
            if app.status == "RUNNING":
                try:
                    status = ray.get(get_memtier(memtier_cluster).status.remote(), timeout=10)
                    if sum(len(n.sockets) for n in status.nodes) >= expected_sockets:
                        return
                except ValueError:
                    pass
        time.sleep(1)
    raise TimeoutError(f"not RUNNING after {timeout_s}s ({status_text})")


def with_router_beside_store(config: ClusterConfig) -> ClusterConfig:
    """The demo router, when the config names no artifact, lives beside the STORE: trained there now
    if missing or stale, and named by absolute path for the ingress.

    Under `ray job submit` the job's working dir is unpacked on each node and carries no zoo, so an
    ingress left to find the demo router itself trained one on its first request: two minutes on
    2 cores, past any client's timeout. The STORE is the path every node mounts (`store_root`).
    """
    if config.router.artifact is not None:
        return config
    from router.routing import ensure_default_artifact

    directory = config.store_root_path / "router"
    ensure_default_artifact(directory)
    router = config.router.model_copy(update={"artifact": str(directory)})
    return config.model_copy(update={"router": router})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--timeout-s", type=float, default=900)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (OSError, ValueError) as err:
        hint = (
            " (under `ray job submit` the zoo is not uploaded: set store_root to an absolute path "
            "that every node mounts)"
        )
        return _fail(f"cannot load {args.config}: {err}{hint if 'checkpoint' in str(err) else ''}")

    import ray

    from cluster.serve_app import deploy_application, import_app

    import_app()  # before connecting: see cluster.serve_app.import_app
    ray.init(address="auto", namespace="coe", log_to_driver=False)
    try:
        config = resolve_topology(config, cluster_sockets(config.topology.device))
    except TopologyMismatch as err:
        return _fail(str(err))
    config = with_router_beside_store(config)
    deploy_application(config)
    try:
        wait_running(config.serve.app_name, config.topology.total_sockets, config.name, args.timeout_s)
    except (RuntimeError, TimeoutError) as err:
        return _fail(str(err))
    host = "127.0.0.1" if config.serve.http_host in {"0.0.0.0", "127.0.0.1"} else config.serve.http_host
    print(
        f"CoE app {config.serve.app_name!r} RUNNING on {config.topology.nodes} node(s) x "
        f"{config.topology.sockets_per_node} sockets"
    )
    print(f"  HTTP (OpenAI API): http://{host}:{config.serve.http_port}/v1   (on each node running a proxy)")
    print(f"  gRPC:              {host}:{config.serve.grpc_port}   (service coe.v1.CoE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
