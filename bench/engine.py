"""The socket engine against `model.generate`: tokens/s, TTFT and inter-token latency by concurrency.

    python -m bench.engine                 # in-process: one socket engine vs model.generate
    python -m bench.engine --serve         # also over Serve: the demo app, one expert and 8 experts
    python -m bench.engine --quick         # fewer tokens and levels (a smoke run, ~3 minutes)

In-process, one expert (a demo SmolLM2-135M checkpoint, bf16) runs on `--threads` torch threads,
the same as one socket replica on CPU (Ray sets its thread count from `cpus_per_socket`). For each
concurrency level the engine serves requests that arrive *together* (all at t=0) and *staggered*
(one every `--stagger-s`), and `model.generate` runs the same prompts as one padded static batch:
the ceiling a static batch reaches when every request is there from the start. `join` is the
issue's scenario: a request arriving while its expert generates a 128-token answer.

Over Serve (`--serve`), the demo config runs on a local Ray cluster (8 sockets) and the same
shapes go through the OpenAI HTTP API with streaming; "8 experts" sends each request to a
different expert, so 8 sockets work at once. Every request uses `ignore_eos` and a fixed
`max_tokens`, so each system generates the same number of tokens. Results go to
bench/results/engine-<stamp>.md and .json with the command that made them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS = Path("bench/results")

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain recursion to a new programmer.",
    "How do vaccines train the immune system?",
    "What should I look for in a rental contract?",
    "Give me three tips for saving money each month.",
    "Why is the sky blue?",
    "Summarise the causes of the French Revolution.",
]


@dataclass
class Wave:
    """One run of `concurrency` requests; times in seconds from the wave's start."""

    system: str
    arrival: str  # together | staggered | join
    concurrency: int
    tokens: int
    wall_s: float
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict:
        return {
            "system": self.system,
            "arrival": self.arrival,
            "concurrency": self.concurrency,
            "tokens": self.tokens,
            "wall_s": round(self.wall_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "ttft_p50_s": _pct(self.ttft_s, 50),
            "ttft_max_s": _pct(self.ttft_s, 100),
            "itl_p50_ms": _ms(_pct(self.itl_s, 50)),
            "itl_p99_ms": _ms(_pct(self.itl_s, 99)),
        }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))], 4)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


# --------------------------------------------------------------------------- in-process
def load_expert(zoo: Path, expert: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zoo / "experts" / expert
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def chat_ids(tokenizer, prompt: str) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def generate_wave(model, tokenizer, prompts: list[list[int]], max_tokens: int) -> Wave:
    """`model.generate` on the prompts as one left-padded batch, exactly `max_tokens` each."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    wall = time.perf_counter() - started
    return Wave("model.generate", "together", len(prompts), len(prompts) * max_tokens, wall, [wall])


async def engine_wave(
    engine, model, tokenizer, prompts: list[list[int]], max_tokens: int, arrival: str, stagger_s: float
) -> Wave:
    """The socket engine serving `prompts`, arriving together or one every `stagger_s`."""
    from deployments.generation import GenRequest
    from deployments.sampling import SamplingParams

    started = time.perf_counter()
    ttft: list[float] = []
    itl: list[float] = []
    tokens = 0

    async def one(index: int, prompt: list[int]) -> None:
        nonlocal tokens
        if arrival == "staggered":
            await asyncio.sleep(index * stagger_s)
        sent = time.perf_counter()
        request = GenRequest(
            input_ids=prompt, max_tokens=max_tokens, params=SamplingParams(temperature=0, ignore_eos=True)
        )
        queue = engine.submit("bench", model, tokenizer, set(), request)
        times: list[float] = []
        while True:
            event = await queue.get()
            times.extend([time.perf_counter()] * max(1, len(event.token_ids)))
            if event.finish_reason is not None:
                tokens += event.completion_tokens
                break
        ttft.append(times[0] - sent)
        itl.extend(_gaps(times))

    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return Wave("engine", arrival, len(prompts), tokens, time.perf_counter() - started, ttft, itl)


async def join_wave(engine, model, tokenizer, prompts: list[list[int]], answer_tokens: int, after_s: float):
    """A request arriving `after_s` into a 128-token answer of the same expert: its TTFT."""
    from deployments.generation import GenRequest
    from deployments.sampling import SamplingParams

    params = SamplingParams(temperature=0, ignore_eos=True)
    started = time.perf_counter()
    long_queue = engine.submit(
        "bench", model, tokenizer, set(), GenRequest(prompts[0], answer_tokens, params)
    )
    await asyncio.sleep(after_s)
    sent = time.perf_counter()
    short_queue = engine.submit("bench", model, tokenizer, set(), GenRequest(prompts[1], 16, params))
    first = await short_queue.get()
    ttft = time.perf_counter() - sent
    while first.finish_reason is None:
        first = await short_queue.get()
    while (await long_queue.get()).finish_reason is None:
        pass
    return Wave("engine", "join", 2, answer_tokens + 16, time.perf_counter() - started, [ttft])


def run_inprocess(args) -> list[Wave]:
    from cluster.paths import zoo_dir
    from deployments.engine import SocketEngine

    torch.set_num_threads(args.threads)
    model, tokenizer = load_expert(zoo_dir(), args.expert)
    prompts = [chat_ids(tokenizer, p) for p in PROMPTS]
    waves: list[Wave] = []
    generate_wave(model, tokenizer, prompts[:1], 4)  # warm-up: first calls are slow
    for level, _ in [(level, r) for level in args.levels for r in range(args.repeats)]:
        batch = [prompts[i % len(prompts)] for i in range(level)]
        engine = SocketEngine(
            max_batch_size=max(args.levels), prefill_chunk_tokens=256, kv_capacity_bytes=1 << 32
        )
        for arrival in ("together", "staggered"):
            wave = asyncio.run(
                engine_wave(engine, model, tokenizer, batch, args.max_tokens, arrival, args.stagger_s)
            )
            waves.append(wave)
            _say(wave)
        engine.close()
        reference = generate_wave(model, tokenizer, batch, args.max_tokens)
        waves.append(reference)
        _say(reference)
    engine = SocketEngine(max_batch_size=8, prefill_chunk_tokens=256, kv_capacity_bytes=1 << 32)
    join = asyncio.run(join_wave(engine, model, tokenizer, prompts, 128, args.join_after_s))
    engine.close()
    waves.append(join)
    _say(join)
    return waves


# --------------------------------------------------------------------------- over Serve
async def _stream(
    client, url: str, model: str, prompt: str, max_tokens: int
) -> tuple[float, list[float], int]:
    """(TTFT, chunk times, completion tokens) of one streamed chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    times: list[float] = []
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            data = json.loads(line[5:])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            if any((c.get("delta") or {}).get("content") for c in data.get("choices") or []):
                times.append(time.perf_counter())
    return (times[0] - sent if times else float("nan")), times, tokens


async def serve_waves(url: str, experts: list[str], args) -> list[Wave]:
    import httpx

    waves: list[Wave] = []
    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(_stream(client, url, e, PROMPTS[0], 4) for e in experts))  # page in, warm
        shapes = [("1 expert", [experts[0]] * n) for n in args.serve_levels] + [("8 experts", experts[:8])]
        # Repeats interleave the shapes (as in-process) and the ratios take medians: one wave
        # disturbed by the shared box, or a page-in finishing late, does not decide a ratio.
        for label, targets in [shape for _ in range(args.repeats) for shape in shapes]:
            started = time.perf_counter()
            results = await asyncio.gather(
                *(
                    _stream(client, url, t, PROMPTS[i % len(PROMPTS)], args.max_tokens)
                    for i, t in enumerate(targets)
                )
            )
            wave = Wave(
                f"serve ({label})",
                "together",
                len(targets),
                sum(r[2] for r in results),
                time.perf_counter() - started,
                [r[0] for r in results],
                [g for r in results for g in _gaps(r[1])],
            )
            waves.append(wave)
            _say(wave)
        for _ in range(args.repeats):
            started = time.perf_counter()
            long = asyncio.create_task(_stream(client, url, experts[0], PROMPTS[0], 128))
            await asyncio.sleep(args.join_after_s)
            ttft, _, _ = await _stream(client, url, experts[0], PROMPTS[1], 16)
            await long
            join = Wave("serve (1 expert)", "join", 2, 144, time.perf_counter() - started, [ttft])
            waves.append(join)
            _say(join)
    return waves


async def paris_check(url: str, expert: str, tries: int) -> dict:
    """'What is the capital of France?' with no sampling fields: how often the answer names Paris."""
    import httpx

    async with httpx.AsyncClient() as client:
        answers = []
        for _ in range(tries):
            body = {"model": expert, "messages": [{"role": "user", "content": PROMPTS[0]}]}
            response = await client.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            answers.append(response.json()["choices"][0]["message"]["content"])
    return {"tries": tries, "paris": sum("Paris" in a for a in answers), "sample": answers[0]}


def run_serve(args) -> tuple[list[Wave], dict]:
    from bench.rig import LocalServe
    from cluster.config import load_config
    from deployments.app import build_app_from_config

    config = load_config(args.config)
    experts = [e.id for e in config.experts][:8]
    experts.insert(0, experts.pop(experts.index("generalist")) if "generalist" in experts else experts[0])
    with LocalServe(config, build_app_from_config) as rig:
        waves = asyncio.run(serve_waves(rig.base_url, experts, args))
        paris = asyncio.run(paris_check(rig.base_url, experts[0], args.paris_tries))
    print(f"paris: {paris['paris']}/{paris['tries']}", file=sys.stderr)
    return waves, paris


# --------------------------------------------------------------------------- report
def ratios(waves: list[Wave]) -> dict:
    """The issue's ratios from this run: 8 together vs 1, engine vs generate, join TTFT."""

    def rate(system: str, arrival: str, level: int) -> float | None:
        """Median tokens/s over the repeats (repeats interleave the systems: drift hits all alike)."""
        rates = [
            w.tokens_per_s
            for w in waves
            if w.system == system and w.arrival == arrival and w.concurrency == level
        ]
        return statistics.median(rates) if rates else None

    pairs = {
        "engine_8_vs_1_tokens_per_s": (("engine", "together", 8), ("engine", "together", 1)),
        "engine_1_vs_generate_1": (("engine", "together", 1), ("model.generate", "together", 1)),
        "engine_8_vs_generate_batch_8": (("engine", "together", 8), ("model.generate", "together", 8)),
        "engine_8_staggered_vs_generate_batch_8": (
            ("engine", "staggered", 8),
            ("model.generate", "together", 8),
        ),
        "serve_1_expert_8_vs_1_tokens_per_s": (
            ("serve (1 expert)", "together", 8),
            ("serve (1 expert)", "together", 1),
        ),
        "serve_8_experts_vs_1_tokens_per_s": (
            ("serve (8 experts)", "together", 8),
            ("serve (1 expert)", "together", 1),
        ),
    }
    out: dict = {}
    for name, (top, bottom) in pairs.items():
        a, b = rate(*top), rate(*bottom)
        if a and b:
            out[name] = round(a / b, 3)
    for system in dict.fromkeys(w.system for w in waves if w.arrival == "join"):
        worst = max(w.ttft_s[0] for w in waves if w.arrival == "join" and w.system == system)
        out[f"join_ttft_max_s ({system})"] = round(worst, 3)
    return out


def write_report(waves: list[Wave], paris: dict | None, args, command: str) -> Path:
    out = RESULTS / f"engine-{args.tag or time.strftime('%Y%m%d-%H%M%S')}"
    summary = {
        "command": command,
        "ratios": ratios(waves),
        "waves": [w.summary() for w in waves],
        "paris": paris,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    lines = [
        "# Socket engine vs model.generate",
        "",
        f"Command: `{command}`",
        f"Expert: {args.expert} (SmolLM2-135M, bf16), torch threads: {args.threads}, "
        f"max_tokens {args.max_tokens}, greedy, ignore_eos.",
        "",
        "| ratio | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary["ratios"].items()],
        "",
        "| system | arrival | concurrency | tokens/s | TTFT p50 s | TTFT max s | ITL p50 ms | ITL p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in summary["waves"]:
        lines.append(
            f"| {w['system']} | {w['arrival']} | {w['concurrency']} | {w['tokens_per_s']} | "
            f"{w['ttft_p50_s']} | {w['ttft_max_s']} | {w['itl_p50_ms']} | {w['itl_p99_ms']} |"
        )
    if paris:
        lines += [
            "",
            f"'What is the capital of France?' with no sampling fields: Paris in {paris['paris']} of "
            f"{paris['tries']} answers. First: {paris['sample']!r}",
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return out.with_suffix(".md")


def _say(wave: Wave) -> None:
    print(json.dumps(wave.summary()), file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--expert", default="generalist")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one socket's share)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--stagger-s", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3, help="in-process waves per level (medians)")
    parser.add_argument("--join-after-s", type=float, default=1.0)
    parser.add_argument("--serve", action="store_true", help="also measure over Serve (the demo app)")
    parser.add_argument("--serve-only", action="store_true")
    parser.add_argument("--serve-levels", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--config", default="cluster/configs/demo.yaml")
    parser.add_argument("--paris-tries", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="levels 1 and 8, 32 tokens")
    parser.add_argument(
        "--tag", default=None, help="results file name: engine-<tag>.md (default: a timestamp)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.max_tokens, args.repeats = [1, 8], 32, 1
    command = "python -m bench.engine " + " ".join(argv if argv is not None else sys.argv[1:])
    waves: list[Wave] = [] if args.serve_only else run_inprocess(args)
    paris = None
    if args.serve or args.serve_only:
        serve, paris = run_serve(args)
        waves += serve
    print(write_report(waves, paris, args, command.strip()))


if __name__ == "__main__":
    main()
