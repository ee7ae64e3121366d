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
cargo build --release --locked --quiet -p psd-extract
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

# measure CMD...: prints "seconds max_rss_kib"; exit 3 (nothing new) counts as success
measure() {
    local start end code=0
    start=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$work/time" "$@" >/dev/null 2>"$work/stderr" || code=$?
    end=$(date +%s%N)
    if [[ $code -ne 0 && $code -ne 3 ]]; then
        echo "bench: $* failed (exit $code):" >&2
        cat "$work/stderr" >&2
        return 1
    fi
    echo "$(( (end - start) / 1000 ))e-6 $(tail -n 1 "$work/time")"
}

# median of the first column, and of the second, over the lines on stdin
median() {
    local lines mid
    lines=$(cat)
    mid=$(( ($(wc -l <<<"$lines") + 1) / 2 ))
    echo "$(cut -d' ' -f1 <<<"$lines" | sort -g | sed -n "${mid}p")" \
         "$(cut -d' ' -f2 <<<"$lines" | sort -g | sed -n "${mid}p")"
}

printf '%-22s %-14s %10s %12s %10s %12s %8s %8s\n' input case "ours s" "ours MiB" "peer s" "peer MiB" "time x" "mem x"
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
    for row in "first landing|$ours|$peer" "no change|$ours_nc|$peer_nc"; do
        IFS='|' read -r case o p <<<"$row"
        read -r os om <<<"$o"
        read -r ps pm <<<"$p"
        awk -v f="$file" -v c="$case" -v os="$os" -v om="$om" -v ps="$ps" -v pm="$pm" 'BEGIN {
            printf "%-22s %-14s %10.3f %12.1f %10.3f %12.1f %8.2f %8.2f\n",
                f, c, os, om/1024, ps, pm/1024, (os > 0 ? ps/os : 0), (om > 0 ? pm/om : 0) }'
    done
done
