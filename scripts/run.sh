#!/usr/bin/env bash
# The run command of sandpool (README), standalone on this machine (root).
# Installs what it needs, builds release binaries, then starts the node agent
# with its own private containerd (state in ${SANDPOOL_DATA_DIR:-/var/lib/sandpool}),
# builds/imports the busybox sandbox image and serves sandpool.v1.NodeAgent on
# ${SANDPOOL_AGENT_LISTEN:-127.0.0.1:7701}. Ctrl-C stops it; sandboxes survive
# restarts. The scheduler and gateway (REST APIs for SDKs) join this command
# with the scheduler/gateway issue.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v runsc >/dev/null 2>&1 || need+=(runsc)
[[ -x /bin/busybox || -x /usr/bin/busybox ]] || need+=(busybox-static)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PROTOC="${PROTOC:-$(command -v protoc)}"
echo "building release binaries (first time: a few minutes)" >&2
cargo rustc --release --locked -q -p sandpool-runtime --bin sandpool-runtime -- -C target-feature=+crt-static
install -m 0755 target/release/sandpool-runtime target/release/sandpool-runtime-static
cargo build --release --locked -q -p sandpool-node-agent
DATA="${SANDPOOL_DATA_DIR:-/var/lib/sandpool}"
LISTEN="${SANDPOOL_AGENT_LISTEN:-127.0.0.1:7701}"
echo "sandpool node agent: gRPC sandpool.v1.NodeAgent on $LISTEN, data in $DATA" >&2
exec ./target/release/sandpool-node-agent --listen "$LISTEN" --data-dir "$DATA" \
  --runtime-bin target/release/sandpool-runtime-static "$@"
