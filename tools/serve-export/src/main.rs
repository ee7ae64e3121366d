use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(serve_export::TOOL, || serve_export::run(serve_export::Cli::parse()))
}
