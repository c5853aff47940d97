# The two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
DEMO_DIR ?= $(CURDIR)/demo

.PHONY: venv system-deps demo dev test lint bench clean

$(BIN)/fleetsync: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/fleetsync

# openssh-server, rsync, sqlite3 from Debian's packages where missing (root or sudo).
system-deps:
	bash scripts/install-system-deps.sh

demo: venv
	$(BIN)/fleetsync demo --dir $(DEMO_DIR)

# The Dagster UI (http://127.0.0.1:3000) on the demo fleet's instance.
dev: demo
	FLEETSYNC_FLEET=$(DEMO_DIR)/fleet.yaml $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Import contracts first (pyproject.toml [tool.importlinter]): a layering break fails in
# a second, before the suite runs.
test: venv system-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/pytest -q --durations=20

bench: venv system-deps
	@# Every benchmark runs; the target fails at the end if any missed its floor.
	@failed=""; for b in merge transfer export elo deficit fanout repair_latency; do \
		$(BIN)/python bench/bench_$$b.py || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "benchmarks below their floor:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
	find dagster_home -mindepth 1 -not -name 'dagster.yaml' -not -path '*/postgres*' -delete

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/mypy sync_assets resources sensors
