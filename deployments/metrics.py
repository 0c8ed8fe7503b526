"""Serving metrics with vLLM's names under a `coe:` prefix, labelled by `expert` and `category`.

vLLM's dashboards and alerts chart `vllm:time_to_first_token_seconds` and friends; ours carry the
same names after `coe:`, so they port by changing the prefix. Each process records into its own
registry, in memory, with no remote call per token:

- the ingress observes each request as it finishes (deployments/telemetry.py): TTFT, inter-token
  latency, end-to-end latency, queue time (the engine's `queue_s` on the first token event),
  tokens, finish reasons, errors, and the router's decisions;
- a socket replica (the engine) calls the two hooks at the bottom of this module for its
  running/waiting counts, after `start_pushing(config)` once at start;
- the MemTier actor keeps memtier's own metrics (memtier/metrics.py).

`start_pushing` ships this process's registry to the cluster's `MetricsHub`
(deployments/metrics_hub.py), which sums every replica's numbers for `GET /metrics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from cluster.config import ClusterConfig
    from deployments.request_log import RequestRecord

PREFIX = "coe:"
# 2^-10 s (1 ms) .. 256 s, each edge 2^(1/4) above the last (so 0.25, 0.5, 1, 2 s are edges).
# histogram_quantile interpolates inside one bucket, so a quantile read from these is within 19%
# of the true one whatever the distribution (vLLM's TTFT buckets put 0.1-0.25 s in one bucket).
LATENCY_BUCKETS_S: tuple[float, ...] = tuple(round(2 ** (k / 4), 6) for k in range(-40, 33))
REQUEST_LABELS = ("expert", "category")


class ServingMetrics:
    """The serving metrics of one process, in a registry of its own (tests build as many as they like)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, labels, buckets = self.registry, REQUEST_LABELS, LATENCY_BUCKETS_S
        # ------------------------------------------------------------- seen by the ingress
        self.ttft = Histogram(
            f"{PREFIX}time_to_first_token_seconds",
            "From the request reaching the ingress to its first generated token.",
            labels,
            buckets=buckets,
            registry=r,
        )
        self.itl = Histogram(
            f"{PREFIX}inter_token_latency_seconds",
            "Gap between consecutive generated tokens of a request (one observation per token).",
            labels,
            buckets=buckets,
            registry=r,
        )
        self.e2e = Histogram(
            f"{PREFIX}e2e_request_latency_seconds",
            "From the request reaching the ingress to its last token, for finished requests.",
            labels,
            buckets=buckets,
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}prompt_tokens",
            "Prompt tokens of finished requests (after the chat template).",
            labels,
            registry=r,
        )
        self.generation_tokens = Counter(
            f"{PREFIX}generation_tokens", "Generated tokens, aborted requests included.", labels, registry=r
        )
        self.success = Counter(
            f"{PREFIX}request_success",
            "Requests that ended with a finish reason: stop, length, or abort (the client left).",
            (*labels, "finished_reason"),
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}request_errors",
            "Requests answered with an error, by OpenAI error code (model_not_found, no_capacity, ...).",
            ("code",),
            registry=r,
        )
        self.route_decisions = Counter(
            f"{PREFIX}router_decisions",
            "Router decisions for `model: coe` (and POST /v1/route), by category and chosen expert.",
            ("category", "expert"),
            registry=r,
        )
        self.route_fallbacks = Counter(
            f"{PREFIX}router_fallbacks",
            "Decisions where the router was unsure (entropy above tau) and chose the fallback expert.",
            ("category",),
            registry=r,
        )
        self.route_latency = Histogram(
            f"{PREFIX}router_latency_seconds",
            "Time to embed and classify one prompt.",
            buckets=buckets,
            registry=r,
        )
        self.queue_time = Histogram(
            f"{PREFIX}request_queue_time_seconds",
            "Time a request waited on its socket for a batch slot and KV room (the engine's queue_s).",
            labels,
            buckets=buckets,
            registry=r,
        )
        # ------------------------------------------------------------- set by the sockets
        self.running = Gauge(
            f"{PREFIX}num_requests_running",
            "Requests in a running batch, per socket and expert.",
            ("expert", "socket"),
            registry=r,
        )
        self.waiting = Gauge(
            f"{PREFIX}num_requests_waiting",
            "Requests queued on a socket (not yet running), per expert.",
            ("expert", "socket"),
            registry=r,
        )

    def observe_request(self, record: RequestRecord, token_gaps_s: list[float]) -> None:
        """One finished (or failed, or aborted) request, as its log line describes it."""
        if record.error_code is not None:
            self.errors.labels(record.error_code).inc()
            return
        labels = (record.expert or "", record.category or "")
        if record.ttft_s is not None:
            self.ttft.labels(*labels).observe(record.ttft_s)
        if record.queue_s is not None:
            self.queue_time.labels(*labels).observe(record.queue_s)
        itl = self.itl.labels(*labels)
        for gap in token_gaps_s:
            itl.observe(gap)
        if record.finish_reason != "abort":
            self.e2e.labels(*labels).observe(record.e2e_s)
        self.prompt_tokens.labels(*labels).inc(record.prompt_tokens)
        self.generation_tokens.labels(*labels).inc(record.completion_tokens)
        self.success.labels(*labels, record.finish_reason or "stop").inc()

    def observe_route(self, category: str, expert: str, fallback: bool, seconds: float) -> None:
        self.route_decisions.labels(category, expert).inc()
        if fallback:
            self.route_fallbacks.labels(category).inc()
        self.route_latency.observe(seconds)


_PROCESS: ServingMetrics | None = None


def process_metrics() -> ServingMetrics:
    """This process's `ServingMetrics` (one registry per process, created on first use)."""
    global _PROCESS
    if _PROCESS is None:
        _PROCESS = ServingMetrics()
    return _PROCESS


def start_pushing(config: ClusterConfig) -> None:
    """Ship this process's metrics to the cluster's hub every `observability.metrics_push_interval_s`.

    Call once per process that records metrics outside the ingress (a socket replica's
    `__init__`); repeated calls are no-ops. Without it the numbers stay in the process, unseen.
    """
    from deployments.metrics_hub import MetricsPusher

    MetricsPusher.start(process_metrics().registry, config)


# --------------------------------------------------------------------------- engine hooks
# Called from the socket replica (deployments/socket.py, the engine); cheap, in-memory, any thread.
# (Queue time needs no hook: the ingress reads `queue_s` from the first token event.)


def set_running(socket: str, expert: str, count: int) -> None:
    """`count` requests of `expert` are in a running batch on `socket` now (set 0 when none are)."""
    process_metrics().running.labels(expert, socket).set(count)


def set_waiting(socket: str, expert: str, count: int) -> None:
    """`count` requests of `expert` wait in `socket`'s queue now (set 0 when none do)."""
    process_metrics().waiting.labels(expert, socket).set(count)
