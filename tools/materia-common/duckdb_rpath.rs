//! The build script of every tool that links DuckDB (their Cargo.toml names this file):
//! let the binaries find the prebuilt libduckdb.so at run time (see ARCHITECTURE.md,
//! "DuckDB"): first in a deployed release's `lib/` (`$ORIGIN/../lib`); in a development
//! build also in the build's DUCKDB_LIB_DIR, so `target/*/` binaries run in place (and
//! find its `extensions/`: `MATERIA_DEV_DUCKDB_EXTENSIONS` at compile time). A
//! release build (tag-deploy and bootstrap.sh set MATERIA_RELEASE_BUILD=1) records no
//! path of the build machine: the release is self-contained.
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    println!("cargo:rerun-if-env-changed=MATERIA_RELEASE_BUILD");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
    if std::env::var_os("MATERIA_RELEASE_BUILD").is_none()
        && let Ok(dir) = std::env::var("DUCKDB_LIB_DIR")
    {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // And the extensions scripts/duckdb-lib.sh put beside it (duckdb_config.rs).
        println!("cargo:rustc-env=MATERIA_DEV_DUCKDB_EXTENSIONS={dir}/extensions");
    }
}
