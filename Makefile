# Two commands do all set-up on a fresh machine: `make demo` (the whole pipeline, local runtime) and
# `make test`. Both create .venv and install the pinned versions (constraints.txt) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mlpipe-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install demo demo-ui test unit integration lint clean bench bench-%

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[local,test]'
	touch $(STAMP)

install: $(STAMP)

## The whole pipeline on this machine: train, stage, gate, approve (as the demo user), deploy, predict.
demo: $(STAMP)
	$(PY) -m airflow_provider_mlpipe.demo $(ARGS)

## Same, but the approval waits for you in the UI (http://127.0.0.1:8080, admin/admin) and Airflow stays up.
demo-ui: $(STAMP)
	$(PY) -m airflow_provider_mlpipe.demo --manual-approval --keep-running $(ARGS)

## Lint, type-check, then every test (unit + integration with a real Airflow scheduler).
test: $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

## Every benchmark (about 45 min on 2 cores); tables on screen, JSON in benchmarks/results/. REPEATS=3.
REPEATS ?= 3
bench: $(STAMP)
	$(PY) -m benchmarks --repeats $(REPEATS)

## One benchmark: make bench-training | bench-evaluation | bench-serving_latency | bench-orchestration |
## bench-webhook | bench-parked
bench-%: $(STAMP)
	$(PY) -m benchmarks.$* --repeats $(REPEATS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy airflow_provider_mlpipe dags plugins training_image serving_image benchmarks

clean:
	rm -rf $(VENV) .airflow build *.egg-info .pytest_cache .mypy_cache .ruff_cache
