# trackstream developer commands. `make test` and `make demo` do all set-up from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BROKER := $(PY) tests/services/kafka_broker.py
TEST_BROKER_DIR := .cache/kafka/test-broker

.PHONY: help install ui-assets chromium lint test test-unit demo kafka-up kafka-down bench-producer bench-streams bench-sinks bench-faults bench-queries bench-ui clean

help:
	@echo "make demo         create .venv, install, run a simulated sweep through the embedded pipeline"
	@echo "make test         create .venv, install every extra, lint, start Kafka, run the whole suite"
	@echo "make kafka-up     start the project's own Kafka broker (prints host:port last); kafka-down stops it"
	@echo "make bench-producer | bench-streams | bench-sinks   print benchmark figures"
	@echo "make bench-faults  fault table: points sent/stored/DLQ/lost/duplicated per injected fault"
	@echo "make bench-queries multi-rank vs single-rank read p50/p95 (issue 13); BENCH_ARGS=--overhead: facade cost (issue 12)"
	@echo "make bench-ui      the live page in Chromium: emit-to-visible (embedded, Kafka), 10k-run table, 10M-point curves, 100 live runs"

# The live page's browser libraries (uPlot, Tabulator): from npm at the versions of the lockfile, copied into the
# package (trackstream/ui/static/vendor), so the page loads nothing from the network. Needs Node.js with npm.
UI := trackstream/ui
UI_VENDOR := $(UI)/static/vendor/.installed
$(UI_VENDOR): $(UI)/package.json $(UI)/package-lock.json
	@command -v npm >/dev/null || { echo "the live page's libraries come from npm: install Node.js (e.g. apt-get install nodejs npm)"; exit 1; }
	cd $(UI) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@mkdir -p $(UI)/static/vendor
	cp $(UI)/node_modules/uplot/dist/uPlot.iife.min.js $(UI)/node_modules/uplot/dist/uPlot.min.css \
	   $(UI)/node_modules/tabulator-tables/dist/js/tabulator.min.js \
	   $(UI)/node_modules/tabulator-tables/dist/css/tabulator_simple.min.css $(UI)/static/vendor/
	@touch $(UI_VENDOR)

ui-assets: $(UI_VENDOR)

# The browser tests drive Debian's Chromium through Playwright (Playwright's own browser downloads are not used).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { echo "installing Chromium for the browser tests (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; }

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "trackstream needs Python >= 3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all]"
	@touch $(STAMP)


install: $(STAMP) $(UI_VENDOR)

# mypy checks the package as it is installed: trackstream/ with producers/, streams/, sinks/, schemas/ inside it.
TYPECHECK := .cache/typecheck/trackstream
lint: $(STAMP)
	$(PY) -m ruff check .
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	@for f in trackstream/* producers streams sinks schemas; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/; done
	$(PY) -m mypy

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

# Uses TRACKSTREAM_KAFKA_BOOTSTRAP when set; otherwise starts the project's own broker for the run and always
# stops it. If it cannot start, the test fixtures try testcontainers, and under CI=true fail.
test: lint $(UI_VENDOR) chromium
	@set -o pipefail; \
	if [ -z "$$TRACKSTREAM_KAFKA_BOOTSTRAP" ]; then \
	  echo "starting the project's own Kafka broker"; \
	  if bootstrap=$$($(BROKER) up --state-dir $(TEST_BROKER_DIR) | tail -n 1); then \
	    export TRACKSTREAM_KAFKA_BOOTSTRAP=$$bootstrap; echo "Kafka broker ready at $$bootstrap"; \
	    export TRACKSTREAM_TEST_KAFKA_SECURED="$(CURDIR)/$(TEST_BROKER_DIR)/secured.json"; \
	  else echo "the project's broker did not start; the fixtures will try testcontainers"; fi; \
	  trap '$(BROKER) down --state-dir $(TEST_BROKER_DIR)' EXIT; \
	fi; \
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP) $(UI_VENDOR)
	$(PY) -m trackstream.cli demo $(DEMO_ARGS)

kafka-up: $(STAMP)
	@$(BROKER) up

kafka-down: $(STAMP)
	@$(BROKER) down

# The producer benchmark measures MLflow, W&B (offline) and TensorBoard in the same run: the `bench` extra.
bench-producer: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/producer.py $(BENCH_ARGS)

# Kafka for a benchmark: TRACKSTREAM_KAFKA_BOOTSTRAP, else the project's broker for the run, always stopped.
WITH_KAFKA = set -e; if [ -z "$$TRACKSTREAM_KAFKA_BOOTSTRAP" ]; then \
	  TRACKSTREAM_KAFKA_BOOTSTRAP=$$($(BROKER) up --state-dir .cache/kafka/bench-broker | tail -n 1); \
	  export TRACKSTREAM_KAFKA_BOOTSTRAP; trap '$(BROKER) down --state-dir .cache/kafka/bench-broker' EXIT; fi;

bench-streams: $(STAMP)
	@$(WITH_KAFKA) $(PY) bench/streams.py $(BENCH_ARGS)

bench-sinks: $(STAMP)
	@$(WITH_KAFKA) $(PY) bench/sinks.py --bootstrap $$TRACKSTREAM_KAFKA_BOOTSTRAP $(BENCH_ARGS)

# Starts what it needs itself: the project's broker for the single-broker scenarios (or TRACKSTREAM_KAFKA_BOOTSTRAP),
# a broker of its own to kill and restart, a three-broker cluster; e.g. BENCH_ARGS="--only cluster-3-brokers-lose-one".
bench-faults: $(STAMP)
	$(PY) bench/faults.py $(BENCH_ARGS)

bench-queries: $(STAMP)
	$(PY) bench/queries.py $(BENCH_ARGS)

# The live page in a real browser (Playwright, Debian's Chromium); Kafka as for bench-streams, for emit-kafka.
# E.g. BENCH_ARGS=--quick (a smoke run) or BENCH_ARGS="--only runs-table".
bench-ui: $(STAMP) $(UI_VENDOR) chromium
	@$(WITH_KAFKA) $(PY) bench/ui.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis
