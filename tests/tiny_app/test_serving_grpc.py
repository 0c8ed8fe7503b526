"""The gRPC API (coe.v1.CoE) on a 2-node cluster with tiny experts, through Serve's gRPC proxy.

It runs on the package's shared app (tests/tiny_app/conftest.py), whose `max_tokens` limit is
LONG_TOKENS (480) so the hard cases are real, not mocked: a generation lasts seconds, so
cancellation and deadlines land mid-stream. `place_timeout_s` and `request_timeout_s` stay at their
defaults: a first request that loads its expert from STORE on a busy CI box (the other test worker
at full tilt) took over 10 s, so the saturation test waits the default 30 s for its UNAVAILABLE.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import httpx
import pytest
import ray

from deployments import errors
from deployments.grpc_client import CoEClient, generate_request
from deployments.grpc_servicer import grpc_abort
from deployments.grpc_stubs import coe_pb2
from memtier.pager import get_memtier
from tests.serving_rig import ServingRig
from tests.tiny_app import LONG_TOKENS
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(rig):
    with CoEClient(rig.grpc_target, app=rig.config.serve.app_name, timeout_s=60) as client:
        yield client


def _leases(client: CoEClient) -> tuple[int, int]:
    """(leases, pinned bytes) summed over every socket, as MemtierStatus reports them."""
    sockets = [s for node in client.memtier().nodes for s in node.sockets]
    return sum(s.leases for s in sockets), sum(s.pinned_bytes for s in sockets)


def _wait_unpinned(client: CoEClient) -> None:
    wait_for(lambda: _leases(client) == (0, 0), "every lease released")


def _idle(rig: ServingRig, socket_id: str) -> dict:
    """The socket's engine once no row runs or waits there (its stats then)."""
    def stats() -> dict | None:
        found = rig.on_socket(socket_id, "engine_stats")
        return found if found["running"] == 0 and found["waiting"] == 0 else None

    return wait_for(stats, f"socket {socket_id}'s engine idle")


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# ---------------------------------------------------------------------------------------------- calls
def test_generate_with_an_explicit_expert(client):
    reply = client.generate("hello there", model="tiny-03", max_tokens=5, seed=1, temperature=0.7)
    assert reply.finish_reason in {"stop", "length"} and reply.text
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    coe = reply.coe
    assert (coe.expert, coe.routed, coe.HasField("category")) == ("tiny-03", False, False)
    assert coe.tier in {"store", "ddr", "hbm"} and coe.socket and coe.node


def test_grpc_and_http_share_the_request_path(rig, client):
    """Same seed over both front doors, same text: one implementation behind them."""
    reply = client.generate("repeat after me", model="tiny-04", max_tokens=6, seed=7, temperature=1.0)
    body = httpx.post(
        f"{rig.base_url}/v1/chat/completions",
        json={
            "model": "tiny-04",
            "messages": [{"role": "user", "content": "repeat after me"}],
            "max_tokens": 6,
            "seed": 7,
            "temperature": 1.0,
        },
        timeout=60,
    ).json()
    assert body["choices"][0]["message"]["content"] == reply.text
    assert body["coe"]["expert"] == reply.coe.expert == "tiny-04"


def test_raw_prompt_skips_the_chat_template(client):
    chat = client.generate("Once upon a time", model="tiny-02", max_tokens=2)
    raw = client.generate("Once upon a time", model="tiny-02", max_tokens=2, raw=True)
    assert raw.usage.prompt_tokens < chat.usage.prompt_tokens


def test_coe_routes_a_math_prompt_to_the_math_expert(client):
    reply = client.generate(
        "Solve the integral of x^2 dx from 0 to 3 and simplify the fraction.", max_tokens=3
    )
    coe = reply.coe
    assert (coe.category, coe.expert, coe.routed) == ("math", "tiny-01", True)
    assert coe.HasField("entropy")


def test_stream_sends_a_chunk_per_token_and_the_unary_text(client):
    # That chunks leave before the end is shown by the cancel test: 20 chunks in, the row still runs.
    chunks = list(client.stream("stream please", model="tiny-05", max_tokens=64, temperature=0.0))
    assert len(chunks) > 2 and chunks[-1].finish_reason in {"stop", "length"}
    assert not any(c.finish_reason for c in chunks[:-1])
    assert chunks[0].coe.expert == "tiny-05" and not chunks[1].HasField("coe")
    assert len(chunks) <= chunks[-1].usage.completion_tokens  # one chunk per token that printed text
    text = "".join(c.text for c in chunks)
    assert text == client.generate("stream please", model="tiny-05", max_tokens=64, temperature=0.0).text


def test_route_returns_the_decision_only(client):
    decision = client.route("What are the symptoms of flu?")
    assert (decision.category, decision.expert) == ("medicine", "tiny-02")
    assert abs(sum(decision.probabilities.values()) - 1) < 1e-4 and decision.entropy >= 0


def test_list_experts_names_every_expert_and_its_categories(rig, client):
    reply = client.experts()
    assert reply.routed_model == "coe"
    assert [e.id for e in reply.experts] == rig.config.expert_ids
    by_id = {e.id: e for e in reply.experts}
    assert list(by_id["tiny-01"].categories) == ["math"] and by_id["tiny-01"].size_bytes > 0
    assert by_id["tiny-07"].fallback and not by_id["tiny-01"].fallback


def test_memtier_status_shows_residency_budgets_and_hit_rates(rig, client):
    status = client.memtier()
    assert len(status.nodes) == 2 and sum(len(n.sockets) for n in status.nodes) == 4
    for node in status.nodes:
        for socket in node.sockets:  # what it reports; what sockets really hold is checked below
            assert socket.hbm_bytes == rig.config.topology.weights_per_socket
    rig.assert_budgets()
    full = json.loads(status.status_json)
    assert full["stats"]["hbm_hit_rate"] == pytest.approx(status.hbm_hit_rate)
    assert status.leases_granted >= 1 and 0 <= status.hbm_hit_rate <= 1


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"max_tokens": LONG_TOKENS + 1}, str(LONG_TOKENS)),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 9.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_out_of_range_fields_are_invalid_argument(client, options, param):
    code, details = _code(lambda: client.generate("hi", model="tiny-00", **options))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and param in details


def test_malformed_messages_are_invalid_argument(client):
    stub, metadata = client.stub, client.metadata
    bad_role = coe_pb2.GenerateRequest(
        model="tiny-00", messages=[coe_pb2.Message(role="wizard", content="x")]
    )
    both = generate_request("x", model="tiny-00")
    both.prompt = "y"
    for request, needle in [
        (coe_pb2.GenerateRequest(model="tiny-00"), "messages"),  # neither messages nor prompt
        (both, "exactly one"),
        (bad_role, "messages.0.role"),
        (generate_request("x", model=""), "model"),
    ]:
        code, details = _code(lambda r=request: stub.Generate(r, metadata=metadata, timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details


def test_unknown_expert_is_not_found_unary_and_streaming(client):
    code, details = _code(lambda: client.generate("hi", model="no-such-expert"))
    assert code == grpc.StatusCode.NOT_FOUND and "no-such-expert" in details
    code, _ = _code(lambda: list(client.stream("hi", model="no-such-expert")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_client_deadline_is_deadline_exceeded_and_frees_the_lease(rig, client):
    with CoEClient(rig.grpc_target, timeout_s=0.5) as hasty:
        code, _ = _code(
            lambda: hasty.generate("go on", model="tiny-06", max_tokens=LONG_TOKENS, temperature=0.0)
        )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_unpinned(client)  # the server-side call was cancelled, not left to run out


def test_cancelling_a_stream_mid_way_releases_the_lease_and_stops_the_row(rig, client):
    # How long this seeded generation runs uncancelled (random weights seldom sample EOS; this says).
    ask = {"model": "tiny-09", "max_tokens": LONG_TOKENS, "temperature": 1.0, "seed": 3}
    full = client.generate("keep talking", **ask)
    tokens = full.usage.completion_tokens
    assert tokens > 100, "too short to cancel mid-way"
    before = _idle(rig, full.coe.socket)["decode_steps"]
    stream = client.stream("keep talking", **ask)
    first = [chunk for _, chunk in zip(range(20), stream, strict=False)]
    assert first[0].coe.socket == full.coe.socket  # an HBM hit on the same socket
    leases, pinned = _leases(client)
    assert leases == 1 and pinned > 0, "20 chunks out, the row still runs: chunks leave before the end"
    stream.cancel()
    _wait_unpinned(client)
    steps = _idle(rig, full.coe.socket)["decode_steps"] - before
    assert steps < tokens - 1, f"the row ran {steps} decode steps: to the end, not cancelled"
    assert client.generate("still serving?", model="tiny-09", max_tokens=2).text


def test_an_http_client_closing_its_stream_frees_the_lease_and_stops_the_row(rig, client):
    body = {
        "model": "tiny-10",
        "messages": [{"role": "user", "content": "keep talking"}],
        "max_tokens": LONG_TOKENS,
        "ignore_eos": True,  # exactly LONG_TOKENS if it ran to the end
        "stream": True,
    }
    client.generate("warm up", model="tiny-10", max_tokens=1)
    before = {socket_id: _idle(rig, socket_id)["decode_steps"] for socket_id in rig.socket_ids()}
    with httpx.stream("POST", f"{rig.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        chunks = []
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line.removeprefix("data: ")))
            if len(chunks) == 10:
                assert _leases(client)[0] == 1  # still generating when the client walks away
                break
        socket_id = chunks[0]["coe"]["socket"]
    # The connection is closed (here, or when the line iterator above was dropped), mid-generation.
    _wait_unpinned(client)
    steps = _idle(rig, socket_id)["decode_steps"] - before[socket_id]
    assert steps < LONG_TOKENS - 1, f"the row ran {steps} decode steps: to the end, not stopped"


def test_saturated_cluster_waits_then_is_unavailable_over_grpc_and_503_over_http(rig, client):
    """Every HBM slot pinned by a running request (here: leases taken straight from MemTier)."""
    memtier = get_memtier(rig.config.name)
    holders = [f"tiny-{i:02d}" for i in range(8, 16)]  # 4 sockets x 2 tiny experts: every slot
    leases = ray.get([memtier.place.remote(expert) for expert in holders])
    body = {"model": "tiny-00", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    try:
        assert _leases(client)[0] == len(holders)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            over_grpc = pool.submit(_code, lambda: client.generate("hi", model="tiny-00", max_tokens=2))
            over_http = pool.submit(httpx.post, f"{rig.base_url}/v1/chat/completions", json=body, timeout=120)
            # Both wait inside MemTier for room (not refused at once)...
            wait_for(lambda: ray.get(memtier.waiting.remote()).get("tiny-00", 0) == 2, "two waiting")
            code, details = over_grpc.result()
            response = over_http.result()
        # ...until place_timeout_s, then answer "try again later".
        assert code == grpc.StatusCode.UNAVAILABLE and "tiny-00" in details
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert error["code"] == "no_capacity" and "tiny-00" in error["message"]
    finally:
        ray.get([memtier.release.remote(lease.lease_id) for lease in leases])
    _wait_unpinned(client)
    assert client.generate("capacity is back", model="tiny-00", max_tokens=2).text


class _Context:
    """Stands in for RayServegRPCContext: records what the mapper sets."""

    code = details = None

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.LimitExceeded("too many"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFound("who?"), grpc.StatusCode.NOT_FOUND),
        (errors.NoCapacity("full"), grpc.StatusCode.UNAVAILABLE),
        (errors.SocketFailed("died"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (KeyError("secret internals"), grpc.StatusCode.INTERNAL),
    ],
)
def test_grpc_abort_maps_every_error_class(error, expected):
    context = _Context()
    with pytest.raises(errors.CoEError):
        grpc_abort(context, error)
    assert context.code == expected
    assert "secret" not in context.details  # unexpected errors do not leak their message


# ---------------------------------------------------------------------------------------------- proto only
PROTO_ONLY_CLIENT = """
import sys
from grpc_tools import protoc

assert protoc.main(["protoc", "-I.", "--python_out=.", "--grpc_python_out=.", "coe.proto"]) == 0
import grpc
import coe_pb2, coe_pb2_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = coe_pb2_grpc.CoEStub(channel)
    request = coe_pb2.GenerateRequest(model="coe", max_tokens=3)
    request.messages.add(role="user", content="What are the symptoms of flu?")
    reply = stub.Generate(request, metadata=[("application", sys.argv[2])], timeout=60)
    experts = stub.ListExperts(coe_pb2.ListExpertsRequest(), metadata=[("application", sys.argv[2])])
assert "deployments" not in sys.modules
print(reply.coe.expert, reply.usage.completion_tokens, len(experts.experts))
"""


def test_a_client_built_from_the_proto_alone_works(rig, tmp_path: Path):
    (tmp_path / "coe.proto").write_bytes(
        (Path(__file__).parents[2] / "deployments" / "coe.proto").read_bytes()
    )
    (tmp_path / "client.py").write_text(textwrap.dedent(PROTO_ONLY_CLIENT))
    done = subprocess.run(
        [sys.executable, "client.py", rig.grpc_target, rig.config.serve.app_name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expert, tokens, count = done.stdout.split()
    assert (expert, int(count)) == ("tiny-02", 16) and int(tokens) >= 1


def test_health_check_is_serving_after_startup_and_reflection_lists_the_services(rig):
    """As a Kubernetes gRPC probe asks: no metadata, service "" (the server) or coe.v1.CoE."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(rig.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "coe.v1.CoE"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # then only changes
        watch.cancel()
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        asks = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="coe.v1.CoE"),
        ]
        listed, described = list(reflection.ServerReflectionInfo(iter(asks), timeout=30))
    names = {service.name for service in listed.list_services_response.service}
    assert {"coe.v1.CoE", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # grpcurl can describe it


def test_grpc_generations_are_in_the_metrics(rig, client):
    from bench import prom

    http = httpx.Client()
    before = prom.scrape(http, rig.base_url)
    client.generate("hello", model="tiny-12", max_tokens=4)
    after = prom.delta(prom.scrape(http, rig.base_url), before)
    assert prom.total(after, "coe:time_to_first_token_seconds_count", expert="tiny-12") == 1
    assert prom.total(after, "coe:request_success_total", expert="tiny-12") == 1


@pytest.mark.disturbs_the_app
def test_a_socket_dying_mid_stream_ends_the_sse_stream_with_an_error_then_done(rig, client):
    """Runs late in the package (`disturbs_the_app`): it kills a socket replica for real (Serve
    starts another). The client already has tokens, so the request cannot be retried: it is told,
    then the stream ends."""
    body = {
        "model": "tiny-11",
        "messages": [{"role": "user", "content": "keep talking"}],
        "max_tokens": LONG_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    client.generate("warm up", model="tiny-11", max_tokens=1)
    payloads: list[str] = []
    with httpx.stream("POST", f"{rig.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payloads.append(line.removeprefix("data: "))
            if len(payloads) == 3:  # the role chunk and two tokens: now the socket dies
                victim = json.loads(payloads[0])["coe"]["socket"]
                name = f"SERVE_REPLICA::{rig.config.serve.app_name}#ExpertSocket#{victim}"
                ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "socket_failed" and victim in error["message"]
    chunks = [json.loads(p) for p in payloads[:-2]]
    assert not any(c["choices"][0]["finish_reason"] for c in chunks), "it ran to the end"
    wait_for(lambda: victim not in rig.socket_ids(), "the dead socket dropped from MemTier")
    _wait_unpinned(client)
