#!/usr/bin/env bash
# usage: scripts/bench/serve-export.sh
#
# serve-export's export time and peak memory against the original's Python export
# (python_export.py: copy the serving tables into a new file, rename) and against `cp`
# of a file of the same size, for a lakehouse built from the real release and one of
# 100 synthetic releases (medians of 5); then
# the latency of a reader that follows the reader contract (reader_latency.py, the
# Python duckdb of the pinned version) while exports keep replacing analytics.duckdb.
# MATERIA_BENCH_ALL_COMMODITIES=N adds a lakehouse of N all-commodities releases
# (gen_series.py: 2M rows, 2 % revised a release; ~1 GB of disk and a few minutes at 24).
set -euo pipefail
cd "$(dirname "$0")/../.."
real=../shared/fixtures/psd_coffee_csv.zip
if [[ ! -f $real ]]; then
    echo "bench: $real is missing: the lakehouses are made from it" >&2
    exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/materia-target}"
scripts/setup-dev.sh
cargo build --release --locked --quiet # the whole workspace, as run-all.sh: one feature set, no rebuilds
bin=$CARGO_TARGET_DIR/release
models=$PWD/models
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
python=$(bench_python)

# Make the lakehouse look changed, so the next export runs.
bump() {
    "$python" -c "import duckdb,sys; c=duckdb.connect(sys.argv[1]); c.execute('UPDATE _materia.models SET run_id = run_id + 1')" "$1/lakehouse.duckdb"
}

scale=${MATERIA_BENCH_ALL_COMMODITIES:-0}
if ! [[ $scale =~ ^[0-9]+$ ]]; then
    echo "bench: MATERIA_BENCH_ALL_COMMODITIES must be a number of releases, not $scale" >&2
    exit 2
fi
cases=(1 100)
((scale > 0)) && cases+=("all$scale")

header peer
for n in "${cases[@]}"; do
    data=$work/n$n
    if [[ $n == all* ]]; then
        python3 scripts/bench/gen_series.py 2000000 "$data/landing" "$scale" 0.02 >/dev/null
    else
        python3 scripts/bench/gen_releases.py "$real" "$data/landing" 0 "$n"
    fi
    "$bin/lake-transform" -q --data-dir "$data" --models "$models" run >/dev/null 2>&1 || true
    ours=$(for _ in 1 2 3 4 5; do bump "$data"; measure "$bin/serve-export" -q --data-dir "$data"; done | median)
    original=$(for _ in 1 2 3 4 5; do measure "$python" scripts/bench/python_export.py "$data/lakehouse.duckdb" "$work/python.duckdb"; done | median)
    peer=$(for _ in 1 2 3 4 5; do rm -f "$work/copy"; measure cp "$data/analytics.duckdb" "$work/copy"; done | median)
    size=$(du -m "$data/analytics.duckdb" | cut -f1)
    label="$n release(s), ${size} MB"
    [[ $n == all* ]] && label="${scale} x 2M rows, ${size} MB"
    row "$label" "vs Python export" "$ours" "$original"
    row "$label" "vs cp" "$ours" "$peer"
done

echo
echo "reader latency while exports replace the file (100 releases):"
data=$work/n100
"$python" scripts/bench/reader_latency.py "$data/analytics.duckdb" 8 &
reader=$!
end=$((SECONDS + 7))
exports=0
while ((SECONDS < end)); do
    bump "$data"
    "$bin/serve-export" -q --data-dir "$data" >/dev/null
    exports=$((exports + 1))
done
wait "$reader"
echo "($exports exports during the run)"
