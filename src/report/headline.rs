//! The table a user reads first: one row per model, for the best recorded run of a preset that
//! reproduces its paper's setting, beside the paper's figure and the founding Python project's.
//!
//! A model's paper presets are the shipped presets of that model whose `[paper]` table has a
//! figure, except self-pretraining presets (their figure is for another method, and the
//! self-pretraining table shows them). A run counts for its model's row when it claims that
//! figure (so it ran on the preset's own task: a run moved to another task drops the claim) and
//! covered at least [`MIN_COVERAGE`] of the preset's recipe; the row shows the one with the best
//! test accuracy.
//! Shorter runs, runs on another task and runs of other presets stay in the table of all runs.
//! A model with no such run keeps its row, which says so, or names the run in progress toward it
//! (an unfinished run folder of one of its paper presets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::format::{cell, duration};
use super::Run;
use crate::config::{self, Paper, RunConfig};
use crate::run::checkpoint;
use crate::run::dir::RunDir;
use crate::run::records::Metrics;

/// The share of a preset's recipe (in training images) a run must cover to stand for its model.
pub const MIN_COVERAGE: f64 = 0.25;

/// A shipped preset with a paper figure (self-pretraining presets aside).
pub struct PaperPreset {
    pub name: String,
    /// `model.name`.
    pub model: String,
    pub paper: Paper,
    /// `train.max_steps`, else `None` (the recipe is `epochs`).
    max_steps: Option<u64>,
    epochs: u64,
}

impl PaperPreset {
    /// Every shipped preset that has a paper figure, in name order.
    pub fn shipped() -> Result<Vec<PaperPreset>> {
        let mut found = Vec::new();
        for name in config::preset_names()? {
            let cfg = RunConfig::load(Some(&name), None, &[])?;
            // A self-pretraining preset's figure is for pretraining then fine-tuning, another
            // method than the paper's model trained from scratch: its own table shows it.
            if cfg.pretrain.is_some() {
                continue;
            }
            let Some(paper) = cfg.paper.filter(|p| p.figure.is_some()) else {
                continue;
            };
            found.push(PaperPreset {
                model: cfg.model.name().to_string(),
                name,
                paper,
                max_steps: cfg.train.max_steps,
                epochs: cfg.train.epochs,
            });
        }
        Ok(found)
    }

    /// The recipe's length in epochs, with a run's images per step (`epochs` after `steps`)
    /// where the recipe counts steps (`None` when the run made none).
    fn recipe_epochs(&self, steps: u64, epochs: f64) -> Option<f64> {
        match self.max_steps {
            Some(max) if steps > 0 => Some(max as f64 * epochs / steps as f64),
            Some(_) => None,
            None => Some(self.epochs as f64),
        }
    }
}

/// One model's row.
pub struct Row {
    /// The preset the row stands for: its best run's, else the model's headline preset.
    pub preset: PaperPreset,
    /// Index into the report's runs.
    pub run: Option<usize>,
    /// Epochs of the run against the recipe's.
    coverage: Option<(f64, f64)>,
    /// Without a finished run: an unfinished run of one of the model's paper presets, with its
    /// epochs so far against the recipe's.
    in_progress: Option<(PathBuf, Option<(f64, f64)>)>,
}

/// An unfinished run: its folder, its preset (the `preset` file) and its last evaluation's step
/// and epoch.
struct Unfinished<'a> {
    dir: &'a Path,
    preset: String,
    last: Option<(u64, f64)>,
}

impl Unfinished<'_> {
    fn read(dir: &Path) -> Option<Unfinished<'_>> {
        let preset = std::fs::read_to_string(dir.join("preset")).ok()?.trim().to_string();
        let last = std::fs::read_to_string(dir.join("metrics.jsonl"))
            .ok()
            .and_then(|text| text.lines().rev().find_map(|l| serde_json::from_str::<Metrics>(l).ok()))
            .map(|m| (m.step, m.epoch));
        Some(Unfinished { dir, preset, last })
    }
}

/// One row per model that has a paper preset, in model-name order; `unfinished` are run folders
/// without a result, named in the row of a model that has no finished run.
pub fn rows(presets: Vec<PaperPreset>, runs: &[Run], unfinished: &[PathBuf]) -> Vec<Row> {
    let unfinished: Vec<Unfinished> = unfinished.iter().filter_map(|d| Unfinished::read(d)).collect();
    let mut by_model: BTreeMap<String, Vec<PaperPreset>> = BTreeMap::new();
    for p in presets {
        by_model.entry(p.model.clone()).or_default().push(p);
    }
    by_model
        .into_values()
        .map(|mut candidates| {
            let best = runs
                .iter()
                .enumerate()
                .filter(|(_, r)| r.record.paper_figure.is_some() && r.record.pretrain.is_none())
                .filter_map(|(i, r)| {
                    let p = candidates.iter().position(|p| r.record.preset.as_deref() == Some(&p.name))?;
                    let recipe = candidates[p].recipe_epochs(r.record.steps, r.record.epochs)?;
                    (recipe > 0.0 && r.record.epochs >= MIN_COVERAGE * recipe).then_some((i, p, recipe))
                })
                .max_by(|a, b| runs[a.0].record.test_acc.total_cmp(&runs[b.0].record.test_acc));
            match best {
                Some((i, p, recipe)) => Row {
                    coverage: Some((runs[i].record.epochs, recipe)),
                    preset: candidates.swap_remove(p),
                    run: Some(i),
                    in_progress: None,
                },
                None => {
                    // The headline preset: the one the founding project is compared on, else the
                    // highest paper figure, then the name.
                    candidates.sort_by(|a, b| {
                        (b.paper.founding.is_some(), b.paper.figure.unwrap_or(0.0))
                            .partial_cmp(&(a.paper.founding.is_some(), a.paper.figure.unwrap_or(0.0)))
                            .unwrap_or(std::cmp::Ordering::Equal)
                            .then(a.name.cmp(&b.name))
                    });
                    let going = unfinished.iter().find_map(|u| {
                        let p = candidates.iter().position(|c| c.name == u.preset)?;
                        let covered = u
                            .last
                            .and_then(|(step, epoch)| Some((epoch, candidates[p].recipe_epochs(step, epoch)?)));
                        Some((p, (u.dir.to_path_buf(), covered)))
                    });
                    let (p, in_progress) = match going {
                        Some((p, found)) => (p, Some(found)),
                        None => (0, None),
                    };
                    Row {
                        preset: candidates.swap_remove(p),
                        run: None,
                        coverage: None,
                        in_progress,
                    }
                }
            }
        })
        .collect()
}

/// The best checkpoint a run folder keeps, if it keeps one.
pub fn published_weights(dir: &Path) -> Option<PathBuf> {
    let best = RunDir::new(dir).best();
    best.join(checkpoint::WEIGHTS).is_file().then_some(best)
}

/// The table and the note under it.
pub fn markdown(rows: &[Row], runs: &[Run]) -> String {
    let pct = |v: f64| format!("{v:.2}%");
    let mut s = String::from(
        "| Model | Preset | Paper | Founding project | pixelseq (test) | Recipe covered | Device | Wall time | Weights |\n\
         |---|---|---:|---:|---:|---|---|---:|---|\n",
    );
    for row in rows {
        let p = &row.preset;
        let paper = match (&p.paper.figure_on, p.paper.figure) {
            (Some(on), Some(f)) => format!("{} (on {})", pct(f), cell(on)),
            (None, Some(f)) => pct(f),
            (_, None) => "—".into(),
        };
        let founding = p.paper.founding.map_or("—".into(), pct);
        let mut cells = vec![cell(&p.paper.model), cell(&p.name), paper, founding];
        match row.run.map(|i| &runs[i]) {
            Some(r) => {
                let (done, recipe) = row.coverage.unwrap_or_default();
                let mut covered = format!("{} of {} epochs", epochs(done), epochs(recipe));
                if let Some(m) = r.max_minutes {
                    covered += &format!(", time-boxed to {}", duration(60.0 * m));
                }
                cells.extend([
                    pct(100.0 * r.record.test_acc),
                    covered,
                    cell(&r.record.device),
                    duration(r.record.wall_s),
                    published_weights(&r.dir).map_or("not kept".into(), |w| format!("`{}`", cell(&w.display().to_string()))),
                ]);
            }
            None => match &row.in_progress {
                Some((dir, covered)) => cells.extend([
                    "in progress".into(),
                    covered.map_or("—".into(), |(done, recipe)| {
                        format!("{} of {} epochs so far", epochs(done), epochs(recipe))
                    }),
                    "—".into(),
                    "—".into(),
                    published_weights(dir).map_or("—".into(), |w| format!("`{}` (best so far)", cell(&w.display().to_string()))),
                ]),
                None => cells.extend(["no run yet".into(), "—".into(), "—".into(), "—".into(), "—".into()]),
            },
        }
        s += &format!("| {} |\n", cells.join(" | "));
    }
    s += &format!(
        "\nOne row per model: its best run of a preset that reproduces the paper's setting (on the preset's own \
         task) and covered at least {:.0}% of the preset's recipe. Paper: the figure the paper reports for that \
         setting. Founding project: the figure of the Python project pixelseq replaces. pixelseq (test): the CIFAR-10 \
         test split scored with the checkpoint of best validation accuracy. Weights: the published best checkpoint \
         (`pixelseq eval --run <run folder> --split test` re-scores it). Every other run is in the table of all runs \
         below.\n\n",
        100.0 * MIN_COVERAGE
    );
    s
}

/// Epochs for reading: whole numbers as such, the rest to one decimal.
fn epochs(e: f64) -> String {
    if (e - e.round()).abs() < 0.05 {
        format!("{:.0}", e.round())
    } else {
        format!("{e:.1}")
    }
}
