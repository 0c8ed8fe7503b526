"""Serve's gRPC proxy options for a config: the port and the CoE servicer.

The proxy imports `SERVICER_FUNCTION` by path in its own process, so the stub module must
exist on disk before `serve.start`; importing `deployments.grpc_stubs` here generates it (on
this machine: a multi-node image must run `python -m deployments.protogen` at build time).
"""

from __future__ import annotations

from cluster.config import ClusterConfig

SERVICER_FUNCTION = "deployments.coe_pb2_grpc.add_CoEServicer_to_server"


def grpc_options(config: ClusterConfig) -> dict:
    """`grpc_options` for `serve.start` (also what `serveConfigV2.grpc_options` must say)."""
    import deployments.grpc_stubs  # noqa: F401  (generates the module the proxy will import)

    return {"port": config.serve.grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]}
