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
# real sandbox runtimes for the node-agent tests
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v runsc >/dev/null 2>&1 || need+=(runsc)
[[ -x /bin/busybox || -x /usr/bin/busybox ]] || need+=(busybox-static)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
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

# The runtime is bind-mounted into every sandbox, whatever its image: it must
# be static. (This links target/debug/sandpool-runtime statically; the copy
# keeps it when later builds relink the dynamic one.)
log "static sandpool-runtime for sandboxes"
cargo rustc --locked -q -p sandpool-runtime --bin sandpool-runtime -- -C target-feature=+crt-static
install -m 0755 target/debug/sandpool-runtime target/debug/sandpool-runtime-static
export SANDPOOL_RUNTIME_STATIC_BIN="$ROOT/target/debug/sandpool-runtime-static"
# containerd/runc/runsc tests must run here, not skip
export SANDPOOL_REQUIRE_CONTAINERD=1

log "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# --- SDK compatibility tests (real opensandbox SDK against real binaries) ------
log "building binaries for the SDK tests"
cargo build --locked -p sandpool-runtime --bin sandpool-runtime -p sandpool --bin sandpool
export SANDPOOL_BIN="$ROOT/target/debug/sandpool"
log "opensandbox SDK tests"
SANDPOOL_RUNTIME_BIN="$ROOT/target/debug/sandpool-runtime" \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/integration/python"
