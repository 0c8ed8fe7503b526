"""The model objects of `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's fields plus ours.

OpenAI's object has `id`, `object`, `created`, `owned_by`; clients keep unknown fields
(`model_extra` in the official SDK), so each expert's card also says which router categories map
to it, its size and dtype, where its weights are now (tier residency, from MemTier) and its
sampling defaults. `coe` is the routed model: the router picks an expert per request.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, Field

from cluster.config import ClusterConfig
from deployments.service import COE_MODEL
from memtier.models import MemtierStatus, Tier

OWNER = "coe-serve"


class Residency(BaseModel):
    tier: Tier = Field(
        description="Fastest tier holding the expert now: hbm, ddr, or store (nowhere in memory)."
    )
    sockets: list[str] = Field(description="Sockets whose HBM holds it.")
    nodes: list[str] = Field(description="Nodes whose DDR holds it.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = OWNER
    root: str | None = Field(None, description="The checkpoint it was loaded from (as vLLM's `root`).")
    parent: str | None = None
    description: str | None = None
    categories: list[str] = Field(default_factory=list, description="Router categories mapped to it.")
    fallback: bool = Field(False, description="The router's fallback expert for uncertain prompts.")
    size_bytes: int | None = None
    dtype: str | None = None
    residency: Residency | None = Field(None, description="None for `coe`, or when MemTier is unreachable.")
    sampling: dict | None = Field(
        None,
        description="What a request that leaves a field out gets: the checkpoint's generation_config "
        "under the YAML's `sampling` (a field None = the server's neutral value). None for `coe`.",
    )


async def category_map(config: ClusterConfig, service) -> dict[str, str]:
    """Category -> expert: the config's map, else the trained router's (loaded off the event loop)."""
    if config.router.category_map is not None:
        return dict(config.router.category_map)
    return dict((await asyncio.to_thread(service.router)).category_map)


def _residency(expert_id: str, status: MemtierStatus) -> Residency:
    sockets = sorted(s.socket_id for n in status.nodes for s in n.sockets if expert_id in s.residents)
    nodes = sorted(n.node_id for n in status.nodes if expert_id in n.residents)
    return Residency(tier="hbm" if sockets else "ddr" if nodes else "store", sockets=sockets, nodes=nodes)


def model_cards(
    config: ClusterConfig, categories: dict[str, str], status: MemtierStatus | None, created: int
) -> list[ModelCard]:
    """`coe` first, then every expert of the catalog, in catalog order."""
    cards = [
        ModelCard(
            id=COE_MODEL,
            created=created,
            description="auto-routed: the router picks the expert for each request",
            categories=sorted(categories),
        )
    ]
    for expert in config.experts:
        cards.append(
            ModelCard(
                id=expert.id,
                created=created,
                root=expert.checkpoint,
                categories=sorted(c for c, e in categories.items() if e == expert.id),
                fallback=expert.id == config.router.fallback_expert,
                size_bytes=expert.size_bytes,
                dtype=expert.dtype,
                residency=_residency(expert.id, status) if status is not None else None,
                sampling=expert.sampling.model_dump(),
            )
        )
    return cards
