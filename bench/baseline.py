"""The baseline: plain Ray Serve model multiplexing (`@serve.multiplexed`), as strong as it honestly gets.

What it shares with CoE, so the comparison isolates the memory system:

* the same sockets: one replica per `coe_socket` (same count, resource, `num_cpus` and so the
  same torch thread count, RAY-NOTES), at most `sockets_per_node` per node;
* the same per-socket memory: `max_num_models_per_replica` K = experts that fit in one socket's
  HBM budget (`hbm_per_socket // largest expert`);
* the same `max_ongoing_requests`, dtype, tokenisation (chat template + the expert's system
  prompt, in the ingress) and generation engine: `deployments.engine.SocketEngine`, i.e.
  requests for one model on one replica are *continuously batched exactly like CoE's* (same
  `max_batch_size`, prefill chunk and KV budget), not run one at a time;
* the same STORE checkpoints, loaded on a miss with `AutoModelForCausalLM.from_pretrained`.

Where it is stronger than the example in Ray's docs: the load runs in a worker thread, so a
replica keeps generating for its resident models while it loads another (the docs' loader
blocks the replica's event loop). What it keeps from `@serve.multiplexed` by definition: an
LRU counted in models per replica, loads serialised per replica, no pinning (a model being used
can be evicted; its memory is freed when the last batch using it ends), and Serve's routing by
model id. There is no DDR tier of its own: the OS page cache plays that part, for free.

The hit rate counts requests that did not trigger a load (the model was resident, or another
request was already loading it), the same definition as CoE's `tier == "hbm"`.
"""
# No `from __future__ import annotations`: FastAPI must see the real `Request` type on routes.

import asyncio
import contextvars
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve

from cluster.config import ClusterConfig
from deployments.app import socket_actor_options
from deployments.engine import SocketEngine
from deployments.generation import GenRequest, eos_token_ids
from deployments.openai_models import ChatCompletionRequest, Usage
from deployments.sampling import SamplingParams
from deployments.tokenizers import TokenizerCache
from deployments.wire import Sampling

__all__ = ["build_baseline_app", "models_per_replica"]

logger = logging.getLogger("ray.serve")
app = FastAPI(title="Baseline: Ray Serve model multiplexing")

# Set by the loader, read by the request that awaited it: the loader runs in the caller's task,
# so this tells a request whether *it* triggered the load (a miss) or found the model (a hit).
_LOADED_BY_THIS_REQUEST: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "loaded_by_this_request", default=None
)


def _mark_load(seconds: float | None) -> None:
    """Module-level accessors: the replica class is pickled by value, a ContextVar cannot be."""
    _LOADED_BY_THIS_REQUEST.set(seconds)


def _load_seconds() -> float | None:
    return _LOADED_BY_THIS_REQUEST.get()


def models_per_replica(config: ClusterConfig) -> int:
    """K: experts that fit one socket's HBM budget (by the largest expert, so any K fit)."""
    largest = max(e.size_bytes for e in config.experts)
    return max(1, config.topology.weights_per_socket // largest)


@dataclass
class LoadedExpert:
    model: torch.nn.Module
    eos_ids: set[int]
    size_bytes: int


def _load(path: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def multiplexed_experts_class(max_models: int) -> type:
    """The replica class with `@serve.multiplexed(max_num_models_per_replica=max_models)`.

    Built per K because the decorator takes K at class-definition time.
    """

    class MultiplexedExperts:
        def __init__(self, config: ClusterConfig) -> None:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            self.config = config
            self.tokenizers = TokenizerCache(config)
            self.replica_id = serve.get_replica_context().replica_id.unique_id
            self.engine = SocketEngine(
                max_batch_size=config.serve.max_batch_size,
                prefill_chunk_tokens=config.serve.prefill_chunk_tokens,
                kv_capacity_bytes=config.topology.kv_cache_per_socket,
                name=self.replica_id,
            )
            # Multiplexing has no pinning: an evicted model lives on while its batch runs. Count the
            # distinct models in use at once; above K, the replica held more than its budget.
            self.in_use: Counter[int] = Counter()
            self.peak_in_use = 0

        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def get_model(self, model_id: str) -> LoadedExpert:
            expert = self.config.expert(model_id)
            started = time.perf_counter()
            model = await asyncio.to_thread(
                _load, str(self.config.checkpoint_path(expert)), getattr(torch, expert.dtype)
            )
            loaded = LoadedExpert(
                model, eos_token_ids(model, self.tokenizers.get(model_id)), expert.size_bytes
            )
            _mark_load(time.perf_counter() - started)
            return loaded

        async def generate(self, request: dict) -> AsyncIterator[dict]:
            """An activation event (hit or load), then token events until a finish_reason."""
            model_id = serve.get_multiplexed_model_id()
            _mark_load(None)
            loaded = await self.get_model(model_id)
            load_s = _load_seconds()
            key = id(loaded)
            self.in_use[key] += 1
            self.peak_in_use = max(self.peak_in_use, len(self.in_use))
            gen = GenRequest(
                input_ids=request["input_ids"],
                max_tokens=request["max_tokens"],
                params=SamplingParams(**request["sampling"]),
                stop=request["stop"],
            )
            try:
                yield {
                    "type": "activation",
                    "hit": load_s is None,
                    "load_s": load_s or 0.0,
                    "bytes_loaded": 0 if load_s is None else loaded.size_bytes,
                    "replica": self.replica_id,
                    "peak_models_in_use": self.peak_in_use,
                }
                events = self.engine.submit(
                    model_id, loaded.model, self.tokenizers.get(model_id), loaded.eos_ids, gen
                )
                while True:
                    event = await events.get()
                    yield {
                        "type": "token",
                        "text": event.text,
                        "completion_tokens": event.completion_tokens,
                        "finish_reason": event.finish_reason,
                    }
                    if event.finish_reason is not None:
                        return
            finally:
                gen.cancelled.set()
                self.in_use[key] -= 1
                if not self.in_use[key]:
                    del self.in_use[key]

    return MultiplexedExperts


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


@serve.ingress(app)
class BaselineIngress:
    """OpenAI-compatible enough for bench.load: chat completions (streaming or not), models, stats."""

    def __init__(self, config: ClusterConfig, experts) -> None:
        self.config = config
        self.experts = experts
        self.tokenizers = TokenizerCache(config)
        self.expert_ids = set(config.expert_ids)
        self.counters = {"hits": 0, "misses": 0, "loads": 0, "bytes_loaded": 0, "load_s_total": 0.0}
        self.peak_models_in_use = 0  # the most distinct models one replica ran at once (max over replicas)

    def _tokenize(self, expert: str, messages: list[dict]) -> list[int]:
        """As CoE's ingress does: the expert's system prompt first, then the chat template."""
        system = self.config.expert(expert).system_prompt
        if system:
            if messages and messages[0]["role"] == "system":
                messages[0] = {"role": "system", "content": f"{system}\n\n{messages[0]['content']}"}
            else:
                messages.insert(0, {"role": "system", "content": system})
        encoded = self.tokenizers.get(expert).apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def _count(self, activation: dict) -> None:
        self.peak_models_in_use = max(self.peak_models_in_use, activation["peak_models_in_use"])
        if activation["hit"]:
            self.counters["hits"] += 1
        else:
            self.counters["misses"] += 1
            self.counters["loads"] += 1
            self.counters["bytes_loaded"] += activation["bytes_loaded"]
            self.counters["load_s_total"] += activation["load_s"]

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        try:
            body = ChatCompletionRequest.model_validate(await request.json())
        except (ValidationError, ValueError) as err:
            return _error(400, f"invalid request: {err}")
        if body.model not in self.expert_ids:
            return _error(404, f"model {body.model!r} does not exist", "model")
        max_tokens = body.token_limit() or self.config.limits.default_max_tokens
        if max_tokens > self.config.limits.max_tokens:
            return _error(400, f"max_tokens is {max_tokens}, the limit is {self.config.limits.max_tokens}")
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        input_ids = await asyncio.to_thread(self._tokenize, body.model, messages)
        generation = body.to_generation()
        payload = {
            "input_ids": input_ids,
            "max_tokens": max_tokens,
            "sampling": Sampling.resolve(generation, self.config.expert(body.model).sampling).model_dump(),
            "stop": body.stop_list(),
        }
        handle = self.experts.options(multiplexed_model_id=body.model, stream=True)
        events = handle.generate.remote(payload).__aiter__()
        try:
            activation = await events.__anext__()
        except Exception as err:
            logger.exception("baseline replica failed")
            return _error(500, f"internal error: {type(err).__name__}")
        self._count(activation)
        info = {
            "expert": body.model,
            "tier": "hbm" if activation["hit"] else "store",
            "socket": activation["replica"],
            "switch_s": activation["load_s"],
        }
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.stream:
            parts, tokens, finish = [], 0, "stop"
            async for event in events:
                parts.append(event["text"])
                tokens = event["completion_tokens"] or tokens
                finish = event["finish_reason"] or finish
            usage = Usage.of(len(input_ids), tokens).model_dump()
            return JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": body.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(parts)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                    "coe": info,
                }
            )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None) -> dict:
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                "coe": info,
            }

        async def stream() -> AsyncIterator[str]:
            tokens = 0
            yield _sse(chunk({"role": "assistant", "content": ""}, None))
            try:
                async for event in events:
                    tokens = event["completion_tokens"] or tokens
                    if event["text"] or event["finish_reason"]:
                        delta = {"content": event["text"]} if event["text"] else {}
                        yield _sse(chunk(delta, event["finish_reason"]))
                if include_usage:
                    usage = Usage.of(len(input_ids), tokens).model_dump()
                    yield _sse(
                        {
                            "id": rid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": body.model,
                            "choices": [],
                            "usage": usage,
                        }
                    )
            except Exception as err:
                logger.exception("baseline stream failed")
                yield _sse(
                    {"error": {"message": f"internal error: {type(err).__name__}", "type": "server_error"}}
                )
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {"id": e.id, "object": "model", "owned_by": "baseline", "size_bytes": e.size_bytes}
                for e in self.config.experts
            ],
        }

    @app.get("/v1/stats")
    async def stats(self) -> dict:
        """Cumulative counters; hit = the request's model was loaded (or loading) on its replica."""
        total = self.counters["hits"] + self.counters["misses"]
        return {
            **self.counters,
            "hit_rate": self.counters["hits"] / total if total else 0.0,
            "max_num_models_per_replica": models_per_replica(self.config),
            "peak_models_in_use": self.peak_models_in_use,
        }

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}


def build_baseline_app(config: ClusterConfig, max_models: int | None = None):
    """The baseline Serve application for `config` (same sockets and limits as CoE's)."""
    topo = config.topology
    k = max_models or models_per_replica(config)
    experts = serve.deployment(
        multiplexed_experts_class(k),
        name="MultiplexedExperts",
        num_replicas=topo.total_sockets,
        max_replicas_per_node=topo.sockets_per_node,
        max_ongoing_requests=config.serve.max_ongoing_requests,
        ray_actor_options=socket_actor_options(config),
    ).bind(config)
    return serve.deployment(
        BaselineIngress,
        name="BaselineIngress",
        num_replicas=1,
        max_ongoing_requests=1024,
        ray_actor_options={"num_cpus": 0},
    ).bind(config, experts)
