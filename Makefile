# Every target sets up .venv first (scripts/setup-venv.sh is a no-op when it is current).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export MPLCONFIGDIR := $(CURDIR)/.work/mpl

.PHONY: setup test demo lint bench lock clean

setup:
	@bash scripts/setup-venv.sh

test: setup
	@mkdir -p .work
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy
	$(PY) -m pytest --basetemp=.work/pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/ambient demo

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: setup
	$(PY) benchmarks/sampler.py

# Regenerate requirements.lock from pyproject.toml + constraints.txt (needs uv).
lock:
	uv pip compile pyproject.toml --extra test --extra drake -c constraints.txt \
	  --find-links "$$(pip config get global.find-links 2>/dev/null)" \
	  --index-strategy unsafe-best-match --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_34 -o requirements.lock

clean:
	rm -rf .work
