"""gRPC methods of the `CoERouter` ingress (service `coe.v1.CoE` in deployments/coe.proto).

How Ray Serve 2.60 drives them (ray/serve/_private/proxy.py, replica.py, grpc_util.py):
- The proxy picks the application by the `application` metadata and calls the ingress method
  named like the RPC (`/coe.v1.CoE/Generate` -> `Generate`) with the request proto. A method
  with a parameter named `grpc_context` receives a `RayServegRPCContext`.
- A server-streaming RPC is an async generator method: each yielded proto is one message.
- Errors: set the code and details on `grpc_context`, then raise. Serve wraps the exception in
  `gRPCStatusError` and the proxy answers with that code. (A code set without raising reaches
  the client only with a returned or yielded message, so it would be lost before a first chunk.)
- The client's deadline does not reach the replica: `RayServegRPCContext` has no
  `time_remaining()` and gRPC keeps `grpc-timeout` out of the metadata. When it expires, the
  proxy's gRPC server cancels the call, the proxy cancels the replica request, and Serve raises
  `CancelledError` in these methods. The client sees DEADLINE_EXCEEDED from its own library, and
  closing the service stream releases the lease. `limits.request_timeout_s` still bounds every
  request on the server (DeadlineExceeded -> DEADLINE_EXCEEDED).
- A client that cancels mid-stream takes the same path: Serve throws `CancelledError` into
  `GenerateStream`, whose `aclosing` closes `CoEService.stream`, which cancels the socket call
  and releases the lease.

Request handling is the HTTP path's: the same pydantic validation (openai_models), one
`GenerationRequest`, then `CoEService.prepare` / `stream`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError
from ray.serve.grpc_util import RayServegRPCContext

from deployments.errors import CoEError, InvalidRequest, internal_error, schema_error
from deployments.gate import gated
from deployments.grpc_stubs import coe_pb2
from deployments.model_cards import category_map
from deployments.openai_models import ChatCompletionRequest, CoEInfo, CompletionRequest, RouteRequest
from deployments.service import COE_MODEL
from deployments.wire import GenerationRequest

if TYPE_CHECKING:
    from cluster.config import ClusterConfig
    from deployments.gate import Gate
    from deployments.service import CoEService, Prepared
    from deployments.telemetry import Telemetry

logger = logging.getLogger("ray.serve")

_OPTIONAL_SAMPLING = ("max_tokens", "temperature", "top_p", "seed")


def grpc_abort(context: RayServegRPCContext, err: BaseException) -> NoReturn:
    """The one place a gRPC call turns an exception into a status (STYLE: one mapper per protocol).

    A `CoEError` carries its code (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, DEADLINE_EXCEEDED);
    anything else is a bug: logged here with its traceback, answered as a plain INTERNAL.
    """
    if not isinstance(err, CoEError):
        logger.error("unexpected error in a gRPC call", exc_info=err)
        err = internal_error(err)
    context.set_code(err.grpc_code)
    context.set_details(err.message)
    raise err


def _exactly_one_input(messages: list, has_prompt: bool) -> None:
    if bool(messages) == has_prompt:
        raise InvalidRequest("send exactly one of `messages` (non-empty) or `prompt`", param="messages")


def generation_request(request: coe_pb2.GenerateRequest, *, stream: bool) -> GenerationRequest:
    """Validate a GenerateRequest with the HTTP API's models and rules; unset fields get HTTP's defaults."""
    has_prompt = request.HasField("prompt")
    _exactly_one_input(request.messages, has_prompt)
    fields: dict = {"model": request.model, "stop": list(request.stop)}
    fields.update({name: getattr(request, name) for name in _OPTIONAL_SAMPLING if request.HasField(name)})
    try:
        if has_prompt:
            body = CompletionRequest.model_validate({**fields, "prompt": request.prompt})
        else:
            turns = [{"role": m.role, "content": m.content} for m in request.messages]
            body = ChatCompletionRequest.model_validate({**fields, "messages": turns})
    except ValidationError as err:
        raise schema_error(err) from None
    return body.model_copy(update={"stream": stream}).to_generation()


def _info_proto(info: CoEInfo) -> coe_pb2.CoEInfo:
    message = coe_pb2.CoEInfo(
        expert=info.expert,
        routed=info.routed,
        fallback=info.fallback,
        tier=info.tier,
        socket=info.socket,
        node=info.node,
        switch_s=info.switch_s,
        retried=info.retried,
    )
    if info.category is not None:
        message.category = info.category
    if info.entropy is not None:
        message.entropy = info.entropy
    return message


def _usage(prepared: Prepared, completion_tokens: int) -> coe_pb2.Usage:
    prompt_tokens = len(prepared.input_ids)
    return coe_pb2.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


class GrpcServicerMixin:
    """The RPCs of `coe.v1.CoE`, mixed into `CoERouter` (which sets `config` and `service`).

    Method names are the RPC names, CamelCase included: Serve's proxy dispatches by them.
    """

    config: ClusterConfig
    service: CoEService
    gate: Gate
    telemetry: Telemetry

    @gated(work=True)
    async def Generate(
        self, request: coe_pb2.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> coe_pb2.GenerateReply:
        trace = self.telemetry.trace("grpc", "Generate")
        try:
            prepared = await self.service.prepare(generation_request(request, stream=False))
            trace.bind(prepared)
            info: list[CoEInfo] = trace.info_out
            parts, finish, tokens = [], "stop", 0
            async with contextlib.aclosing(self.service.stream(prepared, info)) as events:
                async for event in events:
                    trace.saw(event)
                    parts.append(event.text)
                    tokens = event.completion_tokens or tokens
                    finish = event.finish_reason or finish
            reply = coe_pb2.GenerateReply(
                text="".join(parts), finish_reason=finish, usage=_usage(prepared, tokens)
            )
            if info:
                reply.coe.CopyFrom(_info_proto(info[0]))
            trace.finish()
            return reply
        except Exception as err:
            trace.fail(err)
            grpc_abort(grpc_context, err)
        finally:
            trace.abort()  # a no-op unless the call was cancelled (client deadline or hang-up)

    @gated(work=True)
    async def GenerateStream(
        self, request: coe_pb2.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[coe_pb2.GenerateChunk]:
        trace = self.telemetry.trace("grpc", "GenerateStream", stream=True)
        try:
            prepared = await self.service.prepare(generation_request(request, stream=True))
        except Exception as err:
            trace.fail(err)
            grpc_abort(grpc_context, err)
        trace.bind(prepared)
        info: list[CoEInfo] = trace.info_out
        tokens, sent_info, finished = 0, False, False
        # aclosing: a cancelled or failed call closes the service stream, which frees the lease.
        async with contextlib.aclosing(self.service.stream(prepared, info)) as events:
            try:
                async for event in events:
                    trace.saw(event)
                    tokens = event.completion_tokens or tokens
                    if not (event.text or event.finish_reason):
                        continue
                    chunk = coe_pb2.GenerateChunk(text=event.text, finish_reason=event.finish_reason or "")
                    if info and not sent_info:
                        chunk.coe.CopyFrom(_info_proto(info[0]))
                        sent_info = True
                    if event.finish_reason:
                        chunk.usage.CopyFrom(_usage(prepared, tokens))
                        finished = True
                    yield chunk
                trace.finish()
            except Exception as err:
                trace.fail(err)
                grpc_abort(grpc_context, err)
            finally:
                trace.abort()  # a no-op unless the call was cancelled (client deadline or hang-up)
        if not finished:  # the socket ended without a finish_reason: still close with the usage
            yield coe_pb2.GenerateChunk(finish_reason="stop", usage=_usage(prepared, tokens))

    @gated(work=True)
    async def Route(
        self, request: coe_pb2.RouteRequest, grpc_context: RayServegRPCContext
    ) -> coe_pb2.RouteReply:
        try:
            has_prompt = request.HasField("prompt")
            _exactly_one_input(request.messages, has_prompt)
            if has_prompt:
                target: str | list[dict] = request.prompt
            else:
                turns = [{"role": m.role, "content": m.content} for m in request.messages]
                try:
                    body = RouteRequest.model_validate({"messages": turns})
                except ValidationError as err:
                    raise schema_error(err) from None
                target = [{"role": m.role, "content": m.text()} for m in body.messages or []]
            decision = await self.service.route(target)
            return coe_pb2.RouteReply(
                category=decision.category,
                expert=decision.expert,
                probabilities=decision.probabilities,
                entropy=decision.entropy,
                fallback=decision.fallback,
            )
        except Exception as err:
            grpc_abort(grpc_context, err)

    @gated(work=False)
    async def ListExperts(
        self, request: coe_pb2.ListExpertsRequest, grpc_context: RayServegRPCContext
    ) -> coe_pb2.ListExpertsReply:
        try:
            categories = await category_map(self.config, self.service)
            fallback = self.config.router.fallback_expert
            experts = [
                coe_pb2.Expert(
                    id=expert.id,
                    size_bytes=expert.size_bytes,
                    categories=sorted(c for c, e in categories.items() if e == expert.id),
                    fallback=expert.id == fallback,
                )
                for expert in self.config.experts
            ]
            return coe_pb2.ListExpertsReply(routed_model=COE_MODEL, experts=experts)
        except Exception as err:
            grpc_abort(grpc_context, err)

    @gated(work=False)
    async def MemtierStatus(
        self, request: coe_pb2.MemtierStatusRequest, grpc_context: RayServegRPCContext
    ) -> coe_pb2.MemtierStatusReply:
        try:
            status = await self.service.status()
            nodes = [
                coe_pb2.NodeStatus(
                    node_id=node.node_id,
                    ddr_bytes=node.ddr_bytes,
                    used_bytes=node.used_bytes,
                    residents=node.residents,
                    sockets=[
                        coe_pb2.SocketStatus(
                            socket_id=s.socket_id,
                            node_id=s.node_id,
                            hbm_bytes=s.hbm_bytes,
                            used_bytes=s.used_bytes,
                            pinned_bytes=s.pinned_bytes,
                            residents=s.residents,
                            leases=s.leases,
                        )
                        for s in node.sockets
                    ],
                )
                for node in status.nodes
            ]
            stats = status.stats
            return coe_pb2.MemtierStatusReply(
                nodes=nodes,
                hbm_hit_rate=stats.hbm_hit_rate,
                ddr_hit_rate=stats.ddr_hit_rate,
                leases_granted=stats.leases,
                hbm_evictions=stats.hbm_evictions,
                store_reads=stats.store_reads,
                status_json=status.model_dump_json(),
            )
        except Exception as err:
            grpc_abort(grpc_context, err)
