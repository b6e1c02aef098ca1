//! Finding and reading finished runs and bench files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::bench::Record;
use crate::config::{Paper, MAX_EPOCHS};
use crate::files;
use crate::run::records::{Metrics, RunRecord};

/// Training images per second no device reaches.
const MAX_IMG_PER_S: f64 = 1e9;
/// Seconds no run lasts (about 32 years).
const MAX_WALL_S: f64 = 1e9;
/// A loss no run reports (a uniform guess over 10 classes costs 2.3).
const MAX_LOSS: f64 = 1e6;
/// Parameters no model of the zoo has.
const MAX_PARAMS: f64 = 1e12;

/// One finished run, read from its directory.
pub struct Run {
    pub dir: PathBuf,
    pub record: RunRecord,
    /// The lines of `metrics.jsonl`, in order.
    pub metrics: Vec<Metrics>,
    /// The `[paper]` table of `config.toml`.
    pub paper: Option<Paper>,
    /// `task.permute` of `config.toml`: the seed of the fixed pixel permutation, if any.
    pub permute: Option<u64>,
    /// `train.max_minutes` of `config.toml`: the run's wall-clock budget, if it had one.
    pub max_minutes: Option<f64>,
    /// Name in plot legends: the preset (else the model), with the directory name where two
    /// runs would share it.
    pub label: String,
}

/// The parts of `config.toml` a report reads. The rest (model, optimizer) is left alone, so runs
/// stay readable when a model's config gains or loses a field.
#[derive(Deserialize)]
struct ConfigView {
    paper: Option<Paper>,
    task: TaskView,
    #[serde(default)]
    train: TrainView,
}

#[derive(Deserialize, Default)]
struct TrainView {
    max_minutes: Option<f64>,
}

#[derive(Deserialize)]
struct TaskView {
    permute: Option<u64>,
}

/// Run directories named by `inputs`: each is a run directory itself (it holds `result.json`,
/// `config.toml` or `metrics.jsonl`) or a folder searched recursively; the search sets
/// unfinished runs (no `result.json`) aside, with a note, as the second list.
pub fn find_runs(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    fn search(dir: &Path, found: &mut Vec<PathBuf>, unfinished: &mut Vec<PathBuf>) -> Result<()> {
        for e in files::sorted_entries(dir)? {
            if !e.file_type()?.is_dir() {
                continue;
            }
            let sub = e.path();
            if !is_run(&sub) {
                search(&sub, found, unfinished)?;
            } else if sub.join("result.json").is_file() {
                found.push(sub);
            } else {
                eprintln!("skipping unfinished run {} (no result.json)", sub.display());
                unfinished.push(sub);
            }
        }
        Ok(())
    }
    let (mut found, mut unfinished) = (Vec::new(), Vec::new());
    for input in inputs {
        if !input.exists() {
            bail!("`{}` not found", input.display());
        }
        if !input.is_dir() {
            bail!(
                "`{}` is not a folder; pass run directories or folders holding them",
                input.display()
            );
        }
        if is_run(input) {
            found.push(input.clone());
        } else {
            let before = found.len() + unfinished.len();
            search(input, &mut found, &mut unfinished)?;
            if found.len() + unfinished.len() == before {
                bail!("no finished runs (folders with result.json) under `{}`", input.display());
            }
        }
    }
    found.dedup();
    Ok((found, unfinished))
}

/// Whether `dir` holds a run: its `result.json`, `config.toml` or `metrics.jsonl`.
pub(super) fn is_run(dir: &Path) -> bool {
    ["result.json", "config.toml", "metrics.jsonl"]
        .iter()
        .any(|f| dir.join(f).is_file())
}

/// Reads `result.json`, `metrics.jsonl` and `config.toml` of one run directory.
pub fn read_run(dir: &Path) -> Result<Run> {
    let record: RunRecord = read_json(&dir.join("result.json"))?;
    let metrics_path = dir.join("metrics.jsonl");
    let text = read_text(&metrics_path)?;
    let metrics = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| json_error(&metrics_path, i + 1, &e)))
        .collect::<Result<Vec<Metrics>>>()?;
    let config_path = dir.join("config.toml");
    let text = read_text(&config_path)?;
    let config: ConfigView = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| text[..s.start].matches('\n').count() + 1);
        anyhow!(
            "malformed TOML in `{}` at line {line}: {}",
            config_path.display(),
            e.message().trim()
        )
    })?;
    Ok(Run {
        dir: dir.to_path_buf(),
        label: record.preset.clone().unwrap_or_else(|| record.model.clone()),
        record,
        metrics,
        paper: config.paper,
        permute: config.task.permute,
        max_minutes: config.train.max_minutes,
    })
}

/// Reads a benchmark JSON file; a record with a negative or non-finite figure is skipped with a
/// note.
pub fn read_bench(path: &Path) -> Result<Vec<Record>> {
    let entries: Vec<Record> = read_json(path)?;
    if entries.is_empty() {
        bail!("bench file `{}` holds no measurements", path.display());
    }
    Ok(entries
        .into_iter()
        .filter(|e| {
            let figures = [
                ("train_img_per_s", e.train_img_per_s),
                ("infer_img_per_s", e.infer_img_per_s),
                ("peak_mem_mb", e.peak_mem_mb),
            ];
            let bad = figures
                .iter()
                .find(|(_, v)| v.is_some_and(|v| !(v.is_finite() && (0.0..=MAX_IMG_PER_S).contains(&v))));
            if let Some((key, v)) = bad {
                eprintln!(
                    "skipping a record of `{}` ({} {} L={}): {key} = {:?}",
                    path.display(),
                    e.implementation,
                    e.preset,
                    e.seq_len,
                    v.unwrap_or_default()
                );
            }
            bad.is_none()
        })
        .collect())
}

fn read_text(path: &Path) -> Result<String> {
    if !path.is_file() {
        bail!("`{}` not found (is the run finished?)", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("failed to read `{}`", path.display()))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| json_error(path, e.line(), &e))
}

/// "malformed JSON in `path` at line N: message", with serde_json's own position suffix dropped
/// (for JSON Lines, `line` is the file's line, not the line within one record).
fn json_error(path: &Path, line: usize, e: &serde_json::Error) -> anyhow::Error {
    let text = e.to_string();
    let message = text
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&text);
    anyhow!("malformed JSON in `{}` at line {line}: {message}", path.display())
}

/// Labels are presets (else models); a label two runs share gets the directory name added.
pub(super) fn assign_labels(runs: &mut [Run]) {
    let mut counts = BTreeMap::<String, usize>::new();
    for r in runs.iter() {
        *counts.entry(r.label.clone()).or_default() += 1;
    }
    for r in runs.iter_mut() {
        if counts[&r.label] > 1 {
            let name = r.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            r.label = format!("{} ({name})", r.label);
        }
    }
}

impl Run {
    /// Why the run's numbers cannot be reported (an accuracy outside [0, 1], a negative or
    /// non-finite throughput, duration, epoch or pretraining loss), naming the file and the
    /// field; `None` if they can.
    pub(super) fn implausible(&self) -> Option<String> {
        let r = &self.record;
        let pretraining = r.pretrain.is_some();
        // A pretraining run has no accuracies (`null`); its figures are reconstruction losses.
        let accuracy = |v: f64| pretraining || (0.0..=1.0).contains(&v);
        // Amounts beyond these are no run's: a number past them would print hundreds of digits.
        let amount = |v: f64, max: f64| v.is_finite() && (0.0..=max).contains(&v);
        let val_loss = r.pretrain.as_ref().map_or(0.0, |p| p.best_val_loss);
        for (key, v, ok) in [
            ("best_val_acc", r.best_val_acc, accuracy(r.best_val_acc)),
            ("test_acc", r.test_acc, accuracy(r.test_acc)),
            ("pretrain.best_val_loss", val_loss, amount(val_loss, MAX_LOSS)),
            ("img_per_s", r.img_per_s, amount(r.img_per_s, MAX_IMG_PER_S)),
            ("wall_s", r.wall_s, amount(r.wall_s, MAX_WALL_S)),
            ("epochs", r.epochs, amount(r.epochs, MAX_EPOCHS as f64)),
            ("params", r.params as f64, amount(r.params as f64, MAX_PARAMS)),
        ] {
            if !ok {
                return Some(format!("result.json has {key} = {v:?}"));
            }
        }
        for (i, m) in self.metrics.iter().enumerate() {
            for (key, v, ok) in [
                ("val_acc", m.val_acc, accuracy(m.val_acc)),
                ("epoch", m.epoch, amount(m.epoch, MAX_EPOCHS as f64)),
                ("wall_s", m.wall_s, amount(m.wall_s, MAX_WALL_S)),
            ] {
                if !ok {
                    return Some(format!("metrics.jsonl line {} has {key} = {v:?}", i + 1));
                }
            }
        }
        None
    }

    /// The paper's model name where the config has one, else the zoo name.
    pub(super) fn model_name(&self) -> &str {
        self.paper.as_ref().map_or(&self.record.model, |p| &p.model)
    }

    pub(super) fn task_name(&self) -> String {
        match self.permute {
            Some(seed) => format!("{}, permuted (seed {seed})", self.record.task),
            None => self.record.task.clone(),
        }
    }
}
