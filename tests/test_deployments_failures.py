"""How the request path fails, without a cluster: statuses, Retry-After, the SSE error event.

The real `CoEService`, `Answer`/`stream` (openai_responses.py), `RequestTrace` and the ingress's
error mapper, over two stand-ins for the handles they call: a MemTier that grants leases in turn
and a socket handle whose streams play a script (events, a Ray exception, or hanging). The
exceptions are Ray's own classes. What a real cluster adds (Serve's routing, a replica really
dying) is covered in tiny_app/test_serving_grpc.py and test_serving_http.py; here each failure is forced
exactly, so each status is checked without timing races.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest
from ray.exceptions import RayActorError, RayTaskError

from cluster.config import ObservabilityConfig
from deployments import service as service_module
from deployments.errors import (
    CoEError,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    NoCapacity,
    Overloaded,
    RateLimited,
    SocketFailed,
)
from deployments.ingress import _error_response
from deployments.metrics import ServingMetrics
from deployments.openai_models import ChatCompletionRequest
from deployments.openai_responses import Answer, stream
from deployments.service import CoEService, Prepared
from deployments.telemetry import Telemetry
from deployments.wire import GenerationRequest, LeaseMismatch, SocketEvent
from memtier.models import ActivationReport, Lease
from memtier.pager import lease_tuple

HANG = "hang"  # a script step: the socket sends nothing more, ever


class _Method:
    """`handle.method.remote(...)`: a coroutine here."""

    def __init__(self, fn) -> None:
        self.remote = fn


class FakeMemTier:
    """Grants leases on `sockets` in turn and records releases and dropped sockets; answers the
    single calls and `batch` (what `MemTierClient` sends) alike."""

    def __init__(self, sockets: list[str]) -> None:
        self._next = itertools.cycle(sockets)
        self._ids = itertools.count()
        self.placed: list[Lease] = []
        self.released: list[str] = []
        self.dropped: list[str] = []
        self.place = _Method(self._place)
        self.release = _Method(self._release)
        self.drop_socket = _Method(self._drop)
        self.batch = _Method(self._batch)

    async def _place(self, expert: str) -> Lease:
        lease = Lease(
            lease_id=f"L{next(self._ids)}", expert=expert, socket_id=next(self._next), node_id="n0",
            tier="hbm", size_bytes=1,
        )  # fmt: skip
        self.placed.append(lease)
        return lease

    async def _release(self, lease_id: str) -> bool:
        self.released.append(lease_id)
        return True

    async def _batch(self, places: list[str], releases: list[tuple], *holder_fields) -> tuple[list, list]:
        """`holder_fields` (lease reuse) are ignored: these leases have no holder, sockets release them."""
        released = [await self._release(lease_id) for lease_id, _, _ in releases]
        return [lease_tuple(await self._place(expert)) for expert in places], released, [], 0

    async def _drop(self, socket_id: str) -> int:
        self.dropped.append(socket_id)
        return 0


class ScriptedStream:
    """A socket's response stream: yields the script's events, raises its exceptions, or hangs."""

    def __init__(self, socket_id: str, script: list) -> None:
        self.socket_id, self.script, self.cancelled = socket_id, script, False

    def __aiter__(self):
        return self._play()

    async def _play(self):
        for step in self.script:
            if isinstance(step, BaseException):
                raise step
            if step == HANG:
                await asyncio.Event().wait()
            yield step(self.socket_id) if callable(step) else step

    def cancel(self) -> None:
        self.cancelled = True


class FakeSockets:
    """`sockets.options(stream=True).generate.remote(payload, socket=, lease=)`: one script per call."""

    def __init__(self, *scripts: list) -> None:
        self.scripts = list(scripts)
        self.streams: list[ScriptedStream] = []
        self.generate = _Method(self._generate)

    def options(self, **_) -> FakeSockets:
        return self

    def _generate(self, payload: dict, *, socket: str, lease: Lease) -> ScriptedStream:
        assert lease.socket_id == socket
        self.streams.append(ScriptedStream(socket, self.scripts.pop(0)))
        return self.streams[-1]


def activation(socket_id: str) -> dict:
    report = ActivationReport(tier="hbm")
    return SocketEvent(type="activation", report=report, socket_id=socket_id).model_dump()


def token(text: str = "hi", count: int = 1, finish: str | None = None) -> dict:
    return SocketEvent(type="token", text=text, completion_tokens=count, finish_reason=finish).model_dump()


@pytest.fixture()
def config(tiny_config, tmp_path):
    observability = ObservabilityConfig(request_log_path=str(tmp_path / "requests.jsonl"))
    limits = tiny_config.limits.model_copy(update={"request_timeout_s": 0.5})
    return tiny_config.model_copy(update={"observability": observability, "limits": limits})


@pytest.fixture()
def memtier(monkeypatch) -> FakeMemTier:
    fake = FakeMemTier(["s0", "s1"])
    monkeypatch.setattr("deployments.service.ensure_memtier", lambda config: fake)
    return fake


def _prepared(stream: bool = True) -> Prepared:
    request = GenerationRequest(model="tiny-03", prompt="hi", stream=stream)
    return Prepared(request=request, expert="tiny-03", input_ids=[1, 2, 3], max_tokens=4)


async def _drain(service: CoEService, info: list | None = None) -> list[SocketEvent]:
    return [event async for event in service.stream(_prepared(), [] if info is None else info)]


def _raises(coroutine) -> CoEError:
    with pytest.raises(CoEError) as caught:
        asyncio.run(coroutine)
    return caught.value


# --------------------------------------------------------------------------- one mapper
@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (InvalidRequest("bad", param="n"), 400, None),
        (ModelNotFound("who?"), 404, None),
        (RateLimited("slow down", retry_after_s=2.4), 429, "2"),
        (NoCapacity("full", retry_after_s=1.0), 503, "1"),
        (SocketFailed("died", retry_after_s=0.2), 503, "1"),  # at least a second
        (Overloaded("queue full", retry_after_s=3.0), 503, "3"),
        (DeadlineExceeded("slow"), 504, None),
    ],
)
def test_each_error_is_its_status_with_retry_after_where_a_retry_can_help(error, status, retry_after):
    response = _error_response(error)
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    assert json.loads(response.body)["error"] == {
        "message": error.message, "type": error.type, "param": error.param, "code": error.code,
    }  # fmt: skip


def test_an_unexpected_error_is_a_500_that_names_no_internals(config):
    trace = Telemetry(config, metrics=ServingMetrics()).trace("http", "chat.completions")
    response = _error_response(trace.fail(KeyError("secret internals at /srv/model.py:12")))
    body = json.loads(response.body)
    assert response.status_code == 500 and body["error"]["code"] == "internal_error"
    assert "secret" not in response.body.decode() and "/srv" not in response.body.decode()


# --------------------------------------------------------------------------- the service
def test_past_request_timeout_s_is_a_504_that_cancels_the_socket_and_releases_the_lease(config, memtier):
    sockets = FakeSockets([activation, HANG])
    err = _raises(_drain(CoEService(config, sockets)))
    assert isinstance(err, DeadlineExceeded) and _error_response(err).status_code == 504
    assert sockets.streams[0].cancelled and memtier.released == [memtier.placed[0].lease_id]


def test_a_socket_dying_after_the_first_streamed_token_is_a_503_and_is_not_retried(config, memtier):
    sockets = FakeSockets([activation, token(), RayActorError()])
    seen: list[SocketEvent] = []

    async def run() -> None:
        async for event in CoEService(config, sockets).stream(_prepared(), []):
            seen.append(event)

    err = _raises(run())
    assert isinstance(err, SocketFailed) and [e.text for e in seen] == ["hi"]
    response = _error_response(err)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert len(memtier.placed) == 1 and memtier.dropped == ["s0"]  # the client has half an answer
    assert memtier.released == [memtier.placed[0].lease_id]


def test_a_socket_dying_before_any_token_is_retried_on_another(config, memtier):
    sockets = FakeSockets([activation, RayActorError()], [activation, token("ok", 1, "length")])
    info: list = []
    events = asyncio.run(_drain(CoEService(config, sockets), info))
    assert [e.text for e in events] == ["ok"] and memtier.dropped == ["s0"]
    assert info[0].retried and info[0].socket == "s1"


def test_a_lease_mismatch_is_placed_again_without_dropping_the_socket(config, memtier):
    mismatch = RayTaskError("generate", "traceback", LeaseMismatch("lease names s0, this is s1"))
    sockets = FakeSockets([mismatch], [activation, token("ok", 1, "length")])
    events = asyncio.run(_drain(CoEService(config, sockets)))
    assert [e.text for e in events] == ["ok"]
    assert [lease.socket_id for lease in memtier.placed] == ["s0", "s1"]
    assert memtier.released == ["L0"] and memtier.dropped == []  # the socket is fine: the router missed


def test_lease_mismatches_are_placed_again_past_three_tries_while_the_deadline_allows(
    config, memtier, monkeypatch
):
    """A replica Serve's router has not met yet (a replacement for a dead socket) refuses lease
    after lease until the router catches up: five refusals, then the sixth placement answers."""
    monkeypatch.setattr(service_module, "MISMATCH_PAUSE_S", 0.001)
    mismatch = RayTaskError("generate", "traceback", LeaseMismatch("lease names s1, this is s0"))
    sockets = FakeSockets(*[[mismatch]] * 5, [activation, token("ok", 1, "length")])
    events = asyncio.run(_drain(CoEService(config, sockets)))
    assert [e.text for e in events] == ["ok"] and len(memtier.placed) == 6
    assert memtier.released == [f"L{i}" for i in range(5)] and memtier.dropped == []


def test_lease_mismatches_until_the_deadline_are_a_503_naming_the_placements(config, memtier, monkeypatch):
    monkeypatch.setattr(service_module, "MISMATCH_PAUSE_S", 0.01)
    monkeypatch.setattr(service_module, "MAX_MISMATCH_PAUSE_S", 0.05)
    mismatch = RayTaskError("generate", "traceback", LeaseMismatch("lease names s1, this is s0"))
    sockets = FakeSockets(*[[mismatch]] * 1000)  # request_timeout_s is 0.5 s (the config fixture)
    err = _raises(_drain(CoEService(config, sockets)))
    assert err.status == 503 and err.code == "socket_failed"
    assert f"after {len(memtier.placed)} placements" in err.message and len(memtier.placed) > 3
    assert len(memtier.released) == len(memtier.placed) and memtier.dropped == []  # nothing kept


def test_a_generation_error_on_the_socket_is_a_500_without_its_internals(config, memtier):
    failed = token("[generation failed: RuntimeError: secret shape [3, 7] in /srv/engine.py]", 0, "error")
    err = _raises(_drain(CoEService(config, FakeSockets([activation, failed]))))
    assert err.status == 500 and "secret" not in err.message and "/srv" not in err.message


# --------------------------------------------------------------------------- the SSE stream
def _sse(config, sockets: FakeSockets) -> tuple[list[str], list[dict]]:
    """Run a streamed chat answer through `openai_responses.stream`: its SSE lines and log lines."""
    telemetry = Telemetry(config, metrics=ServingMetrics())
    body = ChatCompletionRequest(model="tiny-03", messages=[{"role": "user", "content": "hi"}], stream=True)
    service = CoEService(config, sockets)

    async def run() -> list[str]:
        trace = telemetry.trace("http", "chat.completions", stream=True)
        answer = Answer(service, [_prepared()], "chat", body.output(), body.model)
        response = await stream(answer, trace)
        return [chunk async for chunk in response.body_iterator]

    chunks = asyncio.run(run())
    lines = [line.removeprefix("data: ") for chunk in chunks for line in chunk.split("\n\n") if line]
    log = Path(config.observability.request_log_path).read_text().splitlines()
    return lines, [json.loads(line) for line in log]


@pytest.mark.parametrize(
    ("failure", "code"),
    [(RayActorError(), "socket_failed"), (RuntimeError("secret internals"), "internal_error")],
)
def test_a_stream_that_fails_after_its_first_token_ends_with_an_error_event_then_done(
    config, memtier, failure, code
):
    lines, log = _sse(config, FakeSockets([activation, token("hi"), failure]))
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert error["code"] == code and "secret" not in lines[-2]
    contents = [json.loads(x)["choices"][0]["delta"].get("content") for x in lines[:-2]]
    assert contents == ["", "hi"]  # the role chunk, the token sent before the failure
    assert (log[-1]["status"], log[-1]["error_code"]) == ("error", code)
    assert memtier.released == [memtier.placed[0].lease_id]


def test_a_client_leaving_mid_stream_cancels_the_socket_stream_and_releases_the_lease(config, memtier):
    """What Starlette does when the HTTP client goes away: it closes the response body iterator."""
    telemetry = Telemetry(config, metrics=ServingMetrics())
    body = ChatCompletionRequest(model="tiny-03", messages=[{"role": "user", "content": "hi"}], stream=True)
    sockets = FakeSockets([activation, token("a", 1), token("b", 2), HANG])

    async def run() -> list[str]:
        trace = telemetry.trace("http", "chat.completions", stream=True)
        answer = Answer(CoEService(config, sockets), [_prepared()], "chat", body.output(), body.model)
        chunks = (await stream(answer, trace)).body_iterator
        got = [await chunks.__anext__() for _ in range(2)]  # the role chunk and one token
        await chunks.aclose()
        return got

    assert len(asyncio.run(run())) == 2
    assert sockets.streams[0].cancelled  # the socket stops the row when its stream is cancelled
    assert memtier.released == [memtier.placed[0].lease_id]
    log = [json.loads(line) for line in Path(config.observability.request_log_path).read_text().splitlines()]
    assert log[-1]["status"] == "abort"
