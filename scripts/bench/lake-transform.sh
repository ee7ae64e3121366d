#!/usr/bin/env bash
# usage: scripts/bench/lake-transform.sh [HISTORY...]   (default: 1 10 100)
#
# lake-transform against SQLMesh on the same models and data. For each HISTORY size N:
# N synthetic releases made from the real one (gen_releases.py) are landed, then each
# tool does a first build, a no-change run, and a run after one more release lands.
# SQLMesh runs the project sqlmesh_project.py writes from lake-transform's own model
# files (a FULL raw model over every file; the new release is picked up with
# `plan --restate-model raw.psd`, its equivalent of an ingest). Both use the pinned DuckDB (scripts/duckdb-lib.sh).
# Wall time and peak RSS (GNU time) per step, ratios SQLMesh / lake-transform; then
# where our first build's time goes at the largest history (`run --profile`), and the
# first build's ceiling there: the ratio were every model after raw.psd free in both.
# A +1 release is also set against the floor on that run's machine: DuckDB reading the
# new release's file into a table of a new database (floor_read_csv.py's own time,
# Python's start-up left out; the median of 3), as this machine's speed differs by 2x
# from one day to another.
# The first builds and the +1 release runs are each run MATERIA_BENCH_REPEATS times
# (default 3), the two tools alternating: a first build each from nothing (no lakehouse;
# no SQLMesh warehouse or cache), a +1 release each from the same state (the data dir
# and SQLMesh's warehouse as the no-change run left them). The table gives each tool's
# median, and a line after it every pair's ratio, since this machine's speed moves by a
# third from one minute to the next.
#
# Installs SQLMesh 0.236.4 into scripts/bench/.venv on first use (PyPI).
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("$@")
((${#sizes[@]})) || sizes=(1 10 100)
repeats=${MATERIA_BENCH_REPEATS:-3}
if ! [[ $repeats =~ ^[1-9][0-9]*$ ]]; then
    echo "bench: MATERIA_BENCH_REPEATS must be a whole number ≥ 1, not '$repeats'" >&2
    exit 2
fi

real=../shared/fixtures/psd_coffee_csv.zip
if [[ ! -f $real ]]; then
    echo "bench: $real is missing: the releases are made from it" >&2
    exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/materia-target}"
scripts/setup-dev.sh
cargo build --release --locked --quiet # the whole workspace, as run-all.sh: one feature set, no rebuilds
ours=$CARGO_TARGET_DIR/release/lake-transform
venv=scripts/bench/.venv
duckdb_version=$(scripts/duckdb-lib.sh --version)
if [[ ! -x $venv/bin/sqlmesh ]] || ! "$venv/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$duckdb_version')" 2>/dev/null; then
    echo "bench: installing SQLMesh into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'sqlmesh==0.236.4' "duckdb==$duckdb_version"
fi
sqlmesh=$(cd "$venv/bin" && pwd)/sqlmesh
models=$PWD/models

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

max=0
for n in "${sizes[@]}"; do ((n > max)) && max=$n; done
echo "bench: making $((max + 1)) synthetic releases" >&2
python3 scripts/bench/gen_releases.py "$real" "$work/releases" 0 "$((max + 1))"

# alternate LABEL PREP SQLMESH_ARGS...: $repeats times, PREP (given the repeat's number),
# then lake-transform's run, then SQLMesh's; sets o_med and s_med to the medians and adds
# every pair's ratio to $ratios.
alternate() {
    local label=$1 prep=$2 o s r o_all=() s_all=() pairs=()
    shift 2
    for ((r = 1; r <= repeats; r++)); do
        "$prep" "$r"
        o=$(lt)
        s=$(sm "$@")
        o_all+=("$o") s_all+=("$s")
        pairs+=("$(awk -v o="${o%% *}" -v s="${s%% *}" 'BEGIN { printf "%.2f", s / o }')")
    done
    o_med=$(printf '%s\n' "${o_all[@]}" | median)
    s_med=$(printf '%s\n' "${s_all[@]}" | median)
    ratios+=("$label, each pair (SQLMesh ÷ ours): ${pairs[*]}")
}

ratios=()
header sqlmesh
for n in "${sizes[@]}"; do
    data=$work/n$n/data
    mkdir -p "$data/landing"
    # Releases 0..n-1, hard-linked (landing files are immutable).
    for i in $(seq 0 $((n - 1))); do
        src=$(find "$work/releases" -name "synthetic-$i.csv.gzip")
        dst=$data/landing/${src#"$work/releases/"}
        mkdir -p "$(dirname "$dst")"
        ln "$src" "$dst"
    done
    project=$work/n$n/sqlmesh
    python3 scripts/bench/sqlmesh_project.py "$models" "$project" "$data/landing" "$work/n$n/warehouse.duckdb"
    lt() { measure "$ours" -q --data-dir "$data" --models "$models" run; }
    sm() { (cd "$project" && measure "$sqlmesh" "$@"); }

    # First builds, each from nothing; the last pair's state goes on.
    from_nothing() {
        rm -f "$data/lakehouse.duckdb" "$data/lakehouse.duckdb.wal"
        rm -rf "$work/n$n/warehouse.duckdb" "$work/n$n/warehouse.duckdb.wal" "$project/.cache" "$project/logs"
    }
    alternate "$n releases, first build" from_nothing plan --auto-apply --no-prompts
    o_first=$o_med s_first=$s_med

    # At the largest history, the first build's ceiling: raw.psd alone (its model file,
    # its built-in audits) built from nothing by each tool, on the same n releases. The
    # models after it cost us o_first − ours alone, and the same SQL on the same DuckDB
    # the same in SQLMesh, so were they free in both, the ratio would be
    # (s_first − (o_first − ours alone)) ÷ ours alone: no rewrite of them reaches more.
    if ((n == max)); then
        load_only=$work/load-only
        mkdir -p "$load_only/audits"
        cp "$models/raw_psd.sql" "$load_only/"
        python3 scripts/bench/sqlmesh_project.py "$load_only" "$project" "$data/landing" "$work/n$n/warehouse.duckdb"
        lt() { measure "$ours" -q --data-dir "$data" --models "$load_only" run; }
        alternate "$n releases, first build of raw.psd alone" from_nothing plan --auto-apply --no-prompts
        ratios+=("$(awk -v n="$n" -v of="${o_first%% *}" -v sf="${s_first%% *}" -v ol="${o_med%% *}" -v sl="${s_med%% *}" 'BEGIN {
            printf "%s releases, ceiling: raw.psd alone from nothing %.2f s, SQLMesh %.2f s (%.2fx); were the models after it free in both tools, the first build would be %.2fx SQLMesh (%.2f - (%.2f - %.2f)) / %.2f", n, ol, sl, sl / ol, (sf - (of - ol)) / ol, sf, of, ol, ol }')")
        # Back to the whole project, built from nothing, for the steps below.
        python3 scripts/bench/sqlmesh_project.py "$models" "$project" "$data/landing" "$work/n$n/warehouse.duckdb"
        lt() { measure "$ours" -q --data-dir "$data" --models "$models" run; }
        from_nothing 0
        lt >/dev/null
        sm plan --auto-apply --no-prompts >/dev/null
    fi
    o_same=$(lt); s_same=$(sm run)

    # +1 release.
    src=$(find "$work/releases" -name "synthetic-$n.csv.gzip")
    dst=$data/landing/${src#"$work/releases/"}
    before=$work/n$n/before
    mkdir -p "$before"
    cp -a "$data" "$before/data"
    cp "$work/n$n/warehouse.duckdb" "$before/warehouse.duckdb"
    # Each repeat lands it on the state the no-change run left.
    land_one_more() {
        if (($1 > 1)); then
            rm -rf "$data" && cp -a "$before/data" "$data"
            rm -f "$work/n$n/warehouse.duckdb.wal" && cp "$before/warehouse.duckdb" "$work/n$n/warehouse.duckdb"
        fi
        mkdir -p "$(dirname "$dst")"
        ln "$src" "$dst"
    }
    alternate "$n releases, +1 release" land_one_more plan --restate-model raw.psd --auto-apply --no-prompts
    o_new=$o_med s_new=$s_med
    rm -rf "$before"
    fl=$(for _ in 1 2 3; do
        rm -f "$work/floor.duckdb"
        "$venv/bin/python" scripts/bench/floor_read_csv.py "$work/floor.duckdb" "$src"
    done | sort -g | sed -n 2p)
    ratios+=("$(awk -v n="$n" -v o="${o_new%% *}" -v f="$fl" 'BEGIN {
        printf "%s releases, +1 release: %.3f s, %.2fx the floor (DuckDB reading its file into a new table: %.3f s)", n, o, o / f, f }')")

    row "$n releases" "first build" "$o_first" "$s_first"
    row "$n releases" "no change" "$o_same" "$s_same"
    row "$n releases" "+1 release" "$o_new" "$s_new"
done

printf '%s\n' "${ratios[@]}"

# Where our first build's time goes, at the largest history (its n + 1 releases): a
# profiled --rebuild (`run --profile`), not one of the timed runs above (a profiled run
# runs its audits twice). The slowest statements, seconds of wall and of CPU.
if ! "$ours" -q --data-dir "$work/n$max/data" --models "$models" run --rebuild --profile "$work/profile" >/dev/null 2>"$work/stderr"; then
    echo "bench: the profiled rebuild failed:" >&2
    tail -n 20 "$work/stderr" >&2
    exit 1
fi
tsv=$(find "$work/profile" -name profile.tsv)
echo
echo "where a first build of $((max + 1)) releases goes (lake-transform run --profile; slowest statements):"
tail -n +2 "$tsv" | sort -t$'\t' -k4 -gr | head -n 6 |
    awk -F'\t' '{ printf "  %-26s %-38s %8.3f s %8.3f s CPU  %s\n", $2, $3, $4, $5, $8 }'
