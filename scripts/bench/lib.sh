# shellcheck shell=bash disable=SC2154 # $work is set by the sourcing script
# Shared by the benchmark scripts: source it after setting $work (a scratch dir).

# measure CMD...: prints "seconds max_rss_kib"; exit 3 (nothing to do) counts as success.
measure() {
    local start end code=0
    start=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$work/time" "$@" >/dev/null 2>"$work/stderr" || code=$?
    end=$(date +%s%N)
    if [[ $code -ne 0 && $code -ne 3 ]]; then
        echo "bench: $* failed (exit $code):" >&2
        tail -n 20 "$work/stderr" >&2
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

# row LABEL CASE "OURS_S OURS_KIB" "PEER_S PEER_KIB": one line of the comparison table
row() {
    local os om ps pm
    read -r os om <<<"$3"
    read -r ps pm <<<"$4"
    awk -v f="$1" -v c="$2" -v os="$os" -v om="$om" -v ps="$ps" -v pm="$pm" 'BEGIN {
        printf "%-22s %-16s %10.3f %12.1f %10.3f %12.1f %8.2f %8.2f\n",
            f, c, os, om/1024, ps, pm/1024, (os > 0 ? ps/os : 0), (om > 0 ? pm/om : 0) }'
}

# header PEER: the table's first line
header() {
    printf '%-22s %-16s %10s %12s %10s %12s %8s %8s\n' input case "ours s" "ours MiB" "$1 s" "$1 MiB" "time x" "mem x"
}

# bench_python: prints the path of a Python whose DuckDB is the pinned version: the test
# venv's (setup-dev.sh --tests), else one installed into scripts/bench/.venv (PyPI).
bench_python() {
    local version venv
    version=$(scripts/duckdb-lib.sh --version)
    for venv in "${MATERIA_TEST_VENV:-$HOME/.cache/materia-test-venv}" scripts/bench/.venv; do
        if "$venv/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$version')" 2>/dev/null; then
            echo "$venv/bin/python"
            return
        fi
    done
    echo "bench: installing the Python DuckDB $version into scripts/bench/.venv" >&2
    python3 -m venv scripts/bench/.venv >&2
    scripts/bench/.venv/bin/pip install -q "duckdb==$version" >&2
    echo scripts/bench/.venv/bin/python
}
