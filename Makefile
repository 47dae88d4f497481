# The two commands the README opens with: `make demo` and `make test`.
# Both build their own virtual environment from pinned versions (constraints.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RADLAKE_HOME ?= $(CURDIR)/radlake-data
export RADLAKE_HOME

.PHONY: demo test lint typecheck pytest bench clean chromium dcmtk orthanc ohif

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,inference,train,flows,dask,deid]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/radlake quickstart

test: $(BIN)/.installed chromium dcmtk orthanc ohif lint typecheck pytest

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

# The OHIF Viewer's prebuilt v2 app from the npm registry (checked against its pinned
# sha512), browsed against radlake's /dicomweb in the OHIF test (it skips, saying why,
# if this could not be fetched). Its index.html loads a script from polyfill.io, a domain
# taken over in 2024: that tag is deleted.
OHIF_VERSION := 4.12.51
OHIF_SHA512 := b2eb102a9aa4c2c1309f16ff620bdc2f14470bc6f820840d4ce77f5d850b6817d289399de3dc8a3fa178ba929e3b220a18b0e7ed3dbfcf5e31de5f66e83355cd
OHIF_DIR := .ohif
ohif:
	@test -s $(OHIF_DIR)/dist/index.umd.js || { \
		{ command -v npm >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }; } \
		&& rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR) \
		&& npm pack --silent --pack-destination $(OHIF_DIR) @ohif/viewer@$(OHIF_VERSION) >/dev/null \
		&& echo "$(OHIF_SHA512)  $(OHIF_DIR)/ohif-viewer-$(OHIF_VERSION).tgz" | sha512sum -c --quiet \
		&& tar -xzf $(OHIF_DIR)/ohif-viewer-$(OHIF_VERSION).tgz -C $(OHIF_DIR) --strip-components=1 package/dist \
		&& rm $(OHIF_DIR)/ohif-viewer-$(OHIF_VERSION).tgz \
		&& sed -z -i -E 's|<script\s+src="https://polyfill\.io[^"]*"\s*></script>||' $(OHIF_DIR)/dist/index.html \
		&& ! grep -q polyfill.io $(OHIF_DIR)/dist/index.html; \
	} || { rm -rf $(OHIF_DIR); echo "OHIF could not be fetched: the OHIF viewer test will be skipped"; }

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
	rm -rf $(VENV) $(OHIF_DIR) radlake-data .pytest_cache .mypy_cache .ruff_cache
