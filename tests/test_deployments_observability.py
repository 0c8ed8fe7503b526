"""Metrics, the request log, model cards and gRPC health, without a cluster.

Each scenario drives the real objects (prometheus_client registries, RequestTrace, the memtier
core) the way the ingress and the sockets do, then reads the result back the way Prometheus or an
operator would: the text exposition parsed by prometheus_client's own parser, the log as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.config import ObservabilityConfig
from cluster.sampling_defaults import SamplingDefaults
from deployments import metrics as engine_hooks
from deployments.errors import ModelNotFound
from deployments.grpc_health import NOT_SERVING, SERVING, GrpcHealthMixin, health_status
from deployments.metrics import ServingMetrics
from deployments.metrics_hub import merge_families, render
from deployments.model_cards import model_cards
from deployments.request_log import LOGGER_NAME
from deployments.service import Prepared
from deployments.telemetry import Telemetry
from deployments.wire import GenerationRequest, SocketEvent
from memtier.models import ActivationReport, Lease, MemtierStatus, NodeStatus, SocketInfo, SocketStatus
from memtier.pager import MemTierCore


def scrape(families) -> dict[tuple[str, tuple], float]:
    """Parse the exposition as Prometheus would: {(sample name, sorted labels): value}."""
    text = render(families).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --------------------------------------------------------------------------- merging replicas


def test_two_replicas_are_summed_and_a_dead_ones_gauges_dropped():
    ingress_a, ingress_b, socket = ServingMetrics(), ServingMetrics(), ServingMetrics()
    ingress_a.ttft.labels("e1", "math").observe(0.1)
    ingress_b.ttft.labels("e1", "math").observe(0.3)
    ingress_b.prompt_tokens.labels("e1", "math").inc(7)
    ingress_a.prompt_tokens.labels("e1", "math").inc(5)
    socket.running.labels("e1", "s1").set(3)
    live = [(list(m.registry.collect()), True) for m in (ingress_a, ingress_b, socket)]

    samples = scrape(merge_families(live))
    ttft = "coe:time_to_first_token_seconds"
    assert value(samples, f"{ttft}_count", expert="e1", category="math") == 2
    assert value(samples, f"{ttft}_sum", expert="e1", category="math") == pytest.approx(0.4)
    assert value(samples, f"{ttft}_bucket", expert="e1", category="math", le="0.125") == 1  # 0.1, not 0.3
    assert value(samples, "coe:prompt_tokens_total", expert="e1", category="math") == 12
    assert value(samples, "coe:num_requests_running", expert="e1", socket="s1") == 3
    assert not any(name.endswith("_created") for name, _ in samples)

    socket_dead = live[:2] + [(live[2][0], False)]  # the socket stopped pushing: its gauge goes, counts stay
    samples = scrape(merge_families(socket_dead))
    assert ("coe:num_requests_running", (("expert", "e1"), ("socket", "s1"))) not in samples
    assert value(samples, "coe:prompt_tokens_total", expert="e1", category="math") == 12


def test_engine_hooks_record_into_the_process_registry():
    engine_hooks.set_running("sock-x", "e9", 4)
    engine_hooks.set_waiting("sock-x", "e9", 2)
    samples = scrape(list(engine_hooks.process_metrics().registry.collect()))
    assert value(samples, "coe:num_requests_running", expert="e9", socket="sock-x") == 4
    assert value(samples, "coe:num_requests_waiting", expert="e9", socket="sock-x") == 2


# --------------------------------------------------------------------------- one request's trace


@pytest.fixture()
def telemetry(tiny_config, tmp_path):
    observability = ObservabilityConfig(request_log_path=str(tmp_path / "requests.jsonl"))
    config = tiny_config.model_copy(update={"observability": observability})
    return Telemetry(config, metrics=ServingMetrics())


def _prepared(prompt: str = "secret prompt text") -> Prepared:
    request = GenerationRequest(model="coe", prompt=prompt, stream=True)
    return Prepared(
        request=request, expert="tiny-01", input_ids=[1, 2, 3], max_tokens=8, category="math", routed=True
    )


def _lines(telemetry: Telemetry) -> list[dict]:
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        handler.flush()
    path = telemetry.config.observability.request_log_path
    return [json.loads(line) for line in open(path).read().splitlines()]


def test_a_streamed_request_is_timed_counted_once_and_logged_without_its_prompt(telemetry):
    trace = telemetry.trace("http", "completions")
    trace.bind(_prepared())
    for tokens in (1, 2, 3):
        trace.saw(
            SocketEvent(
                type="token", text="x", completion_tokens=tokens, queue_s=0.05 if tokens == 1 else None
            )
        )
    trace.saw(SocketEvent(type="token", text="x", completion_tokens=3))  # the same event seen again
    trace.saw(SocketEvent(type="token", completion_tokens=4, finish_reason="length"))
    trace.finish()
    trace.abort()  # the stream's `finally`: a no-op after finish
    samples = scrape(list(telemetry.metrics.registry.collect()))
    labels = {"expert": "tiny-01", "category": "math"}
    assert value(samples, "coe:time_to_first_token_seconds_count", **labels) == 1
    assert value(samples, "coe:inter_token_latency_seconds_count", **labels) == 3  # tokens 2, 3, 4
    assert value(samples, "coe:e2e_request_latency_seconds_count", **labels) == 1
    assert value(samples, "coe:request_queue_time_seconds_sum", **labels) == pytest.approx(0.05)
    assert value(samples, "coe:generation_tokens_total", **labels) == 4
    assert value(samples, "coe:prompt_tokens_total", **labels) == 3
    assert value(samples, "coe:request_success_total", finished_reason="length", **labels) == 1
    (line,) = _lines(telemetry)
    assert line["id"] == trace.request_id and line["id"].startswith("cmpl-")
    assert (line["status"], line["expert"], line["category"], line["completion_tokens"]) == (
        "ok", "tiny-01", "math", 4,
    )  # fmt: skip
    assert line["ttft_s"] is not None and line["e2e_s"] >= line["ttft_s"] and line["queue_s"] == 0.05
    assert "prompt" not in line and "secret prompt text" not in json.dumps(line)


def test_buffered_events_are_counted_but_not_timed(telemetry):
    trace = telemetry.trace("http", "chat.completions")
    trace.bind(_prepared())
    for tokens in (1, 2):
        trace.saw(SocketEvent(type="token", completion_tokens=tokens), timed=False)
    trace.finish()
    samples = scrape(list(telemetry.metrics.registry.collect()))
    assert value(samples, "coe:time_to_first_token_seconds_count", expert="tiny-01", category="math") == 0
    assert value(samples, "coe:e2e_request_latency_seconds_count", expert="tiny-01", category="math") == 1
    assert _lines(telemetry)[0]["ttft_s"] is None


def test_a_buffered_answer_times_its_first_token_when_the_service_stamps_it(telemetry):
    """A non-streamed answer: the service stamps the first held-back token; TTFT observed, no gaps."""
    trace = telemetry.trace("http", "chat.completions")
    prepared = _prepared()
    trace.bind(prepared)
    assert prepared.trace is trace and dataclasses.replace(prepared).trace is trace  # survives replace
    prepared.trace.first_token_arrived()
    stamped = trace.first_token_s
    prepared.trace.first_token_arrived()  # a later held token does not move it
    assert trace.first_token_s == stamped
    for tokens in (1, 2, 3):
        trace.saw(SocketEvent(type="token", completion_tokens=tokens), timed=False)
    trace.finish()
    samples = scrape(list(telemetry.metrics.registry.collect()))
    labels = {"expert": "tiny-01", "category": "math"}
    assert value(samples, "coe:time_to_first_token_seconds_count", **labels) == 1
    assert value(samples, "coe:inter_token_latency_seconds_count", **labels) == 0
    (line,) = _lines(telemetry)
    assert line["completion_tokens"] == 3 and 0 <= line["ttft_s"] <= line["e2e_s"]


def test_errors_and_aborts_have_their_own_lines_and_counts(telemetry):
    failed = telemetry.trace("grpc", "Generate")
    err = failed.fail(ModelNotFound("model 'nope' does not exist", param="model"))
    assert err.code == "model_not_found"
    internal = telemetry.trace("grpc", "Generate").fail(RuntimeError("boom"))
    assert internal.code == "internal_error"
    aborted = telemetry.trace("http", "completions")
    aborted.bind(_prepared())
    aborted.saw(SocketEvent(type="token", completion_tokens=2))
    aborted.abort()
    aborted.finish()  # too late: the first ending counts
    samples = scrape(list(telemetry.metrics.registry.collect()))
    assert value(samples, "coe:request_errors_total", code="model_not_found") == 1
    assert value(samples, "coe:request_errors_total", code="internal_error") == 1
    labels = {"expert": "tiny-01", "category": "math"}
    assert value(samples, "coe:request_success_total", finished_reason="abort", **labels) == 1
    assert value(samples, "coe:e2e_request_latency_seconds_count", **labels) == 0  # not a finished answer
    lines = _lines(telemetry)
    assert [(x["status"], x["error_code"]) for x in lines] == [
        ("error", "model_not_found"),
        ("error", "internal_error"),
        ("abort", None),
    ]


def test_a_prompt_list_counts_every_prompts_tokens(telemetry):
    trace = telemetry.trace("http", "completions")
    trace.bind(_prepared(), prompt_tokens=9)  # three prompts of 3 tokens: the ingress sums them
    trace.finish()
    assert _lines(telemetry)[-1]["prompt_tokens"] == 9


def test_prompts_are_logged_only_when_enabled(tiny_config, tmp_path):
    observability = ObservabilityConfig(
        request_log_path=str(tmp_path / "with-prompts.jsonl"), log_prompts=True
    )
    telemetry = Telemetry(
        tiny_config.model_copy(update={"observability": observability}), metrics=ServingMetrics()
    )
    trace = telemetry.trace("http", "completions")
    trace.bind(_prepared("tell me about otters"))
    trace.finish()
    assert _lines(telemetry)[-1]["prompt"] == "tell me about otters"


# --------------------------------------------------------------------------- memtier


def test_memtier_families_count_tiers_and_show_residency_per_socket():
    core = MemTierCore("t", {"a": 100, "b": 100}, ddr_bytes_per_node=1000)
    core.heartbeat(SocketInfo(socket_id="s1", node_id="n1", hbm_bytes=300), now_s=0.0)
    lease = core.try_place("a", now_s=0.0)
    core.release(
        lease.lease_id, ActivationReport(tier="store", switch_s=0.2, bytes_moved=100, store_read=True)
    )
    lease = core.try_place("a", now_s=1.0)
    assert isinstance(lease, Lease) and lease.tier == "hbm"
    leases_now = lambda: value(scrape(core.metrics.families(core.directory.status())), "coe:memtier_leases")  # noqa: E731
    assert leases_now() == 1  # read at the scrape: in flight now
    core.release(lease.lease_id, ActivationReport(tier="hbm"))
    assert leases_now() == 0
    core.directory.sync_socket(SocketInfo(socket_id="s1", node_id="n1", hbm_bytes=300, residents=["a"]))
    samples = scrape(core.metrics.families(core.directory.status()))
    assert value(samples, "coe:memtier_hits_total", tier="hbm") == 1
    assert value(samples, "coe:memtier_misses_total", tier="hbm") == 1
    assert value(samples, "coe:memtier_misses_total", tier="ddr") == 1
    assert value(samples, "coe:memtier_paged_bytes_total", tier="hbm") == 100
    assert value(samples, "coe:memtier_switch_seconds_count", source="store") == 1
    assert value(samples, "coe:memtier_resident_bytes", tier="hbm", node="n1", socket="s1") == 100
    assert value(samples, "coe:memtier_budget_bytes", tier="hbm", node="n1", socket="s1") == 300
    assert value(samples, "coe:memtier_sockets") == 1


# --------------------------------------------------------------------------- model cards


def _status(hbm: dict[str, list[str]], ddr: list[str]) -> MemtierStatus:
    sockets = [
        SocketStatus(
            socket_id=s, node_id="n1", hbm_bytes=10, used_bytes=0, pinned_bytes=0, residents=r, leases=0
        )
        for s, r in hbm.items()
    ]
    node = NodeStatus(node_id="n1", ddr_bytes=100, used_bytes=0, residents=ddr, sockets=sockets)
    return MemtierStatus(nodes=[node], stats={}, experts={})


def test_model_cards_say_categories_size_and_fastest_tier(tiny_config):
    categories = dict(tiny_config.router.category_map)
    status = _status({"s1": ["tiny-01"], "s2": []}, ddr=["tiny-01", "tiny-02"])
    cards = {c.id: c for c in model_cards(tiny_config, categories, status, created=5)}
    assert cards["coe"].categories == sorted(categories) and cards["coe"].residency is None
    math = cards["tiny-01"]
    assert (math.categories, math.size_bytes, math.created) == (
        ["math"],
        tiny_config.expert("tiny-01").size_bytes,
        5,
    )
    assert (math.residency.tier, math.residency.sockets, math.residency.nodes) == ("hbm", ["s1"], ["n1"])
    assert cards["tiny-02"].residency.tier == "ddr" and cards["tiny-09"].residency.tier == "store"
    assert cards["tiny-07"].fallback and not math.fallback
    assert model_cards(tiny_config, categories, None, created=5)[1].residency is None  # MemTier down


def test_cards_carry_each_experts_sampling_defaults(tiny_config):
    expert = tiny_config.experts[0].model_copy(
        update={"sampling": SamplingDefaults(temperature=0.2, top_k=40)}
    )
    config = tiny_config.model_copy(update={"experts": [expert, *tiny_config.experts[1:]]})
    cards = model_cards(config, {}, None, created=0)
    assert cards[1].sampling["temperature"] == 0.2 and cards[1].sampling["top_k"] == 40
    assert cards[2].sampling == SamplingDefaults().model_dump()  # unset: the server's neutral values
    assert cards[0].sampling is None  # `coe` is a router, not a model


# --------------------------------------------------------------------------- gRPC health


def test_health_is_not_serving_until_every_socket_registered_then_serving_while_any_is():
    status, complete = health_status(registered=3, expected=4, was_complete=False)
    assert (status, complete) == (NOT_SERVING, False)
    status, complete = health_status(registered=4, expected=4, was_complete=complete)
    assert (status, complete) == (SERVING, True)
    assert health_status(registered=3, expected=4, was_complete=complete)[0] == SERVING  # one socket lost
    assert health_status(registered=0, expected=4, was_complete=complete)[0] == NOT_SERVING


class _Service:
    def __init__(self, sockets: int) -> None:
        self.sockets = sockets

    async def status(self) -> MemtierStatus:
        return _status({f"s{i}": [] for i in range(self.sockets)}, ddr=[])


def test_health_check_follows_socket_registration(tiny_config):
    from grpc_health.v1 import health_pb2

    class Ingress(GrpcHealthMixin):
        config = tiny_config  # 4 sockets

    ingress = Ingress()
    request = health_pb2.HealthCheckRequest(service="")
    for sockets, expected in [(2, NOT_SERVING), (4, SERVING), (3, SERVING)]:
        ingress.service = _Service(sockets)
        reply = asyncio.run(ingress.Check(request, grpc_context=None))
        assert reply.status == expected, sockets
