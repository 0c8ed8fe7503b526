"""The shipped router end to end: its report, the guide's hard cases, conversations, sessions, API, CLI.

Uses the default artifact (`load_router()`, trained once into the zoo folder if missing or stale,
shared with the serving tests), so the router tested is the one `make serve` builds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster.paths import REPO_ROOT, router_dir
from router import CATEGORIES, InvalidPromptError, RouteDecision, load_router
from router.conversation import SessionPolicy
from router.corpus import MANIFEST_PATH
from router.data import HELDOUT_PATH, OOD_PATH, load_jsonl


@pytest.fixture(scope="module")
def router():
    return load_router()


def test_shipped_artifact_carries_its_loso_report_temperature_and_tau(router):
    artifact = router.artifact
    report = artifact.report
    assert report.corpus_sha256 == json.loads(MANIFEST_PATH.read_text())["sha256"]
    assert artifact.temperature > 0 and 0 < artifact.entropy_threshold <= math.log(len(CATEGORIES))
    assert report.chosen in report.risk_coverage
    assert report.chosen.expected_quality == max(p.expected_quality for p in report.risk_coverage)
    assert sum(map(sum, report.leave_one_source_out.confusion)) == report.train_count
    assert report.ece_calibrated_in_sample < report.ece_uncalibrated


def test_the_loaded_router_reproduces_its_reported_fallback_rate_and_accuracy_definition(router):
    """The report's OOD fallback rate was measured in training; recomputed here through the router
    as `load_router` serves it (encoder, head, temperature and tau read back from disk)."""
    report = router.artifact.report
    ood = load_jsonl(OOD_PATH)
    assert len(ood) == report.ood_count
    fell_back = [d.fallback for d in router.route_batch([r.prompt for r in ood])]
    # Batches differ from training's, so an entropy right at tau may flip: allow one prompt.
    assert abs(sum(fell_back) - report.ood_fallback_rate * len(ood)) <= 1
    for label, rate in report.ood_fallback_rate_by_label.items():
        mine = [f for f, r in zip(fell_back, ood, strict=True) if r.category == label]
        assert abs(sum(mine) - rate * len(mine)) <= 1, label
    loso = report.leave_one_source_out  # accuracy is the confusion matrix's diagonal share
    diagonal = sum(loso.confusion[i][i] for i in range(len(loso.categories)))
    assert loso.accuracy == pytest.approx(diagonal / sum(map(sum, loso.confusion)))


# The hard cases router/README.md decides; each must route as the guide says.
GUIDE_CASES = [
    ("A 2 kg block slides down a frictionless 30 degree incline. What is its acceleration?", "science"),
    ("Balance the chemical equation for the combustion of propane.", "science"),
    ("Prove that the square root of 2 is irrational.", "math"),
    ("How many ways can 5 people sit around a round table?", "math"),
    ('def is_palindrome(s: str) -> bool:\n    """True if s reads the same backwards."""\n', "code"),
    ("Can you review this Go code and tell me why the goroutine leaks?", "code"),
    ("Should I pay off my car loan early or invest the money in an index fund?", "finance"),
    ("Draft a non-disclosure agreement between my startup and a contractor.", "law"),
    ("Is it safe to take ibuprofen if I have kidney disease?", "medicine"),
    ("Write a short poem about autumn leaves.", "writing"),
    ("hi, how are you doing today?", "general"),
]


@pytest.mark.parametrize(("prompt", "category"), GUIDE_CASES)
def test_guide_hard_cases_route_as_the_guide_says(router, prompt, category):
    assert router.route(prompt).category == category


def test_an_elliptical_follow_up_keeps_the_conversation_category(router):
    code = [
        {"role": "user", "content": "Write a Python function that reverses a linked list."},
        {"role": "assistant", "content": "def reverse(head): ..."},
        {"role": "user", "content": "now in Java"},
    ]
    decision = router.route(code)
    assert decision.follow_up and decision.category == "code"
    physics = [
        {"role": "user", "content": "What is the moment of inertia of a solid sphere about its axis?"},
        {"role": "assistant", "content": "I = 2/5 m r^2"},
        {"role": "user", "content": "and for a hollow one?"},
    ]
    decision = router.route(physics)
    assert decision.follow_up and decision.category == "science"


def test_a_session_pin_holds_until_a_confident_move_and_then_moves(tmp_path):
    sticky = load_router(session_policy=SessionPolicy(switch_confidence=1.0))  # nothing is that sure
    first = sticky.route("Write a Python function that merges two sorted lists.", session="s1")
    assert first.category == "code" and not first.pinned
    other = sticky.route("What are the symptoms of appendicitis in children?", session="s1")
    assert other.category == "medicine" and other.pinned and other.expert == first.expert

    movable = load_router(session_policy=SessionPolicy(switch_confidence=0.0))  # any clear change moves
    movable.route("Write a Python function that merges two sorted lists.", session="s2")
    moved = movable.route("What are the symptoms of appendicitis in children?", session="s2")
    assert moved.category == "medicine" and not moved.pinned
    assert moved.expert == movable.category_map["medicine"]
    back = movable.route("Write a Python function that merges two sorted lists.", session="s2")
    assert not back.pinned and back.category == "code"
    # Another session is not affected, and no session means no pin.
    assert not movable.route("What are the symptoms of appendicitis in children?").pinned


def test_route_batch_equals_route_per_item(router):
    prompts = [
        "Prove there are infinitely many primes.",
        "hi",
        [{"role": "user", "content": "How do I set up a Roth IRA?"}],
        "Write a limerick about a cat. " * 20,
        "Explain how a transistor amplifies a signal.",
    ]
    batch = router.route_batch(prompts)
    for prompt, got in zip(prompts, batch, strict=True):
        alone = router.route(prompt)
        assert (got.category, got.expert, got.fallback) == (alone.category, alone.expert, alone.fallback)
        assert got.probabilities == pytest.approx(alone.probabilities, abs=1e-5)
    assert router.route_batch([]) == []


def test_decision_is_a_typed_model_with_a_calibrated_distribution(router):
    decision = router.route("Can my landlord keep my deposit for a small carpet stain?")
    assert isinstance(decision, RouteDecision) and decision.category == "law"
    assert list(decision.probabilities) == list(CATEGORIES)
    assert sum(decision.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= decision.entropy <= math.log(len(CATEGORIES))


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


def test_overrides_replace_the_map_fallback_and_tau():
    tiny = dict.fromkeys(CATEGORIES, "tiny-a") | {"code": "tiny-b"}
    never = load_router(category_map=tiny, fallback_expert="tiny-gen", entropy_threshold=100.0)
    assert never.experts == {"tiny-a", "tiny-b", "tiny-gen"}
    assert never.route("Write a Rust function that parses a CSV line.").expert == "tiny-b"
    always = load_router(fallback_expert="tiny-gen", entropy_threshold=0.0)
    decision = always.route("Write a Rust function that parses a CSV line.")
    assert decision.fallback and decision.expert == "tiny-gen" and decision.category == "code"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"category_map": {"code": "x"}}, "missing"),
        ({"category_map": dict.fromkeys([*CATEGORIES, "poetry"], "x")}, r"unknown \['poetry'\]"),
        ({"fallback_expert": ""}, "fallback_expert"),
        ({"entropy_threshold": -1.0}, "entropy_threshold"),
    ],
)
def test_bad_overrides_are_rejected_with_the_reason(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_router(**overrides)


def test_missing_artifact_at_an_explicit_path_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m router.train --out"):
        load_router(tmp_path / "nowhere")


def test_cli_route_prints_the_decision_as_json(router):
    args = [sys.executable, "-m", "router", "route", "--path", str(router_dir())]
    kw = {"capture_output": True, "text": True, "cwd": REPO_ROOT, "timeout": 300, "check": False}
    run = subprocess.run([*args, "Is 221 a prime number?"], **kw)
    assert run.returncode == 0, run.stderr
    assert RouteDecision.model_validate(json.loads(run.stdout)).category == "math"
    bad = subprocess.run([*args, "  "], **kw)
    assert bad.returncode == 2 and "empty" in bad.stderr
