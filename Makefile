# The two commands of lakerelay. Each bootstraps what it needs: .venv with the project, and Java 17+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint java ui clean plain

# Every install takes requirements.lock as pip's constraints: the whole closure is pinned, so a clean
# clone installs the same versions whatever the registry published since (upgrade: python -m lakerelay.devtools.lock).
LOCK := requirements.lock

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	@touch $(STAMP)

java:
	@bash lakerelay/devtools/ensure_java.sh

## Run the main flow end to end on embedded defaults (local folders, local sink server, local Spark).
demo: $(STAMP) java
	$(BIN)/python -m lakerelay.devtools.demo

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
	cd $(PLAIN) && venv/bin/python -m lakerelay.devtools.demo --home $(PLAIN)/demo --files 4

## Style and types: ruff, then basedpyright (pyright's "basic" mode, pyrightconfig.json) on the code that ships.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/basedpyright

## The Dagster UI and daemon on http://127.0.0.1:3000 over the embedded defaults, with the local sink
## server (Elasticsearch _bulk and Splunk HEC on one port, started here) and one Spark Connect server on
## 127.0.0.1, so no run starts a JVM of its own; both stop when dg dev exits. Land sample files with
## `.venv/bin/lakerelay sample-events .lakerelay/landing/events --files 2` (new names each time).
ui: SPARK_CONNECT_DIR ?= .lakerelay/spark-connect
ui: SPARK_CONNECT_PORT ?= 15002
ui: SINK_DIR ?= .lakerelay/sink
ui: $(STAMP) java
	$(BIN)/python -m lakerelay.devtools.spark_connect start --dir $(SPARK_CONNECT_DIR) --port $(SPARK_CONNECT_PORT)
# The shell runs its traps once dg dev has exited (Ctrl-C reaches dagster, not the servers, which
# have sessions of their own); the EXIT trap then stops them whichever way the shell ends. Ctrl-C is
# how the UI is stopped, so it ends with status 0. `dg dev` is `dagster dev` without its SupersessionWarning.
	@mkdir -p $(SINK_DIR) && rm -f $(SINK_DIR)/port; \
	setsid $(BIN)/python -m lakerelay.localsink --host 127.0.0.1 --port 0 --port-file $(SINK_DIR)/port \
	  > $(SINK_DIR)/log 2>&1 & echo $$! > $(SINK_DIR)/pid; \
	trap 'kill $$(cat $(SINK_DIR)/pid) 2>/dev/null; $(BIN)/python -m lakerelay.devtools.spark_connect stop --dir $(SPARK_CONNECT_DIR)' EXIT; \
	trap 'exit 0' INT; trap 'exit 143' TERM HUP; \
	for i in $$(seq 100); do test -s $(SINK_DIR)/port && break; sleep 0.1; done; \
	test -s $(SINK_DIR)/port || { echo "the local sink server did not start: see $(SINK_DIR)/log"; exit 1; }; \
	SINK_URL=http://127.0.0.1:$$(cat $(SINK_DIR)/port); echo "local sink server: $$SINK_URL"; \
	DAGSTER_HOME=$$($(BIN)/python -m lakerelay.devtools.dagster_home .lakerelay/dagster) \
	LAKERELAY_SPARK_REMOTE=sc://127.0.0.1:$(SPARK_CONNECT_PORT) \
	LAKERELAY_ES_URL=$${LAKERELAY_ES_URL:-$$SINK_URL} LAKERELAY_HEC_URL=$${LAKERELAY_HEC_URL:-$$SINK_URL} \
	$(BIN)/dg dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf .lakerelay .pytest_cache
