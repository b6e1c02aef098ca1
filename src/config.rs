//! Run configuration: the TOML presets under `presets/`, `--config FILE` and `--set key=value`
//! overrides, resolved into one [`RunConfig`] that is validated before any tensor exists.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::amp::Precision;
use crate::data::TaskConfig;
use crate::dist::Backend;
use crate::models::ModelConfig;

/// What a preset reproduces, shown by `pixelseq presets` and copied into reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Paper {
    /// Model and paper, e.g. "S4D (Gu et al. 2022)".
    pub model: String,
    /// The paper's accuracy in percent, if it reports one for this setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figure: Option<f64>,
    /// The setting the figure is for.
    pub setting: String,
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
    /// Budget in epochs (ignored when `max_steps` is set).
    pub epochs: u64,
    /// Budget in optimizer steps; overrides `epochs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Wall-clock budget; the run stops (and is scored) when it is spent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<f64>,
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
    /// Data-parallel runs (`--nproc`, torchrun, srun): the c10d backend of the gradient
    /// all-reduce, `"auto"` (NCCL on CUDA, Gloo on the CPU), `"nccl"` or `"gloo"`.
    pub backend: Backend,
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

impl Default for Train {
    fn default() -> Self {
        Train {
            batch_size: 64,
            epochs: 10,
            max_steps: None,
            max_minutes: None,
            eval_every: 0,
            eval_batch_size: 0,
            eval_batches: 0,
            seed: 0,
            mixup: 0.0,
            cutmix: 0.0,
            precision: Precision::Auto,
            micro_batch: MicroBatch::Auto,
            backend: Backend::Auto,
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
}

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

/// The TOML file of a preset name.
pub fn preset_path(name: &str) -> Result<PathBuf> {
    let path = presets_dir().join(format!("{name}.toml"));
    if !path.is_file() {
        let known = preset_names().unwrap_or_default().join(", ");
        bail!("unknown preset `{name}`; expected one of: {known}");
    }
    Ok(path)
}

/// Applies one `key.path=value` override to a TOML tree. The value is parsed as a TOML value
/// (`3`, `1e-3`, `true`, `[1, 2]`, `"text"`); anything that does not parse is taken as a string.
pub fn apply_override(root: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| anyhow!("--set `{assignment}`: expected key=value"))?;
    let key = key.trim();
    let value: toml::Value = match format!("v = {}", raw.trim()).parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed table has v"),
        Err(_) => toml::Value::String(raw.trim().to_string()),
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
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        Self::from_table(table, &origin)
    }

    /// Range checks of every field, each error naming its key.
    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        let t = &self.train;
        let s = &self.schedule;
        let positive = |v: f64, key: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(anyhow!("key `{key}` = {v}: must be > 0"))
            }
        };
        let non_negative = |v: f64, key: &str| {
            if v >= 0.0 {
                Ok(())
            } else {
                Err(anyhow!("key `{key}` = {v}: must be >= 0 (0 = off)"))
            }
        };
        let unit = |v: f64, key: &str| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(anyhow!("key `{key}` = {v}: must be in [0, 1)"))
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
        if t.batch_size < 1 {
            bail!("key `train.batch_size` = {}: must be >= 1", t.batch_size);
        }
        if t.eval_batch_size < 0 {
            bail!("key `train.eval_batch_size` = {}: must be >= 0", t.eval_batch_size);
        }
        if t.eval_batches < 0 {
            bail!("key `train.eval_batches` = {}: must be >= 0 (0 = whole split)", t.eval_batches);
        }
        if t.max_steps.is_none() && t.epochs == 0 {
            bail!("key `train.epochs` = 0: give a budget (epochs >= 1 or max_steps)");
        }
        if t.max_steps == Some(0) {
            bail!("key `train.max_steps` = 0: must be >= 1");
        }
        if let Some(m) = t.max_minutes {
            positive(m, "train.max_minutes")?;
        }
        if let MicroBatch::Size(n) = t.micro_batch {
            if n < 1 {
                bail!("key `train.micro_batch` = {n}: must be >= 1, or \"auto\"");
            }
        }
        non_negative(t.mixup, "train.mixup")?;
        non_negative(t.cutmix, "train.cutmix")?;
        self.model.validate(&self.task.input_spec())
    }

    /// The resolved config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("RunConfig serialises to TOML")
    }
}
