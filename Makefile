# msmt — every target sets itself up: a virtualenv with the pinned lock, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
# uv does not read pip's configuration: hand it pip's find-links (where the CPU torch wheel lies).
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
export SPARK_LOCAL_IP ?= 127.0.0.1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install chromium demo test test-unit test-integration e2e lint format airflow airflow-down airflow-ui mlflow-ui clean \
	cluster-up cluster-down cluster-demo test-cluster

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==0.13.9
	$(BIN)/uv pip sync --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

demo: install  ## the main job: a simulated week, then msmt_daily for two days
	$(BIN)/msmt demo

# The report test opens the daily HTML report in headless Chromium (Debian's package); root installs it.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "chromium is missing (the report test needs it); as root: apt-get install -y --no-install-recommends chromium" >&2; \
	    exit 1; \
	  fi; \
	  echo "installing chromium (apt-get)"; \
	  apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	}

# Two workers, each given whole test files in collection order (module fixtures such as the e2e's days are
# built once): the suite waits on JVMs, subprocesses and Airflow's services, so one core alone idles.
TEST_WORKERS ?= 2

test: install chromium  ## the whole suite (what CI runs): the import contracts, then every test
	$(BIN)/lint-imports
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-unit: install
	$(BIN)/pytest tests/unit

test-integration: install chromium
	$(BIN)/pytest -m integration

e2e: install
	$(BIN)/pytest -m e2e

# The cluster profile's services on 127.0.0.1 under MSMT_HOME (PostgreSQL, Redis, S3, MLflow, Spark, Airflow);
# as root `msmt cluster up` installs redis-server with apt-get. Then: eval "$$(.venv/bin/msmt cluster env)"
cluster-up: install
	$(BIN)/msmt cluster up

cluster-down: install
	$(BIN)/msmt cluster down

cluster-demo: install  ## from an empty MSMT_HOME: cluster up, a simulated week, two days of msmt_daily run by the scheduler
	$(BIN)/msmt cluster demo

test-cluster: install  ## starts every service on a temp home, checks each, stops them (-m cluster: not in `make test`)
	$(BIN)/pytest -m cluster tests/cluster

lint: install  ## ruff, and the layers' import contracts (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

airflow: install  ## Airflow's api-server, scheduler and dag-processor (LocalExecutor) on the profile's DB, DAGs unpaused
	$(BIN)/msmt airflow up

airflow-down: install
	$(BIN)/msmt airflow down

airflow-ui: install  ## Airflow UI on the demo's metadata DB: http://localhost:8080
	eval "$$($(BIN)/msmt env)" && PATH="$(CURDIR)/$(BIN):$$PATH" setsid $(BIN)/airflow standalone

mlflow-ui: install  ## MLflow UI on the demo's runs: http://localhost:5000
	eval "$$($(BIN)/msmt env)" && $(BIN)/mlflow ui --backend-store-uri "$$($(BIN)/python -c 'from msmt.settings import Settings; print(Settings.from_env().mlflow_uri)')" --port 5000

clean:
	rm -rf .msmt .pytest_cache .ruff_cache
