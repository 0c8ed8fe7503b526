"""`grpc.health.v1.Health` on Serve's gRPC proxy: SERVING once every socket has registered.

Kubernetes gRPC probes, `grpc_health_probe` and gRPC load balancers ask `Health/Check`. Serve's own
`RayServeAPIService/Healthz` only says the proxy is up; this says the app can serve: NOT_SERVING
until every socket of the topology has registered with MemTier (before that, a request may wait
for a socket still starting), then SERVING while at least one socket is registered (a cluster that
lost a socket still serves: that socket's experts page in elsewhere).

Wiring: `cluster.serve_app.grpc_options` lists grpcio-health-checking's `add_HealthServicer_to_server`
among the proxy's servicer functions, so the proxy accepts these RPCs and forwards them, like
coe.v1.CoE's, to the ingress methods of the same names (`Check`, `Watch` below). With one
application on the cluster no `application` metadata is needed, and a probe sends none. Before the
app is deployed the proxy answers NOT_FOUND itself: a failed probe as well. Serve's server
reflection (on by default in 2.60) lists both services, so grpcurl needs no proto.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2
from ray.serve.grpc_util import RayServegRPCContext

from deployments.errors import CoEError
from deployments.grpc_servicer import grpc_abort

if TYPE_CHECKING:
    from cluster.config import ClusterConfig
    from deployments.service import CoEService

logger = logging.getLogger("ray.serve")
HEALTH_SERVICE = "grpc.health.v1.Health"
SERVICES = frozenset({"", "coe.v1.CoE"})  # "": the server as a whole, per the health protocol
WATCH_POLL_S = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class UnknownService(CoEError):
    """The health protocol's answer for a service this server does not have."""

    status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    type = "invalid_request_error"
    code = "unknown_service"


def health_status(registered: int, expected: int, was_complete: bool) -> tuple[int, bool]:
    """(status, complete): SERVING once `expected` sockets have registered, while any is registered."""
    complete = was_complete or registered >= expected
    return (SERVING if complete and registered > 0 else NOT_SERVING), complete


class GrpcHealthMixin:
    """`Check` and `Watch` of grpc.health.v1, mixed into `CoERouter` (which sets config and service)."""

    config: ClusterConfig
    service: CoEService
    _all_sockets_seen = False

    async def _health(self) -> int:
        try:
            status = await self.service.status()
        except Exception as err:  # MemTier restarting: nothing can be placed now
            logger.warning("health check: memtier unreachable: %s", err)
            return NOT_SERVING
        registered = sum(len(node.sockets) for node in status.nodes)
        result, self._all_sockets_seen = health_status(
            registered, self.config.topology.total_sockets, self._all_sockets_seen
        )
        return result

    def _known(self, request: health_pb2.HealthCheckRequest) -> None:
        if request.service not in SERVICES:
            raise UnknownService(
                f"unknown service {request.service!r}; ask for '' (the server) or 'coe.v1.CoE'",
                param="service",
            )

    async def Check(
        self, request: health_pb2.HealthCheckRequest, grpc_context: RayServegRPCContext
    ) -> health_pb2.HealthCheckResponse:
        try:
            self._known(request)
            return health_pb2.HealthCheckResponse(status=await self._health())
        except Exception as err:
            grpc_abort(grpc_context, err)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change (polled every WATCH_POLL_S) until the client hangs up."""
        try:
            self._known(request)
        except Exception as err:
            grpc_abort(grpc_context, err)
        last = None
        while True:
            status = await self._health()
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(WATCH_POLL_S)
