//! `pixelseq bench`: throughput and peak memory of presets beside PyTorch (see [`crate::bench`]).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::DeviceArgs;
use crate::amp::Precision;
use crate::bench::{self, Options, Source};
use crate::config::preset_names;
use crate::dist::{self, Backend, Part};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// A shipped preset to measure (repeatable; default: every preset, unless --config is given).
    #[arg(long = "preset", value_name = "NAME")]
    pub presets: Vec<String>,
    /// A TOML config file to measure (repeatable).
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Override one config key for every preset, e.g. --set model.d_model=256 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Sequence lengths to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [256, 1024, 4096])]
    pub seq_len: Vec<i64>,
    /// Batch size (default: each preset's train.batch_size).
    #[arg(long)]
    pub batch: Option<i64>,
    /// Timed steps; the figure is the median.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Measure each configuration this many times, alternating pixelseq and PyTorch, and keep
    /// each side's fastest round (for machines shared with other work).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// fp32, bf16 or auto (bf16 on CUDA, fp32 on CPU); default: each preset's train.precision.
    /// fp16 is not benchmarked (its loss scaling syncs with the host).
    #[arg(long, value_enum, hide_possible_values = true)]
    pub precision: Option<Precision>,
    /// Write the results as a JSON array to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Measure pixelseq only, without the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Python with torch for the reference (default: the checkout's .venv/bin/python).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// After timing, profile `--steps` training steps of each configuration, both implementations,
    /// with libtorch's profiler (torch.profiler on the PyTorch side): DIR/<preset>-L<len>-<impl>.txt
    /// (operators by self time; kernels by device time on CUDA) and .json (Chrome trace)
    #[arg(long, value_name = "DIR")]
    pub profile: Option<PathBuf>,
    /// Internal: measure one preset at one length in this process and print one JSON line.
    #[arg(long, hide = true)]
    pub one: bool,
    /// Measure what data-parallel training costs in N worker processes on this machine (one per
    /// GPU, or N CPU workers): each rank's step alone, with the gradient all-reduce after the
    /// backward pass and overlapped with it, and the all-reduce alone (no PyTorch reference).
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
}

pub fn exec(a: BenchArgs) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps 0: need at least one timed step");
    }
    if a.repeat == 0 {
        bail!("--repeat 0: need at least one round");
    }
    if let Some(&l) = a.seq_len.iter().find(|&&l| l < 1) {
        bail!("--seq-len {l}: lengths must be >= 1");
    }
    if let Some(b) = a.batch.filter(|&b| b < 1) {
        bail!("--batch {b}: must be >= 1");
    }
    let Part::Worker { device, member } = dist::join(a.nproc, &a.device.device, a.device.threads)? else {
        return Ok(());
    };
    let mut sources: Vec<Source> = a.presets.iter().cloned().map(Source::Preset).collect();
    sources.extend(a.configs.iter().cloned().map(Source::File));
    if sources.is_empty() && !a.one {
        sources = preset_names()?.into_iter().map(Source::Preset).collect();
    }
    let opts = Options {
        sources,
        overrides: a.overrides,
        seq_lens: a.seq_len,
        batch: a.batch,
        steps: a.steps,
        warmup: a.warmup,
        repeat: a.repeat,
        device,
        threads: a.device.threads,
        precision: a.precision,
        json: a.json,
        reference: !a.no_reference,
        python: a.python,
        profile: a.profile,
    };
    if let Some(m) = member {
        return bench::ddp::run(&opts, &m.group(Backend::Auto, device)?);
    }
    if a.one {
        bench::run_one(&opts)
    } else {
        bench::run(&opts)
    }
}
