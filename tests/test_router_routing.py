"""The trained router end to end: accuracy targets, OOD fallback, the route API and the CLI.

The bundled prompts are embedded once per module (the slow part); every head below is trained
from those embeddings on the train split only, into a tmp folder, never into the zoo.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file

from cluster.paths import REPO_ROOT
from router import CATEGORIES, InvalidPromptError, RouteDecision, load_router
from router.artifact import HEAD_FILE, REPORT_FILE, save_artifact
from router.data import HELDOUT_PATH, OOD_PATH, TRAIN_PATH, load_jsonl
from router.embedding import get_encoder
from router.train import EmbeddedSplits, embed_splits, fit_router

MIN_ACCURACY = 0.90
MIN_RECALL = 0.80


@pytest.fixture(scope="module")
def splits() -> EmbeddedSplits:
    return embed_splits(get_encoder(), load_jsonl(TRAIN_PATH), load_jsonl(HELDOUT_PATH), load_jsonl(OOD_PATH))


@pytest.fixture(scope="module")
def trained(splits):
    return fit_router(splits)


@pytest.fixture(scope="module")
def artifact_dir(trained, tmp_path_factory):
    directory = tmp_path_factory.mktemp("router")
    save_artifact(directory, *trained)
    return directory


@pytest.fixture(scope="module")
def router(artifact_dir):
    return load_router(artifact_dir)


def test_heldout_accuracy_is_at_least_90_percent_and_80_percent_per_category(trained):
    report = trained[0].report.heldout
    recalls = {c: m.recall for c, m in report.per_category.items()}
    assert report.accuracy >= MIN_ACCURACY, report
    assert min(recalls.values()) >= MIN_RECALL, recalls
    assert sum(map(sum, report.confusion)) == len(load_jsonl(HELDOUT_PATH))


def test_tau_keeps_heldout_fallback_within_budget_and_ood_prompts_fall_back_more(trained):
    artifact, _ = trained
    report = artifact.report
    assert 0 < artifact.entropy_threshold < math.log(len(CATEGORIES))
    assert report.heldout_fallback_rate <= report.max_fallback_rate
    assert report.ood_count > 0
    assert report.ood_fallback_rate > report.heldout_fallback_rate
    rates = [row.fallback_rate for row in report.tradeoff]
    assert rates == sorted(rates), "a larger fallback budget must never fall back less"


def test_serving_path_reproduces_the_reported_ood_fallback_rate(router, trained):
    prompts = [r.prompt for r in load_jsonl(OOD_PATH)]
    fallbacks = sum(d.fallback for d in router.route_batch(prompts))
    # Batching differs from training, so an entropy right at tau may flip: allow one prompt.
    assert abs(fallbacks / len(prompts) - trained[0].report.ood_fallback_rate) <= 1 / len(prompts)


def test_training_is_deterministic(splits, trained):
    _, again = fit_router(splits)
    first = trained[1].state_dict()
    assert all(torch.equal(first[k], v) for k, v in again.state_dict().items())


def test_decision_is_a_typed_model_with_a_distribution_over_all_categories(router):
    decision = router.route("Can my landlord keep my deposit for a small carpet stain?")
    assert isinstance(decision, RouteDecision)
    assert decision.category == "law" and decision.expert == "law" and not decision.fallback
    assert list(decision.probabilities) == list(CATEGORIES)
    assert sum(decision.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= decision.entropy <= math.log(len(CATEGORIES))
    assert router.route("What is the capital of France?").expert == "generalist"


def test_chat_messages_are_routed_on_the_last_user_turn(router):
    question = "What are the side effects of ibuprofen for someone with kidney disease?"
    messages = [
        {"role": "system", "content": "You are a senior Python engineer. Answer with code."},
        {"role": "user", "content": "Write a function that merges two sorted lists."},
        {"role": "assistant", "content": "def merge(a, b): ..."},
        {"role": "user", "content": [{"type": "text", "text": question}]},
    ]
    decision = router.route(messages)
    assert decision.category == "medicine"
    assert decision == router.route(question)


def test_route_batch_equals_route_per_item(router):
    prompts = [
        "Prove that there are infinitely many twin primes? Just kidding: prove infinitely many primes.",
        "hi",
        [{"role": "user", "content": "How do I set up a Roth IRA?"}],
        "Write a limerick about a cat. " * 20,
        "Explain how a transistor amplifies a signal.",
    ]
    batch = router.route_batch(prompts)
    assert len(batch) == len(prompts)
    for prompt, got in zip(prompts, batch, strict=True):
        alone = router.route(prompt)
        assert (got.category, got.expert, got.fallback) == (alone.category, alone.expert, alone.fallback)
        assert got.entropy == pytest.approx(alone.entropy, abs=1e-4)
        assert got.probabilities == pytest.approx(alone.probabilities, abs=1e-4)
    assert router.route_batch([]) == []


def test_route_is_safe_to_call_from_many_threads(router):
    prompts = [r.prompt for r in load_jsonl(HELDOUT_PATH)][::5]
    expected = [router.route(p).category for p in prompts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda p: router.route(p).category, prompts * 3))
    assert got == expected * 3


@pytest.mark.parametrize(
    "payload",
    ["", "   ", None, 3.5, [], [{"role": "assistant", "content": "hi"}], [{"role": "user", "content": ""}]],
)
def test_bad_prompts_raise_invalid_prompt_error(router, payload):
    with pytest.raises(InvalidPromptError):
        router.route(payload)


def test_one_bad_item_fails_the_batch_and_names_its_index(router):
    with pytest.raises(InvalidPromptError, match=r"prompts\[2\]"):
        router.route_batch(["fine", "also fine", "  "])
    with pytest.raises(InvalidPromptError, match="expects a list"):
        router.route_batch("a string is not a batch")
    with pytest.raises(InvalidPromptError, match="wrap the conversation"):
        router.route_batch([{"role": "user", "content": "a bare message is not a conversation"}])


def test_overrides_replace_the_map_fallback_and_tau(artifact_dir):
    tiny = dict.fromkeys(CATEGORIES, "tiny-a") | {"code": "tiny-b"}
    never = load_router(artifact_dir, category_map=tiny, fallback_expert="tiny-gen", entropy_threshold=100.0)
    assert never.experts == {"tiny-a", "tiny-b", "tiny-gen"}
    assert never.route("Write a Rust function that parses a CSV line.").expert == "tiny-b"
    assert never.route("What is the capital of Italy?").expert == "tiny-a"

    always = load_router(artifact_dir, fallback_expert="tiny-gen", entropy_threshold=0.0)
    decision = always.route("Write a Rust function that parses a CSV line.")
    assert decision.fallback and decision.expert == "tiny-gen" and decision.category == "code"
    assert always.category_map["general"] == "generalist"  # the artifact's map is kept


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"category_map": {"code": "x"}}, "missing"),
        ({"category_map": dict.fromkeys([*CATEGORIES, "poetry"], "x")}, r"unknown \['poetry'\]"),
        ({"category_map": dict.fromkeys(CATEGORIES, " ")}, "no expert name"),
        ({"fallback_expert": ""}, "fallback_expert"),
        ({"entropy_threshold": -1.0}, "entropy_threshold"),
    ],
)
def test_bad_overrides_are_rejected_with_the_reason(artifact_dir, overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_router(artifact_dir, **overrides)


def test_missing_artifact_at_an_explicit_path_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m router.train --out"):
        load_router(tmp_path / "nowhere")


def test_default_path_trains_the_artifact_when_missing_like_router_train(
    tmp_path, monkeypatch, caplog, trained
):
    target = tmp_path / "zoo" / "router"
    monkeypatch.setenv("COE_ROUTER_DIR", str(target))
    with caplog.at_level(logging.INFO, logger="router.routing"):
        router = load_router()
    assert "training one from the bundled data" in caplog.text
    assert (target / REPORT_FILE).is_file()
    assert router.route("How do I sort a dict by value in Python?").expert == "code"
    written = load_file(target / HEAD_FILE)
    assert all(torch.equal(written[k], v) for k, v in trained[1].state_dict().items())
    assert not [p for p in target.parent.iterdir() if p.name != "router"], "temporary folder left behind"


def test_cli_route_prints_the_decision_as_json(artifact_dir):
    run = subprocess.run(
        [sys.executable, "-m", "router", "route", "--path", str(artifact_dir), "Is 221 a prime number?"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    decision = RouteDecision.model_validate(json.loads(run.stdout))
    assert decision.category == "math"

    bad = subprocess.run(
        [sys.executable, "-m", "router", "route", "--path", str(artifact_dir), "  "],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "empty" in bad.stderr
