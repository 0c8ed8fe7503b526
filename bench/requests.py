"""Turn a workload (Zipf, uniform, phase shift) into the exact requests a run sends.

Popularity is drawn by `bench.workloads` over *items*: explicit expert ids (`model` = the id),
or, with `model="coe"`, the router's categories, each request carrying a held-out prompt of its
category so the router picks the expert. Every request has its own seed, so two systems given
the same spec list generate the same tokens for the same request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from bench.workloads import (
    Forecast,
    phase_shift_forecast,
    phase_shift_trace,
    zipf_forecast,
    zipf_trace,
)
from cluster.paths import REPO_ROOT

__all__ = ["WORKLOADS", "RequestSpec", "build_requests", "heldout_prompts", "item_forecast", "item_trace"]

WORKLOADS = ("zipf", "uniform", "phase")
HELDOUT = REPO_ROOT / "router" / "data" / "heldout.jsonl"
COE_MODEL = "coe"


class RequestSpec(BaseModel):
    index: int
    model: str
    prompt: str
    category: str | None = None
    seed: int


@cache
def heldout_prompts(path: Path = HELDOUT) -> dict[str, list[str]]:
    """category -> prompts, in file order (the router never trained on these)."""
    by_category: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_category.setdefault(row["category"], []).append(row["prompt"])
    return by_category


def _law(workload: str, zipf_s: float) -> tuple[str, float]:
    """(zipf or phase, exponent) of a named workload: uniform is Zipf with s = 0."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")
    return ("zipf", 0.0) if workload == "uniform" else (workload, zipf_s)


def item_trace(items: Sequence[str], n: int, workload: str, zipf_s: float, seed: int) -> list[str]:
    """`n` draws over `items` (rank order = list order) for the named workload."""
    kind, s = _law(workload, zipf_s)
    make = zipf_trace if kind == "zipf" else phase_shift_trace
    return make(list(items), n, s, seed)


def item_forecast(items: Sequence[str], n: int, workload: str, zipf_s: float) -> Forecast:
    """The law of each draw of `item_trace` (same arguments but the seed): for `bench.policy`'s ORACLE."""
    kind, s = _law(workload, zipf_s)
    make = zipf_forecast if kind == "zipf" else phase_shift_forecast
    return make(list(items), n, s)


def build_requests(
    experts: Sequence[str],
    n: int,
    *,
    workload: str = "zipf",
    zipf_s: float = 1.0,
    seed: int = 0,
    model: str | None = None,
) -> list[RequestSpec]:
    """`n` requests. `model=None`: Zipf over `experts`, each sent by id with a held-out prompt of
    any category. `model="coe"`: Zipf over the held-out categories, sent as `coe`."""
    prompts = heldout_prompts()
    categories = sorted(prompts)
    rng = np.random.default_rng(seed + 1)  # prompt choice: independent of the popularity draw
    if model == COE_MODEL:
        trace = item_trace(categories, n, workload, zipf_s, seed)
        picks = [(COE_MODEL, category) for category in trace]
    elif model is None:
        if not experts:
            raise ValueError("no experts to draw from: pass --experts or let GET /v1/models list them")
        trace = item_trace(experts, n, workload, zipf_s, seed)
        picks = [(expert, categories[int(rng.integers(len(categories)))]) for expert in trace]
    else:
        picks = [(model, categories[int(rng.integers(len(categories)))]) for _ in range(n)]
    specs = []
    for index, (name, category) in enumerate(picks):
        pool = prompts[category]
        specs.append(
            RequestSpec(
                index=index,
                model=name,
                prompt=pool[int(rng.integers(len(pool)))],
                category=category,
                seed=seed * 1_000_003 + index,
            )
        )
    return specs
