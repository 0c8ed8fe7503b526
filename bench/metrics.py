"""Per-request records and the summary `vllm bench serve` users read, computed from them.

Definitions (as vLLM's benchmark_serving defines them, so numbers compare):

* TTFT: request sent -> first chunk with content.
* TPOT: (e2el - ttft) / (output_tokens - 1), per request with more than one output token.
* ITL: the gaps between successive content chunks, pooled over all requests (a chunk that
  carries several tokens is one gap, as in vLLM).
* E2EL: request sent -> last byte of the stream.
* goodput: completed requests that met every SLO given (`--goodput ttft:MS e2el:MS`), per second.

Percentiles are linear-interpolated (numpy's default), so p50 <= p90 <= p99 always holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, Field

__all__ = [
    "GoodputReport",
    "LatencyStats",
    "RequestRecord",
    "SystemRecord",
    "latency_stats",
    "parse_goodput",
    "summarize_latencies",
    "tpot_ms",
    "itl_ms",
]

GOODPUT_METRICS = ("ttft", "tpot", "e2el")


class RequestRecord(BaseModel):
    """One request as the client saw it; times are seconds on the client's monotonic clock."""

    index: int = Field(description="Position in the trace (warm-up requests included).")
    model: str = Field(description="The `model` sent: an expert id, or 'coe' to route.")
    expert: str | None = Field(None, description="Expert that answered (from the response's `coe` object).")
    category: str | None = Field(None, description="Category of the prompt (heldout set), if any.")
    tier: str | None = Field(None, description="hbm | ddr | store, as the server reported it.")
    socket: str | None = Field(None, description="Socket (Serve replica) that answered, per the server.")
    start_s: float = Field(description="When the request was sent.")
    chunk_s: list[float] = Field(default_factory=list, description="Arrival time of every content chunk.")
    end_s: float = Field(0.0, description="When the stream ended (or the request failed).")
    output_tokens: int = Field(0, description="completion_tokens from the usage chunk, else the chunk count.")
    ok: bool = False
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return self.chunk_s[0] - self.start_s if self.chunk_s else None

    @property
    def e2el_s(self) -> float:
        return self.end_s - self.start_s


class SystemRecord(RequestRecord):
    """A record tagged with the system (coe, baseline, ceiling) and regime that produced it."""

    system: str
    regime: str = ""


class LatencyStats(BaseModel):
    """One latency metric over a run, in milliseconds."""

    mean_ms: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    count: int = Field(0, description="Samples the statistics are over.")


class GoodputReport(BaseModel):
    slo_ms: dict[str, float] = Field(default_factory=dict, description="metric -> bound in ms; empty = none.")
    good_requests: int = Field(0, description="Completed requests that met every SLO.")
    request_goodput: float = Field(0.0, description="good_requests / duration_s (req/s).")


def latency_stats(samples_s: Sequence[float]) -> LatencyStats:
    """mean and p50/p90/p99 of `samples_s` (seconds) in ms; all zero for no samples."""
    if not samples_s:
        return LatencyStats()
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(
        mean_ms=float(ms.mean()), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), count=len(ms)
    )


def tpot_ms(record: RequestRecord) -> float | None:
    """Time per output token after the first, in ms; None with fewer than two tokens."""
    if not record.ok or record.output_tokens < 2 or record.ttft_s is None:
        return None
    return (record.e2el_s - record.ttft_s) / (record.output_tokens - 1) * 1000.0


def itl_ms(record: RequestRecord) -> list[float]:
    """Gaps between successive content chunks, in ms."""
    chunks = record.chunk_s
    return [(chunks[i] - chunks[i - 1]) * 1000.0 for i in range(1, len(chunks))]


def parse_goodput(items: Iterable[str]) -> dict[str, float]:
    """`["ttft:500", "e2el:2000"]` -> {"ttft": 500.0, "e2el": 2000.0}; names the bad item otherwise."""
    slo: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition(":")
        if name not in GOODPUT_METRICS or not value:
            raise ValueError(
                f"--goodput {item!r}: want METRIC:MS with METRIC one of {', '.join(GOODPUT_METRICS)}, "
                "e.g. ttft:500 e2el:2000"
            )
        try:
            bound_ms = float(value)
        except ValueError:
            raise ValueError(f"--goodput {item!r}: {value!r} is not a number of milliseconds") from None
        if bound_ms <= 0:
            raise ValueError(f"--goodput {item!r}: the bound must be > 0 ms")
        slo[name] = bound_ms
    return slo


def meets_slo(record: RequestRecord, slo_ms: dict[str, float]) -> bool:
    """A completed request meets the SLO if every bounded metric is within its bound."""
    if not record.ok:
        return False
    values = {
        "ttft": record.ttft_s * 1000.0 if record.ttft_s is not None else None,
        "tpot": tpot_ms(record),
        "e2el": record.e2el_s * 1000.0,
    }
    for name, bound in slo_ms.items():
        value = values[name]
        if name == "tpot" and value is None:
            continue  # one-token answers have no TPOT; vLLM counts them as meeting it
        if value is None or value > bound:
            return False
    return True


def summarize_latencies(records: Sequence[RequestRecord]) -> dict[str, LatencyStats]:
    """ttft, tpot, itl, e2el over the completed requests."""
    done = [r for r in records if r.ok]
    ttfts = [r.ttft_s for r in done if r.ttft_s is not None]
    tpots = [t / 1000.0 for r in done if (t := tpot_ms(r)) is not None]
    itls = [gap / 1000.0 for r in done for gap in itl_ms(r)]
    return {
        "ttft": latency_stats(ttfts),
        "tpot": latency_stats(tpots),
        "itl": latency_stats(itls),
        "e2el": latency_stats([r.e2el_s for r in done]),
    }
