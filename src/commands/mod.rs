//! The command line: one file per subcommand, each with its clap arguments and an `exec` that
//! turns them into library calls (as cargo's `src/bin/cargo/commands/`).

mod bench;
mod data;
mod eval;
mod export;
mod predict;
mod presets;
mod report;
mod train;

use anyhow::{anyhow, Result};
use clap::{Args, Parser, Subcommand};
use tch::Device;

use crate::device::{is_out_of_memory, libtorch_message};

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
    /// Self-pretrain a model's backbone on the task's own images ([pretrain] of the config): the
    /// run `train --init` fine-tunes from.
    #[command(mut_arg("init", |a| a.hide(true)), mut_arg("last", |a| a.hide(true)))]
    Pretrain(train::TrainArgs),
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
    /// Export a run's best checkpoint: a TorchScript module for plain PyTorch, or a Hugging Face-style folder.
    Export(export::ExportArgs),
}

/// Runs the parsed command line. libtorch reports failures (an allocation that does not fit, an
/// operation it refuses) by panicking in tch's methods; such a panic ends the command with an
/// error carrying the first line of libtorch's message, like any other error. Any other panic is
/// a bug: it is printed as usual and reported as an internal error.
pub fn run(cli: Cli) -> Result<()> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if libtorch_message(info.payload_as_str().unwrap_or_default()).is_none() {
            default_hook(info);
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli))) {
        Ok(result) => result,
        Err(payload) => Err(panic_error(&*payload)),
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    crate::device::install_cpu_allocator()?;
    if matches!(cli.command, Command::Eval(_) | Command::Predict(_)) {
        crate::device::cache_for_inference();
    }
    match cli.command {
        Command::Data(args) => data::exec(args),
        Command::Train(args) => train::exec(args, false),
        Command::Pretrain(args) => train::exec(args, true),
        Command::Eval(args) => eval::exec(args),
        Command::Presets => presets::exec(),
        Command::Report(args) => report::exec(args),
        Command::Predict(args) => predict::exec(args),
        Command::Bench(args) => bench::exec(args),
        Command::Export(args) => export::exec(args),
    }
}

/// A budget in minutes (`--max-minutes`, `--fit-minutes`): a positive number up to
/// [`crate::config::MAX_MINUTES`]; clap's error names the flag and the value.
fn minutes(s: &str) -> Result<f64, String> {
    let max = crate::config::MAX_MINUTES;
    match s.trim().parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 && m <= max => Ok(m),
        _ => Err(format!("must be a positive number of minutes, at most {max}")),
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
}

/// The error a caught panic becomes.
fn panic_error(payload: &(dyn std::any::Any + Send)) -> anyhow::Error {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    match libtorch_message(text) {
        Some(msg) if is_out_of_memory(&msg) => {
            let msg = msg.strip_prefix("out of memory: ").unwrap_or(&msg);
            anyhow!("out of memory: {msg}; reduce train.batch_size or the model's sizes")
        }
        Some(msg) => anyhow!("libtorch failed: {msg}"),
        None => anyhow!("internal error: {text}; this is a bug in pixelseq"),
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

    /// A libtorch failure inside tch (here a 2^42-element allocation on the CPU) becomes a one-line
    /// error with libtorch's first line, never a panic.
    #[test]
    fn libtorch_panics_become_errors() {
        let caught = std::panic::catch_unwind(|| tch::Tensor::zeros([1 << 21, 1 << 21], (tch::Kind::Float, tch::Device::Cpu)))
            .expect_err("a 16 TiB tensor cannot be allocated");
        let e = super::panic_error(&*caught);
        let text = super::error_report(&e);
        assert!(text.starts_with("error: out of memory: ") && !text.contains('\n'), "{text}");
        assert!(text.contains("DefaultCPUAllocator") && !text.contains("Torch(\""), "{text}");
        let e = super::panic_error(&"index out of bounds");
        assert!(e.to_string().contains("a bug in pixelseq"), "{e}");
    }

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
