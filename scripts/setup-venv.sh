#!/usr/bin/env bash
# Create or update .venv from nothing: uv when available (10x faster), pip otherwise.
# Installs the exact versions of requirements.lock (torch is the CPU build, never CUDA), then the
# project itself in editable mode. Idempotent: a second run with an unchanged lock is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
LOCK=requirements.lock
STAMP="$VENV/.ambient-installed"

if [ -f "$STAMP" ] && [ "$STAMP" -nt "$LOCK" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

# torch's CPU wheel: the machine's pip find-links when configured, the PyTorch CPU index otherwise.
FIND_LINKS=$(pip config get global.find-links 2>/dev/null || true)
if [ -n "$FIND_LINKS" ]; then
  TORCH_SRC=(--find-links "$FIND_LINKS")
else
  TORCH_SRC=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

UV=$(command -v uv || true)
if [ -z "$UV" ]; then
  if [ ! -x "$VENV/bin/uv" ]; then
    echo "[setup] installing uv into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check uv || true
  fi
  [ -x "$VENV/bin/uv" ] && UV="$VENV/bin/uv"
fi

echo "[setup] installing $LOCK into $VENV"
if [ -n "$UV" ]; then
  "$UV" pip install --python "$VENV/bin/python" --index-strategy unsafe-best-match \
    "${TORCH_SRC[@]}" -r "$LOCK"
  "$UV" pip install --python "$VENV/bin/python" --no-deps -e .
else
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${TORCH_SRC[@]}" -r "$LOCK"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
fi
touch "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, ray, mlflow, optuna; print(f"torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}, optuna {optuna.__version__}")')"
