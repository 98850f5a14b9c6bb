# The two commands of the README: `make demo` and `make test`. Each bootstraps .venv first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml requirements.lock scripts/bootstrap.sh
	scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pp demo

test: lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.bench_fanout --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_autoscaler --output BENCHMARKS.md
	$(BIN)/python -m bench.bench_workers --output BENCHMARKS.md
	$(BIN)/python -m bench.night_sim --output BENCHMARKS.md

clean:
	rm -rf $(VENV) .pp .mypy_cache .ruff_cache
