#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: system packages, the virtual environment with the project
# and its dev tools, and the pinned npm tools (solc-js, OpenZeppelin, anvil). Re-runs are cheap:
# each step is skipped while its inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "deedmesh needs Python >= 3.11"'

# The README's walkthrough reads JSON output with jq.
if ! command -v jq >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing jq"
    apt-get update -qq && apt-get install -y -qq jq >/dev/null
  else
    echo "setup: jq is missing (the README's walkthrough uses it); install it with your package manager" >&2
  fi
fi

# fastecdsa (a libp2p dependency) builds from source and needs GMP and a C toolchain.
if ! [ -e /usr/include/gmp.h ] && ! ls /usr/include/*/gmp.h >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing libgmp-dev and build-essential"
    apt-get update -qq && apt-get install -y -qq libgmp-dev build-essential >/dev/null
  else
    echo "setup: libgmp-dev (GMP headers) is missing; install it with your package manager" >&2
    exit 1
  fi
fi

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }

want=$(stamp pyproject.toml)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.deedmesh-stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: python environment (.venv)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[dev]"
  echo "$want" > .venv/.deedmesh-stamp
fi

want=$(stamp contracts/package.json contracts/package-lock.json)
if [ ! -d contracts/node_modules ] || [ "$(cat contracts/node_modules/.deedmesh-stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: npm tools (contracts/node_modules)"
  (cd contracts && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > contracts/node_modules/.deedmesh-stamp
fi
