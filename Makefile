# The two commands of the README: `make demo` and `make test`. Each bootstraps .venv first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov (the manifests' security scan) in a venv of its own: its pins clash with requirements.lock.
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed

.PHONY: demo test lint check-install validate-k8s bench faults audit clean

$(STAMP): pyproject.toml requirements.lock scripts/bootstrap.sh scripts/find_python.sh
	scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

$(SCAN_STAMP): requirements-scan.lock scripts/scan_venv.sh scripts/find_python.sh
	scripts/scan_venv.sh $(SCAN_VENV)
	touch $(SCAN_STAMP)

demo: $(STAMP)
	$(BIN)/pp demo

# Lint, types and import contracts, the tests (two processes, a test module's tests in one of them),
# then what a production install gets.
test: lint $(SCAN_STAMP)
	$(BIN)/pytest -n 2 --dist loadfile --durations=20
	$(MAKE) check-install

lint: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The Kubernetes manifests, offline: each overlay of infra/overlays rendered (kubectl kustomize), validated
# (Kubernetes 1.31 strict, KEDA's CRDs), held to our policy and scanned by checkov (tests/test_manifests.py).
validate-k8s: $(STAMP) $(SCAN_STAMP)
	$(BIN)/python -m tests.manifests_check

# `pip install .` (no extras) in a fresh venv: no dev tools come along, the services' commands run.
check-install: $(STAMP)
	scripts/check_runtime_install.sh

bench: $(STAMP)
	$(BIN)/python -m bench.bench_fanout --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_autoscaler --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_burst --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_capacity --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_visit189 --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_workers --output BENCHMARKS.md
	$(BIN)/python -m bench.night_sim --output BENCHMARKS.md
	$(BIN)/python -m bench.night_sim --measured --visits 1000 --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_butler --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_pipeline --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_soak --visits 2000 --output BENCHMARKS.md

# One fault at a time into the embedded stack during simulated nights, then 10,000 fuzzed inputs per
# parser: RELIABILITY.md (about 55 min on 2 cores: 37 for the faults, 17 for the fuzzing).
faults: $(STAMP)
	$(BIN)/python -m bench.faults --output RELIABILITY.md
	$(BIN)/python -m bench.fuzz --cases 10000 --output RELIABILITY.md

# Known vulnerabilities in requirements.lock (pip-audit; needs PyPI's JSON API or OSV, which this machine lacks).
audit:
	scripts/audit.sh

clean:
	rm -rf $(VENV) $(SCAN_VENV) .pp .mypy_cache .ruff_cache
