#!/usr/bin/env bash
# The project's full test run: build, tests, formatting, lints, the C tests
# (when present), the simulator (seed ranges, determinism, planted bugs) and
# a smoke run of the demo. Stops at the first failing step
# with that step's exit code; on success it ends with "N passed, 0 failed".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

passed=0

step() {
    echo
    echo "==> $*"
}

ok() {
    passed=$((passed + 1))
}

step "toolchain: cargo, rustfmt, clippy"
cargo --version
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
cargo fmt --version
cargo clippy --version
ok

# Build exactly what Cargo.lock pins when the lock file is committed.
locked=()
if git ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
    locked=(--locked)
fi
step "build: cargo build --workspace --all-targets ${locked[*]:-}"
cargo build --workspace --all-targets "${locked[@]}"
ok

step "test: cargo test --workspace"
cargo test --workspace
ok

step "format: cargo fmt --all -- --check"
cargo fmt --all -- --check
ok

step "lint: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
ok

if [[ -f tests/c/run.sh ]]; then
    step "C tests: bash tests/c/run.sh"
    bash tests/c/run.sh
    ok
fi

step "simulator: bash scripts/sim_check.sh (seed ranges, determinism, planted bugs)"
bash scripts/sim_check.sh
ok

step "smoke: cargo run --quiet -- demo"
cargo run --quiet -- demo >/dev/null
ok

echo
echo "${passed} passed, 0 failed"
