//! `pixelseq train`: a new run from a preset or config file, or `--resume` of a run directory.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use tch::Device;

use super::DeviceArgs;
use crate::amp::{self, Precision};
use crate::bench::{self, Timing};
use crate::config::RunConfig;
use crate::data::{self, Dataset};
use crate::dist::{self, Dist, Store, World};
use crate::train::{self, checkpoint, records::today, RunDir, EVAL_BATCH};

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

/// What rank 0 tells the other ranks of a data-parallel run before it starts.
#[derive(Serialize, Deserialize)]
struct Start {
    /// The resolved config (preset, file, overrides, `--fit-minutes`), as TOML.
    config: String,
    dir: PathBuf,
    preset: Option<String>,
    resume: bool,
    /// A self-pretraining run (`pixelseq pretrain`).
    pretrain: bool,
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
    if let Some(n) = a.nproc.filter(|&n| n != 1) {
        return dist::launch::launch(n, &a.device.device);
    }
    let world = World::from_env()?;
    if let Some(w) = world.clone().filter(|w| !w.is_main()) {
        let (rank, size) = (w.rank, w.size);
        return follow(&a, w, pretrain).with_context(|| format!("rank {rank} of {size} stopped"));
    }
    let overrides = a.overrides();
    check_overrides_apply(&overrides, pretrain)?;
    let device = a.device.resolve_for(world.as_ref())?;
    let store = world.as_ref().map(|w| Store::connect(w, dist::rendezvous_timeout()?)).transpose()?;
    let (mut cfg, dir, preset) = match &a.resume {
        Some(dir) => {
            if a.preset.is_some() || a.config.is_some() || a.out.is_some() {
                bail!("--resume takes the run's own config.toml; drop --preset/--config/--out");
            }
            let run = RunDir::new(dir);
            let recorded = run.load_config()?;
            let cfg = RunConfig::load(None, Some(&run.config()), &overrides)
                .with_context(|| format!("`{}` is not a run directory", dir.display()))?;
            check_resume_changes(&recorded, &cfg, &run)?;
            check_resume_kind(&run, pretrain)?;
            let cfg = if pretrain {
                let stage = cfg.for_pretraining()?;
                stage.check_pretraining_stage()?;
                stage
            } else {
                cfg
            };
            // Refused before the data is loaded if another command writes the run;
            // `train::run` takes the lock for good.
            drop(run.lock()?);
            (cfg, dir.clone(), run.preset_name())
        }
        None => {
            let cfg = if pretrain {
                let stage = RunConfig::load(a.preset.as_deref(), a.config.as_deref(), &[])?.for_pretraining()?;
                let stage = stage.with_overrides(&overrides, "the pretraining stage")?;
                stage.check_pretraining_stage()?;
                stage
            } else {
                RunConfig::load(a.preset.as_deref(), a.config.as_deref(), &overrides)?
            };
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
            // Refused before the data is loaded; `train::run` checks again under the run's lock.
            RunDir::new(&dir).check_new_run()?;
            (cfg, dir, a.preset.clone())
        }
    };
    if a.download {
        let (root, _) = data::source::root(a.data.as_deref())?;
        if data::source::find(&root, Some(cfg.task.name))?.is_none() {
            data::source::download(&root)?;
        }
    }
    let dataset = data::load_task(a.data.as_deref(), &cfg.task)?.to_device(device);
    if let Some(minutes) = a.fit_minutes {
        fit(&mut cfg, &dataset, device, minutes, world.as_ref().map_or(1, |w| w.size))?;
    }
    let dist = match (world, store) {
        (Some(w), Some(store)) => {
            let start = Start {
                config: cfg.to_toml(),
                dir: dir.clone(),
                preset: preset.clone(),
                resume: a.resume.is_some(),
                pretrain,
            };
            store.set(START_KEY, &serde_json::to_vec(&start)?)?;
            Some(Dist::new(w, store, cfg.train.backend, device)?)
        }
        _ => None,
    };
    let opts = train::Options {
        pretrain,
        device,
        dir: dir.clone(),
        resume: a.resume.is_some(),
        preset,
    };
    let record = train::run_with(&cfg, &dataset, &opts, dist.as_ref())?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(())
}

/// Refuses a `--set` that the subcommand would not apply: under `pretrain` the stage's settings
/// are the top-level keys (the preset's `[pretrain.train]` etc. are already in them), and `train`
/// reads no `[pretrain]` key.
fn check_overrides_apply(overrides: &[String], pretrain: bool) -> Result<()> {
    for o in overrides {
        let (key, value) = o.split_once('=').unwrap_or((o, ""));
        let (key, value) = (key.trim(), value.trim());
        let under = |table: &str| key == table || key.starts_with(&format!("{table}."));
        if pretrain {
            if let Some(table) = ["pretrain.optim", "pretrain.schedule", "pretrain.train"]
                .into_iter()
                .find(|t| under(t))
            {
                let plain = &key["pretrain.".len()..];
                let section = &table["pretrain.".len()..];
                bail!("--set {key}: under `pixelseq pretrain` the preset's [{table}] already is the run's [{section}]; pass --set {plain}={value}");
            }
        } else if under("pretrain") {
            bail!("--set {key}: `pixelseq train` does not read [pretrain]; pass it to `pixelseq pretrain`");
        }
    }
    Ok(())
}

/// A run resumes with the command that started it: a pretraining run's checkpoints hold a
/// backbone and its reconstruction head, a training run's a classifier.
fn check_resume_kind(run: &RunDir, pretrain: bool) -> Result<()> {
    let Ok(state) = checkpoint::verify(&run.last()) else {
        return Ok(());
    };
    match (state.best_val_loss.is_some(), pretrain) {
        (true, false) => bail!(
            "`{}` is a self-pretraining run; continue it with `pixelseq pretrain --resume {}`",
            run.root.display(),
            run.root.display()
        ),
        (false, true) => bail!(
            "`{}` is a training run; continue it with `pixelseq train --resume {}`",
            run.root.display(),
            run.root.display()
        ),
        _ => Ok(()),
    }
}

/// `--set` (and budget flags) given with `--resume`: a change of the model or the task would not
/// fit the run's checkpoints and is refused, naming the keys; any other change (budget, optimizer,
/// schedule) is printed and recorded in the run's config.toml when the run starts.
fn check_resume_changes(recorded: &RunConfig, cfg: &RunConfig, run: &RunDir) -> Result<()> {
    let changes = recorded.differences(cfg);
    let describe = |c: &[&(String, String, String)]| {
        c.iter()
            .map(|(k, old, new)| format!("{k} {old} → {new}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fixed: Vec<_> = changes
        .iter()
        .filter(|(k, _, _)| k.starts_with("model.") || k.starts_with("task.") || k == "train.init")
        .collect();
    if !fixed.is_empty() {
        bail!(
            "--resume cannot change the model, the task or the start (train.init) of a run; these differ from `{}`: {}",
            run.config().display(),
            describe(&fixed)
        );
    }
    if !changes.is_empty() {
        eprintln!(
            "resuming with changes, recorded in {}: {}",
            run.config().display(),
            describe(&changes.iter().collect::<Vec<_>>())
        );
    }
    Ok(())
}

/// Where rank 0 publishes [`Start`].
const START_KEY: &str = "pixelseq/start";

/// A rank other than 0: takes the run rank 0 resolved (config, folder, resume) and trains its
/// share. It reads nothing of the run folder, so that need not be shared between machines.
fn follow(a: &TrainArgs, world: World, pretrain: bool) -> Result<()> {
    let device = a.device.resolve_for(Some(&world))?;
    let store = Store::connect(&world, dist::rendezvous_timeout()?)?;
    let start = store
        .get(START_KEY, dist::COLLECTIVE_TIMEOUT)
        .context("rank 0 stopped before the run began (its error is above)")?;
    let start: Start = serde_json::from_slice(&start).context("rank 0 sent an unreadable run description")?;
    let cfg = RunConfig::from_toml_str(&start.config, "rank 0's config")?;
    let dataset = data::load_task(a.data.as_deref(), &cfg.task)?.to_device(device);
    let dist = Dist::new(world, store, cfg.train.backend, device)?;
    if start.pretrain != pretrain {
        bail!(
            "rank 0 runs `pixelseq {}`; every rank must run the same subcommand",
            if start.pretrain { "pretrain" } else { "train" }
        );
    }
    let opts = train::Options {
        pretrain,
        device,
        dir: start.dir,
        resume: start.resume,
        preset: start.preset,
    };
    train::run_with(&cfg, &dataset, &opts, Some(&dist))?;
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

/// Seconds a run takes before its first step and after its last that a fit does not time: data
/// already loaded, the model built, the memory probe, checkpoints.
const START_UP_S: f64 = 15.0;

/// Sets `train.max_steps` (and the warm-up in proportion) so that the run of `cfg` on `data` fits
/// `minutes` on `device`, from the measured speed of its training step and evaluation pass, and
/// `train.max_minutes` to `minutes`. With `world` data-parallel processes the step is timed on one
/// process's share of the batch (the all-reduce is not timed) and evaluations are shared.
fn fit(cfg: &mut RunConfig, data: &Dataset, device: Device, minutes: f64, world: usize) -> Result<()> {
    if !(minutes.is_finite() && minutes > 0.0) {
        bail!("--fit-minutes {minutes}: must be a positive number of minutes");
    }
    let t = &cfg.train;
    let (n_train, n_val, n_test) = (data.train.len(), data.val.len(), data.test.len());
    let batch = t.batch_size.min(n_train);
    let steps_per_epoch = (n_train / batch) as u64;
    let planned = t.max_steps.unwrap_or(t.epochs * steps_per_epoch);
    let eval_every = if t.eval_every == 0 { steps_per_epoch } else { t.eval_every };
    let val = if t.eval_batches > 0 {
        n_val.min(t.eval_batches * batch.max(EVAL_BATCH))
    } else {
        n_val
    };
    eprintln!("timing the training step and an evaluation pass to fit {minutes} minutes…");
    let timing = Timing {
        steps: 3,
        warmup: 2,
        profile: None,
    };
    let precision = amp::resolve(t.precision, device);
    let share = (batch / world as i64).max(1);
    let m = bench::measure(cfg, cfg.task.input_spec(), share, &timing, device, precision)?;
    let infer = m.infer_img_per_s * world as f64;
    let per_step = share as f64 / m.train_img_per_s + val as f64 / (infer * eval_every as f64);
    let fixed = START_UP_S + (val + n_test) as f64 / infer;
    let steps = (((0.9 * minutes * 60.0 - fixed) / per_step).floor() as u64).clamp(1, planned.max(1));
    let warmup = cfg.schedule.warmup_steps;
    if warmup > 0 {
        cfg.schedule.warmup_steps = ((warmup as f64 * steps as f64 / planned as f64).round() as u64).max(1);
    }
    cfg.train.max_steps = Some(steps);
    cfg.train.max_minutes = Some(minutes);
    eprintln!(
        "fitted to {minutes} minutes: {steps} steps ({:.2} epochs, warm-up {} steps) at {:.0} img/s training and {:.0} img/s evaluation (measured)",
        steps as f64 / steps_per_epoch as f64,
        cfg.schedule.warmup_steps,
        m.train_img_per_s * world as f64,
        infer
    );
    Ok(())
}
