use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(landing_backup::TOOL, || landing_backup::run(landing_backup::Cli::parse()))
}
