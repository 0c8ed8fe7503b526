"""Prefetch: page in the experts about to be needed while disks and sockets are idle.

Demand paging stalls the request that misses. The authority knows more than the socket does:
every request's expert (the HBM policy's demand estimate, or a decayed count per expert) and
which nodes' disks and which sockets are idle. `Prefetcher` turns that into two kinds of plan,
each round:

* ``ddr``: STORE -> DDR on a node with no read in flight, for the likeliest expert its DDR
  lacks, only into *free* DDR room (a prefetch never evicts from DDR).
* ``hbm``: DDR -> HBM onto an idle socket (no lease) for the likeliest expert held in no
  socket's HBM but in that node's DDR, into free room or evicting only unpinned experts whose
  forecast is lower than the prefetched one's (never a hotter or a pinned expert).

A plan that loses is cancelled: an HBM prefetch whose expert a demand request paged in
elsewhere first, or whose victims became hotter than it, is released before it takes effect;
a demand STORE read on a node cancels that node's DDR prefetch of another expert (the demand
needs the disk). Hits (a demand request served by a prefetch it would otherwise have missed),
wasted bytes (prefetched, then evicted or cancelled unused) and cancellations are counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field

from memtier.directory import ResidencyDirectory

__all__ = ["PrefetchPlan", "PrefetchStats", "Prefetcher"]


class PrefetchPlan(BaseModel):
    kind: Literal["ddr", "hbm"]
    expert: str
    node_id: str
    socket_id: str | None = Field(None, description="hbm plans: the idle socket to page it into.")
    size_bytes: int
    score: float = Field(description="The expert's demand forecast when planned.")


class PrefetchStats(BaseModel):
    """Counters since the actor started."""

    ddr_started: int = 0
    hbm_started: int = 0
    ddr_hits: int = Field(
        0, description="Demand page-ins that found a prefetched expert in DDR (no STORE read)."
    )
    hbm_hits: int = Field(
        0, description="Demand requests served from HBM by a prefetched, not yet used, expert."
    )
    cancelled: int = 0
    wasted_bytes: int = Field(
        0, description="Bytes prefetched, then evicted or cancelled before any request used them."
    )


class Prefetcher:
    """Plans prefetches from a demand forecast and keeps their books; holds no weights."""

    def __init__(
        self,
        directory: ResidencyDirectory,
        *,
        half_life: float = 256.0,
        min_score: float = 0.5,
        margin: float = 2.0,
        ddr: bool = True,
        hbm: bool = True,
    ) -> None:
        self.directory = directory
        self.min_score = min_score  # below ~half a recent request, an expert is not "about to be needed"
        # An HBM prefetch evicts only experts forecast at most 1/margin as hot: bench.prefetch with
        # margin 1 wasted ~5x the bytes (most prefetched experts evicted unused) for ~5 points more.
        self.margin = margin
        self.ddr_enabled = ddr
        self.hbm_enabled = hbm
        self._decay = 2.0 ** (-1.0 / half_life)
        self._scale = 1.0  # lazy decay: stored counts are in units of _scale (renormalised when large)
        self._counts: dict[str, float] = {}
        self.ddr_in_flight: dict[str, str] = {}  # node -> expert being read from the STORE for it
        self.hbm_in_flight: dict[str, str] = {}  # prefetch lease id -> socket id
        self._unused_hbm: dict[tuple[str, str], int] = {}  # (socket, expert) prefetched, not yet used
        self._unused_ddr: dict[tuple[str, str], int] = {}  # (node, expert) prefetched, not yet used
        self.stats = PrefetchStats()

    # ------------------------------------------------------------------ forecast
    def observe(self, expert: str) -> None:
        """One request for `expert` (placed, or served from a kept lease)."""
        self._scale /= self._decay
        if self._scale > 1e12:  # renormalise before floats lose precision
            self._counts = {k: v / self._scale for k, v in self._counts.items()}
            self._scale = 1.0
        self._counts[expert] = self._counts.get(expert, 0.0) + self._scale

    def score(self, expert: str) -> float:
        """Expected requests for `expert` soon: the HBM policy's own estimate when it has one (so a
        prefetch agrees with what eviction would keep), else decayed requests."""
        demand = self.directory.hbm_policy.demand(expert)
        if demand is None:
            demand = self._counts.get(expert, 0.0) / self._scale
        return demand

    def ranking(self) -> list[str]:
        """Experts worth prefetching, likeliest first."""
        scored = ((self.score(e), e) for e in self.directory.expert_bytes)
        return [e for score, e in sorted(scored, reverse=True) if score >= self.min_score]

    # ------------------------------------------------------------------ plans
    def plan(self) -> list[PrefetchPlan]:
        """This round's prefetches; also settles waste and cancels losers (see `cancelled_leases`)."""
        self._settle_waste()
        ranking = self.ranking()
        plans = []
        if self.ddr_enabled:
            plans += self._plan_ddr(ranking)
        if self.hbm_enabled:
            plans += self._plan_hbm(ranking)
        return plans

    def _plan_ddr(self, ranking: list[str]) -> list[PrefetchPlan]:
        d = self.directory
        plans = []
        for node_id in sorted(d.nodes):
            node = d.nodes[node_id]
            if node_id in self.ddr_in_flight or not node.sockets:
                continue
            for expert in ranking:
                size = d.expert_bytes[expert]
                if expert not in node.ddr and size <= node.ddr.free_bytes:
                    plans.append(
                        PrefetchPlan(
                            kind="ddr",
                            expert=expert,
                            node_id=node_id,
                            size_bytes=size,
                            score=self.score(expert),
                        )
                    )
                    break
        return plans

    def _plan_hbm(self, ranking: list[str]) -> list[PrefetchPlan]:
        d = self.directory
        busy = set(self.hbm_in_flight.values())
        idle = sorted(s.socket_id for s in d.sockets.values() if s.load == 0 and s.socket_id not in busy)
        planned: set[str] = set()
        plans = []
        for socket_id in idle:
            socket = d.sockets[socket_id]
            node = d.nodes.get(socket.node_id)
            if node is None:
                continue
            for expert in ranking:
                if expert in planned or d.holders.get(expert) or expert not in node.ddr:
                    continue
                size = d.expert_bytes[expert]
                if size > socket.hbm.capacity_bytes - socket.hbm.pinned_bytes:
                    continue
                score = self.score(expert)
                victims = socket.hbm.plan_insert(expert, size)
                if any(self.score(v) * self.margin >= score for v in victims):
                    continue  # never evict a hotter expert (nor one nearly as hot: churn)
                plans.append(
                    PrefetchPlan(
                        kind="hbm",
                        expert=expert,
                        node_id=socket.node_id,
                        socket_id=socket_id,
                        size_bytes=size,
                        score=score,
                    )
                )
                planned.add(expert)
                break
        return plans

    # ------------------------------------------------------------------ books
    def ddr_started(self, plan: PrefetchPlan) -> None:
        self.ddr_in_flight[plan.node_id] = plan.expert
        self.stats.ddr_started += 1

    def ddr_done(self, node_id: str, expert: str, cancelled: bool = False) -> None:
        """The read finished (the DDR store has it, its report follows) or was cancelled."""
        if self.ddr_in_flight.get(node_id) == expert:
            del self.ddr_in_flight[node_id]
        if cancelled:
            self.stats.cancelled += 1
            self.stats.wasted_bytes += self.directory.expert_bytes.get(expert, 0)
        else:
            self._unused_ddr[(node_id, expert)] = self.directory.expert_bytes.get(expert, 0)

    def demand_read(self, node_id: str, expert: str) -> bool:
        """A demand STORE read on `node_id`: True if it cancels that node's prefetch (of another expert)."""
        inflight = self.ddr_in_flight.get(node_id)
        if inflight is None or inflight == expert:
            return False
        self.ddr_done(node_id, inflight, cancelled=True)
        return True

    def hbm_started(self, lease_id: str, socket_id: str) -> None:
        self.hbm_in_flight[lease_id] = socket_id
        self.stats.hbm_started += 1

    def hbm_done(self, lease_id: str, expert: str, cancelled: bool = False) -> None:
        socket_id = self.hbm_in_flight.pop(lease_id, None)
        if socket_id is None:
            return
        if cancelled:
            self.stats.cancelled += 1
            self.stats.wasted_bytes += self.directory.expert_bytes.get(expert, 0)
        else:
            self._unused_hbm[(socket_id, expert)] = self.directory.expert_bytes.get(expert, 0)

    def losers(self, leases: Mapping[str, tuple[str, str, list[str]]]) -> list[str]:
        """In-flight HBM prefetch leases (id -> (expert, socket, victims)) that lost: their expert is
        now in another socket's HBM by demand, or a victim became at least as hot as it."""
        lost = []
        for lease_id, (expert, socket_id, victims) in leases.items():
            holders = self.directory.holders.get(expert, set()) - {socket_id}
            if holders or any(self.score(v) >= self.score(expert) for v in victims):
                lost.append(lease_id)
        return lost

    def on_demand(self, expert: str, socket_id: str, node_id: str, tier: str) -> None:
        """A demand lease was granted: credit the prefetch that served it, if any."""
        if tier == "hbm" and self._unused_hbm.pop((socket_id, expert), None) is not None:
            self.stats.hbm_hits += 1
        if tier == "ddr" and self._unused_ddr.pop((node_id, expert), None) is not None:
            self.stats.ddr_hits += 1
        self._unused_ddr.pop((node_id, expert), None)  # once used from DDR by any path, it was not wasted

    def _settle_waste(self) -> None:
        """Prefetched experts evicted before any request used them: their bytes were wasted."""
        d = self.directory
        for key, size in list(self._unused_hbm.items()):
            socket = d.sockets.get(key[0])
            if socket is None or key[1] not in socket.hbm:
                del self._unused_hbm[key]
                self.stats.wasted_bytes += size
        for key, size in list(self._unused_ddr.items()):
            node = d.nodes.get(key[0])
            if node is None or key[1] not in node.ddr:
                del self._unused_ddr[key]
                self.stats.wasted_bytes += size
