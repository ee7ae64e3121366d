//! The `lake-transform` command: its flags and run are in `lib.rs`; `main` maps the outcome to the exit code.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(lake_transform::TOOL, || lake_transform::run(lake_transform::Cli::parse()))
}
