#!/usr/bin/env bash
# usage: scripts/duckdb-lib.sh DIR
#        scripts/duckdb-lib.sh --version
#
# Puts the pinned prebuilt libduckdb.so into DIR (fetched with npm from its registry
# package, checked by sha256), unless it is there already; --version prints the version.
#
# This file is where the DuckDB version is set: DuckDB is ONE version everywhere, the
# crate, this library and the Python readers must match, or files will not open. The
# scripts ask this file (setup-dev.sh: DIR = .duckdb/VERSION in the checkout and the
# Python pin; setup_server.sh and bootstrap.sh: /opt/materia/duckdb/VERSION; the
# benchmarks); what cannot ask (Cargo.toml's crate pin, .cargo/config.toml, the docs)
# is checked against it by tests/it/house.rs.
set -euo pipefail
version=1.5.6
package=@duckdb/node-bindings-linux-x64@1.5.6-r.1
sha256=3f4962cdd266eab2b479a5b5a4a6d063d279b2954ae814ed00385d553b747633
if [[ ${1:-} == --version ]]; then
    echo "$version"
    exit 0
fi
dir=${1:?usage: scripts/duckdb-lib.sh DIR | --version}
if echo "$sha256  $dir/libduckdb.so" | sha256sum --check --status 2>/dev/null; then
    exit 0
fi
echo "duckdb-lib: fetching libduckdb.so $version ($package) into $dir" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz)
if ! echo "$sha256  $tmp/package/libduckdb.so" | sha256sum --check --status; then
    echo "duckdb-lib: libduckdb.so from $package does not match the pinned sha256" >&2
    exit 1
fi
mkdir -p "$dir"
mv "$tmp/package/libduckdb.so" "$dir/libduckdb.so.tmp"
mv "$dir/libduckdb.so.tmp" "$dir/libduckdb.so"
