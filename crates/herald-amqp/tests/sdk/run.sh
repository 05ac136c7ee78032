#!/usr/bin/env bash
# Build the in-memory AMQP server and run the azure-eventhub SDK suite against it.
#   VENV (default /work/venv-eh) gets azure-eventhub==5.15.1 + pytest if missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
venv="${VENV:-/work/venv-eh}"
target="${CARGO_TARGET_DIR:-$root/target}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import azure.eventhub, pytest' 2>/dev/null \
  || "$venv/bin/pip" install -q azure-eventhub==5.15.1 pytest
(cd "$root" && CARGO_TARGET_DIR="$target" cargo build -q -p herald-amqp --example mem_server)
export HERALD_AMQP_SERVER="$target/debug/examples/mem_server"
cd "$here"
exec "$venv/bin/python" -B -m pytest -q -p no:cacheprovider "$@" test_sdk.py
