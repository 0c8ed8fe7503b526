"""Switch time: how long an expert takes to become usable from each tier, beside the hardware limits.

For experts of several sizes, one run measures, through memtier's own code paths:

* ``hbm``: an HBM hit, ``SocketResidency.acquire`` of a resident expert (a lookup and a pin).
* ``ddr``: the expert is in this node's object store: ``DDRStore.get`` (a hit) + ``ray.get`` of
  the ref + ``Materializer.materialize`` with a warm skeleton pool, as in steady state.
* ``ddr_first``: the same with a fresh ``Materializer``, so the skeleton is built (imports warm).
* ``ddr_copy``: the ``ddr`` path plus a private copy of every array into a destination touched
  once: what an H2D-like copy costs on CPU, where ``ddr`` itself maps the object store zero-copy.
* ``store_cold``: the expert is evicted from DDR and its file dropped from the page cache, then
  ``DDRStore.get`` reads the STORE (``read_weights`` + ``ray.put``), ``ray.get`` and materialise.

and ``serving_store`` (`bench.switch_serving`): the same STORE miss through MemTier placement and a
socket's own residency code, beside ``store_cold`` in the same run, plus concurrent misses.

And, on the same machine in the same run, ``memcpy_gbps`` (``np.copyto`` into a destination touched
once, RAY-NOTES) and ``cold_store_gbps`` (plain reads of a file dropped from the page cache).

Run ``python -m bench.switch`` (``--quick`` for two sizes, about a minute on 2 cores); results go to
``bench/results/switch.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import ray
import torch
from pydantic import BaseModel, Field

from bench.switch_serving import ParallelMiss, ServingRig, serving_config
from cluster import zoo
from cluster.paths import zoo_dir
from memtier.ddr_store import DDRStore
from memtier.materialize import Materialized, Materializer
from memtier.models import Lease
from memtier.socket_residency import SocketResidency
from memtier.store import checkpoint_info
from memtier.weights import ExpertWeights

__all__ = ["SwitchReport", "SwitchRow", "build_expert", "main", "run_switch_bench", "write_outputs"]

TIERS: tuple[str, ...] = ("hbm", "ddr", "ddr_first", "ddr_copy", "store_cold", "serving_store")
QUICK_SIZES_BYTES = (25 * 10**6, 100 * 10**6)
FULL_SIZES_BYTES = (25 * 10**6, 100 * 10**6)  # plus the 269 MB SmolLM2 demo expert (or a 270 MB one)
DEMO_FALLBACK_BYTES = 270 * 10**6
GOAL_MIN_EXPERT_BYTES = 100 * 10**6
GOAL_DDR_RATIO_TO_MEMCPY = 0.8
GOAL_STORE_OVER_DDR = 10.0
GOAL_SERVING_OVER_STORE_COLD = 1.5  # issue 17: a serving STORE miss within 1.5x of store_cold
HBM_HIT_REPETITIONS = 200  # a hit costs microseconds: many samples for a stable median
_ALIGN_BYTES = 256  # every private copy starts aligned for any dtype view (as materialize.py stages)
_READ_CHUNK_BYTES = 8 * 2**20


class SwitchRow(BaseModel):
    """The median activation time of one expert from one tier."""

    expert: str = Field(description="Checkpoint directory name.")
    expert_bytes: int = Field(description="Tensor bytes of the expert (what DDR and HBM hold).")
    tier: str = Field(
        description="hbm | ddr | ddr_first | ddr_copy | store_cold | serving_store (module docstring)."
    )
    seconds: float = Field(description="Median over `repetitions` activations.")
    gbps: float = Field(description="expert_bytes / seconds / 1e9: an *effective* rate, not bytes copied.")
    ratio_to_memcpy: float = Field(description="gbps / memcpy_gbps of the same run.")
    repetitions: int
    parts_s: dict[str, float] = Field(
        default_factory=dict,
        description="Median seconds per step: fetch (DDRStore.get; the STORE read on a miss), map "
        "(ray.get), copy (ddr_copy only), materialize.",
    )


class Machine(BaseModel):
    cpu_count: int
    torch_version: str
    ray_version: str
    device: str = Field(description="Where 'HBM' is: cpu here (a socket is a CPU worker).")
    platform: str


class SwitchReport(BaseModel):
    """Everything ``switch.json`` holds: the exact command, the machine, the limits and every row."""

    command: str
    machine: Machine
    repetitions: int = Field(description="Activations per (expert, tier), except hbm (HBM_HIT_REPETITIONS).")
    memcpy_gbps: float = Field(description="np.copyto into a destination touched once; median.")
    memcpy_bytes: int
    cold_store_gbps: float = Field(description="Plain reads of a file dropped from the page cache; median.")
    cold_store_file: str
    ddr_zero_copy: bool = Field(
        description="Whether ray.get of a DDR ref returned read-only views of the object store (zero-copy) "
        "rather than private copies unpickled from it."
    )
    rows: list[SwitchRow]
    parallel: ParallelMiss | None = Field(
        None, description="Concurrent serving misses of every expert (bench.switch_serving), same run."
    )


# --------------------------------------------------------------------------- experts to switch
def bench_model_config(target_bytes: int):
    """A Llama config of about `target_bytes` in bf16: SmolLM2's layer shape (hidden 576, 9 heads,
    3 KV heads) with a small vocabulary, so the layer count, not one huge embedding, sets the size
    and the tensor count grows with size as in real experts. Below 20 MB a narrower shape is used."""
    hidden, heads, kv_heads, vocab = (576, 9, 3, 8192) if target_bytes >= 20 * 10**6 else (128, 4, 2, 4096)
    intermediate = hidden * 8 // 3
    kv_dim = hidden // heads * kv_heads
    per_layer_bytes = 2 * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * intermediate + 2 * hidden)
    embedding_bytes = 2 * vocab * hidden
    layers = max(1, round((target_bytes - embedding_bytes) / per_layer_bytes))
    return zoo.random_expert_config(  # index 0: Llama
        0,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
    )


def _random_state_dict(config, seed: int) -> dict[str, torch.Tensor]:
    """Random bf16 weights with the model's names and shapes (tied lm_head stored once, as the zoo)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, param in skeleton.state_dict().items():
        if name == "lm_head.weight":
            continue
        if param.dim() == 1:  # norms
            state_dict[name] = torch.ones(param.shape, dtype=torch.bfloat16)
        else:
            state_dict[name] = (torch.randn(param.shape, generator=generator) * 0.02).to(torch.bfloat16)
    return state_dict


def build_expert(root: Path, target_bytes: int, seed: int = 0) -> Path:
    """A random-weight expert of about `target_bytes` under `root`, written once (stamped) in the
    zoo's layout (safetensors + config.json) by `cluster.zoo.write_expert_dir`."""
    out = root / f"switch-{target_bytes // 10**6}mb"
    stamp = {"format": zoo.ZOO_FORMAT, "bench": "switch", "target_bytes": target_bytes, "seed": seed}
    stamp_file = out / "coe_build.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return out
    config = bench_model_config(target_bytes)
    no_tokenizer = root / "no-tokenizer"  # switching never tokenises: ship no tokenizer files
    no_tokenizer.mkdir(parents=True, exist_ok=True)
    zoo.write_expert_dir(
        out,
        _random_state_dict(config, seed),
        config,
        no_tokenizer,
        expert_id=out.name,
        category="bench",
        system_prompt="",
        stamp=stamp,
    )
    return out


def demo_expert_or_generated(root: Path) -> Path:
    """The real 269 MB SmolLM2 demo expert ("code"); a generated 270 MB one if the zoo cannot be built."""
    try:
        return zoo.build_demo(zoo_dir(), zoo.DEMO_EXPERTS[:1])[0]
    except (FileNotFoundError, ImportError) as err:
        print(f"demo expert unavailable ({err}); using a generated 270 MB expert", file=sys.stderr)
        return build_expert(root, DEMO_FALLBACK_BYTES)


# --------------------------------------------------------------------------- physical limits
def drop_page_cache(checkpoint: Path) -> None:
    """Evict the checkpoint's weight files from the page cache, so the next read hits the disk.

    fsync first: DONTNEED skips dirty pages, and a freshly built expert is all dirty pages.
    """
    for file in checkpoint_info(checkpoint).files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _median_s(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))


def measure_memcpy_gbps(num_bytes: int, repetitions: int) -> float:
    """np.copyto bandwidth into a destination touched once before, so page faults are not timed."""
    source = np.full(num_bytes, 7, dtype=np.uint8)
    destination = np.zeros(num_bytes, dtype=np.uint8)
    np.copyto(destination, source)  # touch every page once
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        np.copyto(destination, source)
        samples.append(time.perf_counter() - started)
    return num_bytes / _median_s(samples) / 1e9


def measure_cold_read_gbps(checkpoint: Path, repetitions: int) -> float:
    """Plain unbuffered reads of the checkpoint's files, dropped from the page cache before each pass."""
    files = checkpoint_info(checkpoint).files
    total_bytes = sum(os.path.getsize(f) for f in files)
    buffer = bytearray(_READ_CHUNK_BYTES)  # reused: one chunk, touched by the first read
    view = memoryview(buffer)
    samples = []
    for _ in range(repetitions):
        drop_page_cache(checkpoint)
        started = time.perf_counter()
        for file in files:
            with open(file, "rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass
        samples.append(time.perf_counter() - started)
    return total_bytes / _median_s(samples) / 1e9


# --------------------------------------------------------------------------- activations
def _private_copy(weights: ExpertWeights, destination: np.ndarray) -> ExpertWeights:
    """Copy every array into slices of one buffer allocated and touched once (the CUDA path's
    staging buffer); returns weights that own no object-store memory."""
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for name, array in weights.arrays.items():
        slot = destination[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(slot, array)
        arrays[name] = slot
        offset += -(-array.nbytes // _ALIGN_BYTES) * _ALIGN_BYTES
    return ExpertWeights(arrays=arrays, torch_dtypes=weights.torch_dtypes)


def _copy_buffer(size_bytes: int, tensor_count: int) -> np.ndarray:
    buffer = np.empty(size_bytes + tensor_count * _ALIGN_BYTES, dtype=np.uint8)
    buffer.fill(0)  # touch once, as a device buffer would be allocated once
    return buffer


def activate(
    store, expert: str, materializer: Materializer, copy_into: np.ndarray | None = None
) -> tuple[dict[str, float], bool, Materialized]:
    """One activation as a socket pages in (SocketResidency._page_in): ask the node's DDR store for
    the ref, map it, optionally copy it, materialise. Returns (seconds per step, store_read, model)."""
    started = time.perf_counter()
    fetched = ray.get(store.get.remote(expert))
    fetched_at = time.perf_counter()
    payload = ray.get(fetched["ref"][0])
    mapped_at = time.perf_counter()
    weights = ExpertWeights(arrays=payload["arrays"], torch_dtypes=payload["dtypes"])
    if copy_into is not None:
        weights = _private_copy(weights, copy_into)
    copied_at = time.perf_counter()
    materialized = materializer.materialize(expert, weights, payload["config"], torch.bfloat16)
    done_at = time.perf_counter()
    parts = {
        "fetch": fetched_at - started,
        "map": mapped_at - fetched_at,
        "copy": copied_at - mapped_at,
        "materialize": done_at - copied_at,
        "total": done_at - started,
    }
    return parts, bool(fetched["store_read"]), materialized


def ddr_maps_zero_copy(store, expert: str) -> bool:
    """True if a socket's `ray.get` of the DDR store's ref maps shared memory instead of copying.

    Ray hands numpy arrays over zero-copy only when they were pickled out of band; those come back
    read-only. A private copy (for example of an ndarray subclass, pickled in band) is writable.
    """
    payload = ray.get(ray.get(store.get.remote(expert))["ref"][0])
    return not any(array.flags.writeable for array in payload["arrays"].values())


async def _hbm_hit_samples(store, expert: str, size_bytes: int, repetitions: int) -> list[float]:
    """Time `SocketResidency.acquire` + `release` of a resident expert: the whole cost of an HBM hit."""
    node_id = ray.get_runtime_context().get_node_id()

    async def fetch(name: str) -> dict:
        return await store.get.remote(name)

    residency = SocketResidency("bench", node_id, size_bytes, {expert: size_bytes}, fetch)
    lease = Lease(
        lease_id="bench", expert=expert, socket_id="bench", node_id=node_id, tier="ddr", size_bytes=size_bytes
    )
    await residency.acquire(lease)  # page it in once
    await residency.release(expert)
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        _, report = await residency.acquire(lease)
        await residency.release(expert)
        samples.append(time.perf_counter() - started)
        if report.tier != "hbm":
            raise RuntimeError(f"a resident expert was not an HBM hit: {report}")
    residency.materializer.free(residency.models.pop(expert))
    return samples


def _time_tier(
    activation: Callable[[], tuple[dict[str, float], bool, Materialized]],
    materializer: Materializer,
    expect_store_read: bool,
) -> dict[str, float]:
    """Run one activation, check it came from the tier it claims, free the model outside the timing."""
    parts, store_read, materialized = activation()
    if store_read != expect_store_read:
        raise RuntimeError(f"expected store_read={expect_store_read}, got {store_read}: tier mislabelled")
    materializer.free(materialized)
    return parts


def measure_expert(
    store, checkpoint: Path, repetitions: int, serving: ServingRig | None = None
) -> list[SwitchRow]:
    """Every tier for one expert. Tiers are interleaved per repetition, so drift on a shared machine
    (other jobs, thermal) spreads over all tiers instead of biasing the one measured last."""
    expert = checkpoint.name
    info = checkpoint_info(checkpoint)
    warm = Materializer("cpu")
    ray.get(store.prefetch.remote(expert))  # STORE -> DDR once (a no-op if it is there already)
    _time_tier(lambda: activate(store, expert, warm), warm, expect_store_read=False)  # skeleton in pool
    copy_buffer = _copy_buffer(info.size_bytes, info.tensor_count)
    tiers = [tier for tier in TIERS if tier != "hbm" and (serving is not None or tier != "serving_store")]
    samples: dict[str, list[dict[str, float]]] = {tier: [] for tier in tiers}
    for _ in range(repetitions):
        samples["ddr"].append(_time_tier(lambda: activate(store, expert, warm), warm, False))
        samples["ddr_copy"].append(
            _time_tier(lambda: activate(store, expert, warm, copy_buffer), warm, False)
        )
        fresh = Materializer("cpu")
        samples["ddr_first"].append(
            _time_tier(lambda fresh=fresh: activate(store, expert, fresh), fresh, False)
        )
        if not ray.get(store.evict.remote(expert)):
            raise RuntimeError(f"DDR store would not evict {expert}")
        drop_page_cache(checkpoint)
        samples["store_cold"].append(_time_tier(lambda: activate(store, expert, warm), warm, True))
        if serving is not None:
            samples["serving_store"].append(serving.cold_miss(expert))
    rows = [_row(expert, info.size_bytes, tier, runs) for tier, runs in samples.items()]
    hits = asyncio.run(_hbm_hit_samples(store, expert, info.size_bytes, HBM_HIT_REPETITIONS))
    rows.insert(0, _row(expert, info.size_bytes, "hbm", [{"total": s} for s in hits]))
    return rows


def _row(expert: str, size_bytes: int, tier: str, runs: list[dict[str, float]]) -> SwitchRow:
    seconds = _median_s([run["total"] for run in runs])
    steps = [step for step in runs[0] if step != "total"]
    parts = {step: _median_s([run[step] for run in runs]) for step in steps}
    if tier != "ddr_copy":
        parts.pop("copy", None)
    return SwitchRow(
        expert=expert,
        expert_bytes=size_bytes,
        tier=tier,
        seconds=seconds,
        gbps=size_bytes / seconds / 1e9,
        ratio_to_memcpy=0.0,
        repetitions=len(runs),
        parts_s=parts,
    )


# --------------------------------------------------------------------------- the run
@contextlib.contextmanager
def local_ray(object_store_bytes: int) -> Iterator[None]:
    """A local 2-CPU Ray for the run, unless the caller already started one (then it is kept)."""
    if ray.is_initialized():
        yield
        return
    # address="local": always a fresh private cluster, never one another process left running.
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=object_store_bytes,
        include_dashboard=False,
        logging_level="warning",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def machine() -> Machine:
    return Machine(
        cpu_count=os.cpu_count() or 0,
        torch_version=torch.__version__,
        ray_version=ray.__version__,
        device="cpu",
        platform=platform.platform(),
    )


def run_switch_bench(
    checkpoints: Sequence[Path],
    *,
    repetitions: int,
    command: str,
    memcpy_bytes: int | None = None,
    serving: bool = True,
) -> SwitchReport:
    """Measure the limits and every tier of every checkpoint in one local Ray session."""
    sizes = {path: checkpoint_info(path).size_bytes for path in checkpoints}
    largest = max(sizes, key=sizes.get)
    memcpy_bytes = memcpy_bytes or max(64 * 2**20, sizes[largest])
    memcpy_gbps = measure_memcpy_gbps(memcpy_bytes, max(10, repetitions))
    cold_store_gbps = measure_cold_read_gbps(largest, max(3, repetitions))
    # Room for every expert plus one being re-put after an eviction, with headroom for Ray itself.
    # The serving path has its own node DDR store holding every expert once more.
    serving_ddr_bytes = sum(sizes.values()) + max(sizes.values())
    object_store_bytes = max(256 * 2**20, 2 * sum(sizes.values()) + 128 * 2**20)
    if serving:
        object_store_bytes += serving_ddr_bytes
    rows: list[SwitchRow] = []
    parallel: ParallelMiss | None = None
    with local_ray(object_store_bytes):
        store = DDRStore.remote(
            "bench-switch",
            ray.get_runtime_context().get_node_id(),
            object_store_bytes,
            {path.name: str(path) for path in checkpoints},
        )
        ordered = sorted(checkpoints, key=sizes.get)
        rig = ServingRig(serving_config(ordered, serving_ddr_bytes)) if serving else None
        try:
            for path in ordered:
                rows.extend(measure_expert(store, path, repetitions, rig))
            if rig is not None:
                single_s = sum(row.seconds for row in rows if row.tier == "serving_store")
                parallel = rig.parallel([path.name for path in ordered], repetitions, single_s)
        finally:
            if rig is not None:
                rig.close()
        zero_copy = ddr_maps_zero_copy(store, largest.name)
        ray.kill(store)
    for row in rows:
        row.ratio_to_memcpy = row.gbps / memcpy_gbps
    return SwitchReport(
        command=command,
        machine=machine(),
        repetitions=repetitions,
        memcpy_gbps=memcpy_gbps,
        memcpy_bytes=memcpy_bytes,
        cold_store_gbps=cold_store_gbps,
        cold_store_file=largest.name,
        ddr_zero_copy=zero_copy,
        rows=rows,
        parallel=parallel,
    )


# --------------------------------------------------------------------------- report
def _goal_lines(report: SwitchReport) -> list[str]:
    """The goal, checked per expert of at least 100 MB against this run's numbers."""
    by_key = {(row.expert, row.tier): row for row in report.rows}
    experts = sorted({(row.expert_bytes, row.expert) for row in report.rows})
    lines = []
    for size_bytes, expert in experts:
        if size_bytes < GOAL_MIN_EXPERT_BYTES:
            continue
        ddr, copy, cold = (by_key[(expert, tier)] for tier in ("ddr", "ddr_copy", "store_cold"))
        speedup = cold.seconds / ddr.seconds
        lines.append(
            f"- **{expert}** ({size_bytes / 1e6:.0f} MB): DDR→HBM at {ddr.ratio_to_memcpy:.2f}x memcpy "
            f"(goal ≥ {GOAL_DDR_RATIO_TO_MEMCPY}: {_met(ddr.ratio_to_memcpy >= GOAL_DDR_RATIO_TO_MEMCPY)}); "
            f"{speedup:.1f}x faster than a cold STORE load (goal ≥ {GOAL_STORE_OVER_DDR:.0f}x: "
            f"{_met(speedup >= GOAL_STORE_OVER_DDR)}). With a private copy (`ddr_copy`): "
            f"{copy.ratio_to_memcpy:.2f}x memcpy, {cold.seconds / copy.seconds:.1f}x faster than cold STORE."
        )
    return lines or ["- no expert of 100 MB or more in this run"]


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _parts_text(row: SwitchRow) -> str:
    return ", ".join(f"{step} {seconds * 1e3:.1f}" for step, seconds in row.parts_s.items())


def markdown(report: SwitchReport) -> str:
    m = report.machine
    lines = [
        "# Expert switch time per tier",
        "",
        f"Machine: {m.cpu_count} CPUs, torch {m.torch_version}, Ray {m.ray_version}, device `{m.device}`, "
        f"{m.platform}. Medians of {report.repetitions} activations per tier "
        f"({HBM_HIT_REPETITIONS} for `hbm`), tiers interleaved per repetition.",
        "",
        "```",
        report.command,
        "```",
        "",
        f"Physical limits, same run: memcpy **{report.memcpy_gbps:.2f} GB/s** (`np.copyto`, "
        f"{report.memcpy_bytes / 1e6:.0f} MB into a destination touched once); cold STORE read "
        f"**{report.cold_store_gbps:.2f} GB/s** (plain reads of `{report.cold_store_file}` after "
        "`POSIX_FADV_DONTNEED`).",
        "",
        "| expert | MB | tier | ms | GB/s (size/time) | × memcpy | steps, ms |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.expert} | {row.expert_bytes / 1e6:.1f} | {row.tier} | {row.seconds * 1e3:.3f} | "
            f"{row.gbps:.2f} | {row.ratio_to_memcpy:.2f} | {_parts_text(row)} |"
        )
    lines += [
        "",
        "Tiers: `hbm` = `SocketResidency.acquire`+`release` of a resident expert; `ddr` = "
        "`DDRStore.get` (hit) + `ray.get` + `Materializer.materialize` with a pooled skeleton; "
        "`ddr_first` = the same with a fresh skeleton; `ddr_copy` = `ddr` plus a private copy of "
        "every array; `store_cold` = DDR evicted and page cache dropped, then `DDRStore.get` reads the "
        "STORE (`read_weights` + `ray.put`) + `ray.get` + materialise. Steps: fetch = `DDRStore.get` "
        "round trip (the STORE read on a miss), map = `ray.get`, copy, materialize.",
        "",
        "## Against the goal",
        "",
        "Goal: DDR→HBM activation at ≥ 0.8 of memcpy bandwidth for experts ≥ 100 MB, and ≥ 10x faster "
        "than a cold STORE load.",
        "",
        *_goal_lines(report),
        "",
        *_serving_lines(report),
        _honesty_note(report),
        "",
    ]
    return "\n".join(lines)


def _serving_lines(report: SwitchReport) -> list[str]:
    """The serving-path miss beside store_cold of the same expert, same run (issue 17, point 0)."""
    serving = [row for row in report.rows if row.tier == "serving_store"]
    if not serving:
        return []
    cold = {row.expert: row for row in report.rows if row.tier == "store_cold"}
    lines = [
        "## Serving miss against `store_cold`",
        "",
        "`serving_store` = MemTier `place` + the socket's `SocketAgent` path (residency, the node's DDR "
        "store reading the STORE, `ray.get`, materialise, release to MemTier), timed from the caller, the "
        "expert dropped from HBM, DDR and the page cache before each repetition (interleaved with "
        "`store_cold`); sockets warm. Overhead = total - place - the socket's switch_s. Goal: within "
        f"{GOAL_SERVING_OVER_STORE_COLD}x of `store_cold` for the same bytes.",
        "",
        "| expert | MB | store_cold ms | serving_store ms | ratio | met | serving steps, ms |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in serving:
        base = cold[row.expert].seconds
        ratio = row.seconds / base
        steps = ", ".join(f"{step} {seconds * 1e3:.1f}" for step, seconds in row.parts_s.items())
        lines.append(
            f"| {row.expert} | {row.expert_bytes / 1e6:.1f} | {base * 1e3:.1f} | {row.seconds * 1e3:.1f} | "
            f"{ratio:.2f} | {_met(ratio <= GOAL_SERVING_OVER_STORE_COLD)} | {steps} |"
        )
    if report.parallel is not None:
        p = report.parallel
        lines += [
            "",
            f"Concurrent misses of {len(p.experts)} different experts (one socket each): wall "
            f"{p.wall_s * 1e3:.0f} ms against {p.sum_single_s * 1e3:.0f} ms for the same misses one by one: "
            f"overlap {p.overlap:.2f} (1 = serial, {len(p.experts)} = perfect). Two requests missing the "
            f"same expert at once read the STORE {p.same_expert_store_reads} time(s) (goal: 1).",
        ]
    return [*lines, ""]


def _honesty_note(report: SwitchReport) -> str:
    """What the ddr numbers mean, which depends on whether this run really mapped zero-copy."""
    if report.ddr_zero_copy:
        mapping = (
            "On CPU, DDR→HBM maps the object store zero-copy (checked in this run: `ray.get` returned "
            "read-only views): `ddr` moves no bytes, so its GB/s is size/time and can exceed memcpy; what "
            "it costs is the DDR store round trip, the `ray.get` mapping and `load_state_dict(assign=True)` "
            "into a pooled skeleton, roughly constant per tensor rather than per byte."
        )
    else:
        mapping = (
            "**`ray.get` did not map zero-copy in this run** (it returned writable arrays): the DDR store "
            "puts `np.memmap` views, an ndarray subclass that pickle stores in band, so every socket "
            "unpickles a private copy of the whole expert (the `map` step, which grows with size). The "
            "design intends zero-copy; `ddr` here is therefore a copy path, and a zero-copy `ddr` would "
            "cost roughly `ddr` minus most of `map`."
        )
    return (
        f"Read these honestly. {mapping} `ddr_copy` is the stand-in for a real H2D copy: the same path "
        "plus one memcpy of the expert into a buffer touched once, so its ratio to memcpy is what a GPU's "
        "copy engine would be judged by (there against H2D bandwidth, not host memcpy). `hbm` is a lookup "
        "and a pin, so its GB/s is not a bandwidth. `ddr_first` shows why skeletons are pooled. "
        "`store_cold` is bounded by the disk (`cold_store_gbps`) plus one copy into the object store. "
        "This machine is shared (2 cores, other jobs running), so repeat runs move by tens of percent."
    )


def write_outputs(report: SwitchReport, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "switch.json").write_text(report.model_dump_json(indent=2) + "\n")
    (out_dir / "switch.md").write_text(markdown(report))


# --------------------------------------------------------------------------- CLI
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.switch", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="25 and 100 MB experts only (about a minute)")
    parser.add_argument(
        "--repetitions", type=int, default=None, help="activations per tier (default 5 quick, 7 full)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> SwitchReport:
    args = _parse_args(argv)
    repetitions = args.repetitions or (5 if args.quick else 7)
    root = zoo_dir() / "bench-switch"
    sizes = QUICK_SIZES_BYTES if args.quick else FULL_SIZES_BYTES
    checkpoints = [build_expert(root, size) for size in sizes]
    if not args.quick:
        checkpoints.append(demo_expert_or_generated(root))
    quick = " --quick" if args.quick else ""
    command = f"python -m bench.switch{quick} --repetitions {repetitions} --out {args.out}"
    report = run_switch_bench(checkpoints, repetitions=repetitions, command=command)
    write_outputs(report, args.out)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
