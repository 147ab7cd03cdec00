# The two README commands: `make quickstart` (set up + main job) and `make test` (set up + tests).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup postgres quickstart test benchmarks

# Re-installs only when pyproject.toml changed, so a second run is instant.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The PostgreSQL-backed MLflow test (tests/test_multinode.py) starts its own server from Debian's `postgresql`
# package: installed here when missing and we are root with apt-get (CI); otherwise that test is skipped, saying so.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || echo "note: apt-get could not install postgresql; the PostgreSQL test will be skipped"; \
	    else echo "note: no PostgreSQL server binaries; the PostgreSQL test will be skipped (apt-get install postgresql)"; fi; }

quickstart: setup
	$(BIN)/lepton-ray sweep workflows/digits_quickstart.yaml

test: setup postgres
	$(BIN)/python -m pytest -q

benchmarks: setup
	$(BIN)/python -m benchmarks.run_all
