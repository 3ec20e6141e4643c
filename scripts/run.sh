#!/usr/bin/env bash
# The run command of sandpool (README): builds and starts what exists so far.
# Today that is the in-sandbox runtime alone, serving the execd HTTP API and
# the sandpool.v1.Runtime gRPC service on 0.0.0.0:44772 (stop with Ctrl-C).
# The standalone platform (containerd, node agent, scheduler, gateway) lands
# with the node-agent and scheduler/gateway issues.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null
fi
export PROTOC="${PROTOC:-$(command -v protoc)}"
cargo build --release --locked -p sandpool-runtime
echo "sandpool-runtime: execd HTTP + gRPC on :${SANDPOOL_RUNTIME_PORT:-44772} (token: ${EXECD_ACCESS_TOKEN:-none})" >&2
exec ./target/release/sandpool-runtime --listen "0.0.0.0:${SANDPOOL_RUNTIME_PORT:-44772}" "$@"
