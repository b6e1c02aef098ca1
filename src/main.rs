//! `pixelseq`: train, evaluate and benchmark sequence models on CIFAR-10 read pixel by pixel.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pixelseq::cli::Cli::parse();
    match pixelseq::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
