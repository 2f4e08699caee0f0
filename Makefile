# Two entry points (see README): `make run` trains + benchmarks the tiny Libra, `make test` runs
# every test (slow ones included). Both create .venv on first use.
PY := .venv/bin/python
export TOKENIZERS_PARALLELISM := false

.PHONY: env run test test-fast lint

env:
	bash scripts/setup_env.sh

run: env
	$(PY) run.py $(ARGS)

test: env
	$(PY) -m ruff check .
	$(PY) -m pytest -m "slow or not slow" $(ARGS)

test-fast: env
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: env
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
