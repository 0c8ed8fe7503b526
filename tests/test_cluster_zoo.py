"""The demo zoo: real SmolLM2 experts that load with transformers and answer."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cluster import zoo
from cluster.cli import main as coe_main


def _generate(path, question: str, max_new_tokens: int, min_new_tokens: int = 0) -> tuple[str, int]:
    """(text, number of new tokens) of a greedy answer."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    card = json.loads((path / "coe_expert.json").read_text())
    messages = [{"role": "system", "content": card["system_prompt"]}, {"role": "user", "content": question}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False)
    new = out[0][enc["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def test_every_demo_expert_loads_and_generates(demo_zoo):
    assert [p.name for p in demo_zoo] == [r.id for r in zoo.DEMO_EXPERTS]
    for path in demo_zoo:
        assert (path / "model.safetensors").stat().st_size > 200_000_000
        assert len(_generate(path, "Say hello.", 3)[0]) > 0


def test_generalist_knows_the_capital_of_france(demo_zoo):
    generalist = next(p for p in demo_zoo if p.name == "generalist")
    assert "Paris" in _generate(generalist, "What is the capital of France?", 16)[0]


def test_each_expert_has_its_own_weight_file(demo_zoo):
    inodes = {(p / "model.safetensors").stat().st_ino for p in demo_zoo}
    assert len(inodes) == len(demo_zoo)


def test_rebuilding_an_up_to_date_zoo_is_a_no_op(demo_zoo, zoo_root):
    def written() -> dict:
        return {f: f.stat().st_mtime_ns for p in demo_zoo for f in p.rglob("*") if f.is_file()}

    before = written()
    assert zoo.build_demo(zoo_root) == demo_zoo
    assert written() == before  # not one file of any expert rewritten (nor added, nor removed)


def test_tiny_experts_alternate_llama_and_qwen2(tiny_zoo):
    types = [json.loads((p / "config.json").read_text())["model_type"] for p in tiny_zoo[:4]]
    assert types == ["llama", "qwen2", "llama", "qwen2"]
    for path in tiny_zoo[:2]:
        assert (path / "model.safetensors").stat().st_size < 8_000_000
        # Random weights: any text (EOS is held off so the count is exact), but it must run.
        assert _generate(path, "hi", 3, min_new_tokens=3)[1] == 3


def test_a_changed_recipe_is_rebuilt(tmp_path, zoo_root, monkeypatch):
    monkeypatch.setattr(zoo, "tokenizer_dir", lambda root: zoo_root / "tokenizer")
    recipe = zoo.ExpertRecipe(id="probe", category="general", system_prompt="one")
    zoo.build_tiny(zoo_root, 1)
    (tmp_path / "base").symlink_to(zoo_root / "base")
    zoo.build_demo(tmp_path, [recipe])
    first = (tmp_path / "experts" / "probe" / "model.safetensors").stat().st_mtime_ns
    zoo.build_demo(tmp_path, [recipe])
    assert (tmp_path / "experts" / "probe" / "model.safetensors").stat().st_mtime_ns == first
    zoo.build_demo(tmp_path, [recipe.model_copy(update={"system_prompt": "two"})])
    card = json.loads((tmp_path / "experts" / "probe" / "coe_expert.json").read_text())
    assert card["system_prompt"] == "two"


def test_coe_cli_lists_subcommands(capsys):
    assert coe_main([]) == 0
    assert "zoo" in capsys.readouterr().out
    assert coe_main(["no-such-command"]) == 2


@pytest.mark.parametrize("argv", [["--tiny", "2"]])
def test_zoo_command_runs(argv, tiny_zoo, capsys):
    assert coe_main(["zoo", *argv]) == 0
    assert "zoo ready: 2 experts" in capsys.readouterr().out


def test_coe_route_prints_the_decision(router_artifact, capsys):
    assert coe_main(["route", "Prove that the square root of 2 is irrational."]) == 0
    assert json.loads(capsys.readouterr().out)["category"] == "math"
