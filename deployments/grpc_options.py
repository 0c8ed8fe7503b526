"""Serve's gRPC proxy options for a config (filled in by the gRPC API)."""

from __future__ import annotations

from cluster.config import ClusterConfig


def grpc_options(config: ClusterConfig) -> dict:
    """No gRPC servicers yet: the proxy stays off."""
    return {"port": config.serve.grpc_port, "grpc_servicer_functions": []}
