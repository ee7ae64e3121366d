#!/usr/bin/env bash
# usage: scripts/bench/psd-extract.sh [RUNS]
#
# Time and peak memory of psd-extract landing a release from a local HTTP server
# (python3 -m http.server on 127.0.0.1), side by side with the shell a user would
# otherwise write:
#     curl -s URL -o f.zip && unzip -p f.zip | gzip > f.csv.gz
# and of a no-change run (psd-extract: If-Modified-Since -> 304; curl: curl -z f.zip).
# Two inputs: the real coffee release from ../shared/fixtures, and a synthetic
# 2M-row all-commodities release (scripts/bench/gen_psd.py). Each figure is the
# median of RUNS runs (default 5); ratios are peer / psd-extract (> 1: we are faster).
# Peak memory is max RSS from GNU time (for the shell pipeline: its largest process).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/materia-target}"
cargo build --release --locked --quiet # the whole workspace, as run-all.sh: one feature set, no rebuilds
bin=$CARGO_TARGET_DIR/release/psd-extract

work=$(mktemp -d)
server_pid=
cleanup() { [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/www/downloads"
real=../shared/fixtures/psd_coffee_csv.zip
inputs=()
if [[ -f $real ]]; then
    cp "$real" "$work/www/downloads/psd_coffee_csv.zip"
    inputs+=(psd_coffee_csv.zip)
else
    echo "bench: $real absent: skipping the real release" >&2
fi
python3 scripts/bench/gen_psd.py 2000000 "$work/www/downloads/psd_alldata_csv.zip"
inputs+=(psd_alldata_csv.zip)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$port" >/dev/null 2>&1 &
server_pid=$!
base=http://127.0.0.1:$port
for _ in $(seq 50); do curl -sf -o /dev/null "$base/" && break; sleep 0.1; done

# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

header curl
for file in "${inputs[@]}"; do
    url=$base/downloads/$file
    # First landing: a fresh data dir each run.
    ours=$(for _ in $(seq "$runs"); do
        rm -rf "$work/d"
        measure "$bin" -q --data-dir "$work/d" --base-url "$base" --file "$file"
    done | median)
    peer=$(for _ in $(seq "$runs"); do
        rm -f "$work/f.zip" "$work/f.csv.gz"
        measure bash -c "curl -s '$url' -o '$work/f.zip' && unzip -p '$work/f.zip' | gzip > '$work/f.csv.gz'"
    done | median)
    # No change: conditional requests against what the last run left.
    ours_nc=$(for _ in $(seq "$runs"); do
        measure "$bin" -q --data-dir "$work/d" --base-url "$base" --file "$file"
    done | median)
    peer_nc=$(for _ in $(seq "$runs"); do
        measure curl -s -z "$work/f.zip" -o "$work/f.zip" "$url"
    done | median)
    row "$file" "first landing" "$ours" "$peer"
    row "$file" "no change" "$ours_nc" "$peer_nc"
done
