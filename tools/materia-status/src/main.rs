use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(materia_status::TOOL, || materia_status::run(materia_status::Cli::parse()))
}
