//! Command-line interface: one function per subcommand, each turning flags into library calls.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tch::{nn, Device};

use crate::config::{preset_names, Precision, RunConfig};
use crate::data::{self, cli::DataArgs};
use crate::models::param_count;
use crate::train::{self, run::today};

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
    Data(DataArgs),
    /// Train a model from a preset or config file.
    Train(TrainArgs),
    /// Score a run's best checkpoint on a split.
    Eval(EvalArgs),
    /// List the shipped presets with their parameter counts and the paper figure each targets.
    Presets,
    /// Write a results table and plots (PNG, SVG) from finished runs; optionally update a README.
    Report(crate::report::ReportArgs),
    /// Classify image files (PNG, JPEG) with a run's best checkpoint.
    Predict(crate::predict::PredictArgs),
    /// Training and inference throughput and peak memory of presets, beside the same models in PyTorch.
    Bench(crate::bench::BenchArgs),
}

/// Where and how tensors are computed.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl DeviceArgs {
    pub fn resolve(&self) -> Result<Device> {
        if let Some(n) = self.threads {
            if n < 1 {
                bail!("--threads {n}: must be >= 1");
            }
            tch::set_num_threads(n);
        }
        parse_device(&self.device)
    }
}

/// `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let cuda = |i: usize| {
        if !tch::Cuda::is_available() {
            bail!("--device {s}: CUDA is not available on this machine (is LD_LIBRARY_PATH pointing at torch/lib?)");
        }
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            bail!("--device {s}: only {n} CUDA device(s) present");
        }
        Ok(Device::Cuda(i))
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => cuda(i),
            None => bail!("--device {s}: expected auto, cpu, cuda or cuda:N"),
        },
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// A shipped preset (see `pixelseq presets`).
    #[arg(long)]
    pub preset: Option<String>,
    /// A TOML config file instead of a preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one config key, e.g. --set model.d_model=256 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default: runs/<date>-<preset>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// CIFAR-10 folder, official archive or prepared cache (default: $PIXELSEQ_DATA, then the cache dir).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Download the official CIFAR-10 archive into the data location if no data is there.
    #[arg(long)]
    pub download: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Budget in epochs (train.epochs).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Budget in optimizer steps (train.max_steps).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Wall-clock budget in minutes (train.max_minutes).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Random seed (train.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// fp32, bf16, fp16 or auto (bf16 on CUDA) (train.precision).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Run directory written by `pixelseq train`.
    #[arg(long)]
    pub run: PathBuf,
    /// Which split to score: test, val or train.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Score the last checkpoint instead of the best one.
    #[arg(long)]
    pub last: bool,
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(args) => data::cli::run_cli(args),
        Command::Train(args) => train_cmd(args),
        Command::Eval(args) => eval_cmd(args),
        Command::Presets => presets_cmd(),
        Command::Report(args) => crate::report::run_cli(args),
        Command::Predict(args) => crate::predict::run_cli(args),
        Command::Bench(args) => crate::bench::run(args),
    }
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    let mut overrides = a.overrides.clone();
    let mut flag = |key: &str, v: Option<String>| {
        if let Some(v) = v {
            overrides.push(format!("{key}={v}"));
        }
    };
    flag("train.epochs", a.epochs.map(|v| v.to_string()));
    flag("train.max_steps", a.max_steps.map(|v| v.to_string()));
    flag("train.max_minutes", a.max_minutes.map(|v| format!("{v:?}")));
    flag("train.seed", a.seed.map(|v| v.to_string()));
    flag(
        "train.precision",
        a.precision
            .map(|p| format!("\"{}\"", serde_json::to_string(&p).unwrap_or_default().trim_matches('"'))),
    );
    let device = a.device.resolve()?;

    let (cfg, dir, preset) = match &a.resume {
        Some(dir) => {
            if a.preset.is_some() || a.config.is_some() || a.out.is_some() {
                bail!("--resume takes the run's own config.toml; drop --preset/--config/--out");
            }
            let cfg = RunConfig::load(None, Some(&dir.join("config.toml")), &overrides)
                .with_context(|| format!("`{}` is not a run directory", dir.display()))?;
            let preset = std::fs::read_to_string(dir.join("preset")).ok().map(|s| s.trim().to_string());
            (cfg, dir.clone(), preset)
        }
        None => {
            let cfg = RunConfig::load(a.preset.as_deref(), a.config.as_deref(), &overrides)?;
            let stem = a
                .preset
                .clone()
                .or_else(|| {
                    a.config
                        .as_ref()
                        .and_then(|c| c.file_stem())
                        .map(|s| s.to_string_lossy().into_owned())
                })
                .unwrap_or_default();
            let dir = a
                .out
                .clone()
                .unwrap_or_else(|| unique_dir(PathBuf::from("runs").join(format!("{}-{stem}", today()))));
            (cfg, dir, a.preset.clone())
        }
    };
    if a.download {
        let (root, _) = data::source::root(a.data.as_deref())?;
        if data::source::find(&root, Some(cfg.task.name))?.is_none() {
            data::source::download(&root)?;
        }
    }
    let dataset = data::load(a.data.as_deref(), cfg.task.name)?.to_device(device);
    if a.resume.is_none() {
        std::fs::create_dir_all(&dir).with_context(|| format!("failed to create run directory `{}`", dir.display()))?;
        if let Some(p) = &preset {
            std::fs::write(dir.join("preset"), p)?;
        }
    }
    eprintln!("run directory: {}", dir.display());
    let opts = train::Options {
        device,
        dir: dir.clone(),
        resume: a.resume.is_some(),
        preset,
    };
    let record = train::run(&cfg, &dataset, &opts)?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(())
}

/// `base`, or `base-2`, `base-3`, … if it exists.
fn unique_dir(base: PathBuf) -> PathBuf {
    if !base.exists() {
        return base;
    }
    (2..)
        .map(|i| PathBuf::from(format!("{}-{i}", base.display())))
        .find(|p| !p.exists())
        .expect("a free name exists")
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    let device = a.device.resolve()?;
    let cfg = RunConfig::load(None, Some(&a.run.join("config.toml")), &[])
        .with_context(|| format!("`{}` is not a run directory", a.run.display()))?;
    let dataset = data::load(a.data.as_deref(), cfg.task.name)?;
    let split = match a.split.as_str() {
        "test" => &dataset.test,
        "val" => &dataset.val,
        "train" => &dataset.train,
        s => bail!("--split {s}: expected test, val or train"),
    }
    .to_device(device);
    let mut vs = nn::VarStore::new(device);
    let model = cfg.model.build(&vs.root(), &cfg.task.input_spec())?;
    let which = if a.last { "last" } else { "best" };
    let state = train::checkpoint::load(&a.run.join("checkpoints").join(which), &mut vs, None)?;
    let precision = crate::amp::resolve(cfg.train.precision, device);
    let (loss, acc) = train::evaluate(model.as_ref(), &split, &cfg.task, 256, None, precision);
    println!(
        "{}: {} checkpoint (step {}), {} split: accuracy {:.2}% ({} images), loss {:.4}",
        a.run.display(),
        which,
        state.step,
        a.split,
        100.0 * acc,
        split.len(),
        loss
    );
    Ok(())
}

fn presets_cmd() -> Result<()> {
    println!(
        "{:<20} {:<14} {:<10} {:>11} {:>7}  setting",
        "preset", "model", "task", "parameters", "paper"
    );
    for name in preset_names()? {
        let cfg = RunConfig::load(Some(&name), None, &[])?;
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = cfg.model.build(&vs.root(), &cfg.task.input_spec())?;
        let paper = cfg.paper.clone().unwrap_or_default();
        let task = serde_json::to_string(&cfg.task.name)?.trim_matches('"').to_string();
        let figure = paper.figure.map(|f| format!("{f:.2}%")).unwrap_or_else(|| "—".into());
        println!(
            "{:<20} {:<14} {:<10} {:>11} {:>7}  {} — {}",
            name,
            cfg.model.name(),
            task,
            param_count(&vs),
            figure,
            paper.model,
            paper.setting
        );
    }
    Ok(())
}
