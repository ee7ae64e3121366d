#!/usr/bin/env bash
# usage: notify-failure.sh UNIT
#
# Run by materia-notify@UNIT.service (OnFailure= of every Materia unit): logs the
# failed unit's last journal lines, and POSTs them to MATERIA_NOTIFY_URL when it is set
# (a healthchecks.io-style /fail URL, or any webhook that takes a text body).
set -euo pipefail
unit=${1:?usage: notify-failure.sh UNIT}
lines=$(journalctl --unit "$unit" --lines 30 --no-pager --output short-iso 2>&1 || true)
echo "materia: $unit failed; its last journal lines:"
echo "$lines"
if [[ -n ${MATERIA_NOTIFY_URL:-} ]]; then
    # The URL (it may hold a key) reaches curl in a config on a pipe, never on its
    # command line, which every local user can read in /proc.
    url=${MATERIA_NOTIFY_URL//\\/\\\\}
    printf '%s failed on %s\n\n%s\n' "$unit" "$(hostname)" "$lines" |
        curl --fail --silent --show-error --max-time 20 --retry 3 --data-binary @- \
            --config <(printf 'url = "%s"\n' "${url//\"/\\\"}") >/dev/null
    echo "materia: reported to the notify URL"
fi
