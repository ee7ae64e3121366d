//! The `psd-extract` command: its flags and run are in `lib.rs`; `main` maps the outcome to the exit code.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(psd_extract::TOOL, || psd_extract::run(psd_extract::Cli::parse()))
}
