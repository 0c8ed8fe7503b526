"""The ingress's front gate: every /v1 request (HTTP) and every coe.v1.CoE call (gRPC) passes it first.

In order, cheapest refusal first, all before the handler runs (so before any routing, tokenizer
or model work):
  1. declared body over limits.max_body_bytes      -> 413 (gRPC: the request's size, INVALID_ARGUMENT)
  2. API key (security.api_key_env / _file)        -> 401 / UNAUTHENTICATED
  3. requests/s of the key                         -> 429 + Retry-After / RESOURCE_EXHAUSTED
  4. work routes: the body, read up to the limit   -> 413; tokens/min of the key -> 429
  5. work routes: a slot in the admission queue    -> 503 + Retry-After / RESOURCE_EXHAUSTED
Work routes are those that route or generate (POST /v1/*; Generate, GenerateStream, Route).
`/healthz`, `/metrics` and anything outside /v1 stay open, as does Serve's gRPC health service.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.api_keys import load_api_keys
from cluster.config import ClusterConfig
from deployments.admission import AdmissionQueue, RateLimiter, admission_queue, estimate_tokens, rate_limiter
from deployments.auth import ApiKeyAuth
from deployments.errors import BodyTooLarge, CoEError, error_body, http_headers

GATED_PREFIX = "/v1/"


class Gate:
    """Auth, rate limits and admission of one ingress replica, shared by its HTTP and gRPC doors."""

    def __init__(self, config: ClusterConfig, auth: ApiKeyAuth, limiter: RateLimiter, queue: AdmissionQueue):
        self.config, self.auth, self.limiter, self.queue = config, auth, limiter, queue

    @classmethod
    def from_config(cls, config: ClusterConfig) -> Gate:
        """Reads the keys from this process's environment: raises ApiKeyConfigError if unusable."""
        return cls(
            config, ApiKeyAuth(load_api_keys(config.security)), rate_limiter(config), admission_queue(config)
        )

    @property
    def max_body_bytes(self) -> int:
        return self.config.limits.max_body_bytes

    def too_large(self, size: int) -> BodyTooLarge:
        return BodyTooLarge(f"request body is {size} bytes, the limit is {self.max_body_bytes}", param="body")

    def enter(self, authorization: str | None, client: str) -> str:
        """Steps 2 and 3: the caller's name, or Unauthorized / RateLimited."""
        caller = self.auth.authenticate(authorization, client)
        self.limiter.check_request(caller)
        return caller

    def charge(
        self, caller: str, body_bytes: int, max_tokens: Any, *, generates: bool, rows: int = 1
    ) -> None:
        """Step 4: tokens/min, charged from sizes alone (no tokenizer); routing alone costs no output.
        `rows` is how many answers the body asks for (n or best_of, times its prompts): each may
        generate max_tokens, so a request for 8 choices pays for 8."""
        limits = self.config.limits
        if not generates:
            max_tokens = 0
        elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            max_tokens = limits.default_max_tokens  # the handler rejects bad values itself
        output = min(max_tokens, limits.max_tokens) * min(max(rows, 1), limits.max_choices)
        self.limiter.check_tokens(caller, estimate_tokens(body_bytes, output))


# --------------------------------------------------------------------------- HTTP (pure ASGI middleware)


def _output_request(body: bytes) -> tuple[Any, int]:
    """(max_tokens, rows) a body asks for, read without validating it (the handler answers 400 for
    a bad one): rows = max(n, best_of) x the prompts of a completions list."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, 1
    if not isinstance(data, dict):
        return None, 1

    def count(field: str) -> int:
        value = data.get(field)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1

    prompt = data.get("prompt")
    listed = isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt)
    rows = max(count("n"), count("best_of")) * (len(prompt) if listed else 1)
    return data.get("max_tokens", data.get("max_completion_tokens")), rows


async def _read_body(receive: Receive, limit: int, gate: Gate) -> tuple[bytes, list[Message]]:
    """The whole body, refusing it (413) as soon as it passes the limit; plus the messages read."""
    chunks, size, messages = [], 0, []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return b"".join(chunks), messages  # client gone: the handler sees the disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise gate.too_large(size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that hands the handler the messages already read, then the client's own."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


class GateMiddleware:
    """Runs the gate on /v1 requests; the `Gate` is `app.state.coe_gate`, set by the ingress replica.

    Plain ASGI (not BaseHTTPMiddleware) so streaming responses and client disconnects pass through
    untouched: a client that goes away mid-stream still frees its lease at once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["type"] != "http" or not path.startswith(GATED_PREFIX):
            await self.app(scope, receive, send)
            return
        gate: Gate | None = getattr(scope["app"].state, "coe_gate", None)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        work = scope.get("method") == "POST"
        try:
            if gate is None:  # fail closed: the replica has not finished starting
                raise CoEError("the ingress is starting", code="starting", retry_after_s=1.0)
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > gate.max_body_bytes:
                raise gate.too_large(int(declared))
            caller = gate.enter(headers.get("authorization"), (scope.get("client") or ("unknown",))[0])
            if work:
                body, messages = await _read_body(receive, gate.max_body_bytes, gate)
                if gate.limiter.limits_tokens:
                    generates = path.endswith("completions")
                    max_tokens, rows = _output_request(body)
                    gate.charge(caller, len(body), max_tokens, generates=generates, rows=rows)
                receive = _replay(messages, receive)
                await gate.queue.acquire()
        except CoEError as err:
            response = JSONResponse(error_body(err), status_code=err.status, headers=http_headers(err))
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            if work:
                gate.queue.release()


# --------------------------------------------------------------------------- gRPC (a method decorator)


def _authorization(grpc_context: Any) -> str | None:
    for key, value in grpc_context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return value
    return None


def _admit(gate: Gate, request: Any, grpc_context: Any, *, work: bool) -> str:
    size = request.ByteSize()
    if size > gate.max_body_bytes:
        raise gate.too_large(size)
    caller = gate.enter(_authorization(grpc_context), grpc_context.peer() or "unknown")
    if work and gate.limiter.limits_tokens:
        generates = "max_tokens" in request.DESCRIPTOR.fields_by_name  # Generate*, not Route
        max_tokens = request.max_tokens if generates and request.HasField("max_tokens") else None
        gate.charge(caller, size, max_tokens, generates=generates)
    return caller


def gated(*, work: bool) -> Callable:
    """Put a gRPC method of the ingress behind the gate (`self.gate`); `work` also takes a queue slot.

    Refusals go through `abort` (grpc_servicer.grpc_abort: the one gRPC mapper). Serve reads the
    wrapped signature (it must still name `grpc_context`) and whether it is an async generator.
    """

    def decorate(method: Callable) -> Callable:
        async def enter(self: Any, request: Any, grpc_context: Any) -> None:
            from deployments.grpc_servicer import grpc_abort  # it decorates its methods with this

            try:
                _admit(self.gate, request, grpc_context, work=work)
                if work:
                    await self.gate.queue.acquire()
            except CoEError as err:
                grpc_abort(grpc_context, err)

        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def stream(self: Any, request: Any, grpc_context: Any):
                await enter(self, request, grpc_context)
                try:
                    # aclosing: a cancelled call closes the method's generator now, freeing its lease
                    async with contextlib.aclosing(method(self, request, grpc_context)) as items:
                        async for item in items:
                            yield item
                finally:
                    if work:
                        self.gate.queue.release()

            return stream

        @functools.wraps(method)
        async def unary(self: Any, request: Any, grpc_context: Any) -> Awaitable:
            await enter(self, request, grpc_context)
            try:
                return await method(self, request, grpc_context)
            finally:
                if work:
                    self.gate.queue.release()

        return unary

    return decorate
