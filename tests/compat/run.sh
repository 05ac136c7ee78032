#!/usr/bin/env bash
# Run the Key Vault conformance suite (official azure-keyvault-secrets SDK) against a built herald binary.
#
#   bash tests/compat/run.sh [pytest args...]
#
# Environment:
#   HERALD_BIN    herald binary to test (default: $REPO/target/release/herald); it is not built here
#   COMPAT_VENV   virtualenv to use/create (default: $REPO/target/compat-venv)
#   PYTHON        interpreter used to create the venv (default: python3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERALD_BIN="${HERALD_BIN:-$REPO/target/release/herald}"
COMPAT_VENV="${COMPAT_VENV:-$REPO/target/compat-venv}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$HERALD_BIN" ]]; then
    echo "error: herald binary not found or not executable: $HERALD_BIN" >&2
    echo "       build it first (cargo build --release) or set HERALD_BIN to a built binary" >&2
    exit 2
fi
HERALD_BIN="$(cd "$(dirname "$HERALD_BIN")" && pwd)/$(basename "$HERALD_BIN")"
export HERALD_BIN

if [[ ! -x "$COMPAT_VENV/bin/python" ]]; then
    echo "creating virtualenv $COMPAT_VENV" >&2
    "$PYTHON" -m venv "$COMPAT_VENV"
fi
"$COMPAT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REPO/tests/compat/requirements.txt"

cd "$REPO"
# no cache provider: keep .pytest_cache out of the work tree
exec "$COMPAT_VENV/bin/python" -m pytest -q -p no:cacheprovider tests/compat "$@"
