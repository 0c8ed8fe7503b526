"""gRPC methods of the `CoERouter` ingress (Serve's gRPC proxy calls them by RPC name)."""

from __future__ import annotations


class GrpcServicerMixin:
    """Filled in by the gRPC API: Generate, GenerateStream, Route, ListExperts, MemtierStatus."""
