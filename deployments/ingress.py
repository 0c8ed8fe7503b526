"""`CoERouter`: the ingress deployment. OpenAI-compatible HTTP (and gRPC, see grpc_servicer.py).

Routes: POST /v1/chat/completions, POST /v1/completions (both streaming over SSE or not),
GET /v1/models, GET /v1/models/{id}, POST /v1/route, GET /v1/memtier, GET /healthz, GET /metrics
(Prometheus, deployments/metrics.py). `model: "coe"` is routed by the router; an expert id
bypasses it. Every answer carries a `coe` object and `x-coe-*` headers; every generation request
ends in one JSON log line (deployments/request_log.py).
"""

import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve

from cluster.config import ClusterConfig
from deployments.errors import (
    BodyTooLarge,
    CoEError,
    InvalidRequest,
    ModelNotFound,
    error_body,
    internal_error,
    schema_error,
)
from deployments.gate import Gate, GateMiddleware
from deployments.grpc_health import GrpcHealthMixin
from deployments.grpc_servicer import GrpcServicerMixin
from deployments.metrics_hub import CONTENT_TYPE as METRICS_CONTENT_TYPE
from deployments.model_cards import ModelCard, category_map, model_cards
from deployments.openai_models import (
    ChatCompletionRequest,
    CompletionRequest,
    RouteRequest,
)
from deployments.openai_responses import prepare_all, respond
from deployments.telemetry import ArrivalMiddleware, MeteredService, Telemetry

logger = logging.getLogger("ray.serve")
app = FastAPI(title="CoE Serve", description="Composition-of-Experts serving with three-tier expert paging")
app.add_middleware(GateMiddleware)  # API keys, rate limits, admission: before any handler (gate.py)
app.add_middleware(ArrivalMiddleware)  # outermost: stamps arrival before the gate (telemetry.py)


def _error_response(err: CoEError) -> JSONResponse:
    headers = {"retry-after": str(max(1, round(err.retry_after_s)))} if err.retry_after_s else None
    return JSONResponse(error_body(err), status_code=err.status, headers=headers)


@serve.ingress(app)
class CoERouter(GrpcServicerMixin, GrpcHealthMixin):
    def __init__(self, config: ClusterConfig, sockets) -> None:
        self.config = config
        self.gate = app.state.coe_gate = Gate.from_config(config)  # one replica per process
        self.service = MeteredService(config, sockets)
        self.telemetry = app.state.coe_telemetry = Telemetry(config)
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
        trace = self.telemetry.http_trace(request, "chat.completions" if kind == "chat" else "completions")
        try:
            data = await self._read_json(request)
            try:
                body = (ChatCompletionRequest if kind == "chat" else CompletionRequest).model_validate(data)
            except ValidationError as err:
                raise schema_error(err) from None
            session = request.headers.get("x-session-id") or None  # else the body's `user`
            prepared = await prepare_all(self.service, body, session)  # one per prompt (openai_responses.py)
            trace.bind(prepared[0], prompt_tokens=sum(len(p.input_ids) for p in prepared))
            return await respond(self.service, trace, prepared, kind, body.output(), body.model)
        except CoEError as err:
            return _error_response(trace.fail(err))
        except Exception as err:
            logger.exception("unexpected error")
            return _error_response(trace.fail(err))
        except BaseException:  # cancelled: the client went away before the answer
            trace.abort()
            raise

    # ------------------------------------------------------------------ routes
    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._handle(request, "text")

    async def _model_cards(self) -> list[ModelCard]:
        try:
            status = await self.service.status()
        except Exception as err:  # MemTier restarting: the cards still list the catalog, residency unknown
            logger.warning("model cards without residency: %s", err)
            status = None
        categories = await category_map(self.config, self.service)
        return model_cards(self.config, categories, status, int(self.started_s))

    @app.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [card.model_dump() for card in await self._model_cards()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str) -> Response:
        try:
            for card in await self._model_cards():
                if card.id == model_id:
                    return JSONResponse(card.model_dump())
            raise ModelNotFound(
                f"The model {model_id!r} does not exist; GET /v1/models lists 'coe' and the experts",
                param="model",
            )
        except CoEError as err:
            return _error_response(err)
        except Exception as err:
            logger.exception("model lookup failed")
            return _error_response(internal_error(err))

    @app.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus text: every replica's serving metrics and memtier's (deployments/metrics.py)."""
        return Response(await self.telemetry.scrape(self.service.memtier), media_type=METRICS_CONTENT_TYPE)

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
            session = request.headers.get("x-session-id") or body.user or None
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
