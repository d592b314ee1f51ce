#!/usr/bin/env bash
# The project's test command (README "Quick start", second command; `.ci/run` calls it).
# Formatting, lints with warnings as errors, then every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== tests"
cargo test --locked --workspace
echo "== fuzz smoke"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" ./scripts/fuzz-smoke.sh
