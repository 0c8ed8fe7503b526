"""Reading `GET /metrics` the way Prometheus and Grafana do, without a Prometheus server.

`scrape` parses the text exposition; `total` sums a series over label sets (PromQL `sum`);
`buckets` + `histogram_quantile` are PromQL's `histogram_quantile(q, sum by (le) (...))`, the
query every latency panel of the dashboard uses. Differences of two scrapes (`delta`) are what a
`rate()` or `increase()` over the run would show.
"""

from __future__ import annotations

import math

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Samples", "buckets", "delta", "histogram_quantile", "scrape", "total"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client: httpx.Client, url: str) -> Samples:
    response = client.get(f"{url}/metrics", timeout=30)
    response.raise_for_status()
    return parse(response.text)


def delta(after: Samples, before: Samples) -> Samples:
    """after - before, per series (a series absent before counts from 0)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of `name` over every label set that has the `match` labels."""
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name and all(dict(labels).get(k) == v for k, v in match.items())
    )


def buckets(samples: Samples, histogram: str, **match: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of `histogram`, summed over label sets; ascending, +Inf last."""
    by_le: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        if sample != f"{histogram}_bucket":
            continue
        label_map = dict(labels)
        if all(label_map.get(k) == v for k, v in match.items()):
            le = float(label_map["le"])
            by_le[le] = by_le.get(le, 0.0) + value
    return sorted(by_le.items())


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus' estimate: linear interpolation inside the bucket holding the q-th observation.

    The first bucket's lower bound is 0; a quantile in the +Inf bucket is the highest finite bound.
    NaN when the histogram is empty.
    """
    if not cumulative or cumulative[-1][1] <= 0:
        return math.nan
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower
