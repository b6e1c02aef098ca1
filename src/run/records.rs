//! What a run writes about itself: one [`Metrics`] line per evaluation in `metrics.jsonl`, and
//! [`RunRecord`] in `result.json` when it ends.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Deserializer, Serialize};

use crate::amp::Precision;
use crate::files;
use crate::models::pretrain;

/// One line of `metrics.jsonl`, written at every evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub step: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub epoch: f64,
    /// The last step's learning rate (`optim.lr` times the schedule's factor).
    #[serde(deserialize_with = "f64_or_nan")]
    pub lr: f64,
    /// The last step's learning rate of the state-space parameters (`optim.ssm_lr` times the
    /// factor), for a model that has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm_lr: Option<f64>,
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_loss: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_acc: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub val_loss: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub val_acc: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub img_per_s: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub wall_s: f64,
}

/// `result.json`: what a finished run achieved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub preset: Option<String>,
    pub model: String,
    pub task: String,
    pub paper_figure: Option<f64>,
    pub paper_setting: Option<String>,
    #[serde(deserialize_with = "f64_or_nan")]
    pub best_val_acc: f64,
    pub best_step: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub test_acc: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub test_loss: f64,
    pub params: i64,
    pub steps: u64,
    /// The steps the run was planned for (`train.max_steps`, else the epochs' steps): `steps`
    /// short of it means the time budget stopped the run, which `--resume` with a larger
    /// `--max-minutes` continues. 0 in records written before it was kept.
    #[serde(default)]
    pub planned_steps: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub epochs: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub img_per_s: f64,
    pub device: String,
    pub precision: Precision,
    #[serde(deserialize_with = "f64_or_nan")]
    pub wall_s: f64,
    pub seed: u64,
    /// Images per forward/backward pass (0 in records written before micro-batching).
    #[serde(default)]
    pub micro_batch: i64,
    /// The pretraining run the backbone started from (`train --init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// A self-pretraining run's objective and losses (its accuracies are `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainResult>,
    /// Data-parallel processes (1 in records written before them).
    #[serde(default = "one")]
    pub world_size: usize,
    pub commit: String,
    pub date: String,
}

/// What a self-pretraining run (`pixelseq pretrain`) reached: its validation metric is the
/// reconstruction loss (`test_loss` of [`RunRecord`] is the test split's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainResult {
    /// The method's settings, as `[pretrain]` gives them. Records written before all of them
    /// were kept (2026-12-06) read the missing ones as their defaults: the run's `config.toml`
    /// holds what it used.
    #[serde(flatten)]
    pub method: pretrain::Config,
    #[serde(deserialize_with = "f64_or_nan")]
    pub best_val_loss: f64,
}

/// A number that JSON may hold as `null`: serde_json writes NaN and ±inf so, and they read back
/// as NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn one() -> usize {
    1
}

/// Drops the metric lines written after the checkpoint a run resumes from.
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = files::read_regular_to_string(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<Metrics>(l).is_ok_and(|m| m.step <= step))
        .collect();
    files::write_bytes(path, (kept.join("\n") + if kept.is_empty() { "" } else { "\n" }).as_bytes())
}

/// Today's date (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics line with a non-finite loss, as serde_json writes it, reads back.
    #[test]
    fn null_numbers_read_back_as_nan() {
        let line = r#"{"step":5,"epoch":1.0,"lr":0.001,"train_loss":2.3,"train_acc":0.1,"val_loss":null,"val_acc":0.1,"img_per_s":10.0,"wall_s":3.0}"#;
        let m: Metrics = serde_json::from_str(line).unwrap();
        assert!(m.val_loss.is_nan() && m.step == 5);
        assert!(
            serde_json::from_str::<Metrics>(&line.replace("\"lr\":0.001,", "")).is_err(),
            "a missing field"
        );
    }
}
