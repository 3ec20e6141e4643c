#!/usr/bin/env bash
# The test command of sandpool (README). Installs what the tests need,
# idempotently, then runs clippy (warnings denied), the Rust test suite and
# the Python SDK compatibility tests against real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\n==> %s\n' "$*"; }

# --- system packages -------------------------------------------------------
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v bash >/dev/null 2>&1 || need+=(bash)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PROTOC="${PROTOC:-$(command -v protoc)}"

# --- Python venv with the real SDKs ----------------------------------------
VENV="$ROOT/.venv"
REQ="$ROOT/integration/python/requirements.txt"
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "installing Python test requirements"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  echo "$want" >"$stamp"
fi

# --- Rust ---------------------------------------------------------------------
if [[ "${CI:-}" == "true" ]]; then export CARGO_INCREMENTAL=0; fi
log "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# --- SDK compatibility tests (real opensandbox SDK against real binaries) ------
log "building binaries for the SDK tests"
cargo build --locked -p sandpool-runtime --bin sandpool-runtime
log "opensandbox SDK tests"
SANDPOOL_RUNTIME_BIN="$ROOT/target/debug/sandpool-runtime" \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/integration/python"
