"""Router encoders compared on leave-one-source-out accuracy and CPU cost: `python -m bench.router_encoders`.

For each encoder the same corpus (`router.corpus`) is embedded and every source is scored by a
head fitted on the other sources (`router.train.out_of_source_logits`, the head settings the
shipped router uses), so the accuracy is what a new kind of prompt would see. Beside it: the
encoder's CPU time per prompt for a batch of 32 held-out prompts (what the ingress embeds at 32
concurrent requests) and for one prompt alone, medians of `--repeats` timings.

Variants: `static` (word-piece average), `static-idf` (idf-weighted, the default), the same with
class-only balance (the head without source balance), `default` (the all-MiniLM-L6-v2
transformer, slow to embed: minutes for the corpus on 2 cores) and `tfidf` (word 1-2-gram
TF-IDF + the same linear head; no encoder at all). Evaluation only, never used to choose: the share
of HumanEval's prompts a head fitted on the whole corpus sends to `code`.
Writes bench/results/router_encoders.{md,json}.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import re
import statistics
import time
from pathlib import Path

import torch

from bench.result_files import write_result
from router.classifier import CATEGORIES, HeadConfig, fit_head
from router.corpus import build_corpus
from router.data import HELDOUT_PATH, load_jsonl
from router.evaluate import humaneval_prompts
from router.metrics import classification_report
from router.train import embed, out_of_source_logits, training_encoder

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = ("static", "static-idf", "static-idf-ctx", "static-idf/class-balance", "default", "tfidf")
# Why 4,000 features: the most frequent words and bigrams of the corpus; a dense [N, 4000] matrix
# keeps the TF-IDF baseline's head as cheap to fit as the others (a sparse head would need its own code).
TFIDF_FEATURES = 4000
_WORD = re.compile(r"[a-z][a-z0-9_']+|\d+")


def _tfidf(texts: list[str]) -> torch.Tensor:
    """L2-normalised sublinear TF-IDF [N, TFIDF_FEATURES] of word unigrams and bigrams."""
    docs = []
    for text in texts:
        words = _WORD.findall(text.lower())
        docs.append(collections.Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]))
    df = collections.Counter(t for d in docs for t in d)
    vocab = {t: i for i, (t, _) in enumerate(df.most_common(TFIDF_FEATURES))}
    idf = torch.tensor([math.log((1 + len(docs)) / (1 + df[t])) + 1 for t in vocab])
    x = torch.zeros(len(docs), len(vocab))
    for row, d in enumerate(docs):
        for t, c in d.items():
            if t in vocab:
                x[row, vocab[t]] = 1 + math.log(c)
    return torch.nn.functional.normalize(x * idf, dim=-1)


def _cost_ms(encoder, prompts: list[str], repeats: int) -> tuple[float, float]:
    """Median ms per prompt for a batch of 32, and median ms for one prompt alone."""
    batch = prompts[:32]
    encoder.encode(batch)  # warm-up
    per_prompt = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(batch)
        per_prompt.append((time.perf_counter() - start) * 1e3 / len(batch))
    single = []
    for p in prompts[:repeats]:
        start = time.perf_counter()
        encoder.encode([p])
        single.append((time.perf_counter() - start) * 1e3)
    return statistics.median(per_prompt), statistics.median(single)


def compare(variants: list[str], repeats: int) -> dict:
    corpus, manifest = build_corpus()
    texts = [r.prompt for r in corpus]
    y = torch.tensor([CATEGORIES.index(r.category) for r in corpus])
    sources = tuple(r.source for r in corpus)
    heldout = [r.prompt for r in load_jsonl(HELDOUT_PATH)]
    humaneval = humaneval_prompts()
    rows = []
    for variant in variants:
        started = time.perf_counter()
        name, _, balance = variant.partition("/")
        if name == "tfidf":
            both = _tfidf(texts + humaneval)
            x, x_he, cost = both[: len(texts)], both[len(texts) :], (None, None)
        else:
            x = embed(name, texts, corpus_texts=texts)
            x_he = embed(name, humaneval, corpus_texts=texts) if humaneval else None
            cost = _cost_ms(training_encoder(name, texts), heldout, repeats)
        config = HeadConfig(
            embedding_dim=x.shape[1],
            num_categories=len(CATEGORIES),
            **({"balance": "class"} if balance == "class-balance" else {}),
            # TF-IDF rows spread their mass over thousands of small weights: the embeddings' decay
            # (0.5) leaves that head near zero; 0.01 was its best of the values tried.
            **({"weight_decay": 0.01} if name == "tfidf" else {}),
        )
        logits = out_of_source_logits(x, y, sources, config)
        groups = torch.tensor([sorted(set(sources)).index(s) for s in sources])
        he_code = None
        if humaneval:
            head = fit_head(x, y, config, groups=groups)
            with torch.inference_mode():
                he_pred = head(x_he).argmax(-1)
            he_code = float((he_pred == CATEGORIES.index("code")).double().mean())
        predicted = logits.argmax(-1)
        report = classification_report(y, predicted, CATEGORIES)
        by_source = {
            s: float((predicted[held] == y[held]).double().mean())
            for s in sorted(set(sources))
            for held in [torch.tensor([t == s for t in sources])]
        }
        rows.append(
            {
                "variant": variant,
                "loso_accuracy": report.accuracy,
                "loso_source_mean": statistics.mean(by_source.values()),
                "recall": {c: m.recall for c, m in report.per_category.items()},
                "by_source": by_source,
                "batch32_ms_per_prompt": cost[0],
                "single_ms": cost[1],
                "humaneval_to_code": he_code,
                "elapsed_s": time.perf_counter() - started,
            }
        )
        print(f"{variant}: LOSO {report.accuracy:.3f}", flush=True)
    return {
        "command": "python -m bench.router_encoders " + " ".join(f"--variants {v}" for v in variants),
        "corpus_sha256": manifest.sha256,
        "corpus_total": manifest.total,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],
        "rows": rows,
    }


def render(result: dict) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [
        "# Router encoders: leave-one-source-out accuracy and CPU cost",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Corpus: {result['corpus_total']} prompts (sha256 {result['corpus_sha256'][:12]}), each source "
        "scored by a head fitted without it (the shipped head settings). CPU: torch "
        f"{result['torch_threads']} thread(s), load average {result['load_avg_1m']:.1f} on 2 cores "
        "(the box was shared with other agents while measuring: times move with load, accuracy does not).",
        "",
        "| variant | LOSO acc | mean over sources | min category recall | "
        + " | ".join(c[:4] for c in CATEGORIES)
        + " | ms/prompt (batch 32) | ms (one prompt) | HumanEval -> code (eval only) |",
        "|---|---:|---:|---:|" + "---:|" * len(CATEGORIES) + "---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {r['loso_accuracy']:.3f} | {r['loso_source_mean']:.3f} | "
            f"{min(r['recall'].values()):.3f} | "
            + " | ".join(f"{r['recall'][c]:.2f}" for c in CATEGORIES)
            + f" | {ms(r['batch32_ms_per_prompt'])} | {ms(r['single_ms'])} | {ms(r['humaneval_to_code'])} |"
        )
    sources = list(result["rows"][0]["by_source"]) if result["rows"] else []
    lines += ["", "Accuracy per held-out source:", "", "| variant | " + " | ".join(sources) + " |"]
    lines.append("|---|" + "---:|" * len(sources))
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r['by_source'][s]:.3f}" for s in sources) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.router_encoders", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--variants",
        action="append",
        choices=VARIANTS,
        help=f"repeatable; default all: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timings per cost figure (median)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    result = compare(args.variants or list(VARIANTS), args.repeats)
    write_result(args.out_dir, "router_encoders", result, render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
