# The two commands the README opens with: `make demo` and `make test`.
# Both build their own virtual environment from pinned versions (constraints.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RADLAKE_HOME ?= $(CURDIR)/radlake-data
export RADLAKE_HOME

.PHONY: demo test lint typecheck pytest bench clean chromium dcmtk orthanc

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,inference,train,flows,dask,deid]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/radlake quickstart

test: $(BIN)/.installed chromium dcmtk orthanc lint typecheck pytest

# Debian's Chromium for the browser test (that test skips, saying why, if it is absent).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser test will be skipped"

# dcmtk's storescu and echoscu as the DICOM clients of the receiver test (it skips,
# saying why, if they are absent).
dcmtk:
	@command -v storescu >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq dcmtk >/dev/null; } \
		|| echo "dcmtk could not be installed: the storescu/echoscu test will be skipped"

# Orthanc with its DICOMweb plugin as the PACS that the pull tests pull from (they skip,
# saying why, if it is absent).
orthanc:
	@command -v Orthanc >/dev/null 2>&1 && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so \
		|| { apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; } \
		|| echo "orthanc could not be installed: the PACS pull tests will be skipped"

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
