//! The command line: one file per subcommand, each with its clap arguments and an `exec` that
//! turns them into library calls (as cargo's `src/bin/cargo/commands/`).

mod bench;
mod data;
mod eval;
mod predict;
mod presets;
mod report;
mod train;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use tch::Device;

#[derive(Parser)]
#[command(
    name = "pixelseq",
    version,
    about = "Sequence models on CIFAR-10 read pixel by pixel (LRA Image, sCIFAR)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Get, verify, prepare and export the CIFAR-10 data.
    Data(data::DataArgs),
    /// Train a model from a preset or config file.
    Train(train::TrainArgs),
    /// Score a run's best checkpoint on a split.
    Eval(eval::EvalArgs),
    /// List the shipped presets with their parameter counts and the paper figure each targets.
    Presets,
    /// Write a results table and plots (PNG, SVG) from finished runs; optionally update a README.
    Report(report::ReportArgs),
    /// Classify image files (PNG, JPEG) with a run's best checkpoint.
    Predict(predict::PredictArgs),
    /// Training and inference throughput and peak memory of presets, beside the same models in PyTorch.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    crate::device::install_cpu_allocator()?;
    match cli.command {
        Command::Data(args) => data::exec(args),
        Command::Train(args) => train::exec(args),
        Command::Eval(args) => eval::exec(args),
        Command::Presets => presets::exec(),
        Command::Report(args) => report::exec(args),
        Command::Predict(args) => predict::exec(args),
        Command::Bench(args) => bench::exec(args),
    }
}

/// Where and how tensors are computed.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: the physical cores; at most the cores available).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl DeviceArgs {
    /// Sets libtorch's CPU threads and parses the device.
    pub fn resolve(&self) -> Result<Device> {
        tch::set_num_threads(crate::device::cpu_threads(self.threads)?);
        crate::device::parse(&self.device, "--device")
    }

    /// [`DeviceArgs::resolve`] for one rank of a data-parallel run: its local rank's GPU, and
    /// without `--threads` its share of this machine's cores.
    pub fn resolve_rank(&self, world: &crate::dist::World) -> Result<Device> {
        let device = self.resolve()?;
        if self.threads.is_none() {
            tch::set_num_threads(world.cpu_threads());
        }
        world.device(device, &self.device)
    }
}

/// An error as cargo prints one: `error: …`, then each underlying cause indented under
/// `Caused by:`.
pub fn error_report(e: &anyhow::Error) -> String {
    let mut out = format!("error: {e}");
    for cause in e.chain().skip(1) {
        out += &format!("\n\nCaused by:\n  {}", cause.to_string().replace('\n', "\n  "));
    }
    out
}

/// Restores the default action of SIGPIPE (Rust ignores it, so writing to a closed pipe panics):
/// `pixelseq presets | head -1` then ends quietly when `head` exits, like any Unix filter.
pub fn quiet_on_broken_pipe() {
    crate::ffi::default_sigpipe();
}

#[cfg(test)]
mod tests {
    use anyhow::{anyhow, Context};

    #[test]
    fn errors_print_their_causes_as_cargo_does() {
        let e = Err::<(), _>(anyhow!("No space left on device (os error 28)"))
            .context("failed to write `runs/x/checkpoints/last/model.safetensors`")
            .unwrap_err();
        assert_eq!(
            super::error_report(&e),
            "error: failed to write `runs/x/checkpoints/last/model.safetensors`\n\nCaused by:\n  No space left on device (os error 28)"
        );
        assert_eq!(super::error_report(&anyhow!("--device tpu: bad")), "error: --device tpu: bad");
    }
}
