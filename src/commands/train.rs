//! `pixelseq train`: a new run from a preset or config file, or `--resume` of a run directory.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::DeviceArgs;
use crate::amp::Precision;
use crate::bench;
use crate::config::RunConfig;
use crate::data;
use crate::dist::{self, Part};
use crate::run::{records::today, RunDir};
use crate::train;

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
    /// Wall-clock budget in minutes for the whole run, evaluations and the final test included
    /// (train.max_minutes).
    #[arg(long, value_parser = super::minutes, allow_negative_numbers = true)]
    pub max_minutes: Option<f64>,
    /// Size the run to this many minutes of this machine: time the training step and an
    /// evaluation pass first (as `bench` does), then set train.max_steps so that training, its
    /// evaluations and the final test fit (the warm-up scaled with it), with train.max_minutes as
    /// the hard stop.
    #[arg(long, value_name = "MINUTES", value_parser = super::minutes, allow_negative_numbers = true, conflicts_with_all = ["epochs", "max_steps", "max_minutes", "resume"])]
    pub fit_minutes: Option<f64>,
    /// Random seed (train.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// fp32, bf16, fp16 or auto (bf16 on CUDA) (train.precision).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Start the model's backbone from the best checkpoint of this self-pretraining run
    /// (`pixelseq pretrain`); the classifier starts fresh (train.init).
    #[arg(long, value_name = "PRETRAIN_RUN_DIR", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// With --init: start from the pretraining run's last checkpoint instead of its best
    /// (train.init_checkpoint = "last").
    #[arg(long)]
    pub last: bool,
    /// Data-parallel training in N worker processes on this machine, one per GPU (cuda:0 …
    /// cuda:N-1) or N CPU workers sharing the cores; train.batch_size stays the global batch.
    /// Under torchrun or srun leave it out: the workers are already there.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
}

impl TrainArgs {
    /// `--set` overrides, then the budget, seed and precision flags as overrides of their keys.
    fn overrides(&self) -> Vec<String> {
        let mut overrides = self.overrides.clone();
        let flags = [
            ("train.epochs", self.epochs.map(|v| v.to_string())),
            ("train.max_steps", self.max_steps.map(|v| v.to_string())),
            ("train.max_minutes", self.max_minutes.map(|v| format!("{v:?}"))),
            ("train.seed", self.seed.map(|v| v.to_string())),
            ("train.precision", self.precision.map(|p| format!("\"{p}\""))),
            ("train.init", self.init.as_ref().map(|p| format!("{:?}", p.display().to_string()))),
            ("train.init_checkpoint", self.last.then(|| "\"last\"".to_string())),
        ];
        for (key, value) in flags {
            if let Some(v) = value {
                overrides.push(format!("{key}={v}"));
            }
        }
        overrides
    }
}

/// `pixelseq train` (`pretrain` false) or `pixelseq pretrain` (true; the same arguments: the
/// run's config is the pretraining stage of the preset, see [`RunConfig::for_pretraining`]).
pub fn exec(a: TrainArgs, pretrain: bool) -> Result<()> {
    if pretrain && (a.init.is_some() || a.last) {
        bail!("--init and --last fine-tune from a pretraining run (`pixelseq train --init`); `pixelseq pretrain` starts from scratch");
    }
    if a.last && a.init.is_none() {
        bail!("--last picks the last checkpoint of the pretraining run given by --init; pass --init PRETRAIN_RUN_DIR too");
    }
    let Part::Worker { device, member } = dist::join(a.nproc, &a.device.device, a.device.threads)? else {
        return Ok(());
    };
    let member = match member {
        Some(m) if !m.world.is_main() => {
            let (rank, size) = (m.world.rank, m.world.size);
            return train::follow(m, device, a.data.as_deref(), pretrain).with_context(|| format!("rank {rank} of {size} stopped"));
        }
        member => member,
    };
    let overrides = a.overrides();
    RunConfig::check_overrides_apply(&overrides, pretrain)?;
    let (mut cfg, dir, preset) = match &a.resume {
        Some(dir) => {
            if a.preset.is_some() || a.config.is_some() || a.out.is_some() {
                bail!("--resume takes the run's own config.toml; drop --preset/--config/--out");
            }
            let run = RunDir::new(dir);
            let cfg = run.resume_config(&overrides, pretrain)?;
            // Refused before the data is loaded if another command writes the run;
            // `train::run` takes the lock for good.
            drop(run.lock()?);
            (cfg, dir.clone(), run.preset_name())
        }
        None => {
            let cfg = RunConfig::for_command(a.preset.as_deref(), a.config.as_deref(), &overrides, pretrain)?;
            let stem = a.preset.clone().or_else(|| {
                a.config
                    .as_ref()
                    .and_then(|c| c.file_stem())
                    .map(|s| s.to_string_lossy().into_owned())
            });
            let dir = a
                .out
                .clone()
                .unwrap_or_else(|| RunDir::unique(PathBuf::from("runs").join(format!("{}-{}", today(), stem.unwrap_or_default()))));
            // Refused before the data is loaded; `train::run` checks again under the run's lock.
            RunDir::new(&dir).check_new_run()?;
            (cfg, dir, a.preset.clone())
        }
    };
    if a.download {
        data::source::download_if_missing(a.data.as_deref(), cfg.task.name)?;
    }
    let dataset = data::load_task(a.data.as_deref(), &cfg.task)?.to_device(device);
    let opts = train::Options {
        pretrain,
        device,
        dir,
        resume: a.resume.is_some(),
        preset,
    };
    if let Some(minutes) = a.fit_minutes {
        bench::fit::fit(&mut cfg, &dataset, &opts, minutes, member.as_ref().map_or(1, |m| m.world.size))?;
    }
    let dist = member.map(|m| train::lead(m, &cfg, &opts)).transpose()?;
    let record = train::run_with(&cfg, &dataset, &opts, dist.as_ref())?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(())
}
