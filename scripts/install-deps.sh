#!/usr/bin/env bash
# Installs, idempotently, the Debian packages sandpool needs to build and to run
# sandboxes: protoc, containerd, runc, runsc, CNI plugins, busybox-static,
# debootstrap, iproute2, iptables. Sourced by run.sh and test.sh; exports PROTOC.
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v runsc >/dev/null 2>&1 || need+=(runsc)
[[ -x /bin/busybox || -x /usr/bin/busybox ]] || need+=(busybox-static)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PROTOC="${PROTOC:-$(command -v protoc)}"
