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
echo "== the sans-IO core alone: no tokio, quinn or rustls in its tree, its tests without them"
core_tree="$(cargo tree --locked -p ferry-engine -p ferry-keys -e normal,build,dev --prefix none)"
if grep -E '^(tokio|quinn|rustls|ferry-net) ' <<<"$core_tree"; then
    echo "the core depends on the network layer (above); move that code to engine/net" >&2
    exit 1
fi
cargo test --locked -p ferry-engine -p ferry-keys
echo "== tests (the rest of the workspace)"
cargo test --locked --workspace --exclude ferry-engine --exclude ferry-keys
echo "== fuzz smoke"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" ./scripts/fuzz-smoke.sh
