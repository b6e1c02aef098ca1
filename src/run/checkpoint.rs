//! Checkpoints: a folder holding the weights (`model.safetensors`), the optimizer moments
//! (`optim.safetensors`), `state.json`, which records the sha256 of both tensor files, and
//! `state.json.sha256`, the sha256 of `state.json` itself. A folder is
//! built under a temporary name beside its final one and renamed into place, so a crash leaves
//! either the previous checkpoint or the new one, never a mix; every load checks the recorded
//! sha256s, so a damaged file is named instead of used. Nothing non-finite is ever saved: the
//! trainer checks the weights and moments ([`non_finite`]) first.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{nn, Kind, Tensor};

use crate::files::{self, hex, TempGuard, PARTIAL};

/// The weights' file in a checkpoint folder.
pub const WEIGHTS: &str = "model.safetensors";
/// The optimizer moments' file (in `last` only).
pub const OPTIM: &str = "optim.safetensors";
/// The state file.
pub const STATE: &str = "state.json";
/// The sha256 of `state.json`, checked on every load (checkpoints written before it load with a
/// warning).
pub const STATE_SHA256: &str = "state.json.sha256";

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
    /// A self-pretraining run's checkpoint: the lowest validation reconstruction loss so far
    /// (its accuracies stay unset). `None` for a classifier's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_val_loss: Option<f64>,
    /// sha256 of each tensor file of the checkpoint, by name; checked on every load. Checkpoints
    /// written before pixelseq recorded them have none: they load unchecked, with a warning.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Data-parallel processes the run trains with (1 in checkpoints written before them).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

impl Default for State {
    /// Where a new run stands (a loss scale of 1: the trainer records its scaler's).
    fn default() -> State {
        State {
            step: 0,
            t: 0,
            best_val_acc: -1.0,
            best_step: 0,
            elapsed_s: 0.0,
            train_s: 0.0,
            loss_scale: 1.0,
            loss_scale_growth: 0,
            micro_batch: 0,
            best_val_loss: None,
            files: BTreeMap::new(),
            world_size: 1,
        }
    }
}

impl State {
    /// Training images per second of training steps so far, at `batch_size` images per step.
    pub fn throughput(&self, batch_size: i64) -> f64 {
        (self.step * batch_size as u64) as f64 / self.train_s.max(1e-9)
    }

    /// Checks that the numbers agree with each other; `path` names the file in errors.
    fn check(&self, path: &Path) -> Result<()> {
        let bad = |what: String| Err(anyhow!("`{}` is inconsistent: {what}", path.display()));
        if self.best_step > self.step || self.t > self.step {
            return bad(format!(
                "best_step {} and t {} cannot exceed step {}",
                self.best_step, self.t, self.step
            ));
        }
        if !(self.best_val_acc == -1.0 || (0.0..=1.0).contains(&self.best_val_acc)) {
            return bad(format!("best_val_acc {} is not an accuracy", self.best_val_acc));
        }
        for (key, v) in [("elapsed_s", self.elapsed_s), ("train_s", self.train_s)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{key} {v} is not a duration"));
            }
        }
        if !(self.loss_scale.is_finite() && self.loss_scale > 0.0) {
            return bad(format!("loss_scale {} must be finite and positive", self.loss_scale));
        }
        Ok(())
    }
}

/// An optimizer whose moments a checkpoint keeps (the trainer's AdamW).
pub trait Moments {
    /// The moments as named tensors.
    fn moments(&self) -> Vec<(String, Tensor)>;
    /// Puts moments saved by [`Moments::moments`] back, with the update count `t`.
    fn load_moments(&mut self, tensors: Vec<(String, Tensor)>, t: u64) -> Result<()>;
}

/// Writes the checkpoint folder `dir`: built under a temporary name beside it, then renamed into
/// place. The previous checkpoint is first moved aside under a temporary name of its own, so a
/// crash between the two renames leaves it for [`existing`] to find.
pub fn save(dir: &Path, vs: &nn::VarStore, opt: Option<&dyn Moments>, state: &State) -> Result<()> {
    let tmp = files::temp_dir_beside(dir);
    let guard = TempGuard::new(tmp.clone());
    std::fs::create_dir_all(&tmp).with_context(|| format!("failed to create `{}`", tmp.display()))?;
    let mut state = state.clone();
    state.files = BTreeMap::new();
    let weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    state.files.insert(WEIGHTS.into(), write_tensors(&tmp.join(WEIGHTS), &weights)?);
    if let Some(opt) = opt {
        state.files.insert(OPTIM.into(), write_tensors(&tmp.join(OPTIM), &opt.moments())?);
    }
    let text = serde_json::to_string_pretty(&state)?;
    files::write_bytes(&tmp.join(STATE), text.as_bytes())?;
    files::write_bytes(&tmp.join(STATE_SHA256), format!("{}\n", hex(&Sha256::digest(&text))).as_bytes())?;
    let old = dir.exists().then(|| files::temp_dir_beside(dir));
    if let Some(old) = &old {
        std::fs::rename(dir, old).with_context(|| format!("failed to move the previous `{}` aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("failed to move checkpoint into `{}`", dir.display()))?;
    guard.keep();
    if let Some(old) = old {
        std::fs::remove_dir_all(&old).with_context(|| format!("failed to remove the previous checkpoint `{}`", old.display()))?;
    }
    Ok(())
}

/// The checkpoint folder to read: `dir`, or, when a crash hit between the renames of [`save`],
/// the most advanced complete folder (one with its `state.json`) under a temporary name beside it.
pub fn existing(dir: &Path) -> Option<PathBuf> {
    // Anything by that name (a FIFO too) is the checkpoint: reading it names what is wrong.
    if dir.join(STATE).exists() {
        return Some(dir.to_path_buf());
    }
    let name = dir.file_name()?.to_string_lossy().into_owned();
    let prefix = format!(".{name}{PARTIAL}");
    let entries = std::fs::read_dir(dir.parent()?).ok()?;
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((read_state(&e.path()).ok()?.step, e.path())))
        .max()
        .map(|(_, path)| path)
}

/// Puts the folder [`existing`] found back under its name after a crash between the renames of
/// [`save`]; for a run that is about to write checkpoints again (it holds the run's lock).
pub fn recover(dir: &Path) -> Result<()> {
    match existing(dir) {
        Some(found) if found != dir && !dir.exists() => {
            std::fs::rename(&found, dir).with_context(|| format!("failed to move `{}` back to `{}`", found.display(), dir.display()))
        }
        _ => Ok(()),
    }
}

/// Reads and checks `state.json` of a checkpoint folder.
fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join(STATE);
    let text = files::read_regular_to_string(&path)?;
    let sum = dir.join(STATE_SHA256);
    if sum.exists() {
        let recorded = files::read_regular_to_string(&sum)?;
        let got = hex(&Sha256::digest(&text));
        if got != recorded.trim() {
            bail!(
                "`{}` was changed or damaged: its sha256 is {got}, `{STATE_SHA256}` records {}",
                path.display(),
                recorded.trim()
            );
        }
    }
    let state: State = serde_json::from_str(&text).with_context(|| format!("`{}` is not a checkpoint state", path.display()))?;
    state.check(&path)?;
    Ok(state)
}

/// Loads weights (and the optimizer moments when `opt` is given) and returns the state. Every
/// tensor file is checked against the sha256 that `state.json` records; a damaged one is named,
/// with the run's other checkpoint to fall back to.
pub fn load(dir: &Path, vs: &mut nn::VarStore, opt: Option<&mut dyn Moments>) -> Result<State> {
    let Some(found) = existing(dir) else {
        bail!("no checkpoint in `{}`", dir.display())
    };
    let state = read_state(&found).map_err(|e| with_fallback(e, dir))?;
    if state.files.is_empty() {
        eprintln!(
            "warning: checkpoint `{}` was written before pixelseq recorded checksums; its files are not verified",
            found.display()
        );
    } else if !found.join(STATE_SHA256).exists() {
        eprintln!(
            "warning: `{}` was written before pixelseq checksummed it; its step and counters are not verified",
            found.join(STATE).display()
        );
    }
    let weights = read_tensors(&found, WEIGHTS, &state).map_err(|e| with_fallback(e, dir))?;
    copy_into(vs, weights, &found.join(WEIGHTS), "the run's config.toml")?;
    if let Some(opt) = opt {
        let tensors = read_tensors(&found, OPTIM, &state).map_err(|e| with_fallback(e, dir))?;
        let device = vs.device();
        opt.load_moments(tensors.into_iter().map(|(n, t)| (n, t.to_device(device))).collect(), state.t)
            .with_context(|| format!("optimizer state `{}` does not fit the model", found.join(OPTIM).display()))?;
    }
    Ok(state)
}

/// The state and the weights of checkpoint `dir`, checked against their sha256 (`train --init`
/// reads a pretraining run's this way).
pub fn weights(dir: &Path) -> Result<(State, Vec<(String, Tensor)>)> {
    let Some(found) = existing(dir) else {
        bail!("no checkpoint in `{}`", dir.display())
    };
    let state = read_state(&found)?;
    let weights = read_tensors(&found, WEIGHTS, &state)?;
    Ok((state, weights))
}

/// Checks that every tensor file of the checkpoint folder `dir` matches its recorded sha256; a
/// damaged one is named, with the run's other checkpoint to fall back to.
pub fn verify(dir: &Path) -> Result<State> {
    verify_files(dir).map_err(|e| with_fallback(e, dir))
}

fn verify_files(dir: &Path) -> Result<State> {
    let Some(found) = existing(dir) else {
        bail!("no checkpoint in `{}`", dir.display())
    };
    let state = read_state(&found)?;
    for name in state.files.keys() {
        read_bytes(&found, name, &state)?;
    }
    Ok(state)
}

/// Adds to a load error of checkpoint `dir` (`…/best` or `…/last`) what the run's other
/// checkpoint offers.
fn with_fallback(e: anyhow::Error, dir: &Path) -> anyhow::Error {
    let (other, use_it) = match dir.file_name().and_then(|n| n.to_str()) {
        Some("best") => ("last", "use it with `eval --last` or `predict --last`"),
        Some("last") => (
            "best",
            "score it with `eval` or `predict`; it holds no optimizer state, so the run cannot resume from it",
        ),
        _ => return e,
    };
    let other_dir = dir.with_file_name(other);
    let hint = match verify_files(&other_dir) {
        Ok(state) => format!(
            "the run's `{other}` checkpoint `{}` (step {}) is intact: {use_it}",
            other_dir.display(),
            state.step
        ),
        Err(_) => format!("the run's `{other}` checkpoint `{}` cannot be used either", other_dir.display()),
    };
    e.context(hint)
}

/// The bytes of tensor file `name` of a checkpoint folder, checked against the sha256 in `state`
/// (unchecked when `state` records none: a checkpoint older than the checksums).
fn read_bytes(dir: &Path, name: &str, state: &State) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let bytes = files::read_regular(&path).with_context(|| format!("failed to read checkpoint file `{}`", path.display()))?;
    if state.files.is_empty() {
        return Ok(bytes);
    }
    let Some(expected) = state.files.get(name) else {
        bail!(
            "checkpoint file `{}` is not listed in `{}`",
            path.display(),
            dir.join(STATE).display()
        )
    };
    let got = hex(&Sha256::digest(&bytes));
    if &got != expected {
        bail!(
            "checkpoint file `{}` is corrupt: its sha256 is {got}, `{STATE}` records {expected}",
            path.display()
        );
    }
    Ok(bytes)
}

/// The named tensors of tensor file `name` of a checkpoint folder, checked as [`read_bytes`] does.
fn read_tensors(dir: &Path, name: &str, state: &State) -> Result<Vec<(String, Tensor)>> {
    let bytes = read_bytes(dir, name, state)?;
    tensors_of(&bytes, &dir.join(name))
}

/// The named tensors of the safetensors file `path` whose bytes are `bytes`.
pub(crate) fn tensors_of(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| anyhow!("checkpoint file `{}` is not a safetensors file: {e:?}", path.display()))?;
    file.tensors()
        .into_iter()
        .map(|(n, view)| {
            Tensor::try_from(view)
                .map(|t| (n.clone(), t))
                .map_err(|e| anyhow!("checkpoint file `{}`: tensor `{n}`: {}", path.display(), first_line(&e.to_string())))
        })
        .collect()
}

/// Copies saved tensors into the variables of the same names; any missing, extra or misshapen
/// tensor is an error naming it (and `config`, the file that describes the model).
pub(crate) fn copy_into(vs: &nn::VarStore, saved: Vec<(String, Tensor)>, path: &Path, config: &str) -> Result<()> {
    let mut saved: HashMap<String, Tensor> = saved.into_iter().collect();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let p = path.display();
    for (name, mut var) in vars {
        let Some(t) = saved.remove(&name) else {
            bail!("`{p}` has no tensor `{name}`, which the model has: {config} does not match it")
        };
        if t.size() != var.size() {
            bail!(
                "`{p}`: tensor `{name}` has shape {:?}, the model's has {:?}: {config} does not match it",
                t.size(),
                var.size()
            );
        }
        tch::no_grad(|| var.f_copy_(&t)).map_err(|e| anyhow!("failed to load `{name}` from `{p}`: {}", first_line(&e.to_string())))?;
    }
    if let Some(extra) = saved.keys().min() {
        bail!("`{p}` holds a tensor `{extra}` the model lacks: {config} does not match it");
    }
    Ok(())
}

/// The first line of a libtorch message (the rest is its C++ backtrace).
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// A tensor's bytes as the safetensors format stores them.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes named tensors as a safetensors file (atomically, through [`files`]) and returns its
/// sha256. A write error (a full disk) is the file's name and the system's message.
pub fn write_tensors(dest: &Path, tensors: &[(String, Tensor)]) -> Result<String> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.contiguous();
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)
            .map_err(|e| anyhow!("failed to copy tensor `{name}`: {}", first_line(&e.to_string())))?;
        let dtype = Dtype::try_from(t.kind()).map_err(|e| anyhow!("tensor `{name}`: {e}"))?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        views.push((name.as_str(), Bytes { dtype, shape, data }));
    }
    let bytes = safetensors::tensor::serialize(views.iter().map(|(n, b)| (*n, b)), &None)
        .map_err(|e| anyhow!("failed to encode `{}`: {e:?}", dest.display()))?;
    files::write_bytes(dest, &bytes)?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// The first tensor of the weights (and of the optimizer moments when given) holding an inf or a
/// NaN, described for a message; `None` when all are finite.
pub fn non_finite(vs: &nn::VarStore, opt: Option<&dyn Moments>) -> Option<String> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (format!("weight `{n}`"), t)).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(opt) = opt {
        named.extend(opt.moments().into_iter().map(|(n, t)| (format!("optimizer moment `{n}`"), t)));
    }
    if named.is_empty() {
        return None;
    }
    let finite: Vec<Tensor> = tch::no_grad(|| named.iter().map(|(_, t)| t.isfinite().all()).collect());
    let finite = Tensor::stack(&finite, 0).to_device(tch::Device::Cpu).to_kind(Kind::Int64); // (n)
    let flags = Vec::<i64>::try_from(&finite).expect("int64 flags");
    flags.iter().position(|&f| f == 0).map(|i| named[i].0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// A tiny store with one weight and one bias, filled with `v` (no draw from torch's global
    /// generator, which other tests seed).
    fn store_of(v: f64) -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = nn::LinearConfig {
            ws_init: nn::Init::Const(v),
            bs_init: Some(nn::Init::Const(-v)),
            bias: true,
        };
        let _ = nn::linear(vs.root() / "layer", 4, 3, config);
        vs
    }

    fn store() -> nn::VarStore {
        store_of(0.25)
    }

    fn state(step: u64) -> State {
        State {
            step,
            best_step: step,
            best_val_acc: 0.5,
            ..State::default()
        }
    }

    /// Flips one exponent bit of the last float32 stored in a safetensors file.
    fn flip_exponent_bit(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_saved_checkpoint_loads_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let vs = store();
        save(&dir.path().join("best"), &vs, None, &state(4)).unwrap();
        let mut other = store_of(3.0);
        assert_eq!(load(&dir.path().join("best"), &mut other, None).unwrap().step, 4);
        for (name, t) in vs.variables() {
            assert!(t.equal(&other.variables()[&name]), "{name}");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["best"], "a temporary folder was left");
    }

    /// One flipped bit in a weight is found on load; the error names the file and the run's
    /// other checkpoint, which is intact.
    #[test]
    fn a_corrupt_weight_is_refused_naming_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let (best, last) = (dir.path().join("best"), dir.path().join("last"));
        let vs = store();
        save(&best, &vs, None, &state(4)).unwrap();
        save(&last, &vs, None, &state(6)).unwrap();
        flip_exponent_bit(&best.join(WEIGHTS));
        let mut vs = store();
        let err = format!("{:#}", load(&best, &mut vs, None).unwrap_err());
        assert!(err.contains("best/model.safetensors` is corrupt"), "{err}");
        assert!(
            err.contains("`last` checkpoint") && err.contains("step 6") && err.contains("--last"),
            "{err}"
        );
        assert!(!err.contains("does the config match"), "{err}");
        flip_exponent_bit(&last.join(WEIGHTS));
        let err = format!("{:#}", load(&last, &mut vs, None).unwrap_err());
        assert!(
            err.contains("last/model.safetensors` is corrupt") && err.contains("cannot be used either"),
            "{err}"
        );
    }

    /// Checkpoints written before the checksums load unchecked (with a warning).
    #[test]
    fn an_old_checkpoint_without_checksums_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let best = dir.path().join("best");
        save(&best, &store(), None, &state(2)).unwrap();
        let text = std::fs::read_to_string(best.join(STATE)).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json.as_object_mut().unwrap().remove("files");
        std::fs::remove_file(best.join(STATE_SHA256)).unwrap();
        std::fs::write(best.join(STATE), json.to_string()).unwrap();
        assert_eq!(load(&best, &mut store(), None).unwrap().step, 2);
    }

    #[test]
    fn an_inconsistent_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let best = dir.path().join("best");
        let mut s = state(3);
        s.best_step = 999_999;
        save(&best, &store(), None, &s).unwrap();
        let err = format!("{:#}", load(&best, &mut store(), None).unwrap_err());
        assert!(err.contains("state.json` is inconsistent") && err.contains("999999"), "{err}");
    }

    /// `state.json` is checksummed as the tensor files are: an edited step is refused, naming the
    /// run's other checkpoint, instead of resuming with other weights.
    #[test]
    fn an_edited_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (best, last) = (dir.path().join("best"), dir.path().join("last"));
        save(&best, &store(), None, &state(4)).unwrap();
        save(&last, &store(), None, &state(6)).unwrap();
        let path = last.join(STATE);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"step\": 6"), "{text}");
        std::fs::write(&path, text.replace("\"step\": 6", "\"step\": 5")).unwrap();
        let err = format!("{:#}", load(&last, &mut store(), None).unwrap_err());
        assert!(
            err.contains("last/state.json` was changed or damaged") && err.contains("`best` checkpoint") && err.contains("step 4"),
            "{err}"
        );
        assert!(verify(&last).is_err() && weights(&last).is_err());
    }

    /// The temporary and previous folders have names of their own: a user's `last.tmp` and
    /// `last.old` beside the checkpoint are never touched.
    #[test]
    fn neighbouring_folders_are_not_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["last.tmp", "last.old"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("notes.txt"), b"mine").unwrap();
        }
        let last = dir.path().join("last");
        save(&last, &store(), None, &state(1)).unwrap();
        save(&last, &store(), None, &state(2)).unwrap();
        for name in ["last.tmp", "last.old"] {
            assert_eq!(std::fs::read(dir.path().join(name).join("notes.txt")).unwrap(), b"mine");
        }
        assert_eq!(verify(&last).unwrap().step, 2);
    }

    /// A crash between the renames of `save` leaves the previous checkpoint under its temporary
    /// name: it is found, and put back by `recover`.
    #[test]
    fn a_crash_between_the_renames_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let last = dir.path().join("last");
        save(&last, &store(), None, &state(5)).unwrap();
        let aside = dir.path().join(".last.partial-4999999-px0");
        std::fs::rename(&last, &aside).unwrap();
        assert_eq!(existing(&last), Some(aside.clone()));
        assert_eq!(load(&last, &mut store(), None).unwrap().step, 5);
        recover(&last).unwrap();
        assert!(last.join(STATE).is_file() && !aside.exists());
    }

    /// A full disk is the file's name and the system's message, not a debug dump.
    #[test]
    fn a_full_disk_is_a_clear_error() {
        let vs = store();
        let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        let err = format!("{:#}", write_tensors(Path::new("/dev/full"), &tensors).unwrap_err());
        assert!(err.contains("`/dev/full`") && err.contains("No space left on device"), "{err}");
        assert!(!err.contains("Os {") && !err.contains("IoError"), "{err}");
    }

    #[test]
    fn non_finite_tensors_are_named() {
        let vs = store();
        assert_eq!(non_finite(&vs, None), None);
        let _ = tch::no_grad(|| vs.variables()["layer.weight"].get(0).get(1).fill_(f64::NAN));
        assert_eq!(non_finite(&vs, None).as_deref(), Some("weight `layer.weight`"));
    }
}
