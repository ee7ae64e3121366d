#!/usr/bin/env bash
# usage: scripts/bench/lake-transform-scale.sh [ROWS [HISTORY...]]   (default: 2000000 1 10 24)
#
# lake-transform at the all-commodities size against the floor: DuckDB reading the same
# release's gzip CSV into a table. A realistic series (gen_series.py: a base release of
# ROWS rows, then releases revising MATERIA_BENCH_REVISED_SHARE of the values, default
# 0.02, and adding 1,000 rows) is landed; for each HISTORY size N: a first build of N
# releases, then +1 release twice, a no-change run, `maintain` (on the local file: a
# compaction, the lakehouse's size after it), and the floor on the release the first +1
# loaded. Wall time and peak RSS (GNU time) per step, as a multiple of the
# floor (a first build of N releases: of N floors); the lakehouse's size.
# Then the check: the lakehouse the incremental runs built (smallest N, two releases
# added) equals a --rebuild of the same files (compare_lakehouses.py).
#
# Needs ~2 GB of disk per 24 releases of 2M rows in MATERIA_BENCH_DIR (default /tmp).
set -euo pipefail
cd "$(dirname "$0")/../.."
rows=${1:-2000000}
(($# > 0)) && shift
sizes=("$@")
((${#sizes[@]})) || sizes=(1 10 24)
share=${MATERIA_BENCH_REVISED_SHARE:-0.02}

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/materia-target}"
scripts/setup-dev.sh
cargo build --release --locked --quiet # the whole workspace, as run-all.sh: one feature set, no rebuilds
ours=$CARGO_TARGET_DIR/release/lake-transform
models=$PWD/models

work=$(mktemp -d "${MATERIA_BENCH_DIR:-/tmp}/materia-scale.XXXXXX")
trap 'rm -rf "$work"' EXIT
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
python=$(bench_python)

max=0
for n in "${sizes[@]}"; do ((n > max)) && max=$n; done
echo "bench: making $((max + 2)) releases of $rows rows ($share of the values revised each)" >&2
python3 scripts/bench/gen_series.py "$rows" "$work/releases" "$((max + 2))" "$share" >/dev/null

release() { find "$work/releases" -name "series-$1.csv.gzip"; }
land() { # land DATA I: release I into DATA's landing dir, hard-linked (landed files are immutable)
    local src dst
    src=$(release "$2")
    dst=$1/landing/${src#"$work/releases/"}
    mkdir -p "$(dirname "$dst")"
    ln "$src" "$dst"
}
floor() { # DuckDB reading FILE into a table of a new database (the raw model's read_csv)
    rm -f "$work/floor.duckdb"
    measure "$python" scripts/bench/floor_read_csv.py "$work/floor.duckdb" "$1"
}
secs() { cut -d' ' -f1 <<<"$1"; }
mib() { awk '{ printf "%.0f", $2 / 1024 }' <<<"$1"; }

printf '%-8s %-12s %9s %9s %9s %11s\n' history step seconds "peak MiB" "x floor" "lakehouse"
for n in "${sizes[@]}"; do
    data=$work/n$n/data
    mkdir -p "$data/landing"
    for i in $(seq 0 $((n - 1))); do land "$data" "$i"; done
    lt() { measure "$ours" -q --data-dir "$data" --models "$models" run; }
    size() { du -sh "$data/lakehouse.duckdb" | cut -f1; }
    first=$(lt)
    first_size=$(size)
    land "$data" "$n"
    new1=$(lt)
    land "$data" "$((n + 1))"
    new2=$(lt)
    same=$(lt)
    grown=$(size)
    compacted=$(measure "$ours" -q --data-dir "$data" --models "$models" maintain)
    fl=$(floor "$(release "$n")")
    for step in "first build:$first:$first_size:$n" "+1 release:$new1::1" "+1 again:$new2:$grown:1" "no change:$same::1" "maintain:$compacted:$(size):1" "floor:$fl::1"; do
        IFS=: read -r label m sz files <<<"$step"
        # A first build loads n releases: against n times the floor.
        ratio=$(awk -v a="$(secs "$m")" -v f="$(secs "$fl")" -v n="$files" 'BEGIN { printf "%.2f", a / (n * f) }')
        printf '%-8s %-12s %9.2f %9s %9s %11s\n' "$n" "$label" "$(secs "$m")" "$(mib "$m")" "$ratio" "$sz"
    done
done

n=${sizes[0]}
echo "bench: checking the incremental lakehouse ($n + 2 releases) against a --rebuild" >&2
cp -a "$work/n$n/data" "$work/rebuilt"
"$ours" -q --data-dir "$work/rebuilt" --models "$models" run --rebuild >/dev/null
"$python" scripts/bench/compare_lakehouses.py "$work/n$n/data/lakehouse.duckdb" "$work/rebuilt/lakehouse.duckdb"
