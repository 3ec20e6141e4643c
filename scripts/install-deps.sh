#!/usr/bin/env bash
# Installs, idempotently, the Debian packages sandpool needs to build and to run
# sandboxes: protoc, containerd, runc, crun, runsc, CNI plugins, busybox-static,
# debootstrap, iproute2, iptables; OpenSSL headers for the registry client's
# TLS; and, for the image-pull tests, a loopback registry (docker-registry),
# skopeo, umoci, htpasswd and openssl (test certificates); buildah for E2B template builds and the chart image (with binutils, util-linux's
# nsenter and curl for its check); redis-server for the opensandbox SDK's
# client-side pool test. Sourced by run.sh and test.sh; exports PROTOC.
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v runsc >/dev/null 2>&1 || need+=(runsc)
command -v crun >/dev/null 2>&1 || need+=(crun)
[[ -x /bin/busybox || -x /usr/bin/busybox ]] || need+=(busybox-static)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# egress tables of sandboxes and template builds
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[[ -f /usr/include/openssl/ssl.h ]] || need+=(libssl-dev)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
# the opensandbox SDK's client-side pool keeps its state in Redis (its test)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# the chart image check (scripts/chart-image.sh, check-chart-image.py)
command -v readelf >/dev/null 2>&1 || need+=(binutils)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PROTOC="${PROTOC:-$(command -v protoc)}"
