"""The Serve application, referred to the way Ray itself does: by import path.

`cluster/` starts and deploys the app but sits below `deployments/` in the dependency order
(ARCHITECTURE: arrows go one way), so it names the app by the same import paths that
`serve run`, `serve deploy` and KubeRay's `serveConfigV2` use, and resolves them at run time.
"""

from __future__ import annotations

import importlib

from cluster.config import ClusterConfig

APP_BUILDER = "deployments.app:build_app"
GRPC_SERVICER = "deployments.coe_pb2_grpc.add_CoEServicer_to_server"
# grpc.health.v1 for Kubernetes gRPC probes; the proxy forwards its RPCs to the ingress's Check/Watch
# (deployments/grpc_health.py).
GRPC_HEALTH_SERVICER = "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"
GRPC_SERVICERS = [GRPC_SERVICER, GRPC_HEALTH_SERVICER]
# Importing it generates the stub module the gRPC proxy imports (from coe.proto) when missing.
GRPC_STUBS_MODULE = "deployments.grpc_stubs"


def import_app() -> None:
    """Import the app's modules now (and generate the gRPC stubs): `cluster.deploy` does this before
    connecting, because under `ray job submit` the job's extracted working dir can disappear once
    the driver has connected (seen with Ray 2.60), and the modules must already be loaded then."""
    importlib.import_module(APP_BUILDER.partition(":")[0])
    importlib.import_module(GRPC_STUBS_MODULE)


def build_application(config: ClusterConfig):
    """The Serve `Application` for an already-loaded (possibly topology-resolved) config."""
    module, _, builder = APP_BUILDER.partition(":")
    return getattr(importlib.import_module(module), builder)({"config_data": config.model_dump(mode="json")})


def grpc_options(config: ClusterConfig) -> dict:
    """`grpc_options` for `serve.start` (and what `serveConfigV2.grpc_options` must say).

    The proxy imports the servicer by path in its own process, so the stubs must exist on disk
    first (a multi-node image runs `python -m deployments.protogen` at build time).
    """
    importlib.import_module(GRPC_STUBS_MODULE)
    return {"port": config.serve.grpc_port, "grpc_servicer_functions": list(GRPC_SERVICERS)}


def deploy_application(config: ClusterConfig) -> None:
    """Start Serve's proxies with this config's ports and run the app (non-blocking)."""
    from ray import serve

    serve.start(
        http_options={"host": config.serve.http_host, "port": config.serve.http_port},
        grpc_options=grpc_options(config),
    )
    serve.run(
        build_application(config),
        name=config.serve.app_name,
        route_prefix=config.serve.route_prefix,
        blocking=False,
    )
