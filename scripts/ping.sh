#!/usr/bin/env bash
# usage: ping.sh STEP:EVENT        (EVENT: start | success | fail)
#
# Run by materia-ping@STEP:EVENT.service, which every step's unit starts before it runs
# (start), on success (OnSuccess=) and on failure (OnFailure=). When MATERIA_PING_URL is
# set (units: /etc/materia/monitoring.env), pings healthchecks.io-style URLs, one check per step:
#   MATERIA_PING_URL/STEP/start, MATERIA_PING_URL/STEP, MATERIA_PING_URL/STEP/fail
# (e.g. MATERIA_PING_URL=https://hc-ping.com/<ping-key>, checks named by slug).
# Unset: no ping. A failed ping is logged and never fails anything (exit 0). A success
# also clears what notify-failure.sh reported of the step (below).
set -euo pipefail
arg=${1:?usage: ping.sh STEP:EVENT}
step=${arg%%:*}
event=${arg#*:}
case $event in
    start) suffix=/start ;;
    success) suffix= ;;
    fail) suffix=/fail ;;
    *)
        echo "ping.sh: unknown event '$event' (expected start, success or fail)" >&2
        exit 2
        ;;
esac
if [[ ! $step =~ ^[a-z0-9-]+$ ]]; then
    echo "ping.sh: bad step name '$step'" >&2
    exit 2
fi
# A success ends the step's failure as notify-failure.sh reported it: its next failure is
# reported at once (the record is shared through the units' StateDirectory=).
if [[ $event == success && -n ${STATE_DIRECTORY:-} ]]; then
    rm -f -- "${STATE_DIRECTORY%%:*}/$step.service"
fi
[[ -n ${MATERIA_PING_URL:-} ]] || exit 0
# The URL holds the ping key: it is not logged. At most ~30 s in all (a step waits for
# its start ping), however unreachable the monitoring host.
# The URL reaches curl in a config on a pipe, not on its command line (which every
# local user can read in /proc).
url=${MATERIA_PING_URL%/}/$step$suffix
url=${url//\\/\\\\}
if curl --fail --silent --show-error --max-time 8 --retry 2 --retry-max-time 20 --output /dev/null \
    --config <(printf 'url = "%s"\n' "${url//\"/\\\"}"); then
    echo "materia: pinged $event of $step"
else
    echo "materia: the $event ping of $step failed (ignored)" >&2
fi
