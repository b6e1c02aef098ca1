//! Run configuration: the TOML presets under `presets/`, `--config FILE` and `--set key=value`
//! overrides, resolved into one [`RunConfig`] that is validated before any tensor exists.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::amp::Precision;
use crate::data::TaskConfig;
use crate::dist::Backend;
use crate::models::pretrain;
use crate::models::ModelConfig;

/// The largest training or evaluation batch: far beyond any that fits in memory; it keeps
/// products of sizes well inside `i64`.
pub const MAX_BATCH: i64 = 1 << 20;
/// The largest step budget, warm-up or evaluation interval (about 10^12 steps).
pub const MAX_STEPS: u64 = 1 << 40;
/// The largest epoch budget or step-decay milestone.
pub const MAX_EPOCHS: u64 = 1 << 20;
/// The largest wall-clock budget, in minutes (about 19 years).
pub const MAX_MINUTES: f64 = 1e7;
/// The largest mixup or CutMix α: Beta(α, α) concentrates at 0.5 long before.
pub const MAX_MIX_ALPHA: f64 = 1000.0;

/// What a preset reproduces, shown by `pixelseq presets` and copied into reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Paper {
    /// Model and paper, e.g. "S4D (Gu et al. 2022)".
    pub model: String,
    /// The paper's accuracy in percent, if it reports one for this setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figure: Option<f64>,
    /// The data set the figure was measured on, where it is not this preset's own (PiT's paper
    /// reports CIFAR-100 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figure_on: Option<String>,
    /// The setting the figure is for.
    pub setting: String,
    /// The founding Python project's figure for this model (the project pixelseq replaces), in
    /// percent, shown beside the paper's in the report's first table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub founding: Option<f64>,
    /// Where each number comes from.
    #[serde(default)]
    pub source: String,
}

/// AdamW with parameter groups (see [`crate::models`] for the groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Optim {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Weight decay of the DECAY group's matrices.
    pub weight_decay: f64,
    /// Learning rate of the SSM group; `None` means `lr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm_lr: Option<f64>,
    /// Gradient clipping by global norm; 0 turns it off.
    pub clip_norm: f64,
    pub label_smoothing: f64,
}

impl Default for Optim {
    fn default() -> Self {
        Optim {
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            ssm_lr: None,
            clip_norm: 0.0,
            label_smoothing: 0.0,
        }
    }
}

/// Learning-rate schedule kinds; every one starts with `warmup_steps` of linear warm-up from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Flat after warm-up.
    Constant,
    /// Cosine from 1 to `final_factor` over the remaining steps.
    Cosine,
    /// Linear from 1 to `final_factor` over the remaining steps (OneCycle-style).
    Linear,
    /// Multiply by `gamma` at each epoch in `milestones`.
    Step,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    pub final_factor: f64,
    pub milestones: Vec<u64>,
    pub gamma: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
            final_factor: 0.0,
            milestones: vec![],
            gamma: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Train {
    pub batch_size: i64,
    /// A pretraining run directory (`pixelseq pretrain`) whose best checkpoint (or last, with
    /// `init_checkpoint`) initialises the model's backbone (`train --init`); `None`: from scratch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Which checkpoint of the `init` run: `"best"` (lowest validation loss) or `"last"`
    /// (`train --init RUN --last`).
    #[serde(skip_serializing_if = "InitCheckpoint::is_best")]
    pub init_checkpoint: InitCheckpoint,
    /// Budget in epochs (ignored when `max_steps` is set).
    pub epochs: u64,
    /// Budget in optimizer steps; overrides `epochs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Wall-clock budget; the run stops (and is scored) when it is spent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<f64>,
    /// Set by `--fit-minutes`: the budget `max_steps` was sized to, which the trainer re-plans
    /// `max_steps` against when the machine's speed changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit: Option<Fit>,
    /// Steps between validation passes; 0 = once per epoch.
    pub eval_every: u64,
    /// Batch size for evaluation (0 = the training batch size, at least 256).
    pub eval_batch_size: i64,
    /// Validation batches per evaluation during training (0 = the whole split), as the
    /// Nyströmformer code scores 20 dev batches; the final test always scores every image.
    pub eval_batches: i64,
    pub seed: u64,
    /// Mixup alpha; 0 = off.
    pub mixup: f64,
    /// CutMix alpha; 0 = off.
    pub cutmix: f64,
    pub precision: Precision,
    /// Images per forward/backward pass within one optimizer step (gradient accumulation):
    /// `"auto"` picks the largest that fits the device (see `train::memory`), a number fixes it.
    /// The optimizer's batch stays `batch_size`.
    pub micro_batch: MicroBatch,
    /// Write TensorBoard curves into the run folder (`train::board`).
    pub tensorboard: bool,
    /// Data-parallel runs (`--nproc`, torchrun, srun): the c10d backend of the gradient
    /// all-reduce, `"auto"` (NCCL on CUDA, Gloo on the CPU), `"nccl"` or `"gloo"`.
    pub backend: Backend,
    /// Capture the training step as one CUDA graph and replay it (`train::graph`): `"auto"` (on
    /// where it is known to work, off elsewhere with the reason in the log), `true` (refused
    /// where it cannot work) or `false`.
    #[serde(skip_serializing_if = "CudaGraphs::is_auto")]
    pub cuda_graphs: CudaGraphs,
}

/// `train.cuda_graphs`: `"auto"`, `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaGraphs {
    Auto,
    On,
    Off,
}

impl CudaGraphs {
    fn is_auto(&self) -> bool {
        *self == CudaGraphs::Auto
    }
}

impl Serialize for CudaGraphs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CudaGraphs::Auto => s.serialize_str("auto"),
            CudaGraphs::On => s.serialize_bool(true),
            CudaGraphs::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for CudaGraphs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = CudaGraphs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\", true or false")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CudaGraphs, E> {
                match v {
                    "auto" => Ok(CudaGraphs::Auto),
                    _ => Err(E::custom(format!("`{v}`: expected \"auto\", true or false"))),
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<CudaGraphs, E> {
                Ok(if v { CudaGraphs::On } else { CudaGraphs::Off })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `train.init_checkpoint`: which checkpoint of the pretraining run fine-tuning starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitCheckpoint {
    /// The checkpoint of the lowest validation reconstruction loss.
    #[default]
    Best,
    /// The checkpoint written at the end of the run (the SPT code's `last.ckpt` is as easy to
    /// pass as its best one: `train.pretrained_model_path` takes either).
    Last,
}

impl InitCheckpoint {
    fn is_best(&self) -> bool {
        *self == InitCheckpoint::Best
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InitCheckpoint::Best => "best",
            InitCheckpoint::Last => "last",
        }
    }
}

/// `train.micro_batch`: `"auto"` or a number of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicroBatch {
    Auto,
    Size(i64),
}

impl Serialize for MicroBatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MicroBatch::Auto => s.serialize_str("auto"),
            MicroBatch::Size(n) => s.serialize_i64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for MicroBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MicroBatch;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\" or a number of images")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MicroBatch, E> {
                match v {
                    "auto" => Ok(MicroBatch::Auto),
                    _ => Err(E::custom(format!("`{v}`: expected \"auto\" or a number of images"))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MicroBatch, E> {
                Ok(MicroBatch::Size(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MicroBatch, E> {
                i64::try_from(v)
                    .map(MicroBatch::Size)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// What `--fit-minutes` sized a run to (`[train.fit]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fit {
    /// The wall-clock budget, minutes (also `train.max_minutes`, the hard stop).
    pub minutes: f64,
    /// The recipe's steps before the fit: a re-plan never goes beyond them.
    pub recipe_steps: u64,
}

impl Default for Train {
    fn default() -> Self {
        Train {
            batch_size: 64,
            init: None,
            init_checkpoint: InitCheckpoint::Best,
            epochs: 10,
            max_steps: None,
            max_minutes: None,
            fit: None,
            eval_every: 0,
            eval_batch_size: 0,
            eval_batches: 0,
            seed: 0,
            mixup: 0.0,
            cutmix: 0.0,
            precision: Precision::Auto,
            micro_batch: MicroBatch::Auto,
            tensorboard: true,
            backend: Backend::Auto,
            cuda_graphs: CudaGraphs::Auto,
        }
    }
}

/// Everything a run needs, as written to `config.toml` in the run directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper: Option<Paper>,
    pub task: TaskConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub optim: Optim,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub train: Train,
    /// Self-pretraining (`pixelseq pretrain`); `train` ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<Pretrain>,
}

/// The `[pretrain]` table: what `pixelseq pretrain` reconstructs ([`pretrain::Config`], declared
/// once there and recorded as it is in `result.json`), and the stage's own optimizer, schedule
/// and budget where they differ from the top-level ones (which then stay the recipe of fine-tuning
/// with `train --init`). serde cannot refuse unknown keys through a flattened table, so
/// [`RunConfig::from_table`] does ([`Pretrain::check_table`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pretrain {
    #[serde(flatten)]
    pub method: pretrain::Config,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optim: Option<Optim>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train: Option<Train>,
}

impl Pretrain {
    /// Checks the `[pretrain]` table `table` before it is read through the flattened settings,
    /// which would lose the key at fault: a key that is neither a setting of the method nor one
    /// of the stage's sections, and a setting of the wrong type or value, are named
    /// (`pretrain.KEY`).
    fn check_table(table: &toml::Table) -> Result<()> {
        let method = toml::Table::try_from(pretrain::Config::default()).expect("the pretraining settings serialise");
        let known: Vec<&str> = method.keys().map(String::as_str).chain(STAGE_SECTIONS).collect();
        if let Some(key) = table.keys().find(|k| !known.contains(&k.as_str())) {
            bail!(
                "key `pretrain.{key}`: unknown field `{key}`, expected one of {}",
                known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            );
        }
        let settings: toml::Table = table
            .iter()
            .filter(|(k, _)| !STAGE_SECTIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_path_to_error::deserialize::<_, pretrain::Config>(toml::Value::Table(settings)).map_err(|e| {
            let path = e.path().to_string();
            anyhow!("key `pretrain.{path}`: {}", e.into_inner().message().trim())
        })?;
        Ok(())
    }
}

/// The `[pretrain]` sections that hold the stage's own settings.
const STAGE_SECTIONS: [&str; 3] = ["optim", "schedule", "train"];

/// The folder of shipped presets: `$PIXELSEQ_PRESETS`, else `presets/` beside the executable's
/// repository (found from the build), else `./presets`.
pub fn presets_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PIXELSEQ_PRESETS") {
        return d.into();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets");
    if built.is_dir() {
        return built;
    }
    if let Some(beside) = std::env::current_exe().ok().and_then(|e| e.parent().map(|p| p.join("presets"))) {
        if beside.is_dir() {
            return beside;
        }
    }
    PathBuf::from("presets")
}

/// Names of the shipped presets, sorted.
pub fn preset_names() -> Result<Vec<String>> {
    let dir = presets_dir();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("failed to read presets folder `{}`", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            names.push(path.file_stem().unwrap_or_default().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The TOML file of a preset name. Names are names, never paths.
pub fn preset_path(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        bail!("--preset `{name}`: a preset is a name listed by `pixelseq presets`, not a path; pass a file with --config FILE");
    }
    let path = presets_dir().join(format!("{name}.toml"));
    if !path.is_file() {
        let known = preset_names().unwrap_or_default().join(", ");
        bail!("unknown preset `{name}`; expected one of: {known}");
    }
    Ok(path)
}

/// Applies `--set` overrides in order. The paper's figure is for the config's own task: a run
/// moved to another task (`task.name`) no longer claims it, so its `[paper]` table goes.
fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<()> {
    let task = |t: &toml::Table| t.get("task").and_then(|v| v.get("name")).cloned();
    let own_task = task(table);
    for o in overrides {
        apply_override(table, o)?;
    }
    if task(table) != own_task {
        table.remove("paper");
    }
    Ok(())
}

/// Applies one `key.path=value` override to a TOML tree. The value is parsed as a TOML value
/// (`3`, `1e-3`, `true`, `[1, 2]`, `"text"`); anything that does not parse is taken as a string.
pub fn apply_override(root: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| anyhow!("--set `{assignment}`: expected key=value"))?;
    let key = key.trim();
    let raw = raw.trim();
    let value: toml::Value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed table has v"),
        Err(_) if looks_like_integer(raw) => {
            bail!("--set `{assignment}`: {raw} is out of range for key `{key}` (integers must fit in 64 bits)")
        }
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set `{assignment}`: bad key `{key}`");
    }
    let mut table = root;
    for part in &parts[..parts.len() - 1] {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| anyhow!("--set `{assignment}`: `{part}` is not a table"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// An optionally signed run of digits (underscores allowed, as TOML writes them).
fn looks_like_integer(raw: &str) -> bool {
    let digits = raw.strip_prefix(['+', '-']).unwrap_or(raw);
    digits.starts_with(|c: char| c.is_ascii_digit()) && digits.chars().all(|c| c.is_ascii_digit() || c == '_')
}

impl RunConfig {
    /// Parses TOML text; errors name the offending key path.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<RunConfig> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| anyhow!("{origin}: {}", e.message().trim()))?;
        Self::from_table(table, origin)
    }

    /// Deserialises a TOML tree, naming the key at fault, then validates.
    pub fn from_table(table: toml::Table, origin: &str) -> Result<RunConfig> {
        if let Some(toml::Value::Table(p)) = table.get("pretrain") {
            Pretrain::check_table(p).map_err(|e| anyhow!("{origin}: {e}"))?;
        }
        let cfg: RunConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().trim().to_string();
            if path == "." {
                anyhow!("{origin}: {msg}")
            } else {
                anyhow!("{origin}: key `{path}`: {msg}")
            }
        })?;
        cfg.validate().map_err(|e| anyhow!("{origin}: {e:#}"))?;
        Ok(cfg)
    }

    /// Loads a preset or a config file, then applies `--set` overrides.
    pub fn load(preset: Option<&str>, file: Option<&Path>, overrides: &[String]) -> Result<RunConfig> {
        let (path, origin) = match (preset, file) {
            (Some(_), Some(_)) => bail!("give either --preset or --config, not both"),
            (Some(name), None) => (preset_path(name)?, format!("preset `{name}`")),
            (None, Some(f)) => (f.to_path_buf(), format!("config `{}`", f.display())),
            (None, None) => bail!("no configuration: pass --preset NAME (see `pixelseq presets`) or --config FILE"),
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read configuration file `{}`", path.display()))?;
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| anyhow!("{origin}: {}", e.to_string().replace('\n', " ")))?;
        apply_overrides(&mut table, overrides)?;
        Self::from_table(table, &origin)
    }

    /// Range checks of every field, each error naming its key: every number finite, every size
    /// and budget bounded (see the `MAX_*` constants), before any tensor exists.
    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        self.task.validate()?;
        let t = &self.train;
        let s = &self.schedule;
        let positive = |v: f64, key: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(anyhow!("key `{key}` = {v}: must be finite and > 0"))
            }
        };
        let non_negative = |v: f64, key: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(anyhow!("key `{key}` = {v}: must be finite and >= 0 (0 = off)"))
            }
        };
        let unit = |v: f64, key: &str| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(anyhow!("key `{key}` = {v}: must be in [0, 1)"))
            }
        };
        let at_most = |v: u64, max: u64, key: &str| {
            if v <= max {
                Ok(())
            } else {
                Err(anyhow!("key `{key}` = {v}: must be at most {max}"))
            }
        };
        positive(o.lr, "optim.lr")?;
        if let Some(l) = o.ssm_lr {
            positive(l, "optim.ssm_lr")?;
        }
        unit(o.betas[0], "optim.betas[0]")?;
        unit(o.betas[1], "optim.betas[1]")?;
        positive(o.eps, "optim.eps")?;
        non_negative(o.weight_decay, "optim.weight_decay")?;
        non_negative(o.clip_norm, "optim.clip_norm")?;
        unit(o.label_smoothing, "optim.label_smoothing")?;
        if !(0.0..=1.0).contains(&s.final_factor) {
            bail!("key `schedule.final_factor` = {}: must be in [0, 1]", s.final_factor);
        }
        positive(s.gamma, "schedule.gamma")?;
        at_most(s.warmup_steps, MAX_STEPS, "schedule.warmup_steps")?;
        for &m in &s.milestones {
            at_most(m, MAX_EPOCHS, "schedule.milestones")?;
        }
        if !(1..=MAX_BATCH).contains(&t.batch_size) {
            bail!(
                "key `train.batch_size` = {}: must be at least 1 and at most {MAX_BATCH}",
                t.batch_size
            );
        }
        if !(0..=MAX_BATCH).contains(&t.eval_batch_size) {
            bail!(
                "key `train.eval_batch_size` = {}: must be at least 0 and at most {MAX_BATCH} (0 = the training batch size)",
                t.eval_batch_size
            );
        }
        if !(0..=MAX_BATCH).contains(&t.eval_batches) {
            bail!(
                "key `train.eval_batches` = {}: must be at least 0 and at most {MAX_BATCH} (0 = whole split)",
                t.eval_batches
            );
        }
        if t.max_steps.is_none() && t.epochs == 0 {
            bail!("key `train.epochs` = 0: give a budget (epochs >= 1 or max_steps)");
        }
        at_most(t.epochs, MAX_EPOCHS, "train.epochs")?;
        if let Some(m) = t.max_steps {
            if m == 0 {
                bail!("key `train.max_steps` = 0: must be >= 1");
            }
            at_most(m, MAX_STEPS, "train.max_steps")?;
        }
        at_most(t.eval_every, MAX_STEPS, "train.eval_every")?;
        if let Some(m) = t.max_minutes {
            positive(m, "train.max_minutes")?;
            if m > MAX_MINUTES {
                bail!("key `train.max_minutes` = {m}: must be at most {MAX_MINUTES}");
            }
        }
        if let Some(f) = &t.fit {
            positive(f.minutes, "train.fit.minutes")?;
            if f.minutes > MAX_MINUTES {
                bail!("key `train.fit.minutes` = {}: must be at most {MAX_MINUTES}", f.minutes);
            }
            if f.recipe_steps == 0 {
                bail!("key `train.fit.recipe_steps` = 0: must be >= 1");
            }
            at_most(f.recipe_steps, MAX_STEPS, "train.fit.recipe_steps")?;
        }
        for (v, key) in [(t.mixup, "train.mixup"), (t.cutmix, "train.cutmix")] {
            non_negative(v, key)?;
            if v > MAX_MIX_ALPHA {
                bail!("key `{key}` = {v}: must be at most {MAX_MIX_ALPHA} (Beta(α, α) is a spike at 0.5 long before)");
            }
        }
        if let MicroBatch::Size(n) = t.micro_batch {
            if !(1..=MAX_BATCH).contains(&n) {
                bail!("key `train.micro_batch` = {n}: must be \"auto\" or a number from 1 to {MAX_BATCH}");
            }
        }
        if t.init.is_none() && t.init_checkpoint != InitCheckpoint::Best {
            bail!(
                "key `train.init_checkpoint` = \"{}\" needs `train.init` (the pretraining run to fine-tune from)",
                t.init_checkpoint.as_str()
            );
        }
        self.model.validate(&self.task.input_spec())?;
        if let Some(p) = &self.pretrain {
            p.method.validate(&self.model, &self.task.input_spec())?;
        }
        Ok(())
    }

    /// The keys whose values differ between `self` and `other`, as (key, value here, value
    /// there), values in TOML syntax ("—" for a key one side lacks), sorted by key.
    pub fn differences(&self, other: &RunConfig) -> Vec<(String, String, String)> {
        fn flatten(prefix: &str, value: toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
            match value {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                        flatten(&key, v, out);
                    }
                }
                v => {
                    out.insert(prefix.to_string(), v.to_string());
                }
            }
        }
        let leaves = |cfg: &RunConfig| {
            let mut out = std::collections::BTreeMap::new();
            flatten("", toml::Value::try_from(cfg).expect("RunConfig serialises to TOML"), &mut out);
            out
        };
        let (a, b) = (leaves(self), leaves(other));
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let shown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "—".into());
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| (k.clone(), shown(a.get(k)), shown(b.get(k))))
            .collect()
    }

    /// The config of the pretraining stage: `[pretrain]`'s optimizer, schedule and budget in place
    /// of the top-level ones where it gives them (its own table kept, so a resumed run derives the
    /// same stage). Refuses what self-pretraining cannot do: mixup and CutMix mix labels that a
    /// reconstruction has not, and a model or objective without a pretraining form.
    pub fn for_pretraining(&self) -> Result<RunConfig> {
        let p = self.pretrain.clone().unwrap_or_default();
        let mut cfg = self.clone();
        if let Some(o) = &p.optim {
            cfg.optim = o.clone();
        }
        if let Some(s) = &p.schedule {
            cfg.schedule = s.clone();
        }
        if let Some(t) = &p.train {
            cfg.train = t.clone();
        }
        // The stage's sections are now the top-level ones: deriving the stage again is the identity.
        cfg.pretrain = Some(Pretrain {
            optim: None,
            schedule: None,
            train: None,
            ..p
        });
        cfg.check_pretraining_stage()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses what a pretraining stage (the config of `pixelseq pretrain`, overrides applied)
    /// cannot do: mix labels it has not, or start from another pretraining run.
    pub fn check_pretraining_stage(&self) -> Result<()> {
        for (key, alpha) in [("train.mixup", self.train.mixup), ("train.cutmix", self.train.cutmix)] {
            if alpha > 0.0 {
                bail!("key `{key}` = {alpha}: self-pretraining reconstructs pixels and has no labels to mix; set it to 0 (in [pretrain.train], or --set {key}=0)");
            }
        }
        if let Some(init) = &self.train.init {
            bail!("key `train.init` = {init:?}: a self-pretraining run starts from scratch; --init belongs to `pixelseq train`");
        }
        Ok(())
    }

    /// The config of a new run of `pixelseq train` (`pretrain` false) or `pixelseq pretrain`
    /// (true: the preset's pretraining stage, [`RunConfig::for_pretraining`], with the overrides
    /// applied to the stage).
    pub fn for_command(preset: Option<&str>, file: Option<&Path>, overrides: &[String], pretrain: bool) -> Result<RunConfig> {
        if !pretrain {
            return RunConfig::load(preset, file, overrides);
        }
        let stage = RunConfig::load(preset, file, &[])?.for_pretraining()?;
        let stage = stage.with_overrides(overrides, "the pretraining stage")?;
        stage.check_pretraining_stage()?;
        Ok(stage)
    }

    /// Refuses a `--set` that the subcommand would not apply: under `pretrain` the stage's settings
    /// are the top-level keys (the preset's `[pretrain.train]` etc. are already in them), and `train`
    /// reads no `[pretrain]` key.
    pub fn check_overrides_apply(overrides: &[String], pretrain: bool) -> Result<()> {
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

    /// This config with `--set` overrides applied (as [`RunConfig::load`] applies them to a file).
    pub fn with_overrides(&self, overrides: &[String], origin: &str) -> Result<RunConfig> {
        let mut table: toml::Table = self.to_toml().parse().expect("a serialised config parses");
        apply_overrides(&mut table, overrides)?;
        Self::from_table(table, origin)
    }

    /// The resolved config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("RunConfig serialises to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(preset: &str, set: &str) -> String {
        format!("{:#}", RunConfig::load(Some(preset), None, &[set.to_string()]).unwrap_err())
    }

    /// `[pretrain]` reads the method's settings from their one declaration (`pretrain::Config`,
    /// flattened): an unknown key is still refused naming it, a wrong type names its key, and a
    /// resolved config reads back as itself.
    #[test]
    fn pretrain_keys_are_checked_through_the_flattened_settings() {
        let err = error("transformer-spt", "pretrain.mask_rate=0.3");
        assert!(
            err.contains("key `pretrain.mask_rate`: unknown field") && err.contains("`mask_ratio`") && err.contains("`optim`"),
            "{err}"
        );
        let err = error("transformer-spt", "pretrain.mask_ratio=\"half\"");
        assert!(err.contains("key `pretrain.mask_ratio`") && err.contains("invalid type"), "{err}");
        let cfg = RunConfig::load(Some("transformer-spt"), None, &[]).unwrap();
        assert_eq!(cfg.pretrain.as_ref().unwrap().method.mask, pretrain::MaskDraw::Bernoulli);
        assert_eq!(RunConfig::from_toml_str(&cfg.to_toml(), "again").unwrap().pretrain, cfg.pretrain);
    }

    /// A preset run on another task keeps the preset's model but no longer claims its paper's
    /// figure; other overrides keep the claim.
    #[test]
    fn another_task_drops_the_paper_figure() {
        let load = |set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            RunConfig::load(Some("trellisnet-scifar"), None, &set).unwrap()
        };
        assert!(load(&[]).paper.and_then(|p| p.figure).is_some());
        assert!(load(&["model.nhid=16"]).paper.and_then(|p| p.figure).is_some());
        assert!(load(&["task.name=\"scifar\""]).paper.is_some());
        let gray = load(&["task.name=\"lra-image\""]);
        assert_eq!(gray.task.name.to_string(), "lra-image");
        assert!(gray.paper.is_none());
        // The same on a resolved config (the pretraining stage's overrides).
        let moved = load(&[])
            .with_overrides(&["task.name=\"lra-image\"".to_string()], "a stage")
            .unwrap();
        assert!(moved.paper.is_none());
    }

    /// Every number is checked for finiteness and range: an infinite mixup α used to spin forever
    /// in the Beta sampler, absurd sizes reached libtorch.
    #[test]
    fn unbounded_values_are_refused_with_their_key() {
        for (preset, set, key) in [
            ("transformer-small", "train.mixup=inf", "train.mixup"),
            ("transformer-small", "train.cutmix=inf", "train.cutmix"),
            ("transformer-small", "train.mixup=1e9", "train.mixup"),
            ("transformer-small", "optim.weight_decay=inf", "optim.weight_decay"),
            ("transformer-small", "optim.clip_norm=inf", "optim.clip_norm"),
            ("transformer-small", "optim.clip_norm=nan", "optim.clip_norm"),
            ("transformer-small", "optim.label_smoothing=nan", "optim.label_smoothing"),
            ("transformer-small", "schedule.gamma=inf", "schedule.gamma"),
            (
                "transformer-small",
                "schedule.warmup_steps=9223372036854775807",
                "schedule.warmup_steps",
            ),
            ("transformer-small", "train.batch_size=2097152", "train.batch_size"),
            ("transformer-small", "train.eval_batch_size=2097152", "train.eval_batch_size"),
            ("transformer-small", "train.eval_batches=9223372036854775807", "train.eval_batches"),
            ("transformer-small", "train.epochs=9223372036854775807", "train.epochs"),
            ("transformer-small", "train.max_minutes=1e300", "train.max_minutes"),
            ("transformer-small", "model.vocab=2097152", "model.vocab"),
            ("s4d-small", "model.dt_max=inf", "model.dt_max"),
            ("s4d-small", "model.dt_min=nan", "model.dt_min"),
            ("s4d-small", "model.d_model=2097152", "model.d_model"),
            ("lipschitz-scifar", "model.gamma=inf", "model.gamma"),
            ("lipschitz-scifar", "model.eps=inf", "model.eps"),
            ("lipschitz-scifar", "model.init_std=nan", "model.init_std"),
            ("trellisnet-scifar", "model.init_std=nan", "model.init_std"),
            ("trellisnet-scifar", "model.nhid=2097152", "model.nhid"),
            ("trellisnet-scifar", "model.kernel_size=9223372036854775807", "model.kernel_size"),
            ("nystromformer-lra", "model.pinv_iters=1000000", "model.pinv_iters"),
            ("nystromformer-lra", "model.conv_kernel=2097153", "model.conv_kernel"),
        ] {
            let err = error(preset, set);
            assert!(err.contains(key), "{preset} --set {set}: {err}");
        }
    }

    #[test]
    fn a_too_large_integer_is_out_of_range_for_its_key() {
        let err = error("transformer-small", "train.batch_size=99999999999999999999");
        assert!(
            err.contains("out of range for key `train.batch_size`") && !err.contains("invalid type"),
            "{err}"
        );
    }

    #[test]
    fn differences_name_every_changed_key() {
        let a = RunConfig::load(Some("s4d-small"), None, &[]).unwrap();
        let b = RunConfig::load(Some("s4d-small"), None, &["model.d_model=96".into(), "optim.lr=0.5".into()]).unwrap();
        let keys: Vec<String> = a.differences(&b).into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(keys, ["model.d_model", "optim.lr"]);
        assert!(a.differences(&a).is_empty());
    }

    #[test]
    fn preset_names_are_not_paths() {
        for name in ["../Cargo", "/etc/passwd", ".hidden", "sub/x"] {
            let err = format!("{:#}", preset_path(name).unwrap_err());
            assert!(err.contains("not a path") && err.contains("--config"), "{name}: {err}");
        }
        assert!(preset_path("s4d-small").is_ok());
    }
}
