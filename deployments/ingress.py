"""`CoERouter`: the ingress deployment. OpenAI-compatible HTTP (and gRPC, see grpc_servicer.py).

Routes: POST /v1/chat/completions, POST /v1/completions (both streaming over SSE or not),
GET /v1/models, POST /v1/route, GET /v1/memtier, GET /healthz. `model: "coe"` is routed by the
router; an expert id bypasses it. Every answer carries a `coe` object and `x-coe-*` headers.
"""

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve

from cluster.config import ClusterConfig
from deployments.errors import (
    BodyTooLarge,
    CoEError,
    InvalidRequest,
    error_body,
    internal_error,
    schema_error,
)
from deployments.gate import Gate, GateMiddleware
from deployments.grpc_servicer import GrpcServicerMixin
from deployments.openai_models import (
    ChatCompletionRequest,
    CoEInfo,
    CompletionRequest,
    RouteRequest,
    Usage,
)
from deployments.service import COE_MODEL, CoEService, Prepared

logger = logging.getLogger("ray.serve")
app = FastAPI(title="CoE Serve", description="Composition-of-Experts serving with three-tier expert paging")
app.add_middleware(GateMiddleware)  # API keys, rate limits, admission: before any handler (gate.py)


def _error_response(err: CoEError) -> JSONResponse:
    headers = {"retry-after": str(max(1, round(err.retry_after_s)))} if err.retry_after_s else None
    return JSONResponse(error_body(err), status_code=err.status, headers=headers)


def _coe_headers(info: CoEInfo) -> dict[str, str]:
    headers = {"x-coe-expert": info.expert, "x-coe-tier": info.tier, "x-coe-socket": info.socket}
    if info.category:
        headers["x-coe-category"] = info.category
    return headers


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


@serve.ingress(app)
class CoERouter(GrpcServicerMixin):
    def __init__(self, config: ClusterConfig, sockets) -> None:
        self.config = config
        self.gate = app.state.coe_gate = Gate.from_config(config)  # one replica per process
        self.service = CoEService(config, sockets)
        self.started_s = time.time()

    # ------------------------------------------------------------------ helpers
    async def _read_json(self, request: Request) -> dict:
        limit = self.config.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"request body is {declared} bytes, the limit is {limit}", param="body")
        body = await request.body()
        if len(body) > limit:
            raise BodyTooLarge(f"request body is {len(body)} bytes, the limit is {limit}", param="body")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidRequest(f"the body is not valid JSON: {err}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise InvalidRequest("the body must be a JSON object")
        return data

    async def _handle(self, request: Request, kind: str) -> Response:
        try:
            data = await self._read_json(request)
            try:
                body = (ChatCompletionRequest if kind == "chat" else CompletionRequest).model_validate(data)
            except ValidationError as err:
                raise schema_error(err) from None
            generation = body.to_generation()
            prepared = await self.service.prepare(generation)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            if body.stream:
                return await self._stream(prepared, kind, include_usage)
            return await self._complete(prepared, kind)
        except CoEError as err:
            return _error_response(err)
        except Exception as err:
            logger.exception("unexpected error")
            return _error_response(internal_error(err))

    async def _complete(self, prepared: Prepared, kind: str) -> Response:
        info: list[CoEInfo] = []
        parts, finish, tokens = [], "stop", 0
        async for event in self.service.stream(prepared, info, buffered=True):
            parts.append(event.text)
            tokens = event.completion_tokens or tokens
            finish = event.finish_reason or finish
        text = "".join(parts)
        usage = Usage.of(len(prepared.input_ids), tokens)
        rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            if kind == "chat"
            else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        )
        body = {
            "id": rid,
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": created,
            "model": prepared.expert,
            "choices": [choice],
            "usage": usage.model_dump(),
            "coe": info[0].model_dump() if info else None,
        }
        return JSONResponse(body, headers=_coe_headers(info[0]) if info else None)

    async def _stream(self, prepared: Prepared, kind: str, include_usage: bool) -> Response:
        info: list[CoEInfo] = []
        events = self.service.stream(prepared, info).__aiter__()
        # Wait for the activation (and first token) so headers can say which expert and tier served it,
        # and so errors before the first token are proper HTTP errors, not a broken stream.
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(text: str | None, finish: str | None, role: bool = False) -> dict:
            if kind == "chat":
                delta = (
                    {"role": "assistant", "content": text or ""}
                    if role
                    else ({"content": text} if text else {})
                )
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {
                "id": rid,
                "object": obj,
                "created": created,
                "model": prepared.expert,
                "choices": [choice],
                "coe": info[0].model_dump() if info else None,
            }

        async def body() -> AsyncIterator[str]:
            tokens = 0
            try:
                if kind == "chat":
                    yield _sse(chunk(None, None, role=True))
                event = first
                while event is not None:
                    tokens = event.completion_tokens or tokens
                    if event.text or event.finish_reason:
                        yield _sse(chunk(event.text, event.finish_reason))
                    try:
                        event = await events.__anext__()
                    except StopAsyncIteration:
                        event = None
                if include_usage:
                    usage = Usage.of(len(prepared.input_ids), tokens)
                    yield _sse(
                        {
                            "id": rid,
                            "object": obj,
                            "created": created,
                            "model": prepared.expert,
                            "choices": [],
                            "usage": usage.model_dump(),
                        }
                    )
            except CoEError as err:
                yield _sse(error_body(err))
            except Exception as err:
                logger.exception("stream failed")
                yield _sse(error_body(internal_error(err)))
            finally:
                await events.aclose()  # client gone or done: cancels the socket stream, frees the lease
            yield _sse("[DONE]")

        return StreamingResponse(
            body(), media_type="text/event-stream", headers=_coe_headers(info[0]) if info else None
        )

    # ------------------------------------------------------------------ routes
    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._handle(request, "text")

    @app.get("/v1/models")
    async def models(self) -> dict:
        created = int(self.started_s)
        data = [
            {
                "id": COE_MODEL,
                "object": "model",
                "created": created,
                "owned_by": "coe-serve",
                "description": "auto-routed: the router picks the expert",
            }
        ]
        data += [
            {
                "id": e.id,
                "object": "model",
                "created": created,
                "owned_by": "coe-serve",
                "size_bytes": e.size_bytes,
            }
            for e in self.config.experts
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/route")
    async def route(self, request: Request) -> Response:
        try:
            data = await self._read_json(request)
            try:
                body = RouteRequest.model_validate(data)
            except ValidationError as err:
                raise schema_error(err) from None
            if (body.messages is None) == (body.prompt is None):
                raise InvalidRequest("send exactly one of `messages` or `prompt`", param="messages")
            target = (
                [{"role": m.role, "content": m.text()} for m in body.messages]
                if body.messages is not None
                else body.prompt
            )
            session = body.user or request.headers.get("x-session-id") or None
            decision = await self.service.route(target, session)
            return JSONResponse(decision.model_dump())
        except CoEError as err:
            return _error_response(err)
        except Exception as err:
            logger.exception("route failed")
            return _error_response(internal_error(err))

    @app.get("/v1/memtier")
    async def memtier(self) -> dict:
        return (await self.service.status()).model_dump()

    @app.get("/healthz")
    async def healthz(self) -> dict:
        status = await self.service.status()
        sockets = sum(len(n.sockets) for n in status.nodes)
        return {
            "status": "ok" if sockets else "starting",
            "sockets": sockets,
            "expected_sockets": self.config.topology.total_sockets,
        }
