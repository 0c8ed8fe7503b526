"""Structured output: xgrammar, llguidance and outlines-core on the same tokenizer, schemas and model.

    python -m bench.structured_output                 # all three libraries, results to bench/results/
    python -m bench.structured_output --walks 10      # fewer random walks per schema

For each library that imports: the one-off tokenizer setup; each schema's grammar compile (cold);
the per-token cost of structured output (fill the next-token mask, unpack it to the [V] bool mask
the engine applies, accept the sampled token) on seeded random walks, where each step picks
uniformly among the allowed tokens: the path a random-weight model takes, and the hard case for a
mask, since it wanders through long strings; and correctness: every walk that ended (the grammar
terminated, or EOS was picked where allowed) must `json.loads` and validate with `jsonschema`,
and a schema a library cannot compile is counted as a failure. Then end to end in the socket
engine (`generate_batch`) with a demo SmolLM2-135M expert: rows x tokens with and without the
constraint, tokens/s and the ratio. xgrammar pulls triton when installed normally; to keep it out of
the project's venv it can be installed with `pip install --no-deps --target DIR xgrammar
apache-tvm-ffi` and put on PYTHONPATH for this command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jsonschema
import torch

from deployments.structured import unpack_bitmask
from deployments.token_text import token_bytes

RESULTS = Path("bench/results")

SCHEMAS: dict[str, dict] = {
    "flat": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "ok": {"type": "boolean"},
            "color": {"enum": ["red", "green", "blue"]},
        },
        "required": ["name", "age", "ok", "color"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": 9999},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 5},
                "minItems": 1,
                "maxItems": 3,
            },
            "owner": {"$ref": "#/$defs/person"},
            "kind": {"anyOf": [{"type": "null"}, {"enum": ["a", "b"]}]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["id", "tags", "owner", "kind", "score"],
        "additionalProperties": False,
        "$defs": {
            "person": {
                "type": "object",
                "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,6}$"}},
                "required": ["name"],
                "additionalProperties": False,
            }
        },
    },
    "json_object": {"type": "object"},
}


class Backend:
    """One library: tokenizer setup, compile a schema, and a matcher with the engine's interface."""

    name = ""

    def setup(self, tokenizer, vocab_size: int) -> None: ...

    def compile(self, schema: dict): ...

    def matcher(self, compiled): ...


class _BitmaskMatcher:
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.bitmask = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)


class LLGuidance(Backend):
    name = "llguidance"

    def setup(self, tokenizer, vocab_size):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll, self.llt = llguidance, llguidance.torch
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.vocab_size = vocab_size

    def compile(self, schema):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        error = self.ll.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(error)
        return grammar

    def matcher(self, compiled):
        backend, matcher = self, self.ll.LLMatcher(self.tokenizer, compiled)

        class M(_BitmaskMatcher):
            def allowed(self, vocab_size):
                backend.llt.fill_next_token_bitmask(matcher, self.bitmask)
                return unpack_bitmask(self.bitmask[0], vocab_size)

            def accept(self, token):
                assert matcher.consume_token(token), matcher.get_error()

            def is_terminated(self):
                return matcher.is_stopped()

        return M(self.vocab_size)


class XGrammar(Backend):
    name = "xgrammar"

    def setup(self, tokenizer, vocab_size):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.vocab_size = vocab_size

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)

    def matcher(self, compiled):
        matcher = self.xgr.GrammarMatcher(compiled)

        class M(_BitmaskMatcher):
            def allowed(self, vocab_size):
                matcher.fill_next_token_bitmask(self.bitmask, 0)
                return unpack_bitmask(self.bitmask[0], vocab_size)

            def accept(self, token):
                assert matcher.accept_token(token)

            def is_terminated(self):
                return matcher.is_terminated()

        return M(self.vocab_size)


class OutlinesCore(Backend):
    name = "outlines-core"

    def setup(self, tokenizer, vocab_size):
        import outlines_core

        self.oc = outlines_core
        table = token_bytes(tokenizer)
        by_bytes: dict[bytes, list[int]] = {}
        for token_id in range(table.size):
            raw = table[token_id]
            if raw:
                by_bytes.setdefault(raw, []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, by_bytes)
        self.vocab_size = vocab_size

    def compile(self, schema):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), r"")
        return self.oc.Index(regex, self.vocabulary)

    def matcher(self, compiled):
        guide = self.oc.Guide(compiled)

        class M(_BitmaskMatcher):
            def allowed(self, vocab_size):
                guide.write_mask_into(self.bitmask.data_ptr(), self.bitmask.numel(), 4)
                return unpack_bitmask(self.bitmask[0], vocab_size)

            def accept(self, token):
                guide.advance(token, return_tokens=False)

            def is_terminated(self):
                return guide.is_finished()

        return M(self.vocab_size)


BACKENDS = [XGrammar, LLGuidance, OutlinesCore]


def random_walk(matcher, eos_id: int, vocab_size: int, tokens: int, generator: torch.Generator):
    """Pick uniformly among allowed tokens until the grammar ends; seconds per token and the ids."""
    ids: list[int] = []
    step_s: list[float] = []
    ended = False
    for _ in range(tokens):
        start = time.perf_counter()
        allowed = matcher.allowed(vocab_size)
        mask_s = time.perf_counter() - start  # the walk's own choice below is not the library's cost
        choices = allowed.nonzero().flatten()
        token = int(choices[torch.randint(len(choices), (1,), generator=generator)])
        if token == eos_id:
            step_s.append(mask_s)
            ended = True
            break
        start = time.perf_counter()
        matcher.accept(token)
        step_s.append(mask_s + time.perf_counter() - start)
        ids.append(token)
        if matcher.is_terminated():
            ended = True
            break
    return ids, step_s, ended


def valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def run_library(backend: Backend, tokenizer, vocab_size: int, args) -> dict:
    row: dict = {"library": backend.name}
    start = time.perf_counter()
    backend.setup(tokenizer, vocab_size)
    row["setup_s"] = time.perf_counter() - start
    table = token_bytes(tokenizer)
    row["schemas"] = {}
    for name, schema in SCHEMAS.items():
        entry: dict = {}
        try:
            start = time.perf_counter()
            compiled = backend.compile(schema)
            entry["compile_ms"] = (time.perf_counter() - start) * 1e3
        except Exception as err:  # a schema the library cannot compile: a correctness failure
            entry["error"] = f"{type(err).__name__}: {str(err)[:120]}"
            row["schemas"][name] = entry
            continue
        steps: list[float] = []
        ended = ok = 0
        for walk in range(args.walks):
            try:
                matcher = backend.matcher(compiled)
                generator = torch.Generator().manual_seed(walk)
                ids, step_s, done = random_walk(
                    matcher, tokenizer.eos_token_id, vocab_size, args.tokens, generator
                )
            except Exception as err:
                entry["error"] = f"walk {walk}: {type(err).__name__}: {str(err)[:120]}"
                break
            steps.extend(step_s)
            if done:
                ended += 1
                ok += valid(b"".join(table[i] for i in ids).decode("utf-8", errors="replace"), schema)
        entry.update(
            walks=args.walks,
            ended=ended,
            valid=ok,
            us_per_token_median=statistics.median(steps) * 1e6 if steps else None,
            us_per_token_mean=statistics.fmean(steps) * 1e6 if steps else None,
            us_per_token_p99=sorted(steps)[int(0.99 * (len(steps) - 1))] * 1e6 if steps else None,
        )
        row["schemas"][name] = entry
    return row


def engine_ratio(backend: Backend, args) -> dict:
    """Tokens/s of the socket engine on a demo expert, one row, with and without the constraint.

    The constrained row ends when its JSON does; the plain row then generates exactly as many
    tokens (ignore_eos), so both rates are over the same lengths. Runs alternate, medians kept."""
    from bench.engine import load_expert
    from cluster.paths import zoo_dir
    from deployments.engine import generate_batch
    from deployments.generation import GenRequest, eos_token_ids
    from deployments.sampling import SamplingParams

    model, tokenizer = load_expert(zoo_dir(), args.expert)
    eos = eos_token_ids(model, tokenizer)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Describe a person as JSON with name, age, ok and color."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    backend.setup(tokenizer, model.config.vocab_size)
    compiled = backend.compile(SCHEMAS["flat"])

    def run(request: GenRequest) -> tuple[int, float]:
        produced = [0]
        request.emit = lambda event: produced.__setitem__(0, event.completion_tokens)
        start = time.perf_counter()
        generate_batch(model, tokenizer, [request], eos)
        return produced[0], time.perf_counter() - start

    rates: dict[str, list[float]] = {"plain": [], "constrained": []}
    tokens = 0
    for repeat in range(args.repeats):
        params = SamplingParams(temperature=0.7, seed=repeat)
        constrained = GenRequest(
            list(prompt), args.engine_tokens, params, constraint=backend.matcher(compiled)
        )
        tokens, wall_s = run(constrained)
        rates["constrained"].append(tokens / wall_s)
        plain = GenRequest(
            list(prompt), tokens, SamplingParams(temperature=0.7, seed=repeat, ignore_eos=True)
        )
        count, wall_s = run(plain)
        rates["plain"].append(count / wall_s)
    out = {mode: statistics.median(values) for mode, values in rates.items()}
    return {
        "tokens": tokens,
        **{f"{m}_tokens_per_s": v for m, v in out.items()},
        "ratio": out["constrained"] / out["plain"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--walks", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64, help="cap per random walk")
    parser.add_argument("--expert", default="generalist")
    parser.add_argument("--repeats", type=int, default=3, help="engine runs per mode (medians kept)")
    parser.add_argument("--engine-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "structured_output.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from bench.engine import load_expert
    from cluster.paths import zoo_dir

    _, tokenizer = load_expert(zoo_dir(), args.expert)
    vocab_size = 49152
    rows = []
    for cls in BACKENDS:
        try:
            backend = cls()
            row = run_library(backend, tokenizer, vocab_size, args)
            row["engine"] = engine_ratio(cls(), args)
        except ImportError as err:
            row = {"library": cls.name, "error": f"not installed: {err}"}
        print(json.dumps(row, indent=1), flush=True)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
