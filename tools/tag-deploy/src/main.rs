use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(tag_deploy::TOOL, || tag_deploy::run(tag_deploy::Cli::parse()))
}
