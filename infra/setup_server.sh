#!/usr/bin/env bash
# usage: sudo infra/setup_server.sh
#
# Prepares a Debian server for Materia, from a checkout of this repository. Idempotent:
# a second run changes nothing. It installs the packages the pipeline and its builds
# need, creates the service user and the data dirs (from units/: sysusers.d, tmpfiles.d),
# generates the deploy key (ed25519) and the age key for secrets as the service user,
# and prints both public keys: add the first to the git remote as a read-only deploy
# key, encrypt .env.prod.sops to the second.
#
# Environment: MATERIA_SKIP_PACKAGES=1 skips apt, MATERIA_SKIP_RUST=1 the service
# user's Rust toolchain (an offline or pre-provisioned host).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin # runuser, systemd-sysusers, when sudo's PATH lacks them
here=$(cd "$(dirname "$0")/.." && pwd)
user=beanflows_service
app=/opt/materia

say() { echo "setup_server: $*" >&2; }
die() { say "$*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (sudo infra/setup_server.sh)"

# Packages: git (deploys), curl (health checks, notifier), age (secrets), sqlite3
# (operators), the build toolchain for releases (gcc, pkg-config, OpenSSL and libssh2
# headers for git2), npm (fetches the prebuilt DuckDB library) and python3-venv (sops).
packages=(git curl age sqlite3 ca-certificates build-essential pkg-config libssl-dev libssh2-1-dev python3-venv)
command -v npm >/dev/null || packages+=(npm) # any npm will do (the host may have its own Node.js)
if [[ -z ${MATERIA_SKIP_PACKAGES:-} ]]; then
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

# The service user and the dirs, from the files the units ship with.
install -D -m 0644 "$here/units/materia.sysusers.conf" /usr/lib/sysusers.d/materia.conf
install -D -m 0644 "$here/units/materia.tmpfiles.conf" /usr/lib/tmpfiles.d/materia.conf
systemd-sysusers /usr/lib/sysusers.d/materia.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/materia.conf
getent passwd "$user" >/dev/null || die "$user was not created"

as_user() { runuser -u "$user" -- "$@"; }
install -d -m 0700 -o "$user" -g "$user" "$app/.ssh" "$app/.config" "$app/.config/sops" "$app/.config/sops/age"
if [[ ! -f $app/.ssh/materia_deploy ]]; then
    say "generating the deploy key"
    as_user ssh-keygen -q -t ed25519 -N '' -C "materia-deploy@$(hostname)" -f "$app/.ssh/materia_deploy"
fi
if [[ ! -f $app/.config/sops/age/keys.txt ]]; then
    say "generating the age key"
    as_user age-keygen -o "$app/.config/sops/age/keys.txt" 2>/dev/null
    chmod 0600 "$app/.config/sops/age/keys.txt"
fi

# Releases are built on the server, as the service user: Rust (rustup, into its home;
# Debian's cargo is too old) and the pinned DuckDB library the builds link.
if [[ -z ${MATERIA_SKIP_RUST:-} ]] && ! as_user test -x "$app/.cargo/bin/cargo"; then
    say "installing Rust for $user (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        as_user env HOME="$app" sh -s -- -y -q --profile minimal --default-toolchain 1.95.0
fi
"$here/scripts/duckdb-lib.sh" "$app/duckdb/1.5.6"
chown -R "$user:$user" "$app/duckdb"

echo "deploy key (add to the git remote, read-only):"
cat "$app/.ssh/materia_deploy.pub"
echo "age recipient (encrypt .env.prod.sops to it):"
sed -n 's/^# public key: //p' "$app/.config/sops/age/keys.txt"
