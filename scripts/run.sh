#!/usr/bin/env bash
# The run command of sandpool (README): the whole platform on this machine
# (root, Debian 12). Installs what it needs, builds release binaries, then runs
# `sandpool serve`: a private containerd, the node agent, the scheduler (state
# in ${SANDPOOL_DATA_DIR:-/var/lib/sandpool}/scheduler.redb) and the gateway
# (OpenSandbox REST API) on ${SANDPOOL_LISTEN:-127.0.0.1:8080}, with a default
# busybox pool. Set SANDPOOL_API_KEY (else one is generated and printed).
# Extra arguments go to `sandpool serve` (see `sandpool serve --help`).
# Ctrl-C stops it; sandboxes survive and are adopted by the next start.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=install-deps.sh
source scripts/install-deps.sh
echo "building release binaries (first time: a few minutes)" >&2
cargo rustc --release --locked -q -p sandpool-runtime --bin sandpool-runtime -- -C target-feature=+crt-static
install -m 0755 target/release/sandpool-runtime target/release/sandpool-runtime-static
cargo build --release --locked -q -p sandpool
exec ./target/release/sandpool serve "$@"
