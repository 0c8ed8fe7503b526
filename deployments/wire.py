"""Messages between the ingress and the socket replicas (transport-independent).

HTTP and gRPC requests both become a `GenerationRequest` at the ingress; the ingress sends a
`SocketRequest` (token ids, not text: the ingress already tokenised to enforce the prompt
limit) and gets `SocketEvent`s back, the first one saying how the expert was activated.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from memtier.models import ActivationReport


class GenerationRequest(BaseModel):
    """One request as the API received it, after schema validation."""

    model: str
    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    stream: bool = False


class SocketRequest(BaseModel):
    expert: str
    input_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None


class SocketEvent(BaseModel):
    type: Literal["activation", "token"]
    report: ActivationReport | None = None
    socket_id: str | None = None
    node_id: str | None = None
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None


class LeaseMismatch(Exception):
    """A request reached a socket other than the one its lease names (the router's fallback)."""
