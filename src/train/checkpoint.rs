//! Checkpoints: a folder holding the weights (`model.safetensors`), the optimizer moments
//! (`optim.safetensors`) and `state.json`. A folder is written beside its final name and renamed
//! into place, so a crash leaves either the previous checkpoint or the new one, never a mix.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::optim::AdamW;
use super::step::LossScaler;

/// Where training stands at a checkpoint: enough to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Optimizer steps completed.
    pub step: u64,
    /// AdamW's update count (equal to `step` unless fp16 skipped steps).
    pub t: u64,
    pub best_val_acc: f64,
    pub best_step: u64,
    /// Training wall time so far, seconds.
    pub elapsed_s: f64,
    /// Seconds spent on training steps alone (for img/s).
    pub train_s: f64,
    /// fp16 loss scale.
    pub loss_scale: f64,
    /// fp16: steps in a row without an inf/NaN gradient since the scale last changed.
    #[serde(default)]
    pub loss_scale_growth: u64,
    /// Images per forward/backward pass the run trains with (0: not chosen yet).
    #[serde(default)]
    pub micro_batch: i64,
    /// Data-parallel processes the run trains with (1 in checkpoints written before them).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

impl State {
    /// Where a new run stands.
    pub fn new(scaler: &LossScaler) -> State {
        State {
            step: 0,
            t: 0,
            best_val_acc: -1.0,
            best_step: 0,
            elapsed_s: 0.0,
            train_s: 0.0,
            loss_scale: scaler.scale,
            loss_scale_growth: scaler.growth_tracker,
            micro_batch: 0,
            world_size: 1,
        }
    }

    /// Records the loss scaler's state.
    pub fn save_scaler(&mut self, scaler: &LossScaler) {
        self.loss_scale = scaler.scale;
        self.loss_scale_growth = scaler.growth_tracker;
    }

    /// Puts the recorded loss scaler state back.
    pub fn restore(&self, scaler: &mut LossScaler) {
        scaler.scale = self.loss_scale;
        scaler.growth_tracker = self.loss_scale_growth;
    }

    /// Training images per second of training steps so far, at `batch_size` images per step.
    pub fn throughput(&self, batch_size: i64) -> f64 {
        (self.step * batch_size as u64) as f64 / self.train_s.max(1e-9)
    }
}

/// Writes `dir` atomically: into `dir.tmp`, then renamed over `dir`.
pub fn save(dir: &Path, vs: &nn::VarStore, opt: Option<&AdamW>, state: &State) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    let old = sibling(dir, "old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("failed to create `{}`", tmp.display()))?;
    vs.save(tmp.join("model.safetensors"))
        .with_context(|| format!("failed to write weights into `{}`", tmp.display()))?;
    if let Some(opt) = opt {
        Tensor::write_safetensors(&opt.state(), tmp.join("optim.safetensors")).context("failed to write optimizer state")?;
    }
    std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("failed to move checkpoint into `{}`", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// The checkpoint folder to read: `dir`, or the previous one if a crash hit between the renames.
pub fn existing(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), sibling(dir, "old")]
        .into_iter()
        .find(|d| d.join("state.json").is_file())
}

/// Loads weights (and the optimizer moments when `opt` is given) and returns the state.
pub fn load(dir: &Path, vs: &mut nn::VarStore, opt: Option<&mut AdamW>) -> Result<State> {
    let Some(dir) = existing(dir) else {
        bail!("no checkpoint in `{}`", dir.display())
    };
    let text = std::fs::read_to_string(dir.join("state.json"))
        .with_context(|| format!("failed to read `{}`", dir.join("state.json").display()))?;
    let state: State =
        serde_json::from_str(&text).with_context(|| format!("`{}` is not a checkpoint state", dir.join("state.json").display()))?;
    let weights = dir.join("model.safetensors");
    vs.load(&weights)
        .with_context(|| format!("failed to load weights `{}` (does the config match the run?)", weights.display()))?;
    if let Some(opt) = opt {
        let path = dir.join("optim.safetensors");
        let tensors = Tensor::read_safetensors(&path).with_context(|| format!("failed to read optimizer state `{}`", path.display()))?;
        let device = vs.device();
        opt.load_state(tensors.into_iter().map(|(n, t)| (n, t.to_device(device))).collect(), state.t)?;
    }
    Ok(state)
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}
