#!/usr/bin/env bash
# Short smoke run of every cargo-fuzz target (default 20 s each; FUZZ_SECONDS overrides).
# Installs cargo-fuzz from crates.io if missing. libFuzzer's sanitizer flags need unstable
# options, which the stable toolchain accepts with RUSTC_BOOTSTRAP=1 (no nightly download).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-20}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
failed=()
for target in $(cargo fuzz list); do
  echo "== fuzz $target (${secs}s)"
  mkdir -p "corpus/$target"
  log="/tmp/ferry-fuzz-$target.log"
  if ! cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -max_len=4096 >"$log" 2>&1; then
    failed+=("$target")
    grep -E 'panicked|ERROR|SUMMARY|Failing input|artifacts/' "$log" | head -n 8 || true
  fi
  grep -E '^Done [0-9]+ runs' "$log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "all fuzz targets ran clean"
