"""The socket engine: iteration-level (continuous) batching of every expert active on one socket.

A scheduler is two queues and a budget (nano-vllm's `scheduler.py`): per expert, `waiting` rows
and `running` rows; each iteration of an expert runs at most one prefill chunk for rows being
admitted, then one decode step for every running row. A request that arrives while its expert
is decoding is prefilled at the next iteration and joins the running batch right after, instead
of waiting for the batch to end; a finished or cancelled row leaves at once. Long prompts are
prefilled in chunks of `prefill_chunk_tokens`, with a decode step of the running rows between
chunks, so a long prompt never stalls the others for more than one chunk. Several experts on one
socket take iterations in turn (round robin), so each gets a fair share of the socket.

KV budget (ARCHITECTURE invariant 8): the socket's HBM budget covers weights and KV cache; the
KV part (`kv_cache_per_socket`) is one checked number here. A row is admitted only if every
batch's worst case, rows x longest final row x bytes per token (see `kv_cache.py`: the padded
cache can never be larger), still fits; otherwise it waits in the queue, never OOMs, and its
wait is reported as `queue_s`. A row that could never fit alone is refused with a clear error.

What was measured and chosen (issue 13, 2-core CPU, SmolLM2-135M bf16, one torch thread):
transformers' `ContinuousBatchingManager` (paged KV) ran 8 requests at 15 tokens/s in all, a
plain padded batch at 61; so the cache here is a padded, right-aligned `DynamicCache` reshaped
only when rows join or leave (TGI's concatenate/filter). See bench/results/engine*.md for the
engine's own numbers against `model.generate`.

One engine thread per socket runs all forward passes: torch ops release the GIL, and the
replica's asyncio loop stays free to take requests and stream tokens (`call_soon_threadsafe`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from deployments.generation import Detokenizer, GenRequest, Row, TokenEvent, advance, sample_for
from deployments.kv_cache import cache_bytes, keep_rows, kv_bytes_per_token, merge
from deployments.sampling import TokenLogprob
from deployments.wire import KV_TOO_LARGE

logger = logging.getLogger("ray.serve")


@dataclass
class EngineStats:
    """What the socket is doing now, for metrics, routing stats and tests."""

    running: int
    waiting: int
    kv_reserved_bytes: int
    kv_cache_bytes: int
    kv_capacity_bytes: int
    iterations: int
    decode_steps: int
    prefill_chunks: int
    max_running: int


class KVBudget:
    """The socket's KV bytes: one number, checked before a row is admitted (STYLE: block_pool)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._held: dict[int, int] = {}

    def reserved_bytes(self) -> int:
        return sum(self._held.values())

    def fits(self, owner: object, bytes_needed: int) -> bool:
        others = sum(b for o, b in self._held.items() if o != id(owner))
        return others + bytes_needed <= self.capacity_bytes

    def hold(self, owner: object, bytes_held: int) -> None:
        if bytes_held:
            self._held[id(owner)] = bytes_held
        else:
            self._held.pop(id(owner), None)


@dataclass
class _Prefill:
    """Rows being prefilled together, `done` columns of their left-padded prompt matrix so far."""

    rows: list[Row]
    ids: torch.Tensor  # [b, W] left-padded prompts
    mask: torch.Tensor  # [b, W]
    positions: torch.Tensor  # [b, W]
    cache: DynamicCache
    done: int = 0


class ExpertBatch:
    """One expert's rows on a socket. Not thread-safe: the engine thread drives it, under its lock
    for the queue hand-off only."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        eos_ids: set[int],
        budget: KVBudget,
        *,
        max_batch_size: int,
        prefill_chunk_tokens: int,
    ) -> None:
        self.model = model
        self.eos_ids = eos_ids
        self.budget = budget
        self.max_batch_size = max_batch_size
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.decode = Detokenizer(tokenizer)
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.kv_bytes_per_token = kv_bytes_per_token(model.config, dtype)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(eos_ids, default=0)
        self.waiting: deque[Row] = deque()
        self.prefill: _Prefill | None = None
        self.running: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, W]
        self.lengths: torch.Tensor | None = None  # [B] real tokens per row = next position
        self.decode_steps = 0
        self.prefill_chunks = 0
        self.max_running = 0

    # ------------------------------------------------------------------ accounting
    def _rows(self) -> list[Row]:
        return self.running + (self.prefill.rows if self.prefill else [])

    def _worst_case_bytes(self, rows: list[Row]) -> int:
        if not rows:
            return 0
        return len(rows) * max(r.final_length for r in rows) * self.kv_bytes_per_token

    def _rebudget(self) -> None:
        self.budget.hold(self, self._worst_case_bytes(self._rows()))

    def cache_bytes(self) -> int:
        held = cache_bytes(self.cache) if self.cache is not None else 0
        return held + (cache_bytes(self.prefill.cache) if self.prefill else 0)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running and self.prefill is None

    # ------------------------------------------------------------------ scheduling
    def _sweep_cancelled(self) -> None:
        for row in [r for r in self.waiting if r.request.cancelled.is_set()]:
            self.waiting.remove(row)
            row.finish("cancelled")
        if any(r.request.cancelled.is_set() for r in self.running):
            for row in self.running:
                if row.request.cancelled.is_set():
                    row.finish("cancelled")
            self._drop_done()

    def _admit(self) -> list[Row]:
        """Waiting rows that start a prefill now: FIFO, within the batch size, the KV budget and
        at most 2x padding (a long prompt is not made to pad many short ones)."""
        group: list[Row] = []
        while self.waiting and len(self.running) + len(group) < self.max_batch_size:
            row = self.waiting[0]
            alone = row.final_length * self.kv_bytes_per_token
            if alone > self.budget.capacity_bytes:
                self.waiting.popleft()
                row.finish(
                    KV_TOO_LARGE,
                    f"prompt ({len(row.request.input_ids)} tokens) + max_tokens ({row.request.max_tokens}) "
                    f"needs {alone} bytes of KV cache; this socket has {self.budget.capacity_bytes}",
                )
                continue
            candidate = group + [row]
            lengths = [len(r.request.input_ids) for r in candidate]
            if group and len(candidate) * max(lengths) > 2 * sum(lengths):
                break
            if not self.budget.fits(self, self._worst_case_bytes(self.running + candidate)):
                break
            group.append(self.waiting.popleft())
        now = time.monotonic()
        for row in group:
            row.queue_s = now - row.request.submitted_s
        return group

    def runnable(self) -> bool:
        if self.running or self.prefill is not None:
            return True
        if not self.waiting:
            return False
        head = self.waiting[0]
        if head.request.cancelled.is_set() or head.final_length * self.kv_bytes_per_token > (
            self.budget.capacity_bytes
        ):
            return True  # to be swept or refused
        return self.budget.fits(self, self._worst_case_bytes([head]))

    def schedule(self) -> None:
        """Sweep cancelled rows and start a prefill group if none runs (under the engine's lock:
        `waiting` is fed from the event loop thread and the KV budget is the socket's)."""
        self._sweep_cancelled()
        if self.prefill is None:
            group = self._admit()
            if group:
                self.prefill = self._start_prefill(group)
                self._rebudget()

    @torch.inference_mode()
    def run(self) -> None:
        """The forward passes of one iteration: at most one prefill chunk, then one decode step."""
        if self.prefill is not None:
            self._prefill_chunk()
        if self.running:
            self._decode_step()

    def settle(self) -> None:
        """Give back the KV reservation of rows that left (under the engine's lock)."""
        self._rebudget()

    def step(self) -> None:
        """One whole iteration, for a single-threaded caller."""
        self.schedule()
        self.run()
        self.settle()

    def fail_all(self, err: BaseException) -> None:
        """A forward pass raised: end every row of this expert with the error, keep the socket."""
        message = f"[generation failed: {type(err).__name__}: {err}]"
        for row in list(self.waiting) + self._rows():
            if not row.done:
                row.finish("error", message)
        self.waiting.clear()
        self.running, self.prefill, self.cache, self.mask, self.lengths = [], None, None, None, None
        self.budget.hold(self, 0)

    # ------------------------------------------------------------------ prefill
    def _start_prefill(self, rows: list[Row]) -> _Prefill:
        width = max(len(r.request.input_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            prompt = row.request.input_ids
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self.device
        return _Prefill(rows, ids.to(device), mask.to(device), positions.to(device), DynamicCache())

    def _prefill_chunk(self) -> None:
        p = self.prefill
        assert p is not None
        width = p.ids.shape[1]
        columns = max(1, self.prefill_chunk_tokens // len(p.rows))
        end = min(width, p.done + columns)
        scoring = any(r.request.prompt_logprobs for r in p.rows)
        every = self.model(
            input_ids=p.ids[:, p.done : end],
            attention_mask=p.mask[:, :end],
            position_ids=p.positions[:, p.done : end],
            cache=p.cache,
            use_cache=True,
            logits_to_keep=0 if scoring else 1,  # all positions only when a row scores its prompt
        ).logits  # [b, end - done or 1, V]
        if scoring:
            self._score_prompts(p, every, end)
        logits = every[:, -1, :].float().cpu()  # [b, V]: sampled on the host (per-row CPU RNGs)
        p.done = end
        self.prefill_chunks += 1
        if end < width:
            return
        for i, row in enumerate(p.rows):
            if row.request.max_tokens == 0:  # scoring only (echo): the prompt's logprobs, no token
                row.finish("length")
                continue
            advance(row, sample_for(row, logits[i], self.eos_ids), self.decode, self.eos_ids)
        live = [i for i, row in enumerate(p.rows) if not row.done]
        self.prefill = None
        if not live:
            return
        new_mask = keep_rows(p.cache, p.mask, live) if len(live) < len(p.rows) else p.mask
        new_lengths = p.mask.sum(-1)[live]
        rows = [p.rows[i] for i in live]
        if self.cache is None:
            self.cache, self.mask, self.lengths = p.cache, new_mask, new_lengths
        else:
            self.mask = merge(self.cache, self.mask, p.cache, new_mask)
            self.lengths = torch.cat([self.lengths, new_lengths])
        self.running.extend(rows)
        self.max_running = max(self.max_running, len(self.running))

    def _score_prompts(self, p: _Prefill, every: torch.Tensor, end: int) -> None:
        """Logprobs of each prompt token under the model, for rows that asked (echo with logprobs).

        Column c's logits predict column c + 1's token; a row's first prompt token has no logprob.
        every: [b, end - done, V] for columns done..end-1 of the left-padded prompts."""
        width = p.ids.shape[1]
        for i, row in enumerate(p.rows):
            if not row.request.prompt_logprobs:
                continue
            start = width - len(row.request.input_ids)  # the row's first real column
            if p.done <= start < end:
                row.prompt_logprobs.append(TokenLogprob(int(p.ids[i, start]), None))
            first, last = max(p.done, start), min(end, width - 1)  # predicting columns first+1..last
            if first >= last:
                continue
            scores = torch.log_softmax(every[i, first - p.done : last - p.done].float(), dim=-1).cpu()
            targets = p.ids[i, first + 1 : last + 1].cpu()
            chosen = scores.gather(1, targets[:, None])[:, 0]  # [C]
            k = row.request.params.logprobs or 0
            top = torch.topk(scores, k, dim=-1) if k > 0 else None
            for j in range(last - first):
                alternatives = (
                    [(int(t), float(v)) for t, v in zip(top.indices[j], top.values[j], strict=True)]
                    if top is not None
                    else []
                )
                row.prompt_logprobs.append(TokenLogprob(int(targets[j]), float(chosen[j]), alternatives))

    # ------------------------------------------------------------------ decode
    def _decode_step(self) -> None:
        assert self.cache is not None and self.mask is not None and self.lengths is not None
        batch = len(self.running)
        tokens = torch.tensor([r.pending for r in self.running], dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((batch, 1))], dim=1)
        logits = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.lengths[:, None],
            cache=self.cache,
            use_cache=True,
        ).logits[:, -1, :].float().cpu()  # [B, V]
        self.lengths = self.lengths + 1
        self.decode_steps += 1
        for i, row in enumerate(self.running):
            advance(row, sample_for(row, logits[i], self.eos_ids), self.decode, self.eos_ids)
        self._drop_done()

    def _drop_done(self) -> None:
        live = [i for i, row in enumerate(self.running) if not row.done]
        if len(live) == len(self.running):
            return
        if not live:
            self.running, self.cache, self.mask, self.lengths = [], None, None, None
            return
        assert self.cache is not None and self.mask is not None and self.lengths is not None
        self.mask = keep_rows(self.cache, self.mask, live)
        self.lengths = self.lengths[live]
        self.running = [self.running[i] for i in live]


def generate_batch(
    model: torch.nn.Module,
    tokenizer,
    requests: list[GenRequest],
    eos_ids: set[int],
    *,
    prefill_chunk_tokens: int = 512,
    kv_capacity_bytes: int = 1 << 40,
) -> None:
    """Run `requests` to completion on the calling thread (tests, benches): the engine's own
    scheduling, so requests that do not fit one batch or the KV budget run as rows free up."""
    batch = ExpertBatch(
        model,
        tokenizer,
        eos_ids,
        KVBudget(kv_capacity_bytes),
        max_batch_size=max(1, len(requests)),
        prefill_chunk_tokens=prefill_chunk_tokens,
    )
    batch.waiting.extend(Row.of(r) for r in requests)
    while not batch.idle:
        batch.step()


class SocketEngine:
    """Every expert's `ExpertBatch` on one socket, driven by one thread, fed from asyncio."""

    def __init__(
        self,
        *,
        max_batch_size: int,
        prefill_chunk_tokens: int,
        kv_capacity_bytes: int,
        name: str = "socket",
    ) -> None:
        self.max_batch_size = max_batch_size
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.budget = KVBudget(kv_capacity_bytes)
        self._batches: dict[tuple[str, int], ExpertBatch] = {}
        self._order: deque[tuple[str, int]] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.iterations = 0
        self._retired_decode_steps = self._retired_prefill_chunks = self._retired_max_running = 0
        self._thread = threading.Thread(target=self._loop, name=f"coe-engine-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public
    def submit(
        self, expert: str, model: torch.nn.Module, tokenizer, eos_ids: set[int], request: GenRequest
    ) -> asyncio.Queue[TokenEvent]:
        """Queue `request`; returns the queue its TokenEvents arrive on (last one has a finish_reason)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        request.emit = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
        self.add(expert, model, tokenizer, eos_ids, request)
        return events

    def add(
        self, expert: str, model: torch.nn.Module, tokenizer, eos_ids: set[int], *requests: GenRequest
    ) -> None:
        """Queue `requests` with their own `emit` (thread-safe; used by `submit` and in-process benches).
        Requests added together (a request's n choices) are queued at once, so they prefill together."""
        key = (expert, id(model))  # a re-materialised expert is a new batch; the old one drains
        with self._wake:
            batch = self._batches.get(key)
            if batch is None:
                batch = ExpertBatch(
                    model,
                    tokenizer,
                    eos_ids,
                    self.budget,
                    max_batch_size=self.max_batch_size,
                    prefill_chunk_tokens=self.prefill_chunk_tokens,
                )
                self._batches[key] = batch
                self._order.append(key)
            batch.waiting.extend(Row.of(request) for request in requests)
            self._wake.notify()

    def wake(self) -> None:
        """Re-check queues now (a request was cancelled while waiting for KV room)."""
        with self._wake:
            self._wake.notify()

    def stats(self) -> EngineStats:
        with self._wake:
            batches = list(self._batches.values())
            return EngineStats(
                running=sum(len(b.running) + (len(b.prefill.rows) if b.prefill else 0) for b in batches),
                waiting=sum(len(b.waiting) for b in batches),
                kv_reserved_bytes=self.budget.reserved_bytes(),
                kv_cache_bytes=sum(b.cache_bytes() for b in batches),
                kv_capacity_bytes=self.budget.capacity_bytes,
                iterations=self.iterations,
                decode_steps=self._retired_decode_steps + sum(b.decode_steps for b in batches),
                prefill_chunks=self._retired_prefill_chunks + sum(b.prefill_chunks for b in batches),
                max_running=max([self._retired_max_running] + [b.max_running for b in batches]),
            )

    def rows_by_expert(self) -> dict[str, tuple[int, int]]:
        """expert -> (running rows, waiting rows) now: the vLLM running/waiting gauges, per expert."""
        counts: dict[str, tuple[int, int]] = {}
        with self._wake:
            for (expert, _), batch in self._batches.items():
                running, waiting = counts.get(expert, (0, 0))
                in_prefill = len(batch.prefill.rows) if batch.prefill else 0
                counts[expert] = (running + len(batch.running) + in_prefill, waiting + len(batch.waiting))
        return counts

    def kv_cache_bytes(self) -> int:
        """Bytes of KV cache tensors the socket really holds now (invariant 1 counts them)."""
        return self.stats().kv_cache_bytes

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the loop and wait for its step in flight: a daemon thread still inside torch when
        the interpreter exits aborts the process ("terminate called without an active exception")."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------ the loop
    def _next_batch(self) -> ExpertBatch | None:
        """The next expert in round-robin order that can make progress; drops idle ones."""
        for _ in range(len(self._order)):
            key = self._order[0]
            self._order.rotate(-1)
            batch = self._batches[key]
            if batch.idle:  # drop it (and its cache); keep its counts
                del self._batches[key]
                self._order.remove(key)
                self._retired_decode_steps += batch.decode_steps
                self._retired_prefill_chunks += batch.prefill_chunks
                self._retired_max_running = max(self._retired_max_running, batch.max_running)
                continue
            if batch.runnable():
                return batch
        return None

    def _loop(self) -> None:
        while True:
            with self._wake:
                batch = self._next_batch()
                while batch is None and not self._closed:
                    self._wake.wait(timeout=0.25)  # cancellations of KV-blocked rows need a re-check
                    batch = self._next_batch()
                if self._closed:
                    return
                self.iterations += 1
                batch.schedule()
            try:
                batch.run()  # forward passes outside the lock: submissions never wait on the model
            except Exception as err:  # keep the socket alive; fail this expert's rows
                logger.exception("engine step failed")
                with self._wake:
                    batch.fail_all(err)
                continue
            with self._wake:
                batch.settle()
