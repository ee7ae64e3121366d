//! The `materia-status` command: its flags and run are in `lib.rs`; `main` maps the outcome to the exit code.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(materia_status::TOOL, || materia_status::run(materia_status::Cli::parse()))
}
