"""The three systems a comparison runs, and the configs they run under.

* ``coe``: the CoE app with an HBM budget that holds only part of the catalog (paging happens).
* ``baseline``: `bench.baseline` (`@serve.multiplexed`), same sockets, same per-socket memory.
* ``ceiling``: the CoE app with `hbm_per_socket` = the whole catalog, so after warm-up nothing
  is paged: the throughput CoE would have with unlimited HBM on the same machine.

One topology for all three: `nodes` x `sockets_per_node` sockets, each with `cpus_per_socket`
Ray CPUs. DDR holds the whole catalog in every config: the baseline has the OS page cache as an
unbudgeted DDR tier for free, so CoE gets the same host memory; only HBM differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cluster.config import ClusterConfig, config_from_dict
from deployments.app import build_app_from_config

__all__ = ["SYSTEMS", "bench_config", "ceiling_config", "start_system"]

SYSTEMS = ("coe", "baseline", "ceiling")
CATEGORIES = ("code", "math", "medicine", "law", "finance", "science", "writing", "general")
HEARTBEAT_S = 0.5  # as the serving tests use: residency reaches memtier within half a second


def bench_config(
    expert_paths: Sequence[Path],
    expert_bytes: Sequence[int],
    *,
    experts_per_socket: int,
    nodes: int = 2,
    sockets_per_node: int = 2,
    cpus_per_socket: float = 0.25,
    max_tokens: int = 64,
    max_ongoing_requests: int = 8,
    max_batch_size: int = 8,
    kv_cache_bytes: int = 16 * 2**20,
) -> ClusterConfig:
    """A config whose sockets each hold `experts_per_socket` of the largest expert.

    Budgets are in units of the largest expert, so the baseline's K (counted in models) and
    CoE's byte budget hold the same number of experts. Experts are ranked in the given order
    (the first is the most popular under Zipf); the router maps the 8 categories onto the first 8.
    """
    largest = max(expert_bytes)
    catalog = sum(expert_bytes)
    ids = [Path(p).name for p in expert_paths]
    return config_from_dict(
        {
            "name": "bench",
            "topology": {
                "nodes": nodes,
                "sockets_per_node": sockets_per_node,
                "hbm_per_socket": experts_per_socket * largest + kv_cache_bytes,
                "kv_cache_per_socket": kv_cache_bytes,
                "ddr_per_node": catalog,
                "device": "cpu",
                "cpus_per_socket": cpus_per_socket,
            },
            "experts": [
                {"id": i, "checkpoint": str(Path(p).resolve())}
                for i, p in zip(ids, expert_paths, strict=True)
            ],
            "router": {
                "fallback_expert": ids[min(7, len(ids) - 1)],
                "category_map": {c: ids[k % len(ids)] for k, c in enumerate(CATEGORIES)},
            },
            # max_body_bytes is set explicitly: LimitsConfig's default "1MiB" is not validated into
            # an int (pydantic skips defaults), and the ingress then compares int > str.
            "limits": {
                "max_tokens": max(max_tokens, 64),
                "default_max_tokens": 16,
                "max_prompt_tokens": 512,
                "max_body_bytes": "1MiB",
            },
            "serve": {"max_ongoing_requests": max_ongoing_requests, "max_batch_size": max_batch_size},
        }
    )


def ceiling_config(config: ClusterConfig) -> ClusterConfig:
    """The same config with HBM per socket = the whole catalog: nothing pages after warm-up."""
    catalog = sum(e.size_bytes for e in config.experts)
    hbm = catalog + config.topology.kv_cache_per_socket  # the same KV reserve: only paging differs
    topology = config.topology.model_copy(update={"hbm_per_socket": hbm, "ddr_per_node": catalog})
    return config.model_copy(update={"topology": topology})


def system_config(system: str, config: ClusterConfig) -> ClusterConfig:
    return ceiling_config(config) if system == "ceiling" else config


def start_system(system: str, config: ClusterConfig):
    """A fresh local cluster serving `system`; a `LocalServe` (use as a context manager)."""
    from bench.baseline import build_baseline_app
    from bench.rig import LocalServe

    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose one of {', '.join(SYSTEMS)}")
    if system == "baseline":
        return LocalServe(config, build_baseline_app, expect_sockets=False)
    return LocalServe(
        system_config(system, config), lambda c: build_app_from_config(c, heartbeat_s=HEARTBEAT_S)
    )
