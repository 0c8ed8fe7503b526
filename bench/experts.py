"""Bench-only experts: random-weight Llama/Qwen2 models of a chosen size, with the real tokenizer.

The tiny test experts (~3 MB) make every page-in nearly free, so a comparison on them says
little about paging. These are sized (default ~40 MB) so that loading one costs something next
to a request's generation, while a forward stays a few milliseconds on one CPU thread and a
quick run can serve hundreds of requests in minutes. They are written once (stamped) under
``zoo_dir()/bench/<size>mb/`` by ``cluster.zoo.write_expert_dir``, so the STORE layout, the
chat template and the system-prompt metadata are exactly those of the real zoo.
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster import zoo
from cluster.paths import zoo_dir

__all__ = ["bench_expert_ids", "bench_model_config", "build_bench_experts"]

HIDDEN = 256  # wide enough that the embedding alone is ~25 MB with SmolLM2's 49k vocabulary
INTERMEDIATE = 1024
_BYTES_PER_PARAM = 2  # bfloat16


def bench_model_config(index: int, target_bytes: int, vocab_size: int):
    """A config whose bf16 weights come to about `target_bytes`: the embedding (tied lm_head)
    plus as many layers as fit; at least one layer. Llama and Qwen2 alternate, as in the tiny zoo."""
    heads, kv_heads = 4, 2
    head_dim = HIDDEN // heads
    embed_params = vocab_size * HIDDEN
    layer_params = (
        2 * HIDDEN * HIDDEN  # q, o
        + 2 * HIDDEN * kv_heads * head_dim  # k, v
        + 3 * HIDDEN * INTERMEDIATE  # gate, up, down
        + 2 * HIDDEN  # norms
    )
    layers = max(1, round((target_bytes / _BYTES_PER_PARAM - embed_params) / layer_params))
    return zoo.random_expert_config(
        index,
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
    )


def bench_expert_ids(count: int, target_mb: int) -> list[str]:
    return [f"bench{target_mb}-{i:02d}" for i in range(count)]


def build_bench_experts(count: int, target_mb: int, root: Path | None = None) -> list[Path]:
    """`count` experts of about `target_mb` MB under `<root>/bench/<target_mb>mb/`, built once.

    Each expert has its own weight file (seeded by index): paging must move each expert's own
    bytes, and the page cache must not make one expert's read warm another's.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = (root or zoo_dir()).resolve()
    tokenizer = zoo.tokenizer_dir(root)
    vocab_size = len(AutoTokenizer.from_pretrained(tokenizer))
    paths = []
    for index, expert_id in enumerate(bench_expert_ids(count, target_mb)):
        out = root / "bench" / f"{target_mb}mb" / expert_id
        stamp = {"format": zoo.ZOO_FORMAT, "bench": target_mb, "index": index, "vocab_size": vocab_size}
        paths.append(out)
        stamp_file = out / "coe_build.json"
        if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
            continue
        config = bench_model_config(index, target_mb * 10**6, vocab_size)
        torch.manual_seed(2000 + index)
        with torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        state_dict = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        zoo.write_expert_dir(
            out,
            state_dict,
            config,
            tokenizer,
            expert_id=expert_id,
            category="bench",
            system_prompt=f"You are bench expert {index}.",
            stamp=stamp,
        )
    return paths
