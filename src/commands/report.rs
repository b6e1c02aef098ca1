//! `pixelseq report`: a results table and plots from finished runs (see [`crate::report`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::report::{generate, update_readme};

#[derive(Args)]
pub struct ReportArgs {
    /// Run directories, or folders searched recursively for them [default: results].
    pub runs: Vec<PathBuf>,
    /// Folder for results.md and the plots.
    #[arg(long, default_value = "results/report")]
    pub out: PathBuf,
    /// Benchmark JSON (an array of {model, preset, seq_len, batch, train_img_per_s,
    /// infer_img_per_s, peak_mem_mb, device, impl}) for the speed table and the
    /// throughput-vs-length plot (repeatable: one file per device).
    #[arg(long)]
    pub bench: Vec<PathBuf>,
    /// Replace the text between `<!-- results:start -->` and `<!-- results:end -->` in this file
    /// with the table and plot links.
    #[arg(long)]
    pub readme: Option<PathBuf>,
}

pub fn exec(a: ReportArgs) -> Result<()> {
    let inputs = if a.runs.is_empty() {
        vec![PathBuf::from("results")]
    } else {
        a.runs
    };
    let report = generate(&inputs, &a.out, &a.bench)?;
    eprintln!(
        "{} runs → {}",
        report.runs.len(),
        std::iter::once("results.md".to_string())
            .chain(report.plots.iter().map(|p| format!("{}.png/.svg", p.stem)))
            .map(|f| a.out.join(f).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(readme) = &a.readme {
        update_readme(readme, &report, &a.out)?;
        eprintln!("updated the results section of {}", readme.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn report_subcommand_parses() {
        use clap::Parser;
        let cli = crate::commands::Cli::try_parse_from(["pixelseq", "report", "a", "b", "--bench", "bench.json", "--readme", "README.md"])
            .unwrap();
        let crate::commands::Command::Report(a) = cli.command else {
            panic!("not the report command")
        };
        assert_eq!(a.runs, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(a.out, PathBuf::from("results/report"));
        assert_eq!(a.bench, [PathBuf::from("bench.json")]);
        assert_eq!(a.readme, Some(PathBuf::from("README.md")));
    }
}
