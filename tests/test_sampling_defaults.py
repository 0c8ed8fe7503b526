"""Default sampling precedence: checkpoint generation_config.json < the expert's YAML < the request."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cluster.config import config_from_dict
from cluster.paths import REPO_ROOT
from cluster.sampling_defaults import SamplingDefaults, checkpoint_sampling
from deployments.wire import GenerationRequest, Sampling


@pytest.fixture
def tiny_dict(tiny_zoo) -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster" / "configs" / "tiny.yaml").read_text())


def _expert_with_generation_config(source: Path, out: Path, generation: dict) -> Path:
    shutil.copytree(source, out)
    (out / "generation_config.json").write_text(json.dumps(generation))
    return out


def _config(tiny_dict: dict, checkpoint: Path, sampling: dict | None = None) -> dict:
    expert = {"id": "tuned", "checkpoint": str(checkpoint)}
    if sampling is not None:
        expert["sampling"] = sampling
    data = json.loads(json.dumps(tiny_dict))
    data["experts"] = [expert] + data["experts"][1:]
    data["router"]["category_map"] = {
        k: v for k, v in data["router"]["category_map"].items() if v != "tiny-00"
    }
    return data


def test_checkpoint_then_yaml_then_request(tiny_dict, tiny_zoo, tmp_path):
    checkpoint = _expert_with_generation_config(
        tiny_zoo[0], tmp_path / "tuned", {"temperature": 0.3, "top_p": 0.8, "top_k": 20, "max_new_tokens": 7}
    )
    config = config_from_dict(_config(tiny_dict, checkpoint, {"top_p": 0.5}))
    defaults = config.expert("tuned").sampling
    # The checkpoint fills what the YAML leaves out; the YAML wins where it speaks.
    assert defaults == SamplingDefaults(temperature=0.3, top_p=0.5, top_k=20, max_tokens=7)

    unset = Sampling.resolve(GenerationRequest(model="tuned"), defaults)
    assert (unset.temperature, unset.top_p, unset.top_k) == (0.3, 0.5, 20)
    asked = Sampling.resolve(GenerationRequest(model="tuned", temperature=0.0, top_k=0), defaults)
    assert (asked.temperature, asked.top_p, asked.top_k) == (0.0, 0.5, 0)  # the request wins, field by field


def test_without_any_defaults_the_neutral_openai_values_apply(tiny_config):
    defaults = tiny_config.expert("tiny-03").sampling  # tiny experts ship no generation_config.json
    resolved = Sampling.resolve(GenerationRequest(model="tiny-03"), defaults)
    assert (resolved.temperature, resolved.top_p, resolved.top_k, resolved.repetition_penalty) == (
        1.0,
        1.0,
        0,
        1.0,
    )


def test_the_demo_zoo_carries_smollm2s_recommended_sampling(demo_zoo):
    defaults = checkpoint_sampling(demo_zoo[0])
    assert defaults.temperature is not None and defaults.temperature <= 0.3
    assert defaults.top_p is not None and defaults.top_p < 1.0
