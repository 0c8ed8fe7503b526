"""The category -> expert map: best expert, cheapest within a regret, and its refusals."""

from __future__ import annotations

import json

import pytest

from router.calibrate import build_category_map, main, read_costs, read_scores
from router.classifier import CATEGORIES
from router.data import DEMO_SCORES_PATH

SCORES = {
    "big": {"code": 0.90, "math": 0.80},
    "small": {"code": 0.86, "math": 0.60},
    "mathy": {"code": 0.40, "math": 0.85},
}
COSTS = {"big": 10.0, "small": 1.0, "mathy": 3.0}


def test_without_regret_each_category_goes_to_its_best_expert():
    assert build_category_map(SCORES) == {"code": "big", "math": "mathy"}


def test_max_regret_picks_the_cheapest_expert_within_the_regret():
    # code: big 0.90 best; small 0.86 is within 0.05 and 10x cheaper. math: only mathy within 0.05.
    assert build_category_map(SCORES, COSTS, max_regret=0.05) == {"code": "small", "math": "mathy"}
    # A wider regret lets the cheap model take math too (0.60 >= 0.85 - 0.3).
    assert build_category_map(SCORES, COSTS, max_regret=0.3) == {"code": "small", "math": "small"}
    # Zero regret is the plain best.
    assert build_category_map(SCORES, COSTS, max_regret=0.0) == {"code": "big", "math": "mathy"}


def test_a_score_tie_without_costs_is_an_error_naming_the_experts():
    tied = {"a": {"code": 0.9}, "b": {"code": 0.9}}
    with pytest.raises(ValueError, match=r"\['a', 'b'\] tie on score"):
        build_category_map(tied)


def test_costs_break_a_score_tie_and_equal_costs_break_by_score():
    tied = {"a": {"code": 0.9}, "b": {"code": 0.9}}
    assert build_category_map(tied, {"a": 2.0, "b": 1.0}) == {"code": "b"}
    near = {"a": {"code": 0.9}, "b": {"code": 0.88}}
    assert build_category_map(near, {"a": 1.0, "b": 1.0}, max_regret=0.1) == {"code": "a"}
    with pytest.raises(ValueError, match="tie on cost and score"):
        build_category_map(tied, {"a": 1.0, "b": 1.0})


@pytest.mark.parametrize(
    ("costs", "regret", "fragment"),
    [
        ({**COSTS, "ghost": 1.0}, 0.1, r"unknown experts \['ghost'\]"),
        ({"big": 1.0, "small": 2.0}, 0.1, r"no cost for experts \['mathy'\]"),
        (None, 0.1, "needs costs"),
        (COSTS, -0.1, "max_regret must be"),
        (COSTS, float("nan"), "max_regret must be"),
    ],
)
def test_inconsistent_costs_or_regret_are_rejected(costs, regret, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_category_map(SCORES, costs, max_regret=regret)


def test_rows_with_different_categories_or_no_rows_are_rejected():
    with pytest.raises(ValueError, match="expected"):
        build_category_map({"a": {"code": 1.0}, "b": {"math": 1.0}})
    with pytest.raises(ValueError, match="empty"):
        build_category_map({})


def test_demo_scores_give_each_specialist_its_own_category_and_general_to_the_generalist():
    expected = {c: c for c in CATEGORIES if c != "general"} | {"general": "generalist"}
    assert build_category_map(read_scores(DEMO_SCORES_PATH)) == expected


def test_cli_writes_the_map_as_json(tmp_path):
    scores = tmp_path / "scores.csv"
    header = "expert," + ",".join(CATEGORIES)
    scores.write_text(
        f"{header}\nbig,{','.join(['0.9'] * 8)}\nsmall,{','.join(['0.87'] * 8)}\n", encoding="utf-8"
    )
    costs = tmp_path / "costs.csv"
    costs.write_text("expert,cost\nbig,100\nsmall,1\n", encoding="utf-8")
    out = tmp_path / "out" / "map.json"
    assert (
        main(["--scores", str(scores), "--costs", str(costs), "--max-regret", "0.05", "--out", str(out)]) == 0
    )
    assert json.loads(out.read_text()) == dict.fromkeys(CATEGORIES, "small")
    assert main(["--scores", str(scores), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == dict.fromkeys(CATEGORIES, "big")


def test_csv_readers_reject_bad_headers_and_values(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("expert,code,math\na,1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must be exactly"):
        read_scores(bad)
    bad.write_text("expert," + ",".join(CATEGORIES) + "\na," + ",".join(["x"] * 8) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must be a number"):
        read_scores(bad)
    bad.write_text("name,price\na,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expert,cost"):
        read_costs(bad)
