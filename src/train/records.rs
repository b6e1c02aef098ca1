//! What a run writes about itself: one [`Metrics`] line per evaluation in `metrics.jsonl`, and
//! [`RunRecord`] in `result.json` when it ends.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::amp::Precision;
use crate::files;

/// One line of `metrics.jsonl`, written at every evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub step: u64,
    pub epoch: f64,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub img_per_s: f64,
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
    pub best_val_acc: f64,
    pub best_step: u64,
    pub test_acc: f64,
    pub test_loss: f64,
    pub params: i64,
    pub steps: u64,
    pub epochs: f64,
    pub img_per_s: f64,
    pub device: String,
    pub precision: Precision,
    pub wall_s: f64,
    pub seed: u64,
    /// Images per forward/backward pass (0 in records written before micro-batching).
    #[serde(default)]
    pub micro_batch: i64,
    /// Data-parallel processes (1 in records written before them).
    #[serde(default = "one")]
    pub world_size: usize,
    pub commit: String,
    pub date: String,
}

fn one() -> usize {
    1
}

/// Drops the metric lines written after the checkpoint a run resumes from.
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
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
