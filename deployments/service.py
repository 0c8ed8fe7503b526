"""The CoE request path, shared by the HTTP and gRPC front doors.

validate -> route (explicit expert or the router) -> tokenise and check limits -> lease from
MemTier -> dispatch to the leased socket -> stream events. A socket that dies before sending
any token is dropped from MemTier and the request is re-placed once (invariant 7); the lease is
released on every path (the socket releases it on completion; we release it on failure and
cancellation, and release is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ray.exceptions import RayActorError, RayTaskError

from cluster.config import ClusterConfig
from deployments.errors import (
    CoEError,
    DeadlineExceeded,
    InvalidRequest,
    LimitExceeded,
    ModelNotFound,
    NoCapacity,
    SocketFailed,
)
from deployments.memtier_client import ensure_memtier
from deployments.openai_models import CoEInfo
from deployments.structured import InvalidSchema, grammar_for
from deployments.tokenizers import TokenizerCache
from deployments.wire import (
    KV_TOO_LARGE,
    GenerationRequest,
    LeaseMismatch,
    Sampling,
    SocketEvent,
    SocketRequest,
)
from memtier.client import MemTierClient
from memtier.directory import UnknownExpertError
from memtier.pager import PlacementTimeout
from memtier.placement import NeverPlaceable

if TYPE_CHECKING:  # telemetry imports this module
    from deployments.telemetry import RequestTrace

logger = logging.getLogger("ray.serve")
COE_MODEL = "coe"
# After a LeaseMismatch: 0.2 s, 0.4 s, ... up to 2 s between placements, until the request's
# deadline. Serve's router learns of a new replica by long poll, in well under a second when idle.
MISMATCH_PAUSE_S = 0.2
MAX_MISMATCH_PAUSE_S = 2.0


@dataclass
class Prepared:
    """A validated request, bound to an expert and tokenised."""

    request: GenerationRequest
    expert: str
    input_ids: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    category: str | None = None
    routed: bool = False
    fallback: bool = False
    entropy: float | None = None
    pinned: bool = False  # the session's expert, kept over the router's pick for this turn
    # The request's RequestTrace (deployments/telemetry.py), set by its bind(); a field so that
    # dataclasses.replace keeps it: a buffered answer stamps its first token's arrival there.
    trace: RequestTrace | None = field(default=None, repr=False, compare=False)
    more_input_ids: list[list[int]] = field(default_factory=list)  # further prompts, same expert and call


def _cause(err: BaseException) -> BaseException:
    """The user exception inside a RayTaskError (Serve wraps replica exceptions)."""
    if isinstance(err, RayTaskError):
        cause = getattr(err, "cause", None)
        if cause is not None:
            return cause
    return err


class CoEService:
    def __init__(self, config: ClusterConfig, socket_handle) -> None:
        self.config = config
        self.sockets = socket_handle
        self.memtier = ensure_memtier(config)
        # Every request places and releases a lease: one batched actor call per event-loop turn
        # for all of this ingress replica's requests, not one each, and a finished request's lease
        # kept for the next request for its expert (memtier/client.py).
        self.leases = MemTierClient(
            self.memtier, hold_s=config.memtier.lease_hold_s, saturation=config.serve.max_batch_size
        )
        self.tokenizers = TokenizerCache(config)
        self._router = None
        self.expert_ids = set(config.expert_ids)

    # ------------------------------------------------------------------ routing
    def router(self):
        if self._router is None:
            from router import load_router

            r = self.config.router
            self._router = load_router(
                r.artifact,
                category_map=r.category_map,
                fallback_expert=r.fallback_expert,
                entropy_threshold=r.entropy_threshold,
            )
        return self._router

    async def route(self, prompt_or_messages, session: str | None = None):
        """Route via a per-replica batcher: requests arriving together share one encoder pass;
        `session` (OpenAI `user` / `x-session-id`) pins the conversation's expert (router/conversation.py)."""
        from router.batching import RouteBatcher
        from router.errors import InvalidPromptError

        if getattr(self, "_route_batcher", None) is None:
            self._route_batcher = RouteBatcher(self.router)
        try:
            return await self._route_batcher.route(prompt_or_messages, session)
        except InvalidPromptError as err:
            raise InvalidRequest(str(err), param="messages") from None

    # ------------------------------------------------------------------ prepare
    async def prepare(self, request: GenerationRequest) -> Prepared:
        limits = self.config.limits
        if request.max_tokens is not None and request.max_tokens > limits.max_tokens:
            raise LimitExceeded(
                f"max_tokens is {request.max_tokens}, the limit is {limits.max_tokens}; ask for fewer",
                param="max_tokens",
            )
        if request.messages is not None and len(request.messages) > limits.max_messages:
            raise LimitExceeded(
                f"{len(request.messages)} messages, the limit is {limits.max_messages}", param="messages"
            )
        prepared = Prepared(request=request, expert=request.model, input_ids=[], max_tokens=0)
        if request.model == COE_MODEL:
            decision = await self.route(
                request.messages if request.messages is not None else request.prompt,
                request.session_id,
            )
            prepared.expert, prepared.category = decision.expert, decision.category
            prepared.routed, prepared.fallback, prepared.entropy = True, decision.fallback, decision.entropy
            prepared.pinned = decision.pinned
        elif request.model not in self.expert_ids:
            raise ModelNotFound(
                f"model {request.model!r} does not exist; the model list (GET /v1/models, gRPC ListExperts) "
                f"has '{COE_MODEL}' and {len(self.expert_ids)} experts",
                param="model",
            )
        defaults = self.config.expert(prepared.expert).sampling
        prepared.sampling = Sampling.resolve(request, defaults)
        # An expert's own default may exceed the server's limit: the limit wins, silently (it is ours).
        prepared.max_tokens = (
            request.max_tokens
            if request.max_tokens is not None  # 0 is a request too: score the prompt (echo), no tokens
            else min(defaults.max_tokens or limits.default_max_tokens, limits.max_tokens)
        )
        if request.json_schema is not None:
            try:
                # cached; a bad schema is a 400 here, not an error on a socket
                await asyncio.to_thread(grammar_for, request.json_schema)
            except InvalidSchema as err:
                raise InvalidRequest(
                    f"response_format: the JSON schema cannot be used: {err}", param="response_format"
                ) from None
        prepared.input_ids = await asyncio.to_thread(self._tokenize, prepared)
        if len(prepared.input_ids) > limits.max_prompt_tokens:
            raise LimitExceeded(
                f"the prompt is {len(prepared.input_ids)} tokens, the limit is "
                f"{limits.max_prompt_tokens}; shorten it",
                param="messages",
            )
        return prepared

    def _tokenize(self, prepared: Prepared) -> list[int]:
        tokenizer = self.tokenizers.get(prepared.expert)
        request = prepared.request
        if request.prompt_ids is not None:
            vocab = len(tokenizer)
            bad = [t for t in request.prompt_ids if not 0 <= t < vocab]
            if bad:
                raise InvalidRequest(
                    f"prompt: token id {bad[0]} is outside the vocabulary of {prepared.expert!r} "
                    f"(0..{vocab - 1})",
                    param="prompt",
                )
            return list(request.prompt_ids)
        if request.messages is None:
            return list(tokenizer(request.prompt or "", add_special_tokens=False)["input_ids"])
        system = self.config.expert(prepared.expert).system_prompt
        messages = [dict(m) for m in request.messages]
        if system:
            if messages and messages[0]["role"] in {"system", "developer"}:
                messages[0] = {"role": "system", "content": f"{system}\n\n{messages[0]['content']}"}
            else:
                messages.insert(0, {"role": "system", "content": system})
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    # ------------------------------------------------------------------ dispatch
    async def _place(self, expert: str):
        try:
            return await self.leases.place(expert)
        except (RayTaskError, PlacementTimeout, NeverPlaceable, UnknownExpertError) as err:
            cause = _cause(err)  # a batched placement returns the authority's exception itself
            if isinstance(cause, PlacementTimeout):
                raise NoCapacity(
                    f"no socket could take expert {expert!r} in time: {cause}", retry_after_s=1.0
                ) from None
            if isinstance(cause, NeverPlaceable):
                raise NoCapacity(f"expert {expert!r} cannot be placed: {cause}") from None
            if isinstance(cause, UnknownExpertError):
                raise ModelNotFound(str(cause), param="model") from None
            raise

    async def stream(
        self, prepared: Prepared, info_out: list[CoEInfo], *, buffered: bool = False
    ) -> AsyncIterator[SocketEvent]:
        """Token events for `prepared`; `info_out` receives the CoEInfo once the expert is active.

        A socket that dies is dropped from MemTier and the request placed once more. Streaming
        callers (`buffered=False`) can only be retried before their first token; a buffered
        caller (a non-streaming response) gets the whole answer from one attempt, so a crash
        at any point is retried.

        A lease on a socket this process's Serve router does not know yet (LeaseMismatch) is
        placed again, with a growing pause, until the request's deadline: after a socket dies,
        Serve's replacement registers with MemTier, which places on it (empty, least loaded),
        before the router hears of it; on a loaded CI box that took longer than three tries.
        """
        payload = SocketRequest(
            expert=prepared.expert,
            input_ids=prepared.input_ids,
            more_prompts=prepared.more_input_ids,
            max_tokens=prepared.max_tokens,
            sampling=prepared.sampling,
            stop=prepared.request.stop,
            n=prepared.request.n,
            logprobs=prepared.request.logprobs,
            prompt_logprobs=prepared.request.prompt_logprobs,
            json_schema=prepared.request.json_schema,
        ).model_dump()
        deadline = time.monotonic() + self.config.limits.request_timeout_s
        retried = False
        placements = 0
        while True:
            placements += 1
            lease = await self._place(prepared.expert)
            responses = self.sockets.options(stream=True).generate.remote(
                payload, socket=lease.socket_id, lease=lease
            )
            sent_tokens = False
            held: list[SocketEvent] = []
            report = None
            try:
                async for raw in _with_deadline(responses, deadline):
                    event = SocketEvent.model_validate(raw)
                    if event.type == "activation":
                        report = event.report
                        info_out.clear()
                        info_out.append(
                            CoEInfo(
                                expert=prepared.expert,
                                category=prepared.category,
                                routed=prepared.routed,
                                fallback=prepared.fallback,
                                entropy=prepared.entropy,
                                pinned=prepared.pinned,
                                tier=event.report.tier,
                                socket=event.socket_id or lease.socket_id,
                                node=event.node_id or lease.node_id,
                                switch_s=event.report.switch_s,
                                retried=retried,
                            )
                        )
                        continue
                    if event.finish_reason == "error":
                        # The engine's text names the exception: logged here, never sent to the client.
                        logger.error("generation failed on socket %s: %s", lease.socket_id, event.text)
                        failed = f"generation failed on socket {lease.socket_id}"
                        raise CoEError(failed, code="internal_error")
                    if event.finish_reason == KV_TOO_LARGE:
                        raise LimitExceeded(
                            f"{event.text}: shorten the prompt or ask for fewer max_tokens",
                            param="max_tokens",
                        )
                    if event.queue_s is not None and info_out:
                        info_out[0].queue_s = event.queue_s
                    if buffered:
                        held.append(event)
                        if prepared.trace is not None and event.completion_tokens:
                            prepared.trace.first_token_arrived()  # TTFT, as vLLM times it for any request
                        continue
                    sent_tokens = True
                    yield event
                for event in held:
                    yield event
                if lease.holder:  # ours to release, or to keep for the next request (the socket did not)
                    await self._release(lease.lease_id, report, reuse=True)
                return
            except (asyncio.CancelledError, GeneratorExit):
                responses.cancel()
                await self._release(lease.lease_id)
                raise
            except (RayActorError, RayTaskError) as err:
                await self._release(lease.lease_id)
                cause = _cause(err)
                if isinstance(cause, LeaseMismatch):
                    self.leases.forget_socket(lease.socket_id)  # no replica answers for it: keep none there
                    pause = min(MISMATCH_PAUSE_S * placements, MAX_MISMATCH_PAUSE_S)
                    if time.monotonic() + pause >= deadline:
                        break
                    await asyncio.sleep(pause)
                    continue  # the router lost (or has not yet met) the leased replica: place again
                if isinstance(err, RayActorError) or isinstance(cause, RayActorError):
                    logger.warning("socket %s failed mid-request (%s); dropping it", lease.socket_id, err)
                    self.leases.forget_socket(lease.socket_id)
                    await self.memtier.drop_socket.remote(lease.socket_id)
                    if sent_tokens or retried:
                        raise SocketFailed(
                            f"socket {lease.socket_id} failed mid-request: {type(err).__name__}",
                            retry_after_s=1.0,
                        ) from None
                    retried = True
                    continue
                raise
            except BaseException:
                responses.cancel()
                await self._release(lease.lease_id)
                raise
        raise SocketFailed(
            f"could not reach a socket for this request after {placements} placements", retry_after_s=1.0
        )

    async def _release(self, lease_id: str, report=None, *, reuse: bool = False) -> None:
        """Release at MemTier; `reuse` (the request ended normally) lets the client keep the lease."""
        try:
            await self.leases.release(lease_id, report, reuse=reuse)
        except Exception as err:  # MemTier restarting: its lease TTL reaps the pin
            logger.warning("releasing lease %s failed: %s", lease_id, err)

    async def status(self):
        return await self.memtier.status.remote()


async def _with_deadline(responses, deadline: float):
    iterator = responses.__aiter__()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            responses.cancel()
            raise DeadlineExceeded("the request took longer than limits.request_timeout_s")
        try:
            item = await asyncio.wait_for(iterator.__anext__(), remaining)
        except StopAsyncIteration:
            return
        except TimeoutError:
            responses.cancel()
            raise DeadlineExceeded("the request took longer than limits.request_timeout_s") from None
        yield item
