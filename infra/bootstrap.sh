#!/usr/bin/env bash
# usage: sudo infra/bootstrap.sh REMOTE
#
# First deploy on a server setup_server.sh prepared, from a checkout of this repository:
#   1. writes the DuckDB library dir into /etc/materia/config.env and REMOTE into
#      /etc/materia/deploy.env (root's; no deploy rewrites them; other lines are kept);
#   2. trusts the remote's host key (SSH remotes), as the service user;
#   3. when no release is deployed yet: builds the tools from this checkout as the
#      service user, in tag-deploy's build dir, and points `current` at that deployer;
#   4. installs the units as shipped (and, while config.env selects a DuckLake, the
#      drop-in units/ducklake.conf for the lakehouse's three units), then lets
#      tag-deploy.service deploy the newest release tag (under its unit, with the unit's
#      environment, as every later deploy);
#   5. enables the timers and path units (the backup timer only when the R2 variables
#      are set in the configuration or the deployed secrets).
# Idempotent: a second run deploys nothing that is deployed and changes no file. Rerun
# it from a checkout of a release whose units/ changed, to install them, and after
# switching MATERIA_LAKEHOUSE in config.env.
#
# Root never writes inside /opt/materia (the service user's tree): everything there is
# done as the service user.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin # runuser, systemctl, when sudo's PATH lacks them
here=$(cd "$(dirname "$0")/.." && pwd)
remote=${1:?usage: sudo infra/bootstrap.sh REMOTE}
user=beanflows_service
app=/opt/materia
etc=/etc/materia
config=$etc/config.env
lib=$app/duckdb/$(bash "$here/scripts/duckdb-lib.sh" --version)
units=/etc/systemd/system

say() { echo "bootstrap: $*" >&2; }
die() { say "$*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (sudo infra/bootstrap.sh REMOTE)"
getent passwd "$user" >/dev/null || die "no $user: run infra/setup_server.sh first"
[[ -d $etc && ! -L $etc ]] || die "no $etc: run infra/setup_server.sh first"
[[ $remote != *$'\n'* && $remote != *' '* ]] || die "REMOTE must be one word"
as_user() { runuser -u "$user" -- env -i HOME="$app" PATH="$app/.cargo/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 "$@"; }

# 1. The configuration: set our keys, keep every other line (what the operator set).
#    config.env is every step's (no secrets); deploy.env tag-deploy's alone (the remote's
#    URL may hold a token), readable by root only: systemd reads it for the unit.
set_config() {
    local file=$1 mode=$2 key=$3 value=$4 tmp
    if [[ -f $file ]] && grep -qxF "$key=$value" "$file"; then
        return
    fi
    tmp=$(mktemp "$etc/.env.XXXXXX")
    if [[ -f $file ]]; then
        grep -v "^$key=" "$file" >"$tmp" || true
    fi
    echo "$key=$value" >>"$tmp"
    chown "root:$user" "$tmp"
    chmod "$mode" "$tmp"
    mv "$tmp" "$file"
    say "set $key in $file"
}
set_config "$config" 0640 DUCKDB_LIB_DIR "$lib"
set_config "$etc/deploy.env" 0600 DEPLOY_REMOTE "$remote"

# 2. SSH remotes: trust the host key as seen now (plain entries, as tag-deploy reads them).
if [[ $remote =~ ^(ssh://)?([^@/]+@)?([^:/]+) && $remote != /* && $remote != file://* && $remote != http* ]]; then
    host=${BASH_REMATCH[3]}
    port=$(sed -n 's|^ssh://[^/]*:\([0-9]*\)/.*|\1|p' <<<"$remote")
    entry=$host
    [[ -n $port && $port != 22 ]] && entry="[$host]:$port"
    if ! as_user ssh-keygen -F "$entry" -f "$app/.ssh/known_hosts" >/dev/null 2>&1; then
        say "adding the host key of $entry"
        keys=$(as_user ssh-keyscan -p "${port:-22}" "$host" 2>/dev/null) || true
        [[ -n $keys ]] || die "no host key from $host port ${port:-22}"
        # shellcheck disable=SC2016 # $HOME is the service user's, expanded by its shell
        printf '%s\n' "$keys" | as_user sh -c 'umask 077 && cat >>"$HOME/.ssh/known_hosts"'
    fi
fi

# 3. The first deployer, built from this checkout the way tag-deploy builds (same dir,
#    target dir and environment, so the first deploy's build reuses it).
if ! as_user test -e "$app/current"; then
    say "building the tools from $here as $user (a first build takes minutes)"
    as_user mkdir -p "$app/build"
    # -m: the files get the time of the copy, not the checkout's, so cargo never takes
    # an older build left in the target dir for this one.
    (cd "$here" && git ls-files -z --cached --others --exclude-standard |
        tar --null --ignore-failed-read -T - -cf -) | as_user tar -xmf - -C "$app/build"
    as_user sh -c "cd '$app/build' && CARGO_TARGET_DIR='$app/target' DUCKDB_LIB_DIR='$lib' MATERIA_RELEASE_BUILD=1 \
        cargo build --release --locked" || die "the build failed"
    as_user install -D -m 0755 "$app/target/release/tag-deploy" "$app/bootstrap/bin/tag-deploy"
    as_user cp -r "$app/build/scripts" "$app/bootstrap/" # the pings and the notifier the unit runs
    as_user ln -sfn bootstrap "$app/current"
fi

# 4. The units, as shipped; then the first deploy, by tag-deploy's own unit.
changed=0
for f in "$here"/units/*.service "$here"/units/*.timer "$here"/units/*.path; do
    if ! cmp -s "$f" "$units/$(basename "$f")"; then
        install -m 0644 "$f" "$units/$(basename "$f")"
        changed=1
    fi
done
# On a DuckLake (config.env's MATERIA_LAKEHOUSE=ducklake:...), the lakehouse's three
# units get the network and the lake's secrets by a drop-in; otherwise they have neither.
for u in lake-transform.service serve-export.service lake-maintain.service; do
    dropin=$units/$u.d/ducklake.conf
    if grep -qE "^MATERIA_LAKEHOUSE=[\"']?ducklake:" "$config"; then
        if ! cmp -s "$here/units/ducklake.conf" "$dropin"; then
            install -D -m 0644 "$here/units/ducklake.conf" "$dropin"
            say "DuckLake: $u gets the network and $app/lake.env"
            changed=1
        fi
    elif [[ -e $dropin ]]; then
        rm -f "$dropin"
        say "no DuckLake: $u keeps no network"
        changed=1
    fi
done
((changed)) && systemctl daemon-reload
if ! systemctl start tag-deploy.service; then
    journalctl --unit tag-deploy.service --lines 20 --no-pager >&2 || true
    die "the deploy failed (above); after fixing it, clear the failed tag with: sudo -u $user $app/current/bin/tag-deploy --clear-failed"
fi
deployed=$(readlink "$app/current" || true)
[[ $deployed == releases/* ]] || die "no release is deployed (current: ${deployed:-none}); does $remote have a v<N> tag?"
as_user rm -rf "$app/bootstrap"

# 5. Enable the timers and path units.
enable=(psd-extract.timer lake-transform.path lake-transform.timer serve-export.path serve-export.timer lake-maintain.timer tag-deploy.timer)
r2=0
for key in R2_ENDPOINT R2_ACCESS_KEY_ID R2_SECRET_ACCESS_KEY; do
    grep -q "^$key=." "$config" || as_user grep -q "^$key=." "$app/secrets.env" 2>/dev/null || r2=1
done
if ((r2 == 0)); then
    enable+=(landing-backup.timer)
else
    say "no R2 variables in $config or the deployed secrets: landing-backup.timer stays disabled"
fi
systemctl enable --now "${enable[@]}"
say "deployed $deployed; enabled ${enable[*]}"
