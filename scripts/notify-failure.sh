#!/usr/bin/env bash
# usage: notify-failure.sh UNIT
#
# Run by materia-notify@UNIT.service (OnFailure= of every Materia unit): logs the
# failed unit's last journal lines, and POSTs them to MATERIA_NOTIFY_URL when it is set
# (a healthchecks.io-style /fail URL, or any webhook that takes a text body).
#
# One report a failure, not one a timer tick: a unit that fails again as it failed the
# last time it was reported (the same error line), with no success in between, is
# logged but not reported again until MATERIA_NOTIFY_REPEAT_HOURS (default 24) have
# passed since that report. What was reported is kept in STATE_DIRECTORY (the unit's
# StateDirectory=, /var/lib/materia-notify), one file a service; ping.sh removes it when
# the step succeeds. A path unit's every failure is reported, as is every failure run
# without STATE_DIRECTORY (by hand).
set -euo pipefail
unit=${1:?usage: notify-failure.sh UNIT}
if [[ ! $unit =~ ^[A-Za-z0-9@:_-][A-Za-z0-9@:._-]*$ ]]; then
    echo "notify-failure.sh: bad unit name '$unit'" >&2
    exit 2
fi
repeat_hours=${MATERIA_NOTIFY_REPEAT_HOURS:-24}
if [[ ! $repeat_hours =~ ^[0-9]+$ ]]; then
    echo "notify-failure.sh: MATERIA_NOTIFY_REPEAT_HOURS must be a whole number of hours, not '$repeat_hours'; using 24" >&2
    repeat_hours=24
fi
lines=$(journalctl --unit "$unit" --lines 30 --no-pager --output short-iso 2>&1 || true)
echo "materia: $unit failed; its last journal lines:"
echo "$lines"

# What this failure is (failure-digest.sh: its error line, or how systemd says it ended).
digest=$(journalctl --unit "$unit" --lines 200 --no-pager --output cat 2>/dev/null | "$(dirname "$0")/failure-digest.sh" || true)
now=$(date +%s)
record=
# Only a service can fail again by itself (its timer or trigger starts it again): a path
# unit that failed stays stopped until someone starts it, so each of its failures is news.
if [[ -n ${STATE_DIRECTORY:-} && $unit == *.service ]]; then
    record=${STATE_DIRECTORY%%:*}/$unit
    if [[ -f $record ]]; then
        read -r at was <"$record" || true
        if [[ ${was:-} == "$digest" && ${at:-} =~ ^[0-9]+$ ]] && ((now - at < repeat_hours * 3600)); then
            echo "materia: $unit failed again as reported at $(date -u -d "@$at" '+%Y-%m-%d %H:%M UTC'), with no success since: not reported again before $repeat_hours h after that"
            exit 0
        fi
    fi
fi

if [[ -n ${MATERIA_NOTIFY_URL:-} ]]; then
    # The URL (it may hold a key) reaches curl in a config on a pipe, never on its
    # command line, which every local user can read in /proc.
    url=${MATERIA_NOTIFY_URL//\\/\\\\}
    printf '%s failed on %s\n\n%s\n' "$unit" "$(hostname)" "$lines" |
        curl --fail --silent --show-error --max-time 20 --retry 3 --data-binary @- \
            --config <(printf 'url = "%s"\n' "${url//\"/\\\"}") >/dev/null
    echo "materia: reported to the notify URL"
    # Kept once reported (a report that failed is tried again at the next failure; with
    # no URL nothing is reported, so nothing is kept).
    if [[ -n $record ]]; then
        printf '%s %s\n' "$now" "$digest" >"$record.tmp" && mv -f "$record.tmp" "$record"
    fi
fi
