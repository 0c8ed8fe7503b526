"""One structured JSON line per request: what an operator greps for when a user reports a bad answer.

Written by the ingress when a request ends (answered, failed, or abandoned by its client), to the
`coe.requests` logger: stdout of the ingress replica (Ray keeps it in the worker's `.out` log and
forwards it to the driver), and a file too when `observability.request_log_path` is set. The line
never holds prompt text unless `observability.log_prompts` is on: prompts can hold personal data.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pydantic import BaseModel, Field

from cluster.config import ObservabilityConfig

LOGGER_NAME = "coe.requests"
_handlers: dict[str, logging.Handler] = {}


class RequestRecord(BaseModel):
    """One request as its log line says it; the serving metrics are observed from the same record."""

    ts: str = Field(description="Arrival at the ingress, ISO 8601 UTC.")
    id: str = Field(description="The response's `id` (chatcmpl-..., cmpl-...): what the client saw.")
    protocol: Literal["http", "grpc"]
    endpoint: str = Field(description="chat.completions, completions, Generate or GenerateStream.")
    stream: bool
    status: Literal["ok", "abort", "error"] = Field(description="abort: the client went away mid-answer.")
    error_code: str | None = Field(None, description="OpenAI error code when status is error.")
    error: str | None = Field(None, description="The error message (first 300 characters).")
    expert: str | None = None
    category: str | None = Field(None, description="Router's category; None when `model` named an expert.")
    routed: bool = False
    fallback: bool = False
    tier: str | None = Field(None, description="Where the weights came from: hbm, ddr or store.")
    socket: str | None = None
    node: str | None = None
    switch_s: float | None = Field(None, description="Seconds spent making the expert resident.")
    retried: bool = False
    queue_s: float | None = Field(None, description="Wait on the socket before running (from the engine).")
    ttft_s: float | None = Field(None, description="Arrival to first token; None if none was timed.")
    e2e_s: float = Field(description="Arrival to the end of the answer (or of the error).")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    prompt: str | list[dict] | None = Field(None, description="Only with observability.log_prompts.")


class RequestLog:
    """Writes `RequestRecord`s as JSON lines, one handler per destination per process."""

    def __init__(self, settings: ObservabilityConfig) -> None:
        self.settings = settings
        self.logger = logging.getLogger(LOGGER_NAME)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # a JSON line, not a JSON line inside Serve's log format
        if settings.request_log:
            self._attach("stdout", lambda: logging.StreamHandler(sys.stdout))
            if settings.request_log_path:
                path = settings.request_log_path
                self._attach(path, lambda: logging.FileHandler(path, encoding="utf-8"))

    def _attach(self, key: str, make) -> None:
        if key not in _handlers:
            handler = make()
            handler.setFormatter(logging.Formatter("%(message)s"))
            _handlers[key] = handler
            self.logger.addHandler(handler)

    def write(self, record: RequestRecord) -> None:
        if self.settings.request_log:
            exclude = None if self.settings.log_prompts else {"prompt"}
            self.logger.info(record.model_dump_json(exclude=exclude))
