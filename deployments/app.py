"""Build the Serve application from a cluster config: `deployments.app:build_app`.

Used by `coe up`, `cluster.deploy`, `serve run/deploy` configs written by `coe serve-config`,
and KubeRay's `serveConfigV2` (args: `{"config": "/etc/coe/cluster.yaml"}`).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from cluster.config import ClusterConfig, config_from_dict, load_config
from deployments.ingress import CoERouter
from deployments.socket import ExpertSocket

SOCKET_RESOURCE = "coe_socket"


def socket_actor_options(config: ClusterConfig) -> dict[str, Any]:
    """One socket per `coe_socket` resource unit; on GPU nodes also one GPU each."""
    topo = config.topology
    options: dict[str, Any] = {"num_cpus": topo.cpus_per_socket, "resources": {SOCKET_RESOURCE: 1}}
    if topo.device == "cuda":
        options["num_gpus"] = 1
    return options


def build_app_from_config(
    config: ClusterConfig, *, heartbeat_s: float = 1.0, ingress_actor_options: dict[str, Any] | None = None
):
    """The app; `ingress_actor_options` add to the ingress's Ray options (a bench pins it to a node)."""
    topo = config.topology
    sockets = serve.deployment(
        ExpertSocket,
        name="ExpertSocket",
        num_replicas=topo.total_sockets,
        max_replicas_per_node=topo.sockets_per_node,
        max_ongoing_requests=config.serve.max_ongoing_requests,
        ray_actor_options=socket_actor_options(config),
        request_router_config=RequestRouterConfig(
            request_router_class="deployments.lease_router:LeaseRouter"
        ),
        health_check_period_s=5,
    ).bind(config, heartbeat_s)
    ingress = serve.deployment(
        CoERouter,
        name="CoERouter",
        num_replicas=1,
        max_ongoing_requests=1024,
        ray_actor_options={"num_cpus": 0, **(ingress_actor_options or {})},
    ).bind(config, sockets)
    return ingress


def build_app(args: dict[str, Any]):
    """Serve application builder: `args["config"]` is the path of the cluster YAML (or
    `args["config_data"]` the config itself, as `coe up` and `cluster.deploy` pass it after
    resolving the topology against the running cluster)."""
    if "config_data" in args:
        return build_app_from_config(config_from_dict(args["config_data"]))
    if "config" not in args:
        raise ValueError("deployments.app:build_app needs args.config: the path of a cluster YAML")
    return build_app_from_config(load_config(args["config"]))
