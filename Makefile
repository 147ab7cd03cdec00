# The two README commands: `make quickstart` (set up + main job) and `make test` (set up + tests).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup quickstart test benchmarks

# Re-installs only when pyproject.toml changed, so a second run is instant.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(BIN)/lepton-ray sweep workflows/digits_quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

benchmarks: setup
	$(BIN)/python -m benchmarks.run_all
