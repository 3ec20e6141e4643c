#!/usr/bin/env bash
# The test command of sandpool (README). Installs what the tests need,
# idempotently, then runs clippy (warnings denied), the Rust test suite and
# the Python SDK compatibility tests against real binaries, then the fuzz
# targets for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\n==> %s\n' "$*"; }

# --- system packages -------------------------------------------------------
# shellcheck source=install-deps.sh
source scripts/install-deps.sh

# --- Python venvs with the real SDKs ----------------------------------------
# .venv: latest opensandbox, e2b, e2b-code-interpreter; .venv-e2b237: the
# older e2b 2.37.1 (v1 API paths, e2b_<hex> key check).
venv() { # venv DIR REQUIREMENTS
  local dir="$1" req="$2" stamp="$1/.requirements.sha256" want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [[ ! -x "$dir/bin/python" ]]; then
    log "creating $dir"
    python3 -m venv "$dir"
  fi
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "installing $(basename "$req") into $dir"
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
  fi
}
VENV="$ROOT/.venv"
venv "$VENV" "$ROOT/integration/python/requirements.txt"
venv "$ROOT/.venv-e2b237" "$ROOT/integration/python/requirements-e2b237.txt"
# .venv-osrv: upstream's opensandbox-server, run by a controller test
venv "$ROOT/.venv-osrv" "$ROOT/integration/python/requirements-osrv.txt"
export SANDPOOL_OSRV_PYTHON="$ROOT/.venv-osrv/bin/python"

# --- Rust ---------------------------------------------------------------------
if [[ "${CI:-}" == "true" ]]; then export CARGO_INCREMENTAL=0; fi
log "cargo fmt --check, layout rules (file and function sizes)"
cargo fmt --all --check
(cd fuzz && cargo fmt --check)
python3 scripts/check-layout.py
log "cargo clippy (workspace lints, warnings denied)"
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

# Kubernetes manifests: real helm (lint --strict, template) and
# kubernetes-validate --strict on every rendering; the CRDs themselves are
# checked (structural rules, equal to the generated ones) by the Rust suite.
log "Helm chart and manifests"
bash scripts/k8s-check.sh

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
"$ROOT/.venv-k8s/bin/python" scripts/check-chart-args.py target/helm-rendered.yaml "$SANDPOOL_BIN"
"$ROOT/.venv-k8s/bin/python" scripts/check-chart-args.py target/helm-rendered-asb-router.yaml "$SANDPOOL_BIN"
# The chart's image, from these binaries (no Docker, no registry): an OCI
# archive built by buildah, imported into a private containerd and its
# containers started as the renderings declare them (scripts/check-chart-image.py).
log "chart image: build (buildah), import (ctr) and start the chart's containers"
CHART_IMAGE=$("$ROOT/.venv-k8s/bin/python" -c 'import sys, yaml
print(next(c["image"] for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"
           for c in d["spec"]["template"]["spec"]["containers"] if c.get("command") == ["sandpool"]))' target/helm-rendered.yaml)
bash scripts/chart-image.sh "$SANDPOOL_BIN" "$SANDPOOL_RUNTIME_STATIC_BIN" target/sandpool-chart-image.tar "$CHART_IMAGE"
"$ROOT/.venv-k8s/bin/python" scripts/check-chart-image.py target/sandpool-chart-image.tar \
  target/helm-rendered.yaml target/helm-rendered-asb-router.yaml
log "SDK tests: opensandbox 1.1.1, e2b 2.63.0, e2b-code-interpreter 2.11.5"
SANDPOOL_RUNTIME_BIN="$ROOT/target/debug/sandpool-runtime" \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/integration/python"
log "SDK tests: e2b 2.37.1"
"$ROOT/.venv-e2b237/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/integration/python/lifecycle/test_e2b_sdk.py"

# --- fuzzing (bounded; longer runs: scripts/fuzz.sh 600, see docs/reliability.md)
log "fuzz targets, ${SANDPOOL_FUZZ_SECONDS:-30}s each"
bash scripts/fuzz.sh "${SANDPOOL_FUZZ_SECONDS:-30}"
