#!/usr/bin/env bash
# usage: sudo infra/bootstrap.sh REMOTE
#
# First deploy on a server setup_server.sh prepared, from a checkout of this repository:
# adds the remote's host key to the service user's known_hosts (SSH remotes), builds
# tag-deploy once, lets it deploy the newest release tag (build, binaries, `current`,
# secrets), installs the units and enables them; the backup timer only when the R2
# variables are in /opt/materia/.env. The app tree stays owned by the service user.
# Idempotent: a second run redeploys nothing that is deployed and changes no unit.
#
# Environment: DEPLOY_BUILD_CMD (passed to tag-deploy), CARGO_TARGET_DIR (where the
# first tag-deploy is built, default /opt/materia/target).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin # runuser, systemd-sysusers, when sudo's PATH lacks them
here=$(cd "$(dirname "$0")/.." && pwd)
remote=${1:?usage: sudo infra/bootstrap.sh REMOTE}
user=beanflows_service
app=/opt/materia
units=/etc/systemd/system

say() { echo "bootstrap: $*" >&2; }
die() { say "$*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (sudo infra/bootstrap.sh REMOTE)"
getent passwd "$user" >/dev/null || die "no $user: run infra/setup_server.sh first"
as_user() { runuser -u "$user" -- env HOME="$app" PATH="$app/.cargo/bin:/usr/local/bin:/usr/bin:/bin" "$@"; }

# SSH remotes: trust the host key as seen now (plain entries, as tag-deploy reads them).
if [[ $remote =~ ^(ssh://)?([^@/]+@)?([^:/]+) && $remote != /* && $remote != file://* ]]; then
    host=${BASH_REMATCH[3]}
    port=$(sed -n 's|^ssh://[^/]*:\([0-9]*\)/.*|\1|p' <<<"$remote")
    if ! grep -q "$host" "$app/.ssh/known_hosts" 2>/dev/null; then
        say "adding the host key of $host"
        ssh-keyscan -p "${port:-22}" "$host" 2>/dev/null >>"$app/.ssh/known_hosts"
    fi
fi

# The first tag-deploy, built from this checkout (later ones come with each release).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$app/target}
if [[ ! -x $app/current/bin/tag-deploy ]]; then
    say "building tag-deploy"
    (cd "$here" && cargo build --release --locked --quiet -p tag-deploy)
    install -D -m 0755 "$CARGO_TARGET_DIR/release/tag-deploy" "$app/bootstrap/tag-deploy"
fi
chown -R "$user:$user" "$app"
deployer=$app/current/bin/tag-deploy
[[ -x $deployer ]] || deployer=$app/bootstrap/tag-deploy
set +e
as_user env ${DEPLOY_BUILD_CMD:+DEPLOY_BUILD_CMD="$DEPLOY_BUILD_CMD"} DUCKDB_LIB_DIR="$app/duckdb/1.5.6" \
    "$deployer" --data-dir /data/materia --app-dir "$app" --remote "$remote" --wait-lock 3600
code=$?
set -e
case $code in
    0|3) ;;
    *) die "tag-deploy failed (exit $code)" ;;
esac
[[ -x $app/current/bin/tag-deploy ]] || die "no release is deployed"
# What the units need from the environment file, added once.
touch "$app/.env"
grep -q '^DEPLOY_REMOTE=' "$app/.env" || echo "DEPLOY_REMOTE=$remote" >>"$app/.env"
grep -q '^DUCKDB_LIB_DIR=' "$app/.env" || echo "DUCKDB_LIB_DIR=$app/duckdb/1.5.6" >>"$app/.env"
chown "$user:$user" "$app/.env"
chmod 0600 "$app/.env"
chown -R "$user:$user" "$app"

# The units, as shipped.
changed=0
for f in "$here"/units/*.service "$here"/units/*.timer "$here"/units/*.path; do
    if ! cmp -s "$f" "$units/$(basename "$f")"; then
        install -m 0644 "$f" "$units/$(basename "$f")"
        changed=1
    fi
done
((changed)) && systemctl daemon-reload
enable=(psd-extract.timer lake-transform.path serve-export.path tag-deploy.timer)
if grep -q '^R2_ACCESS_KEY_ID=.' "$app/.env" && grep -q '^R2_SECRET_ACCESS_KEY=.' "$app/.env" && grep -q '^R2_ENDPOINT=.' "$app/.env"; then
    enable+=(landing-backup.timer)
else
    say "no R2 variables in $app/.env: landing-backup.timer stays disabled"
fi
systemctl enable --now "${enable[@]}"
say "deployed $(readlink "$app/current"); enabled ${enable[*]}"
