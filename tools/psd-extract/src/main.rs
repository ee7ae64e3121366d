use clap::Parser as _;

fn main() -> std::process::ExitCode {
    materia_common::exit::main(psd_extract::TOOL, || psd_extract::run(psd_extract::Cli::parse()))
}
