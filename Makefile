# The two commands of lakerelay. Each bootstraps what it needs: .venv with the project, and Java 17+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint java ui clean plain

# Every install takes requirements.lock as pip's constraints: the whole closure is pinned, so a clean
# clone installs the same versions whatever the registry published since (upgrade: python -m devtools.lock).
LOCK := requirements.lock

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	@touch $(STAMP)

java:
	@bash devtools/ensure_java.sh

## Run the main flow end to end on embedded defaults (local folders, local sink server, local Spark).
demo: $(STAMP) java
	$(BIN)/python -m devtools.demo

## Run the whole test suite (pytest's "no tests collected", exit 5, is not a failure).
test: $(STAMP) java
	$(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

## A plain `pip install .` (no extras, not editable) in a venv of its own loads the definitions and runs
## the demo from outside the checkout, so nothing the code needs at run time hides in a dev extra.
PLAIN ?= /tmp/lakerelay-plain
plain: java
	rm -rf $(PLAIN) && $(PYTHON) -m venv $(PLAIN)/venv
	$(PLAIN)/venv/bin/python -m pip install --quiet -c $(LOCK) --upgrade pip
	$(PLAIN)/venv/bin/python -m pip install --quiet -c $(LOCK) .
	cd $(PLAIN) && venv/bin/python -c "import pipelines.definitions as d; print(len(list(d.defs.resolve_all_asset_keys())), 'assets load')"
	cd $(PLAIN) && venv/bin/python -m devtools.demo --home $(PLAIN)/demo --files 4

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## The Dagster UI and daemon on http://127.0.0.1:3000 over the embedded defaults. Runs post through one
## Spark Connect server on 127.0.0.1 (started here, stopped when dagster dev exits), so no run starts a
## JVM of its own; `dagster job execute`, `make demo` and the tests keep local per-run Spark.
ui: SPARK_CONNECT_DIR ?= .lakerelay/spark-connect
ui: SPARK_CONNECT_PORT ?= 15002
ui: $(STAMP) java
	$(BIN)/python -m devtools.spark_connect start --dir $(SPARK_CONNECT_DIR) --port $(SPARK_CONNECT_PORT)
# The shell runs its traps once dagster dev has exited (Ctrl-C reaches dagster, not the server, which
# has a session of its own); the EXIT trap then stops the server whichever way the shell ends.
	@trap '$(BIN)/python -m devtools.spark_connect stop --dir $(SPARK_CONNECT_DIR)' EXIT; \
	trap 'exit 130' INT TERM HUP; \
	DAGSTER_HOME=$$($(BIN)/python -m devtools.dagster_home .lakerelay/dagster) \
	LAKERELAY_SPARK_REMOTE=sc://127.0.0.1:$(SPARK_CONNECT_PORT) \
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf .lakerelay .pytest_cache
