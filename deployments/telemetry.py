"""What the ingress records about each request: a `RequestTrace` per request, ended exactly once.

The trace is started when a request reaches the ingress, bound to its `Prepared` (expert,
category, prompt tokens) and told of every `SocketEvent`. When the request ends (answered, failed,
or abandoned) it becomes one `RequestRecord`: one JSON log line and one set of metric observations.

Timing is only as good as where events are seen. A streamed answer's events reach the ingress as
they are generated, so its TTFT and inter-token gaps are timed here. A non-streamed HTTP answer is
buffered inside `CoEService.stream` (so a socket crash can be retried at any point): its events
reach the handler together at the end, so they are counted but not timed (`saw(..., timed=False)`);
the service stamps the arrival of the first token it holds back (`first_token_arrived`), so such a
request still observes TTFT (as vLLM does for every request) but no inter-token gaps. Seeing the
same event twice is harmless, since a trace only counts tokens beyond what it has seen.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.config import ClusterConfig
from deployments.errors import CoEError, internal_error
from deployments.metrics import ServingMetrics, process_metrics
from deployments.metrics_hub import MetricsPusher, get_hub, merge_families, render, source_id
from deployments.request_log import RequestLog, RequestRecord
from deployments.service import CoEService

if TYPE_CHECKING:
    from deployments.openai_models import CoEInfo
    from deployments.service import Prepared
    from deployments.wire import SocketEvent

logger = logging.getLogger("ray.serve")
_ERROR_CHARS = 300
_ID_PREFIX = {"chat.completions": "chatcmpl", "completions": "cmpl"}
_ENDPOINTS = {"chat/completions": "chat.completions", "completions": "completions"}  # path after /v1/
_ARRIVED, _TRACED = "coe_arrived", "coe_traced"  # keys in the ASGI scope's state


class RequestTrace:
    """Times and token counts of one request, from its arrival at the ingress to its end."""

    def __init__(
        self,
        telemetry: Telemetry,
        protocol: str,
        endpoint: str,
        *,
        stream: bool = False,
        arrived: tuple[float, float] | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.protocol, self.endpoint, self.stream = protocol, endpoint, stream
        self.request_id = f"{_ID_PREFIX.get(endpoint, 'req')}-{uuid.uuid4().hex}"
        # (monotonic, wall) time of arrival: stamped by ArrivalMiddleware before the gate, else now
        self.arrived_s, self.arrived_wall_s = arrived or (time.monotonic(), time.time())
        self.prepared: Prepared | None = None
        self.info_out: list[CoEInfo] = []  # the list CoEService.stream fills with the CoEInfo
        self.tokens = 0
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.token_gaps_s: list[float] = []
        self.queue_s: float | None = None
        self.finish_reason: str | None = None
        self.done = False
        self._timing = True
        self.prompt_tokens: int | None = None

    def bind(self, prepared: Prepared, *, prompt_tokens: int | None = None) -> None:
        """The request's (first) prompt; `prompt_tokens` when it has several (a prompt list)."""
        self.prepared = prepared
        self.prompt_tokens = prompt_tokens
        self.stream = prepared.request.stream or self.stream
        prepared.trace = self  # the service may call trace.saw() as events arrive (module docstring)

    def first_token_arrived(self) -> None:
        """A token reached the ingress but is held back (a buffered answer): it still times TTFT."""
        if self.first_token_s is None:
            self.first_token_s = time.monotonic()

    def saw(self, event: SocketEvent, *, timed: bool = True) -> None:
        """An event of the answer; `timed=False` when it was held back and its arrival time means nothing."""
        queue_s = getattr(event, "queue_s", None)  # set by the engine on the first token event, if it does
        if queue_s is not None and self.queue_s is None:
            self.queue_s = queue_s
        if event.finish_reason:
            self.finish_reason = event.finish_reason
        count = event.completion_tokens
        if count <= self.tokens:
            return
        if not timed:
            self._timing = False
        elif self._timing:
            now = time.monotonic()
            if self.tokens == 0:
                self.first_token_s = now
            elif self.last_token_s is not None:
                gap = (now - self.last_token_s) / (count - self.tokens)
                self.token_gaps_s.extend([gap] * (count - self.tokens))
            self.last_token_s = now
        self.tokens = count

    # ------------------------------------------------------------------ endings (the first one counts)
    def finish(self) -> None:
        self._end("ok")

    def abort(self) -> None:
        """The client went away (or the call was cancelled); a no-op once the request has ended."""
        if not self.done:
            self.finish_reason = "abort"
            self._end("abort")

    def fail(self, err: BaseException) -> CoEError:
        """Record the error (anything not a CoEError is an internal error); returns the CoEError to send."""
        coe_err = err if isinstance(err, CoEError) else internal_error(err)
        self._end("error", coe_err)
        return coe_err

    def _end(self, status: str, err: CoEError | None = None) -> None:
        if self.done:
            return
        self.done = True
        record = self.record(status, err)
        self.telemetry.metrics.observe_request(record, self.token_gaps_s if err is None else [])
        self.telemetry.log.write(record)

    def record(self, status: str, err: CoEError | None = None) -> RequestRecord:
        now = time.monotonic()
        p, info = self.prepared, (self.info_out[0] if self.info_out else None)
        prompt_tokens = self.prompt_tokens if self.prompt_tokens is not None else len(p.input_ids) if p else 0
        prompt = None
        if p is not None and self.telemetry.config.observability.log_prompts:
            prompt = p.request.messages if p.request.messages is not None else p.request.prompt
        return RequestRecord(
            ts=datetime.fromtimestamp(self.arrived_wall_s, UTC).isoformat(timespec="milliseconds"),
            id=self.request_id,
            protocol=self.protocol,
            endpoint=self.endpoint,
            stream=self.stream,
            status=status,
            error_code=(err.code or err.type) if err is not None else None,
            error=err.message[:_ERROR_CHARS] if err is not None else None,
            expert=p.expert if p is not None else None,
            category=p.category if p is not None else None,
            routed=p.routed if p is not None else False,
            fallback=p.fallback if p is not None else False,
            tier=info.tier if info else None,
            socket=info.socket if info else None,
            node=info.node if info else None,
            switch_s=info.switch_s if info else None,
            retried=info.retried if info else False,
            queue_s=self.queue_s,
            ttft_s=self.first_token_s - self.arrived_s if self.first_token_s is not None else None,
            e2e_s=now - self.arrived_s,
            prompt_tokens=prompt_tokens,
            completion_tokens=self.tokens,
            finish_reason=self.finish_reason if err is None else None,
            prompt=prompt,
        )


class Telemetry:
    """The ingress's metrics, request log and `GET /metrics` scrape (one per ingress replica)."""

    def __init__(self, config: ClusterConfig, metrics: ServingMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or process_metrics()
        self.log = RequestLog(config.observability)
        MetricsPusher.start(self.metrics.registry, config)
        self._hub = None

    def trace(self, protocol: str, endpoint: str, *, stream: bool = False) -> RequestTrace:
        return RequestTrace(self, protocol, endpoint, stream=stream)

    def http_trace(self, request: Request, endpoint: str) -> RequestTrace:
        """A trace timed from the request's arrival at the ASGI app (before the gate may queue it)."""
        state = request.scope.setdefault("state", {})
        state[_TRACED] = True
        return RequestTrace(self, "http", endpoint, arrived=state.get(_ARRIVED))

    async def scrape(self, memtier) -> bytes:
        """Prometheus text for the whole cluster: every replica's serving metrics (via the hub,
        this replica's pushed first so they are current) and memtier's, from its actor."""
        own = list(self.metrics.registry.collect())
        try:
            if self._hub is None:
                self._hub = get_hub(self.config)
            await self._hub.push.remote(source_id(), own)
            families = await self._hub.collect.remote()
        except Exception as err:  # hub restarting: this replica's own numbers, said in the log
            logger.warning("metrics hub unavailable, serving this replica's metrics only: %s", err)
            self._hub, families = None, merge_families([(own, True)])
        try:
            memtier_families = await memtier.metrics.remote()
        except Exception as err:
            logger.warning("memtier metrics unavailable: %s", err)
            memtier_families = []
        return render(merge_families([(families, True), (memtier_families, True)]))


class ArrivalMiddleware:
    """Stamps each HTTP request's arrival, and writes the line of a generation request that was
    refused before any handler saw it (bad API key, rate limit, full admission queue).

    Added after the gate's middleware, so it runs first (outermost). Plain ASGI: a stream passes
    through untouched. The `Telemetry` is `app.state.coe_telemetry`, set by the ingress replica.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[_ARRIVED] = (time.monotonic(), time.time())
        endpoint = _ENDPOINTS.get(scope.get("path", "").rstrip("/").rsplit("/v1/", 1)[-1])
        telemetry: Telemetry | None = getattr(scope["app"].state, "coe_telemetry", None)
        if endpoint is None or telemetry is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        answer: dict = {}

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body" and "body" not in answer:
                answer["body"] = message.get("body", b"")
            await send(message)

        await self.app(scope, receive, watched)
        if not state.get(_TRACED) and answer.get("status", 200) >= 400:
            trace = RequestTrace(telemetry, "http", endpoint, arrived=state[_ARRIVED])
            trace.fail(_refusal(answer["status"], answer.get("body", b"")))


def _refusal(status: int, body: bytes) -> CoEError:
    """The CoEError an OpenAI error body describes (its code and message), for the log line."""
    try:
        error = json.loads(body)["error"]
        return CoEError(str(error.get("message") or ""), code=error.get("code") or error.get("type"))
    except (ValueError, KeyError, TypeError):
        return CoEError(f"HTTP {status}", code=f"http_{status}")


class MeteredService(CoEService):
    """`CoEService` whose router decisions are counted and timed (`coe:router_*`)."""

    async def route(self, prompt_or_messages, *args, **kwargs):
        start_s = time.perf_counter()
        decision = await super().route(prompt_or_messages, *args, **kwargs)
        process_metrics().observe_route(
            decision.category, decision.expert, decision.fallback, time.perf_counter() - start_s
        )
        return decision
