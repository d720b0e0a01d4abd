# One command for each job; each sets up what it needs (a .venv in the checkout) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test docs docs-test lint format bench mutation clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)          ## the main job: explain the built-in benchmark, write grid, report, summary
	$(VENV)/bin/camlens demo --out out/demo

test: $(STAMP)          ## the whole test suite, lint included
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	$(PY) -m pytest -q

docs: $(STAMP)          ## the documentation site -> site/ (strict, offline; tutorials executed)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-test: docs         ## open the built site in headless Chromium (home, tutorial, formulas, search)
	$(PY) -m pytest -q tests/docs

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks tools
	$(VENV)/bin/ruff check --fix src tests benchmarks tools

bench: $(STAMP)         ## side-by-side speed and memory against the peer libraries
	$(PY) benchmarks/bench_gradient.py --write BENCHMARKS.md

# Mutation testing (mutmut 3), each module against its own tests, in .mutation/<module>/.
# `make mutation MUTATION_MODULES="cams layouts"` for some of them; see MUTATION.md.
MUTATION_MODULES ?=
mutation: $(STAMP)      ## mutate cams/, layouts, targets, the engine, metrics/; score per module
	OMP_NUM_THREADS=1 $(PY) benchmarks/mutation/run.py $(MUTATION_MODULES) --survivors

clean:
	rm -rf $(VENV) out build site .cache *.egg-info src/*.egg-info .pytest_cache .mutation
