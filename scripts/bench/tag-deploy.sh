#!/usr/bin/env bash
# usage: scripts/bench/tag-deploy.sh [RUNS]
#
# A tag-deploy poll that finds no new tag, against what a shell script would run for
# the same question (`git fetch --tags` in a clone, `git ls-remote --tags`), on a
# repository with 1,000 release tags. Medians of RUNS (default 5); ratios are peer / ours.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/materia-target}"
cargo build --release --locked --quiet # the whole workspace, as run-all.sh: one feature set, no rebuilds
ours=$CARGO_TARGET_DIR/release/tag-deploy
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

git init -q -b main "$work/remote"
git -C "$work/remote" -c user.name=b -c user.email=b@b commit -q --allow-empty -m one
for i in $(seq 1 1000); do echo "$(git -C "$work/remote" rev-parse HEAD) refs/tags/v$i"; done >"$work/refs"
git -C "$work/remote" update-ref --stdin < <(sed 's/^\([^ ]*\) \(.*\)$/create \2 \1/' "$work/refs")
# Servers keep their refs packed, as git gc leaves them.
git -C "$work/remote" pack-refs --all
git clone -q "$work/remote" "$work/clone"

# shellcheck disable=SC2016 # expanded by the build's shell, not this one
build='mkdir -p "$CARGO_TARGET_DIR/release" && cp /bin/true "$CARGO_TARGET_DIR/release/psd-extract"'
"$ours" -q --data-dir "$work/data" --app-dir "$work/app" --remote "$work/remote" --build-cmd "$build" >/dev/null

o=$(for _ in $(seq "$runs"); do measure "$ours" -q --data-dir "$work/data" --app-dir "$work/app" --remote "$work/remote" --build-cmd "$build"; done | median)
f=$(for _ in $(seq "$runs"); do measure git -C "$work/clone" fetch -q --tags; done | median)
l=$(for _ in $(seq "$runs"); do measure git ls-remote --tags "$work/remote"; done | median)
header git
row "1,000 tags" "vs fetch --tags" "$o" "$f"
row "1,000 tags" "vs ls-remote" "$o" "$l"
