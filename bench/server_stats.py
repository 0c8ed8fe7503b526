"""The server's own view of a run: tier hit rates and bytes moved, as a before/after difference.

CoE serves `GET /v1/memtier` (MemTier's counters since it started); the multiplexing baseline
serves `GET /v1/stats`. Both become one `TierStats`, so the load generator and the comparison
treat the systems alike. Counters are cumulative, so a run's numbers are `after - before`.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, Field

__all__ = ["TierStats", "fetch_counters", "tier_stats"]


class TierStats(BaseModel):
    """What the server did during one run (a difference of its counters)."""

    source: str = Field(description="'memtier' (CoE), 'multiplex' (baseline) or 'none' (no endpoint).")
    hbm_hits: int = 0
    hbm_misses: int = 0
    hbm_hit_rate: float = Field(0.0, description="Requests whose expert was resident (or being loaded).")
    ddr_hits: int = 0
    ddr_misses: int = 0
    ddr_hit_rate: float = 0.0
    store_reads: int = Field(0, description="Checkpoint reads from the STORE (disk or page cache).")
    bytes_store_to_ddr: int = 0
    bytes_ddr_to_hbm: int = 0
    bytes_store_to_hbm: int = Field(0, description="Baseline: bytes `from_pretrained` loaded on misses.")
    hbm_evictions: int = 0
    placements: int = Field(0, description="CoE: leases granted (one per request), reused ones included.")
    lease_reuses: int = Field(
        0, description="CoE: of those, granted by the ingress from a kept lease with no MemTier call."
    )
    load_s_total: float = Field(0.0, description="Baseline: seconds spent in `from_pretrained`.")
    peak_models_in_use: int = Field(
        0,
        description="Baseline, since start: most distinct models one replica ran at once (> K: over budget).",
    )


def _rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0


def fetch_counters(client: httpx.Client, url: str) -> dict[str, float]:
    """Cumulative counters from whichever stats endpoint the server has ({} if none)."""
    response = client.get(f"{url}/v1/memtier", timeout=30)
    if response.status_code == 200:
        s = response.json()["stats"]
        return {
            "memtier": 1,
            "hbm_hits": s["hbm"]["hits"],
            "hbm_misses": s["hbm"]["misses"],
            "ddr_hits": s["ddr"]["hits"],
            "ddr_misses": s["ddr"]["misses"],
            "store_reads": s["store_reads"],
            "bytes_store_to_ddr": s["bytes_moved_store_to_ddr"],
            "bytes_ddr_to_hbm": s["bytes_moved_ddr_to_hbm"],
            "hbm_evictions": s["hbm_evictions"],
            "placements": s["leases"],
            "lease_reuses": s.get("lease_reuses", 0),
        }
    response = client.get(f"{url}/v1/stats", timeout=30)
    if response.status_code == 200:
        s = response.json()
        return {
            "multiplex": 1,
            "hbm_hits": s["hits"],
            "hbm_misses": s["misses"],
            "store_reads": s["loads"],
            "bytes_store_to_hbm": s["bytes_loaded"],
            "load_s_total": s["load_s_total"],
            "peak_models_in_use": s["peak_models_in_use"],
        }
    return {}


def tier_stats(before: dict[str, float], after: dict[str, float]) -> TierStats:
    """`after - before` as a TierStats, with hit rates of the difference."""
    source = "memtier" if "memtier" in after else "multiplex" if "multiplex" in after else "none"
    delta = {k: v - before.get(k, 0) for k, v in after.items() if k not in {"memtier", "multiplex"}}
    if "peak_models_in_use" in after:  # a running maximum, not a counter
        delta["peak_models_in_use"] = after["peak_models_in_use"]
    stats = TierStats(
        source=source,
        **{k: (float(v) if k == "load_s_total" else int(v)) for k, v in delta.items()},
    )
    stats.hbm_hit_rate = _rate(stats.hbm_hits, stats.hbm_misses)
    stats.ddr_hit_rate = _rate(stats.ddr_hits, stats.ddr_misses)
    return stats
