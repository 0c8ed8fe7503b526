"""Messages between the ingress and the socket replicas (transport-independent).

HTTP and gRPC requests both become a `GenerationRequest` at the ingress; the ingress sends a
`SocketRequest` (token ids, not text: the ingress already tokenised to enforce the prompt
limit) and gets `SocketEvent`s back, the first one saying how the expert was activated.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from cluster.sampling_defaults import SamplingDefaults
from memtier.models import ActivationReport

# Finish reason of a row that could never fit its socket's KV budget (the ingress answers 400).
KV_TOO_LARGE = "kv_too_large"


class GenerationRequest(BaseModel):
    """One request as the API received it, after schema validation. None = not given: the
    expert's defaults (checkpoint < YAML) decide, see `Sampling.resolve`."""

    model: str
    messages: list[dict] | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = Field(None, description="A token-id prompt: sent to the model as is.")
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = Field(default_factory=dict)
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, description="Choices to generate; choice i samples with seed + i when seeded.")
    logprobs: int | None = Field(None, description="None: no logprobs; k: the chosen token's and the top k.")
    prompt_logprobs: bool = Field(False, description="Logprobs of the prompt's tokens too (echo).")
    json_schema: str | None = Field(
        None, description="Structured output: the JSON schema (text) every choice must match."
    )
    session_id: str | None = Field(
        None,
        max_length=256,
        description="OpenAI `user` or the `x-session-id` header: a routed (`coe`) conversation keeps "
        "its expert across turns (router/conversation.py), as /v1/route does.",
    )


class Sampling(BaseModel):
    """Resolved per-request sampling, as the socket's engine applies it (deployments/sampling.py)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = Field(default_factory=dict)
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None

    @classmethod
    def resolve(cls, request: GenerationRequest, defaults: SamplingDefaults) -> Sampling:
        """Request field, else the expert's default, else the neutral value (temperature 1, as OpenAI)."""

        def pick(name: str, neutral):
            given = getattr(request, name)
            if given is not None:
                return given
            default = getattr(defaults, name)
            return default if default is not None else neutral

        return cls(
            temperature=pick("temperature", 1.0),
            top_p=pick("top_p", 1.0),
            top_k=pick("top_k", 0),
            repetition_penalty=pick("repetition_penalty", 1.0),
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            logit_bias=request.logit_bias,
            min_tokens=request.min_tokens,
            ignore_eos=request.ignore_eos,
            seed=request.seed,
        )


class SocketRequest(BaseModel):
    expert: str
    input_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    more_prompts: list[list[int]] = Field(
        default_factory=list,
        description="Further prompts for the same expert (a completions list): one call, one lease.",
    )
    n: int = Field(1, description="Rows per prompt (batched together); rows are prompt-major.")
    logprobs: int | None = None
    prompt_logprobs: bool = False
    json_schema: str | None = None


class WireLogprob(BaseModel):
    """One token's logprob and the top alternatives (ids: the ingress turns them into text)."""

    token_id: int
    logprob: float | None = Field(description="None only for a prompt's first token (nothing predicts it).")
    top: list[tuple[int, float]] = Field(default_factory=list)


class SocketEvent(BaseModel):
    type: Literal["activation", "token"]
    report: ActivationReport | None = None
    socket_id: str | None = None
    node_id: str | None = None
    index: int = Field(0, description="Which row: prompt p's choice j is p * n + j.")
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None
    token_ids: list[int] = Field(default_factory=list, description="Tokens since this row's last event.")
    logprobs: list[WireLogprob] = Field(default_factory=list, description="Theirs, when asked for.")
    prompt_logprobs: list[WireLogprob] | None = Field(
        None, description="On a row's first event, when asked for: one per prompt token."
    )
    queue_s: float | None = Field(None, description="First token event: seconds queued for a batch slot/KV.")


class LeaseMismatch(Exception):
    """A request reached a socket other than the one its lease names (the router's fallback)."""
