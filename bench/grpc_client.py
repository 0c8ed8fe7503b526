"""One streaming generation over gRPC (`coe.v1.CoE/GenerateStream`), timed chunk by chunk.

The twin of `bench.http_client` for `python -m bench.load --grpc HOST:PORT`: same request
(expert or `coe`, one user turn, max_tokens, temperature, seed), same record. Requests go
through Serve's gRPC proxy with the `application` metadata; server counters still come from
`--url`'s `GET /v1/memtier`, since the gRPC status reply carries no tier counters.
"""

from __future__ import annotations

import time

import grpc

from bench.metrics import RequestRecord
from bench.requests import RequestSpec
from deployments.grpc_client import env_api_key, generate_request
from deployments.grpc_stubs import coe_pb2_grpc

__all__ = ["GrpcSender"]


class GrpcSender:
    """An aio channel to one target; create it inside the event loop that sends, `close()` after."""

    def __init__(
        self, target: str, *, app: str, max_tokens: int, temperature: float, timeout_s: float
    ) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = coe_pb2_grpc.CoEStub(self.channel)
        key = env_api_key()
        self.metadata = (("application", app), *((("authorization", f"Bearer {key}"),) if key else ()))
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout_s = timeout_s

    async def send(self, spec: RequestSpec) -> RequestRecord:
        """Never raises: an RPC error lands in `record.error`."""
        request = generate_request(
            spec.prompt,
            model=spec.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=spec.seed,
        )
        record = RequestRecord(
            index=spec.index, model=spec.model, category=spec.category, start_s=time.perf_counter()
        )
        finished = False
        try:
            call = self.stub.GenerateStream(request, metadata=self.metadata, timeout=self.timeout_s)
            async for chunk in call:
                now_s = time.perf_counter()
                if record.tier is None and chunk.HasField("coe"):
                    record.tier, record.expert, record.socket = (
                        chunk.coe.tier,
                        chunk.coe.expert,
                        chunk.coe.socket,
                    )
                if chunk.text:
                    record.chunk_s.append(now_s)
                if chunk.HasField("usage") and chunk.usage.completion_tokens:
                    record.output_tokens = chunk.usage.completion_tokens
                finished = finished or bool(chunk.finish_reason)
            if not finished:
                record.error = "stream ended without a finish_reason"
        except grpc.aio.AioRpcError as err:
            record.error = f"gRPC {err.code().name}: {err.details()}"
        except Exception as err:  # counted, never lost
            record.error = f"{type(err).__name__}: {err}"
        finally:
            record.end_s = time.perf_counter()
        if record.error is None:
            record.output_tokens = record.output_tokens or len(record.chunk_s)
            record.ok = True
        return record

    async def close(self) -> None:
        await self.channel.close()
