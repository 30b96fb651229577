VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast run ui bench cluster-local cluster-stop clean

$(PY):
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The fast tier on every core, then the slow tier one test at a time (its Ray ladders use every core).
test: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow" -n auto $(PYTEST_ARGS)
	$(PY) -m pytest -q -ra -m slow $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n auto $(PYTEST_ARGS)

run: $(STAMP)
	$(PY) experiments/ladder.py $(ARGS)

ui: $(STAMP)
	$(VENV)/bin/clipscale ui $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_fit.py

cluster-local: $(STAMP)  ## a local Ray head (token auth) + MLflow server (basic auth), to try the cluster path on one box; prints how to authenticate
	cluster/local.sh start

cluster-stop:
	cluster/local.sh stop

clean:
	rm -rf $(VENV) .pytest_cache
