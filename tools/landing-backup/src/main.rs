//! The `landing-backup` command: its flags and run are in `lib.rs`; `main` maps the outcome to the exit code.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(landing_backup::TOOL, || landing_backup::run(landing_backup::Cli::parse()))
}
