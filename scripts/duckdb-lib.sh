#!/usr/bin/env bash
# usage: scripts/duckdb-lib.sh DIR
#        scripts/duckdb-lib.sh --version
#
# Puts the pinned prebuilt libduckdb.so into DIR (fetched with npm from its registry
# package, checked by sha256), and the DuckDB extensions the lakehouse on DuckLake needs
# into DIR/extensions/v<version>/linux_amd64/ (DuckDB's own layout for an
# `extension_directory`), unless they are there already; --version prints the version.
#
# This file is where the DuckDB version is set: DuckDB is ONE version everywhere, the
# crate, this library, its extensions and the Python readers must match, or files will
# not open (and a DuckLake catalog is tied to it). The scripts ask this file
# (setup-dev.sh: DIR = .duckdb/VERSION in the checkout and the Python pin;
# setup_server.sh and bootstrap.sh: /opt/materia/duckdb/VERSION; the benchmarks); what
# cannot ask (Cargo.toml's crate pin, .cargo/config.toml, the docs) is checked against it
# by tests/it/house.rs.
#
# The extensions: DuckDB would download them from its own server at run time, which a
# hardened unit (and this machine) cannot reach, and no tool may (autoinstall is off in
# every tool). PyPI ships DuckDB's signed builds as wheels; 1.5.5 is the newest version
# with all three (shared/notes/ducklake.md), which is why DuckDB is 1.5.5.
set -euo pipefail
version=1.5.5
package=@duckdb/node-bindings-linux-x64@1.5.5-r.5
sha256=fc23f12e376c47be520f75221288281906e7942e8fd6f6ce4849198ba60d0405
pypi=https://files.pythonhosted.org/packages
# name, wheel URL, the wheel's sha256, the extension file's sha256
extensions=(
    "ducklake $pypi/cb/12/d4dab9f3199b3475be36bc0a30a14ae784500396b14bcbb4a29b2e52ce6c/duckdb_extension_ducklake-1.5.5-py3-none-manylinux2014_x86_64.whl b631ae4dd4bd649b3db35a789dbcc859476fe231ef449b3f03f4fe4e2ef4a946 e51bf9e8d933d0e83780ae096455501b542cf962569a2ce5613532d702c08302"
    "httpfs $pypi/02/14/921faf933bb5cae7fb477c69f684fbea26bb4d76ff937d19d486af3a54cb/duckdb_extension_httpfs-1.5.5-py3-none-manylinux2014_x86_64.whl 84913dbe172ccb54368de2c4a020c38ca8b0e76f99df548f7fac37934cc7826f 887c392b1e49128d11667c81e3698d8b00dfdeb456771acf66d05a0f74f7b7d8"
    "postgres_scanner $pypi/eb/e8/e722cafafea80348567368db31a144afd4a08967876b4d52e3fffd310937/duckdb_extension_postgres_scanner-1.5.5-py3-none-manylinux2014_x86_64.whl fea9413d1b5bded7ead650aff91b3d7578c5149d832f666100b362f64404bf18 b1ced4cfc6311313e117c2afb3eac76508718778dde0716421503c7dbfb5605c"
)
if [[ ${1:-} == --version ]]; then
    echo "$version"
    exit 0
fi
dir=${1:?usage: scripts/duckdb-lib.sh DIR | --version}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! echo "$sha256  $dir/libduckdb.so" | sha256sum --check --status 2>/dev/null; then
    echo "duckdb-lib: fetching libduckdb.so $version ($package) into $dir" >&2
    (cd "$tmp" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz)
    if ! echo "$sha256  $tmp/package/libduckdb.so" | sha256sum --check --status; then
        echo "duckdb-lib: libduckdb.so from $package does not match the pinned sha256" >&2
        exit 1
    fi
    mkdir -p "$dir"
    mv "$tmp/package/libduckdb.so" "$dir/libduckdb.so.tmp"
    mv "$dir/libduckdb.so.tmp" "$dir/libduckdb.so"
fi

ext_dir=$dir/extensions/v$version/linux_amd64
for entry in "${extensions[@]}"; do
    read -r name url wheel_sha ext_sha <<<"$entry"
    target=$ext_dir/$name.duckdb_extension
    if echo "$ext_sha  $target" | sha256sum --check --status 2>/dev/null; then
        continue
    fi
    echo "duckdb-lib: fetching the $name extension $version (PyPI) into $ext_dir" >&2
    curl --proto '=https' -fsSL --retry 3 -o "$tmp/$name.whl" "$url"
    if ! echo "$wheel_sha  $tmp/$name.whl" | sha256sum --check --status; then
        echo "duckdb-lib: $url does not match the pinned sha256" >&2
        exit 1
    fi
    member=duckdb_extension_$name/extensions/v$version/$name.duckdb_extension
    unzip -p "$tmp/$name.whl" "$member" >"$tmp/$name.duckdb_extension"
    if ! echo "$ext_sha  $tmp/$name.duckdb_extension" | sha256sum --check --status; then
        echo "duckdb-lib: $name.duckdb_extension in $url does not match the pinned sha256" >&2
        exit 1
    fi
    mkdir -p "$ext_dir"
    mv "$tmp/$name.duckdb_extension" "$target.tmp"
    mv "$target.tmp" "$target"
done
