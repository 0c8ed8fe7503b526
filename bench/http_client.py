"""One streaming chat completion over the OpenAI HTTP API, timed chunk by chunk.

SSE is parsed by hand (lines of `data: ...`, blank-line separated, ending in `data: [DONE]`),
so nothing between the socket and the clock buffers or retries: the official client retries
5xx twice (RAY-NOTES), which would hide failures and skew latency.
"""

from __future__ import annotations

import json
import time

import httpx

from bench.metrics import RequestRecord
from bench.requests import RequestSpec

__all__ = ["auth_headers", "chat_body", "stream_chat"]


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer <first key in $COE_API_KEY>` when the server under test needs a key."""
    from deployments.grpc_client import env_api_key

    key = env_api_key()
    return {"authorization": f"Bearer {key}"} if key else {}


def chat_body(spec: RequestSpec, max_tokens: int, temperature: float) -> dict:
    return {
        "model": spec.model,
        "messages": [{"role": "user", "content": spec.prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": spec.seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _apply_chunk(record: RequestRecord, data: dict, now_s: float) -> None:
    """Fold one SSE JSON payload into the record (content time, usage, server tier/expert)."""
    if "error" in data:
        error = data["error"]
        record.error = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        return
    coe = data.get("coe")
    if coe and record.tier is None:
        record.tier, record.expert, record.socket = coe.get("tier"), coe.get("expert"), coe.get("socket")
    usage = data.get("usage")
    if usage:
        record.output_tokens = int(usage.get("completion_tokens") or 0)
    for choice in data.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content"):
            record.chunk_s.append(now_s)


async def stream_chat(
    client: httpx.AsyncClient,
    url: str,
    spec: RequestSpec,
    *,
    max_tokens: int,
    temperature: float,
    timeout_s: float,
) -> RequestRecord:
    """Send `spec`, read its stream to the end; never raises: failures land in `record.error`."""
    record = RequestRecord(
        index=spec.index, model=spec.model, category=spec.category, start_s=time.perf_counter()
    )
    done = False
    try:
        async with client.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=chat_body(spec, max_tokens, temperature),
            timeout=timeout_s,
        ) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                record.error = f"HTTP {response.status_code}: {body[:300]}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                _apply_chunk(record, json.loads(payload), time.perf_counter())
        if record.error is None and not done:
            record.error = "stream ended without [DONE]"
    except Exception as err:  # any failure is counted, never lost: sent == completed + failed
        record.error = f"{type(err).__name__}: {err}"
    finally:
        record.end_s = time.perf_counter()
    if record.error is None:
        if record.output_tokens == 0:
            record.output_tokens = len(record.chunk_s)
        record.ok = True
    return record
