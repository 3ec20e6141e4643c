#!/usr/bin/env bash
# Builds the chart's image (deploy/helm/sandpool: every component runs
# `sandpool <subcommand>`, pool pods copy /sandpool-runtime) as an OCI archive,
# with buildah from scratch: no Docker, no registry, no network.
#
#   scripts/chart-image.sh SANDPOOL_BIN RUNTIME_BIN OUT.tar IMAGE_REF
#
# Layout: /usr/local/bin/sandpool (its shared libraries, as `ldd` lists them,
# beside it at their own paths: glibc, libssl, libcrypto, libgcc_s), the
# static /sandpool-runtime (it is copied into pool pods of any image, so it
# must be static: refused otherwise), CA certificates, /etc/passwd with the
# chart's non-root user 65532, /tmp. Binaries are stripped copies. Buildah's
# storage is private (a temp dir, vfs driver) and removed at the end.
set -euo pipefail
[[ $# -eq 4 ]] || { echo "usage: $0 SANDPOOL_BIN RUNTIME_BIN OUT.tar IMAGE_REF" >&2; exit 2; }
sandpool="$1" runtime="$2" out="$3" ref="$4"
die() { printf 'chart-image: %s\n' "$*" >&2; exit 1; }

for tool in buildah ldd readelf strip; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool missing (scripts/install-deps.sh installs it)"
done
[[ -x "$sandpool" ]] || die "no executable $sandpool"
[[ -x "$runtime" ]] || die "no executable $runtime"
# static (or static-pie): no program interpreter, no needed libraries
if readelf -lW "$runtime" | grep -q 'INTERP' || readelf -dW "$runtime" | grep -q '(NEEDED)'; then
  die "$runtime is dynamically linked; pool pods of any image run it: build it with -C target-feature=+crt-static"
fi

work=$(mktemp -d /tmp/sandpool-chart-image.XXXXXX)
B=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
ctr=""
cleanup() {
  [[ -n "$ctr" ]] && "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

root="$work/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
strip -o "$root/usr/local/bin/sandpool" "$sandpool"
strip -o "$root/sandpool-runtime" "$runtime"
chmod 0755 "$root/usr/local/bin/sandpool" "$root/sandpool-runtime"
# the shared libraries of sandpool, the loader included, at their real paths
libs=$(ldd "$sandpool" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
[[ -n "$libs" ]] || die "ldd lists no libraries for $sandpool"
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# /lib64 and /lib are symlinks on Debian's host (usrmerge) but real here
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"

ctr=$("${B[@]}" from scratch)
"${B[@]}" copy "$ctr" "$root/" / >/dev/null
"${B[@]}" config \
  --env PATH=/usr/local/bin:/usr/bin:/bin \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --user 65532:65532 \
  --workingdir / \
  --entrypoint '["sandpool"]' --cmd '' \
  --label org.opencontainers.image.title=sandpool \
  --label org.opencontainers.image.source=https://github.com/sandpool/sandpool \
  "$ctr"
mkdir -p "$(dirname "$out")"
rm -f "$out"
"${B[@]}" commit --quiet --format oci --squash "$ctr" "oci-archive:$out:$ref" >/dev/null
echo "chart image $ref -> $out ($(du -h "$out" | cut -f1); libraries: $(echo "$libs" | xargs -n1 basename | tr '\n' ' '))"
