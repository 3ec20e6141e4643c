#!/usr/bin/env bash
# Fuzz targets (cargo fuzz, libFuzzer) for bounded time each:
#   connect_envelope  envd's Connect streaming framing
#   claim_json        the OpenSandbox and E2B create bodies (claim API JSON)
#   multipart_upload  the runtime's streaming multipart upload
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30; scripts/test.sh runs it)
# Any crash fails the script; libFuzzer prints the input (and its base64).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz@0.13.2
fi
# cargo fuzz needs nightly flags: the nightly toolchain if present, else the
# stable compiler in bootstrap mode
if cargo +nightly --version >/dev/null 2>&1; then
  FUZZ=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
fi
cd fuzz
mkdir -p target
# -s none: the targets are safe Rust; the point is panics, hangs and
# broken invariants, found faster without AddressSanitizer
"${FUZZ[@]}" build -s none
for t in connect_envelope claim_json multipart_upload; do
  mkdir -p "corpus/$t"
  echo "==> fuzz $t for ${SECS}s"
  log="target/fuzz-$t.log"
  status=0
  # absolute corpus paths: multipart_upload runs chrooted (see its jail())
  "${FUZZ[@]}" run -s none "$t" "$PWD/corpus/$t" "$PWD/seeds/$t" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if [[ $status -ne 0 ]]; then
    grep -E -A30 'panicked|ERROR|SUMMARY|Error' "$log" | head -60 >&2 || tail -30 "$log" >&2
    echo "fuzz $t failed (exit $status); inputs: $(ls "artifacts/$t" 2>/dev/null || echo none); log: fuzz/$log" >&2
    exit 1
  fi
done
# the upload target's jails (their bind mounts died with the fuzzer's mount namespace)
rm -rf --one-file-system "${TMPDIR:-/tmp}"/sandpool-fuzz-upload-* 2>/dev/null || true
