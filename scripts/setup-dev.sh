#!/usr/bin/env bash
# usage: scripts/setup-dev.sh
#
# Installs what building and testing Materia needs on Debian: the packages below
# (apt, when run as root and something is missing) and checks for a Rust toolchain.
# Idempotent: a second run installs nothing.
set -euo pipefail

# Debian packages the build, the tests and scripts/ use.
#   gcc, pkg-config: C parts of crates (SQLite, aws-lc); gzip, unzip, curl: tests and
#   benchmarks; sqlite3: operators' queries; time: peak memory in benchmarks.
packages=(gcc pkg-config gzip unzip curl sqlite3 time ca-certificates)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup-dev: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "setup-dev: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "setup-dev: no cargo on PATH: install Rust 1.89 or newer with rustup (Debian's cargo is too old)" >&2
    exit 1
fi
