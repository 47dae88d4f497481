# The two commands the README opens with: `make demo` and `make test`.
# Both build their own virtual environment from pinned versions (constraints.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RADLAKE_HOME ?= $(CURDIR)/radlake-data
export RADLAKE_HOME

.PHONY: demo test lint typecheck pytest bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/radlake quickstart

test: $(BIN)/.installed lint typecheck pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(BIN)/.installed
	$(BIN)/mypy

pytest: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 --dist loadgroup

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) radlake-data .pytest_cache .mypy_cache .ruff_cache
