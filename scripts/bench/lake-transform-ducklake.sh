#!/usr/bin/env bash
# usage: scripts/bench/lake-transform-ducklake.sh [HISTORY...]   (default: 1 100)
#
# lake-transform on the local file against lake-transform on a DuckLake (a PostgreSQL
# catalog on 127.0.0.1, Parquet data on moto's S3), on the same releases: for each
# HISTORY size N, N synthetic coffee releases (gen_releases.py) are landed, then each
# does a first build, a no-change run and a run after one more release; wall time and
# peak RSS (GNU time) per step, the ratio lake / file, and what each leaves behind: the
# file's size; the lake's catalog rows (every ducklake_* table), objects and bytes.
#
# Needs what scripts/setup-dev.sh --tests installs (PostgreSQL's server, moto).
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("$@")
((${#sizes[@]})) || sizes=(1 100)

real=../shared/fixtures/psd_coffee_csv.zip
if [[ ! -f $real ]]; then
    echo "bench: $real is missing: the releases are made from it" >&2
    exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/materia-target}"
scripts/setup-dev.sh --tests
cargo build --release --locked --quiet # the whole workspace, as run-all.sh: one feature set, no rebuilds
ours=$CARGO_TARGET_DIR/release/lake-transform
models=$PWD/models
venv=${MATERIA_TEST_VENV:-$HOME/.cache/materia-test-venv}
pgbin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
if [[ -z $pgbin ]]; then
    echo "bench: no PostgreSQL server (scripts/setup-dev.sh --tests installs it)" >&2
    exit 1
fi

work=$(mktemp -d)
pgdir=$(mktemp -d /tmp/materia-bench-pg.XXXXXX)
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[[ $(id -u) -ne 0 ]] || chown postgres: "$pgdir"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pgport=$(free_port)
s3port=$(free_port)
cleanup() {
    as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true
    [[ -z ${moto:-} ]] || kill "$moto" 2>/dev/null || true
    rm -rf "$work" "$pgdir"
}
trap cleanup EXIT
as_pg "$pgbin/initdb" -D "$pgdir/data" --auth=trust -U postgres >/dev/null
as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1" -l "$pgdir/log" -w start >/dev/null
"$venv/bin/moto_server" -H 127.0.0.1 -p "$s3port" >/dev/null 2>&1 &
moto=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$s3port" && break; sleep 0.1; done
curl -s -X PUT "http://127.0.0.1:$s3port/bkt" >/dev/null
export MATERIA_LAKE_S3_ENDPOINT=http://127.0.0.1:$s3port MATERIA_LAKE_S3_KEY_ID=bench MATERIA_LAKE_S3_SECRET=bench-secret
psql_lake() { "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d "$1" -At -c "$2"; }
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

max=0
for n in "${sizes[@]}"; do ((n > max)) && max=$n; done
echo "bench: making $((max + 1)) synthetic releases" >&2
python3 scripts/bench/gen_releases.py "$real" "$work/releases" 0 "$((max + 1))"

land() { # land DATA_DIR I: release I, hard-linked
    local src dst
    src=$(find "$work/releases" -name "synthetic-$2.csv.gzip")
    dst=$1/landing/${src#"$work/releases/"}
    mkdir -p "$(dirname "$dst")"
    ln "$src" "$dst"
}
# What a lake holds: catalog rows (every ducklake_* table), objects and bytes under its prefix.
left_by_lake() {
    local rows objects
    rows=$(psql_lake "$1" "SELECT sum((xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM ' || table_name, false, true, '')))[1]::text::bigint) FROM information_schema.tables WHERE table_name LIKE 'ducklake%' AND table_schema = 'public'")
    objects=$(curl -s "http://127.0.0.1:$s3port/bkt?list-type=2&prefix=$1/&max-keys=100000" | python3 -c '
import re, sys
body = sys.stdin.read()
sizes = [int(s) for s in re.findall(r"<Size>(\d+)</Size>", body)]
print(len(sizes), sum(sizes))')
    echo "catalog rows $rows, objects ${objects% *}, $(awk -v b="${objects#* }" 'BEGIN { printf "%.1f", b / 1048576 }') MiB"
}

printf '%-14s %-12s %10s %10s %10s %10s %8s\n' history step "file s" "file MiB" "lake s" "lake MiB" "lake/file"
for n in "${sizes[@]}"; do
    file_data=$work/file$n
    lake_data=$work/lake$n
    for i in $(seq 0 $((n - 1))); do land "$file_data" "$i"; land "$lake_data" "$i"; done
    "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres "lake$n"
    lake_args=(--lakehouse "ducklake:postgres:dbname=lake$n host=127.0.0.1 port=$pgport user=postgres" --lake-data-path "s3://bkt/lake$n/")
    file_run() { measure "$ours" -q --data-dir "$file_data" --models "$models" run; }
    lake_run() { measure "$ours" -q --data-dir "$lake_data" --models "$models" "${lake_args[@]}" run; }
    ratio() { awk -v f="$2" -v l="$3" -v h="$1" -v s="$4" 'BEGIN { split(f, a, " "); split(l, b, " ");
        printf "%-14s %-12s %10.3f %10.1f %10.3f %10.1f %8.2f\n", h, s, a[1], a[2]/1024, b[1], b[2]/1024, (a[1] > 0 ? b[1]/a[1] : 0) }'; }
    f_first=$(file_run); l_first=$(lake_run)
    f_same=$(file_run); l_same=$(lake_run)
    land "$file_data" "$n"; land "$lake_data" "$n"
    f_new=$(file_run); l_new=$(lake_run)
    ratio "$n releases" "$f_first" "$l_first" "first build"
    ratio "$n releases" "$f_same" "$l_same" "no change"
    ratio "$n releases" "$f_new" "$l_new" "+1 release"
    echo "  left behind: file $(awk -v b="$(stat -c %s "$file_data/lakehouse.duckdb")" 'BEGIN { printf "%.1f", b / 1048576 }') MiB; lake $(left_by_lake "lake$n")"
    measure "$ours" -q --data-dir "$lake_data" --models "$models" "${lake_args[@]}" maintain --keep-days 0 >/dev/null
    echo "  after maintain --keep-days 0: lake $(left_by_lake "lake$n")"
done
