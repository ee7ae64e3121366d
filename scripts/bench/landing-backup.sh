#!/usr/bin/env bash
# usage: scripts/bench/landing-backup.sh
#
# landing-backup against rclone (Debian's 1.60, configured as the fair peer for an
# immutable tree: copy --immutable --fast-list --size-only) on the same tree and the
# same S3 server (moto on 127.0.0.1): 2,000 small files (1-8 KiB) and 20 of 5 MiB, a
# first run and a no-change run each. Requests by kind are counted from moto's own
# request log, so both tools are counted the same way. Ratios are rclone / ours.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/materia-target}"
scripts/setup-dev.sh
if ! command -v rclone >/dev/null; then
    apt-get install -y -qq rclone >/dev/null
fi
cargo build --release --locked --quiet # the whole workspace, as run-all.sh: one feature set, no rebuilds
ours=$CARGO_TARGET_DIR/release/landing-backup
moto=${MATERIA_TEST_VENV:-$HOME/.cache/materia-test-venv}/bin/moto_server

work=$(mktemp -d)
moto_pid=
cleanup() { [[ -n $moto_pid ]] && kill "$moto_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$moto" -H 127.0.0.1 -p "$port" 2>"$work/moto.log" >/dev/null &
moto_pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
for b in ours peer; do curl -sf -X PUT "http://127.0.0.1:$port/$b" >/dev/null; done

echo "bench: making 2,000 small files and 20 of 5 MiB" >&2
python3 - "$work/data/landing" <<'PY'
import os, random, sys
root, rnd = sys.argv[1], random.Random(7)
for i in range(2000):
    d = os.path.join(root, "psd", f"{2000 + i // 120}", f"{i % 12 + 1:02d}")
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, f"small-{i}.csv.gzip"), "wb").write(rnd.randbytes(rnd.randint(1024, 8192)))
for i in range(20):
    d = os.path.join(root, "psd", "2030", f"{i % 12 + 1:02d}")
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, f"big-{i}.csv.gzip"), "wb").write(rnd.randbytes(5 << 20))
PY

export R2_ENDPOINT=http://127.0.0.1:$port R2_ACCESS_KEY_ID=bench R2_SECRET_ACCESS_KEY=bench
export RCLONE_CONFIG_R2_TYPE=s3 RCLONE_CONFIG_R2_PROVIDER=Cloudflare RCLONE_CONFIG_R2_ENDPOINT=$R2_ENDPOINT \
    RCLONE_CONFIG_R2_ACCESS_KEY_ID=bench RCLONE_CONFIG_R2_SECRET_ACCESS_KEY=bench RCLONE_CONFIG_R2_REGION=auto
unset AWS_CA_BUNDLE

# requests SINCE_LINE: "LIST n PUT n HEAD n multipart n" from moto's log after that line
requests() {
    tail -n +"$(($1 + 1))" "$work/moto.log" | awk '
        /"HEAD / {h++} /"GET [^ ]*(list-type|prefix=)/ {l++}
        /"PUT [^ ]*uploadId/ {m++; next} /"PUT / {p++} /"POST / {m++}
        END {printf "LIST %d, PUT %d, HEAD %d, multipart %d", l, p, h, m}'
}
lines() { wc -l <"$work/moto.log"; }

run_ours() { measure "$ours" -q --data-dir "$work/data" --state-db "$work/state.sqlite" --target s3://ours; }
run_peer() { measure rclone copy --immutable --fast-list --size-only "$work/data/landing" r2:peer/backup/materia/landing; }

header rclone
for case in "first run" "no change"; do
    n=$(lines); o=$(run_ours); o_req=$(requests "$n")
    n=$(lines); p=$(run_peer); p_req=$(requests "$n")
    row "2,020 files" "$case" "$o" "$p"
    echo "    requests  ours: $o_req; rclone: $p_req"
done

# The restore (the disaster-recovery drill's long part): everything back into an empty
# data dir, each object checked as it arrives; rclone copies the other way, unchecked.
bytes=$(du -sb --exclude='.*' "$work/data/landing" | cut -f1)
o=$(measure "$ours" -q --data-dir "$work/restored" --target s3://ours restore)
p=$(measure rclone copy --fast-list r2:peer/backup/materia/landing "$work/peer-restored")
row "2,020 files" "restore" "$o" "$p"
read -r secs _ <<<"$o"
awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "    restore: %.0f MB in %.2f s, %.1f MB/s from moto on 127.0.0.1\n", b / 1e6, s, b / 1e6 / s }'
