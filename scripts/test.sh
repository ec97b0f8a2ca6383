#!/usr/bin/env bash
# Runs every test tier. Installs the Debian packages the tiers need first.
#   tier 0: formatting and lints
#   tier 1: unit tests (src/**)
#   tier 2: subprocess tests of the binaries (tests/*.rs)
#   tier 3: privileged tests (kernel erofs mounts, loop devices): run as root, otherwise
#           each prints "SKIPPED <test>: needs root (...)".
# Benchmarks are compiled (not run): see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export STRATA_CI="${STRATA_CI:-1}"   # a missing oracle tool fails instead of skipping
# pjdfstest (POSIX conformance, run against overlay mounts) comes from crates.io.
if [ "$(id -u)" -eq 0 ]; then
  [ -x target/tools/bin/pjdfstest ] \
    || cargo install pjdfstest --version 0.2.2 --locked --root target/tools --quiet
  export PATH="$PWD/target/tools/bin:$PATH"
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# --show-output prints what passing tests wrote, so every "SKIPPED ..." line is visible.
cargo test --locked --all-targets --no-fail-fast -- --show-output
