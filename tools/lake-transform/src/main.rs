use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(lake_transform::TOOL, || lake_transform::run(lake_transform::Cli::parse()))
}
