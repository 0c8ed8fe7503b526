"""OpenAI's answer shapes for /v1/chat/completions and /v1/completions, buffered or streamed (SSE).

A request may have several prompts (a completions list) and several rows per prompt (`n`, or
`best_of` of which the n most likely are kept). The prompts that go to one expert (all of them,
unless `coe` routes them apart) are one `CoEService.stream`: one lease, one socket call, every row
batched together, events saying which row (`SocketEvent.index`). Prompts routed to different
experts are answered one expert after another: Serve indexes a request's calls by the request's
id, so two calls of one request in flight at once can leave one of them unrouted. Choice
`i * n + j` is prompt i's row j, as vLLM numbers them.

Logprobs travel as token ids and are given their text here, from the expert's tokenizer
(`deployments/token_text.py`): `bytes` are the token's exact bytes and `token` their text, so
a token holding half a UTF-8 character still lines up. `echo` starts each choice with its prompt
(and, with logprobs, the prompt tokens' logprobs, which the socket scores while it prefills).
Usage counts each prompt once and every generated token (of all rows, best_of's unreturned ones
too: they were generated), the same whether streamed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.errors import CoEError, LimitExceeded, error_body
from deployments.openai_models import CoEInfo, OutputOptions, Usage
from deployments.service import CoEService, Prepared
from deployments.telemetry import RequestTrace
from deployments.token_text import TokenBytes, token_bytes
from deployments.wire import SocketEvent, WireLogprob

logger = logging.getLogger("ray.serve")


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def coe_headers(info: CoEInfo) -> dict[str, str]:
    headers = {"x-coe-expert": info.expert, "x-coe-tier": info.tier, "x-coe-socket": info.socket}
    if info.category:
        headers["x-coe-category"] = info.category
    return headers


@dataclass
class _Choice:
    """One row's answer as it accumulates."""

    index: int
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[WireLogprob] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    text_offset: int = 0  # characters of this choice's text sent so far (completions' text_offset)
    started: bool = False


class Answer:
    """The state of one request's answer: every prompt's rows, and how to render them."""

    def __init__(
        self, service: CoEService, prepared: list[Prepared], kind: str, options: OutputOptions, model: str
    ) -> None:
        self.service, self.prepared, self.kind, self.options = service, prepared, kind, options
        self.rows = options.rows
        self.choices = [_Choice(i) for i in range(len(prepared) * self.rows)]
        self.tables: list[TokenBytes] = [token_bytes(service.tokenizers.get(p.expert)) for p in prepared]
        groups: dict[str, list[int]] = {}
        for number, p in enumerate(prepared):
            groups.setdefault(p.expert, []).append(number)
        self.groups = list(groups.values())  # prompt numbers per expert, in order of first appearance
        self.model = prepared[0].expert if len(groups) == 1 else model
        self.infos: list[list[CoEInfo]] = [[] for _ in self.groups]

    # ------------------------------------------------------------------ events in
    async def events(
        self, trace: RequestTrace, *, buffered: bool
    ) -> AsyncIterator[tuple[_Choice, SocketEvent]]:
        """Every prompt's socket events, one expert's call after another, each with its choice."""
        self.infos[0] = trace.info_out  # the first expert's CoEInfo is the request's (headers, log line)
        for number, prompts in enumerate(self.groups):
            head = self.prepared[prompts[0]]
            call = dataclasses.replace(head, more_input_ids=[self.prepared[i].input_ids for i in prompts[1:]])
            stream = self.service.stream(call, self.infos[number], buffered=buffered)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    yield self._seen(trace, prompts, event, buffered), event

    def _seen(self, trace: RequestTrace, prompts: list[int], event: SocketEvent, buffered: bool) -> _Choice:
        """Fold an event into its choice (row p * n + j of a call is prompt prompts[p]); the trace
        sees the sum of every choice's tokens."""
        choice = self.choices[prompts[event.index // self.rows] * self.rows + event.index % self.rows]
        choice.tokens = max(choice.tokens, event.completion_tokens)
        choice.finish_reason = event.finish_reason or choice.finish_reason
        choice.cumulative_logprob += sum(lp.logprob or 0.0 for lp in event.logprobs)
        done = all(c.finish_reason for c in self.choices)
        update = {
            "completion_tokens": self.completion_tokens,
            "finish_reason": choice.finish_reason if done else None,
        }
        trace.saw(event.model_copy(update=update), timed=not buffered)
        return choice

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def usage(self) -> Usage:
        return Usage.of(sum(len(p.input_ids) for p in self.prepared), self.completion_tokens)

    def info(self) -> CoEInfo | None:
        return self.infos[0][0] if self.infos[0] else None

    # ------------------------------------------------------------------ rendering
    def _prompt_of(self, choice: _Choice) -> Prepared:
        return self.prepared[choice.index // self.rows]

    def _echo(self, choice: _Choice, event: SocketEvent) -> tuple[str, list[WireLogprob]]:
        """Prompt text (and its logprobs) to put before the first tokens of `choice`, if echoing."""
        if not self.options.echo or choice.started:
            return "", []
        request = self._prompt_of(choice).request
        text = (
            request.prompt
            if request.prompt is not None
            else self.service.tokenizers.get(self._prompt_of(choice).expert).decode(
                self._prompt_of(choice).input_ids
            )
        )
        return text, list(event.prompt_logprobs or [])

    def _logprobs(self, choice: _Choice, logprobs: list[WireLogprob], text_offset: int) -> dict | None:
        """The logprobs object of a choice or chunk, in this endpoint's format; None when not asked."""
        if self.options.logprobs is None:
            return None
        table = self.tables[choice.index // self.rows]
        k = self.options.logprobs
        if self.kind == "chat":

            def entry(token_id: int, logprob: float) -> dict:
                return {"token": table.text(token_id), "logprob": logprob, "bytes": list(table[token_id])}

            return {
                "content": [
                    {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top[:k]]}
                    for lp in logprobs
                ],
                "refusal": None,
            }
        tokens = [table.text(lp.token_id) for lp in logprobs]
        offsets = []
        for token in tokens:
            offsets.append(text_offset)
            text_offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [
                {table.text(t): v for t, v in lp.top[:k]} if lp.logprob is not None else None
                for lp in logprobs
            ],
            "text_offset": offsets,
        }

    def _final_choices(self) -> list[_Choice]:
        """The choices to return: all of them, or per prompt the n most likely of best_of rows."""
        if not self.options.best_of or self.options.best_of == self.options.n:
            return self.choices
        kept: list[_Choice] = []
        for prompt in range(len(self.prepared)):
            rows = self.choices[prompt * self.rows : (prompt + 1) * self.rows]
            kept.extend(sorted(rows, key=lambda c: c.cumulative_logprob, reverse=True)[: self.options.n])
        return kept

    def body(self, request_id: str, created: int) -> dict:
        choices = []
        for number, choice in enumerate(self._final_choices()):
            text = "".join(choice.text)
            logprobs = self._logprobs(choice, choice.logprobs, 0)
            if self.kind == "chat":
                message = {"role": "assistant", "content": text}
                choices.append(
                    {
                        "index": number,
                        "message": message,
                        "logprobs": logprobs,
                        "finish_reason": choice.finish_reason,
                    }
                )
            else:
                choices.append(
                    {
                        "index": number,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": choice.finish_reason,
                    }
                )
        info = self.info()
        return {
            "id": request_id,
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage().model_dump(),
            "coe": info.model_dump() if info else None,
        }

    def absorb(self, choice: _Choice, event: SocketEvent) -> None:
        """Buffered: keep the event's text and logprobs in its choice."""
        prefix, prompt_logprobs = self._echo(choice, event)
        choice.started = True
        choice.text.append(prefix + event.text)
        choice.logprobs.extend(prompt_logprobs + event.logprobs)

    def chunk(self, choice: _Choice, event: SocketEvent, request_id: str, created: int) -> dict | None:
        """Streamed: the SSE chunk for one event (None when it carries nothing)."""
        prefix, prompt_logprobs = self._echo(choice, event)
        choice.started = True
        text = prefix + event.text
        logprobs = prompt_logprobs + event.logprobs
        if not (text or logprobs or event.finish_reason):
            return None
        rendered = self._logprobs(choice, logprobs, choice.text_offset)
        choice.text_offset += len(text)
        if self.kind == "chat":
            entry = {"index": choice.index, "delta": {"content": text} if text else {}}
        else:
            entry = {"index": choice.index, "text": text}
        entry.update(logprobs=rendered, finish_reason=event.finish_reason)
        return self._envelope([entry], request_id, created)

    def _envelope(self, choices: list[dict], request_id: str, created: int) -> dict:
        info = self.info()
        return {
            "id": request_id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": created,
            "model": self.model,
            "choices": choices,
            "coe": info.model_dump() if info else None,
        }

    def role_chunks(self, request_id: str, created: int) -> list[dict]:
        """Chat streams open each choice with its role, as OpenAI's do."""
        if self.kind != "chat":
            return []
        return [
            self._envelope(
                [
                    {
                        "index": c.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
                request_id,
                created,
            )
            for c in self.choices
        ]

    def usage_chunk(self, request_id: str, created: int) -> dict:
        body = self._envelope([], request_id, created)
        body.pop("coe")
        body["usage"] = self.usage().model_dump()
        return body


async def complete(answer: Answer, trace: RequestTrace) -> Response:
    """The whole answer as one JSON body (events buffered, so a socket crash is retried at any point)."""
    async for choice, event in answer.events(trace, buffered=True):
        answer.absorb(choice, event)
    body = answer.body(trace.request_id, int(time.time()))
    trace.finish()
    info = answer.info()
    return JSONResponse(body, headers=coe_headers(info) if info else None)


async def stream(answer: Answer, trace: RequestTrace) -> Response:
    """Server-sent events: chunks as tokens come, the usage chunk if asked, then [DONE]."""
    events = answer.events(trace, buffered=False).__aiter__()
    # Wait for the activation (and first token) so headers can say which expert and tier served it,
    # and so errors before the first token are proper HTTP errors, not a broken stream.
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()
        raise
    request_id, created = trace.request_id, int(time.time())

    async def body() -> AsyncIterator[str]:
        try:
            for role in answer.role_chunks(request_id, created):
                yield sse(role)
            item = first
            while item is not None:
                chunk = answer.chunk(*item, request_id, created)
                if chunk is not None:
                    yield sse(chunk)
                try:
                    item = await events.__anext__()
                except StopAsyncIteration:
                    item = None
            if answer.options.include_usage:
                yield sse(answer.usage_chunk(request_id, created))
            trace.finish()
        except CoEError as err:
            yield sse(error_body(trace.fail(err)))
        except Exception as err:
            logger.exception("stream failed")
            yield sse(error_body(trace.fail(err)))
        finally:
            trace.abort()  # a no-op unless the client went away mid-stream
            await events.aclose()  # client gone or done: cancels the socket streams, frees the leases
        yield sse("[DONE]")

    info = answer.info()
    return StreamingResponse(
        body(), media_type="text/event-stream", headers=coe_headers(info) if info else None
    )


async def respond(
    service: CoEService,
    trace: RequestTrace,
    prepared: list[Prepared],
    kind: str,
    options: OutputOptions,
    model: str,
) -> Response:
    """Answer a prepared request (one Prepared per prompt) in the shape its options ask for."""
    answer = Answer(service, prepared, kind, options, model)
    return await (stream(answer, trace) if options.stream else complete(answer, trace))


async def prepare_all(service: CoEService, body, session: str | None = None) -> list[Prepared]:
    """One `Prepared` per prompt of `body` (a completions list has several), within the choice limit.
    `session` (the `x-session-id` header) wins over the body's `user`, as on /v1/route."""
    generations = body.to_generations()
    if session:
        generations = [g.model_copy(update={"session_id": session}) for g in generations]
    rows, limit = body.output().rows, service.config.limits.max_choices
    if rows * len(generations) > limit:
        raise LimitExceeded(
            f"{rows} choices x {len(generations)} prompts = {rows * len(generations)} rows; the limit is "
            f"{limit} (limits.max_choices): ask for fewer",
            param="best_of" if body.output().best_of else "n",
        )
    return list(await asyncio.gather(*(service.prepare(g) for g in generations)))
