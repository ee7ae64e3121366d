#!/usr/bin/env bash
# usage: scripts/run-all.sh [--data-dir DIR] [--import FILE.zip --release YYYY-MM] [--backup URL]
#
# Runs the Materia pipeline once, in order, into a local data dir, the way the
# systemd units chain it on the server; stops at the first failing step with its
# message. Builds the tools once (release) unless MATERIA_BIN_DIR names a directory
# holding them already.
#
#   --data-dir DIR     data dir (env MATERIA_DATA_DIR, default ./data)
#   --import FILE.zip  offline: land this PSD zip instead of fetching from USDA
#                      (env MATERIA_IMPORT), with --release YYYY-MM (env MATERIA_RELEASE)
#   --backup URL       where landing-backup copies to (env BACKUP_TARGET, default
#                      fs:DIR/backup, a local folder; s3://... needs the R2_* variables)
#
# Settings come from the environment, then from ./.env (scripts/secrets.sh decrypt dev).
#
# Steps, in pipeline order:
#   1. psd-extract     fetch (or import) PSD releases into DIR/landing
#   2. lake-transform  run the SQL models (models) into DIR/lakehouse.duckdb
#   3. serve-export    publish the serving tables as DIR/analytics.duckdb
#   4. landing-backup  copy DIR/landing (and the day's state DB snapshot) to the backup target
#
# Exit: 0 when every step succeeded or had nothing to do; otherwise the failing
# step's exit code (see ARCHITECTURE.md, "Exit codes").
set -euo pipefail
cd "$(dirname "$0")/.."

# The local development settings, if any (scripts/secrets.sh decrypt dev writes .env;
# MATERIA_DOTENV names another file): KEY=VALUE lines, taken as they are (never
# evaluated); the environment wins.
dotenv=${MATERIA_DOTENV:-.env}
if [[ -f $dotenv ]]; then
    while IFS= read -r line; do
        [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        [[ -n ${!BASH_REMATCH[1]+set} ]] || export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
    done <"$dotenv"
fi
data_dir=${MATERIA_DATA_DIR:-$PWD/data}
import=${MATERIA_IMPORT:-}
release=${MATERIA_RELEASE:-}
backup=${BACKUP_TARGET:-}
while (($#)); do
    case $1 in
        --data-dir) data_dir=${2:?--data-dir needs a value}; shift 2 ;;
        --import) import=${2:?--import needs a file}; shift 2 ;;
        --release) release=${2:?--release needs YYYY-MM}; shift 2 ;;
        --backup) backup=${2:?--backup needs a URL}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-all: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -n $import && -z $release ]]; then
    echo "run-all: --import needs --release YYYY-MM" >&2
    exit 2
fi

if [[ -n ${MATERIA_BIN_DIR:-} ]]; then
    bin=$MATERIA_BIN_DIR
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/materia-target}"
    scripts/setup-dev.sh
    echo "run-all: building the tools (release)" >&2
    cargo build --release --locked --quiet
    bin=$CARGO_TARGET_DIR/release
fi
mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)
export MATERIA_DATA_DIR=$data_dir
export BACKUP_TARGET=${backup:-fs:$data_dir/backup}
export MATERIA_MODELS=${MATERIA_MODELS:-$PWD/models}

# Run one step; "nothing to do" (exit 3) counts as success.
step() {
    local name=$1; shift
    echo "run-all: $name" >&2
    local code=0
    "$bin/$name" "$@" || code=$?
    case $code in
        0|3) ;;
        *) echo "run-all: $name failed (exit $code); stopping" >&2; exit "$code" ;;
    esac
}

if [[ -n $import ]]; then
    step psd-extract import "$import" --release "$release"
else
    step psd-extract
fi
step lake-transform run
step serve-export
step landing-backup --state-snapshot
echo "run-all: done; data in $data_dir" >&2
