"""Send each request to the socket replica that memtier leased it to.

The ingress calls `handle.remote(..., socket=<replica unique_id>)`; `pending_request.kwargs`
carries that id here (RAY-NOTES). Serve asks again with back-off while the target is busy, so a
busy socket queues the request, as it should: the expert is pinned there.

A target missing from the candidates is either not yet known to this process's router (a
replica that just started) or gone. RAY-NOTES: returning nothing makes Serve retry forever, so
after `grace_s` we return every replica as a fallback rank; the replica sees the lease is not
its own, refuses at once, and the ingress re-places through MemTier.
"""

from __future__ import annotations

import time

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica


class LeaseRouter(RequestRouter):
    grace_s: float = 3.0

    def initialize_state(self, grace_s: float = 3.0, **kwargs) -> None:
        self.grace_s = grace_s

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        target = pending_request.kwargs.get("socket") if pending_request is not None else None
        if target is None:  # calls without a lease (status probes): any replica
            return [candidate_replicas]
        for replica in candidate_replicas:
            if replica.replica_id.unique_id == target:
                return [[replica]]
        if time.time() - pending_request.created_at < self.grace_s:
            return []
        return [candidate_replicas]
