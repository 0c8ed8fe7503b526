"""OpenAI wire formats we accept and return.

Every field of OpenAI's chat/completions and completions requests either works or is refused with
a 400 that names it: nothing is silently ignored. Fields CoE Serve does not implement (tools,
audio, predicted outputs, ...) are declared in `UNSUPPORTED` with the reason, so a request that
sets one to anything but its neutral value hears why; fields OpenAI does not have are refused as
OpenAI itself refuses them ("extra inputs are not permitted"), vLLM's sampling extensions
(top_k, repetition_penalty, min_tokens, ignore_eos) excepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from deployments.errors import InvalidRequest
from deployments.structured import JSON_OBJECT_SCHEMA, schema_text
from deployments.wire import GenerationRequest

# The most alternatives per token OpenAI allows (chat top_logprobs); completions' logprobs too (vLLM's).
MAX_TOP_LOGPROBS = 20


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart]
    name: str | None = Field(None, description="A participant's name; sent to the chat template.")
    tool_calls: Any = Field(None, description="Refused: CoE Serve has no tool calling.")
    function_call: Any = Field(None, description="Refused: CoE Serve has no function calling.")
    tool_call_id: Any = Field(None, description="Refused: CoE Serve has no tool calling.")

    @field_validator("tool_calls", "function_call", "tool_call_id")
    @classmethod
    def _no_tools(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise PydanticCustomError("unsupported", f"{info.field_name} is not supported: no tool calling")
        return value

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def turn(self) -> dict:
        """The turn as chat templates read it; `developer` is a system turn to them."""
        turn = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.name is not None:
            turn["name"] = self.name
        return turn


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = Field(
        None, description="Only false (or unset): CoE Serve adds no obfuscation field to chunks."
    )

    @field_validator("include_obfuscation")
    @classmethod
    def _no_obfuscation(cls, value: bool | None) -> bool | None:
        if value:
            raise PydanticCustomError("unsupported", "include_obfuscation is not supported; send false")
        return value


class JsonSchemaFormat(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = Field(None, description="Accepted either way: the schema is always enforced.")


class ResponseFormat(_Strict):
    """`text`, `json_object` (any JSON object) or `json_schema`: enforced token by token
    (deployments/structured.py), so the answer parses, and validates, unless max_tokens runs out."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self

    def schema_json(self) -> str | None:
        if self.type == "json_object":
            return JSON_OBJECT_SCHEMA
        if self.type == "json_schema" and self.json_schema is not None:
            return schema_text(self.json_schema.schema_)
        return None


# OpenAI request fields CoE Serve does not implement: (neutral values accepted, why the rest is refused).
UNSUPPORTED: dict[str, tuple[tuple, str]] = {
    "tools": ((None, []), "CoE Serve has no tool calling"),
    "tool_choice": ((None, "none"), "CoE Serve has no tool calling"),
    "functions": ((None, []), "CoE Serve has no function calling"),
    "function_call": ((None, "none"), "CoE Serve has no function calling"),
    "audio": ((None,), "CoE Serve's experts are text models"),
    "modalities": ((None, ["text"]), "CoE Serve's experts produce text only"),
    "prediction": ((None,), "predicted outputs (speculative decoding) are not implemented"),
    "web_search_options": ((None,), "CoE Serve has no web search"),
    "reasoning_effort": ((None,), "CoE Serve's experts are not reasoning models"),
    "verbosity": ((None,), "CoE Serve's experts have no verbosity control"),
    "store": ((None, False), "CoE Serve stores no completions"),
    "metadata": ((None, {}), "metadata is kept only with store, which CoE Serve does not do"),
    "service_tier": ((None, "auto", "default"), "CoE Serve has one service tier"),
    "suffix": ((None, ""), "insertion (fill in the middle) is not implemented"),
    "moderation": ((None,), "CoE Serve runs no moderation"),
    "prompt_cache_options": ((None,), "CoE Serve's experts keep no prompt cache"),
    "prompt_cache_retention": ((None,), "CoE Serve's experts keep no prompt cache"),
}


def _refuse_unsupported(value: Any, info: ValidationInfo) -> Any:
    neutral, why = UNSUPPORTED[info.field_name]
    if value not in neutral:
        raise PydanticCustomError("unsupported", f"{info.field_name} is not supported: {why}")
    return value


@dataclass
class OutputOptions:
    """What shapes the answer beyond the tokens: how many choices, logprobs, echo, usage."""

    n: int = 1
    best_of: int | None = None  # generate this many per prompt, return the n most likely
    logprobs: int | None = None  # alternatives per token the client asked for (None: no logprobs)
    echo: bool = False
    include_usage: bool = False
    stream: bool = False

    @property
    def rows(self) -> int:
        return self.best_of or self.n


class _SamplingFields(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # None = not given: the expert's defaults (its generation_config.json, then the YAML) apply.
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM extension; 0 or -1 = off.")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="vLLM extension.")
    presence_penalty: float | None = Field(0.0, ge=-2, le=2)
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, description="Token id (string) -> bias in [-100, 100].")
    min_tokens: int = Field(0, ge=0, description="vLLM extension: EOS is banned until this many tokens.")
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past EOS.")
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(
        1, ge=1, le=128, description="Choices; the server's limits.max_choices caps n (x prompts, x best_of)."
    )
    response_format: ResponseFormat | None = None
    user: str | None = Field(
        None,
        max_length=256,
        description="End-user id; with model 'coe' it pins the conversation's expert (router/README).",
    )
    safety_identifier: str | None = Field(None, max_length=256, description="As `user`: no effect.")
    prompt_cache_key: str | None = Field(
        None, max_length=256, description="A cache hint; CoE Serve's experts keep no prompt cache: no effect."
    )
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: bool | None = Field(None, description="Accepted: without tools it has no effect.")
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    moderation: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None

    _unsupported = field_validator(*[f for f in UNSUPPORTED if f != "suffix"])(_refuse_unsupported)

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
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def _logprobs(self) -> int | None:
        """Alternatives per token the client asked for; None: no logprobs at all."""
        return None

    def output(self) -> OutputOptions:
        return OutputOptions(
            n=self.n or 1,
            logprobs=self._logprobs(),
            include_usage=bool(self.stream_options and self.stream_options.include_usage),
            stream=bool(self.stream),
        )

    def _generation(self, **inputs) -> GenerationRequest:
        options = self.output()
        # best_of ranks rows by their cumulative logprob: the sockets report the chosen token's.
        logprobs = options.logprobs if options.logprobs is not None or not options.best_of else 0
        return GenerationRequest(
            model=self.model,
            max_tokens=self.token_limit(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=None if self.top_k is None else max(self.top_k, 0),
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            stop=self.stop_list(),
            seed=self.seed,
            stream=bool(self.stream),
            n=options.rows,
            logprobs=logprobs,
            prompt_logprobs=options.echo and options.logprobs is not None,
            json_schema=self.response_format.schema_json() if self.response_format else None,
            session_id=self.user,
            **inputs,
        )


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def check(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs: set logprobs to true to use it", param="top_logprobs")

    def _logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def to_generation(self) -> GenerationRequest:
        """The transport-independent request; `developer` turns are system turns to the templates."""
        self.check()
        return self._generation(messages=[m.turn() for m in self.messages])

    def to_generations(self) -> list[GenerationRequest]:
        return [self.to_generation()]



class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, texts (one answer each), token ids, or lists of token ids (sent as they are)."
    )
    max_tokens: int | None = Field(None, ge=0, description="0 only with echo: score the prompt.")
    echo: bool | None = Field(False, description="Start each choice's text (and logprobs) with its prompt.")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=128, description="Rows per prompt; the n most likely return.")
    suffix: Any = None

    _no_suffix = field_validator("suffix")(_refuse_unsupported)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, str):
            if not value:
                raise ValueError("prompt must not be empty")
            return value
        if not value or any(not item for item in value if not isinstance(item, int)):
            raise ValueError("prompt must not be empty (nor hold an empty prompt)")
        if isinstance(value, list) and isinstance(value[0], int) and any(t < 0 for t in value):
            raise ValueError("token ids are not negative")
        return value

    def check(self) -> None:
        """Rules across fields (a 400 naming the field, as OpenAI and vLLM answer them)."""
        if self.token_limit() == 0 and not self.echo:
            raise InvalidRequest("max_tokens: 0 only scores the prompt, which needs echo", param="max_tokens")
        if self.best_of is not None:
            if self.best_of < (self.n or 1):
                message = f"best_of ({self.best_of}) must be at least n ({self.n})"
                raise InvalidRequest(message, param="best_of")
            if self.stream and self.best_of > 1:
                raise InvalidRequest("best_of cannot be used with stream", param="best_of")

    def _logprobs(self) -> int | None:
        return self.logprobs

    def output(self) -> OutputOptions:
        options = super().output()
        options.echo, options.best_of = bool(self.echo), self.best_of
        return options

    def prompts(self) -> list[str | list[int]]:
        """The prompts of this request: one answer (n choices) each."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]
        return list(self.prompt)

    def to_generations(self) -> list[GenerationRequest]:
        self.check()
        return [
            self._generation(prompt=p) if isinstance(p, str) else self._generation(prompt_ids=p)
            for p in self.prompts()
        ]

    def to_generation(self) -> GenerationRequest:
        """One prompt (gRPC, the baseline): a list of prompts is the HTTP path's (`to_generations`)."""
        return self.to_generations()[0]


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
    pinned: bool = Field(
        False, description="The session (`user` / `x-session-id`) kept its expert over the router's pick."
    )
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
