"""Errors the API can return, and the one place each becomes an HTTP or gRPC status.

Handlers raise these; `http_error` and `grpc_status` map them (STYLE: map errors to status
codes in one place). Anything else is logged and becomes a plain 500 / INTERNAL.
"""

from __future__ import annotations

import grpc
from pydantic import ValidationError


class CoEError(Exception):
    """Base: `status` (HTTP), `grpc_code`, OpenAI `type`, and the offending `param` if any."""

    status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.retry_after_s = retry_after_s


class InvalidRequest(CoEError):
    status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    type = "invalid_request_error"
    code = "invalid_request"


class LimitExceeded(InvalidRequest):
    code = "limit_exceeded"


class ModelNotFound(CoEError):
    status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    type = "invalid_request_error"
    code = "model_not_found"


class NoCapacity(CoEError):
    """No socket can hold the expert now (saturated) or ever (too large)."""

    status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    type = "server_error"
    code = "no_capacity"


class SocketFailed(CoEError):
    """The socket serving the request died, and the retry on another socket failed too."""

    status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    type = "server_error"
    code = "socket_failed"


class DeadlineExceeded(CoEError):
    status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    type = "server_error"
    code = "timeout"


class BodyTooLarge(LimitExceeded):
    """The body is over `limits.max_body_bytes`: refused before it is read in full, let alone parsed."""

    status = 413
    code = "body_too_large"


class Unauthorized(CoEError):
    """No API key, or not one of ours (OpenAI answers 401 `invalid_api_key`)."""

    status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    type = "invalid_request_error"
    code = "invalid_api_key"


class RateLimited(CoEError):
    """The caller's key is over its requests/s or tokens/min; `retry_after_s` says when it is not.

    gRPC: RESOURCE_EXHAUSTED, the code Serve's own proxy uses for backpressure, so a client backs
    off on one code whichever layer refused it.
    """

    status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    type = "requests"
    code = "rate_limit_exceeded"


class Overloaded(CoEError):
    """The ingress admission queue is full (or its wait ran out): refused at once, with Retry-After."""

    status = 503
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    type = "server_error"
    code = "overloaded"


def error_body(err: CoEError) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def http_headers(err: CoEError) -> dict[str, str] | None:
    """`Retry-After` (whole seconds, at least 1) on the errors a client should retry later."""
    return {"retry-after": str(max(1, round(err.retry_after_s)))} if err.retry_after_s else None


def internal_error(err: BaseException) -> CoEError:
    return CoEError(f"internal error: {type(err).__name__}", code="internal_error")


def schema_error(err: ValidationError) -> InvalidRequest:
    """The first schema violation, naming the field as OpenAI does (`param`: "messages.0.role")."""
    first = err.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param)
