#!/usr/bin/env bash
# usage: scripts/test.sh [cargo test args...]
#
# Runs every Materia test: each tool's unit and integration tests, and the
# whole-pipeline tests in tests/. On a fresh Debian machine it first installs what
# the tests need (scripts/setup-dev.sh). The real USDA release is read from
# ../shared/fixtures (tests that need it skip with a message when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/materia-target}"
scripts/setup-dev.sh --tests
cargo test --workspace --locked "$@"
