//! Let the binaries find the prebuilt libduckdb.so at run time (see ARCHITECTURE.md,
//! "DuckDB"): beside the build's DUCKDB_LIB_DIR, and in a deployed release's `lib/`.
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
}
