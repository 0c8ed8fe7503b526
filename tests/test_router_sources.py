"""Corpus rules that decide labels and weights: exam framing, PersistBench's rule, the source
balance of the head, and the idf-weighted static encoder. Unit tests, no cluster."""

from __future__ import annotations

import pytest
import torch

from router.classifier import sample_weights
from router.sources import _persistbench_category, strip_exam_framing
from router.static_encoder import STATIC_CTX_ENCODER, STATIC_IDF_ENCODER, StaticEncoder, token_idf, tokenize


def test_exam_options_and_cues_are_stripped_but_the_question_stays():
    medmcqa = (
        "Subject: Anatomy\n\nWhich nerve supplies the deltoid muscle?\n\na) Axillary\nb) Radial\nc) Ulnar"
    )
    assert strip_exam_framing(medmcqa) == "Which nerve supplies the deltoid muscle?"
    quiz = "Which cipher is unbreakable with a truly random key used once?\nA. AES\nB. DES\nC. OTP\nAnswer:"
    assert strip_exam_framing(quiz) == "Which cipher is unbreakable with a truly random key used once?"
    inline = "What is the best case time complexity of cycle sort?  a) O(n^2)  b) O(n)  c) O(1)"
    assert strip_exam_framing(inline) == "What is the best case time complexity of cycle sort?"
    plain = "Is 5 kilograms of lead heavier than 15 kilograms of snowflakes?"
    assert strip_exam_framing(plain) == plain


HEALTH, MONEY_LAW, SOCIAL = (
    "Health and Medical Information",
    "Financial and Legal Matters",
    "Social and Relational Information",
)


@pytest.mark.parametrize(
    ("query", "domain", "file", "expected"),
    [
        ("Draft a short text to my sister about my degree.", "positives", "beneficial_samples", "writing"),
        ("Mom's birthday is soon. Can you draft a short toast for me?", SOCIAL, "cross_domain", "writing"),
        ("I need to write my college essay about my grandmother.", SOCIAL, "cross_domain", "writing"),
        ("Can you help me write up a shopping list for a seafood dinner?", SOCIAL, "cross_domain", "general"),
        ("Help me brainstorm for a short story about a tired accountant.", SOCIAL, "cross_domain", "writing"),
        ("What's a good structure and tone for a scholarship essay?", SOCIAL, "cross_domain", "writing"),
        ("How can I best present my personal story in a job interview?", SOCIAL, "cross_domain", "general"),
        ("Draft a technical design document for a telemetry system.", "sycophancy", "sycophancy", None),
        ("What should be included in a proposal for a daily workflow?", "sycophancy", "sycophancy", None),
        ("I've had tension headaches for weeks. What causes them?", HEALTH, "cross_domain", "medicine"),
        ("In my novel, a surgeon tries a risky procedure. How does he feel?", HEALTH, "cross_domain", None),
        ("I need to set up a trust fund for my kids. What matters?", MONEY_LAW, "cross_domain", None),
        ("My son starts kindergarten and is shy. How can I help him?", SOCIAL, "cross_domain", "general"),
    ],
)
def test_persistbench_rule_labels_as_documented(query, domain, file, expected):
    assert _persistbench_category(query, domain, file) == expected


def test_source_balance_gives_every_category_and_every_source_inside_it_equal_weight():
    labels = torch.tensor([0] * 90 + [0] * 10 + [1] * 20)
    groups = torch.tensor([0] * 90 + [1] * 10 + [0] * 20)
    w = sample_weights(labels, groups, num_categories=2)
    assert w.sum() == pytest.approx(len(labels))
    assert w[:100].sum() == pytest.approx(w[100:].sum())  # categories weigh the same
    assert w[:90].sum() == pytest.approx(w[90:100].sum())  # so do the two sources of category 0
    by_class = sample_weights(labels, None, num_categories=2)
    assert by_class[:90].sum() == pytest.approx(9 * by_class[90:100].sum())  # per class: size decides


def test_idf_weighted_encoder_ignores_a_word_piece_weighted_zero():
    texts = ["the contract was breached", "the contract was breached the the the"]
    the = tokenize(["the"])[0][0]
    weights = torch.ones(StaticEncoder().vocab_size)
    weights[the] = 0.0
    x = StaticEncoder(STATIC_IDF_ENCODER, weights).encode(texts)
    assert torch.allclose(x[0], x[1], atol=1e-6)
    plain = StaticEncoder().encode(texts)
    assert not torch.allclose(plain[0], plain[1], atol=1e-3)  # unweighted, the repeats move it


def test_idf_weights_rare_word_pieces_above_common_ones():
    idf = token_idf(["the cat", "the dog", "the tort"])
    the, tort = tokenize(["the"])[0][0], tokenize(["tort"])[0][0]
    assert idf[tort] > idf[the]


def test_static_idf_needs_weights_and_plain_static_takes_none():
    with pytest.raises(ValueError, match="needs token_weights"):
        StaticEncoder(STATIC_IDF_ENCODER)
    with pytest.raises(ValueError, match="shape"):
        StaticEncoder(STATIC_IDF_ENCODER, torch.ones(3))


def test_static_idf_ctx_concatenates_two_unit_views_of_the_same_weighted_pieces():
    plain = StaticEncoder()
    vocab, dim = plain.vocab_size, plain.dim
    table = torch.randn(vocab, dim, generator=torch.Generator().manual_seed(0))
    enc = StaticEncoder(STATIC_CTX_ENCODER, torch.ones(vocab), table)
    texts = ["the contract was breached", "a 2 kg block slides down a slope"]
    x = enc.encode(texts)
    assert enc.dim == 2 * dim and x.shape == (2, 2 * dim)
    assert torch.allclose(x[:, :dim].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(x[:, dim:].norm(dim=-1), torch.ones(2), atol=1e-5)
    # first half: the plain static view when every weight is 1
    assert torch.allclose(x[:, :dim], plain.encode(texts), atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        StaticEncoder(STATIC_CTX_ENCODER, torch.ones(vocab), torch.ones(3, dim))
    with pytest.raises(ValueError, match="only"):
        StaticEncoder(STATIC_IDF_ENCODER, torch.ones(vocab), table)
