#!/usr/bin/env bash
# usage: journalctl --unit UNIT --output cat | failure-digest.sh
#
# What one failure of a unit is, as a digest notify-failure.sh compares with the one it
# reported last: the same digest is the same failure again. From the unit's journal
# messages on stdin, only its last start counts: the lines after systemd's last
# `Starting …` line (no tool logs one). Of those, the tool's one error line
# (`tool: error: …`); else systemd's word on how the start ended (`Main process exited,
# code=killed, status=15/TERM` and `Failed with result 'timeout'`); else the last line
# but the resource accounting (`Consumed 1.2s CPU time`, new every time). In it, the pid
# in the tools' temp names (`.lakehouse.build-tmp-21946.wal`, `.tmp-v2-1234`) and in
# `pid 1234` reads as N: the next run failing the same way names its own. So does a size
# (`256.0 KiB`, `3.6 GiB`): DuckDB's out-of-memory error says how much was in use when it
# failed, which moves from run to run.
set -euo pipefail
messages=$(awk '/^Starting .*\.\.\.$/ { run = ""; next } { run = run $0 "\n" } END { printf "%s", run }')
what=$(grep -E ': error: ' <<<"$messages" | tail -n 1 || true)
[[ -n $what ]] || what=$(grep -E "process exited, code=|Failed with result '" <<<"$messages" | tail -n 2 || true)
[[ -n $what ]] || what=$(grep -vE ': Consumed ' <<<"$messages" | tail -n 1 || true)
what=$(sed -E 's/((tmp|restore)-([A-Za-z][A-Za-z0-9._]*-)?)[0-9]+(-[0-9]+)?/\1N/g; s/pid [0-9]+/pid N/g; s/[0-9]+(\.[0-9]+)? ?([KMGTPE]i?B|bytes)\b/N/g' <<<"$what")
printf '%s' "$what" | sha256sum | cut -c1-64
