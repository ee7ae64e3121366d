//! The `serve-export` command: its flags and run are in `lib.rs`; `main` maps the outcome to the exit code.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(serve_export::TOOL, || serve_export::run(serve_export::Cli::parse()))
}
