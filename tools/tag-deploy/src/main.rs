//! The `tag-deploy` command: its flags and run are in `lib.rs`; `main` maps the outcome to the exit code.
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(tag_deploy::TOOL, || tag_deploy::run(tag_deploy::Cli::parse()))
}
