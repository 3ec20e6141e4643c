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
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v runsc >/dev/null 2>&1 || need+=(runsc)
[[ -x /bin/busybox || -x /usr/bin/busybox ]] || need+=(busybox-static)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PROTOC="${PROTOC:-$(command -v protoc)}"
echo "building release binaries (first time: a few minutes)" >&2
cargo rustc --release --locked -q -p sandpool-runtime --bin sandpool-runtime -- -C target-feature=+crt-static
install -m 0755 target/release/sandpool-runtime target/release/sandpool-runtime-static
cargo build --release --locked -q -p sandpool
exec ./target/release/sandpool serve "$@"
