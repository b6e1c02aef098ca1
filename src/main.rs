//! `pixelseq`: train, evaluate and benchmark sequence models on CIFAR-10 read pixel by pixel.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    pixelseq::commands::quiet_on_broken_pipe();
    let cli = pixelseq::commands::Cli::parse();
    match pixelseq::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", pixelseq::commands::error_report(&e));
            ExitCode::from(2)
        }
    }
}
