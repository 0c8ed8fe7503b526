"""Serve's gRPC proxy options for a config; defined beside the app's import path in cluster/."""

from cluster.serve_app import GRPC_SERVICER as SERVICER_FUNCTION
from cluster.serve_app import grpc_options

__all__ = ["SERVICER_FUNCTION", "grpc_options"]
