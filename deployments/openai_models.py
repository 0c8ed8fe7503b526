"""OpenAI wire formats we accept and return (the subset CoE Serve implements).

Unknown request fields are ignored, as OpenAI-compatible servers do, so stock clients that
send extra options keep working; the fields we implement are validated strictly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.wire import GenerationRequest


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class _SamplingFields(_Lenient):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # None = not given: the expert's defaults (its generation_config.json, then the YAML) apply.
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM extension; 0 or -1 = off.")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="vLLM extension.")
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, description="Token id (string) -> bias in [-100, 100].")
    min_tokens: int = Field(0, ge=0, description="vLLM extension: EOS is banned until this many tokens.")
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past EOS.")
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per request (n > 1 is not supported).")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > 4 or any(not s for s in items):
            raise ValueError("stop takes up to 4 non-empty strings")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit():
                raise ValueError(f"logit_bias keys are token ids, got {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values are in [-100, 100], got {bias} for token {token}")
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def _generation(self, **inputs) -> GenerationRequest:
        return GenerationRequest(
            model=self.model,
            max_tokens=self.token_limit(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=None if self.top_k is None else max(self.top_k, 0),
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            stop=self.stop_list(),
            seed=self.seed,
            stream=self.stream,
            **inputs,
        )


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)

    def to_generation(self) -> GenerationRequest:
        """The transport-independent request; `developer` turns are system turns to the templates."""
        turns = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]
        return self._generation(messages=turns)


class CompletionRequest(_SamplingFields):
    prompt: str = Field(min_length=1)

    def to_generation(self) -> GenerationRequest:
        return self._generation(prompt=self.prompt)


class RouteRequest(_Lenient):
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    user: str | None = Field(
        None, max_length=256, description="OpenAI's end-user id; pins the session's expert (router/README)."
    )


class CoEInfo(BaseModel):
    """How the request was served; also sent as `x-coe-*` headers."""

    expert: str = Field(description="Expert that generated the answer.")
    category: str | None = Field(None, description="Router's category (None when `model` named an expert).")
    routed: bool = Field(description="True when `model` was `coe` and the router chose the expert.")
    fallback: bool = Field(
        False, description="The router was unsure (entropy above τ) and used the fallback."
    )
    entropy: float | None = None
    tier: str = Field(
        description="Where the weights came from: hbm (resident), ddr (node memory), store (disk)."
    )
    socket: str = Field(description="Socket (Serve replica) that ran it.")
    node: str = Field(description="Ray node id of that socket.")
    switch_s: float = Field(0.0, description="Seconds spent making the expert resident (0 on an HBM hit).")
    queue_s: float | None = Field(
        None,
        description="Seconds the request waited on its socket for a batch slot or KV cache room "
        "(None until the socket admitted it).",
    )
    retried: bool = Field(False, description="A socket failed mid-request and another one answered.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
