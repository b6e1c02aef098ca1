//! The JSON records of `pixelseq bench`, also read by `pixelseq report`.

use serde::{Deserialize, Serialize};

/// What one process measured for one (preset, L).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub params: i64,
    pub train_img_per_s: f64,
    /// pixelseq on CUDA: the training step replayed as a CUDA graph (`train.cuda_graphs`), where
    /// the preset allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_train_img_per_s: Option<f64>,
    /// Why the step could not be timed as a CUDA graph, when it was tried and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_error: Option<String>,
    pub infer_img_per_s: f64,
    pub peak_mem_mb: f64,
    /// PyTorch on CUDA: `torch.cuda.max_memory_allocated`, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_allocated_mb: Option<f64>,
    /// How the PyTorch reference computes the model, when worth saying.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub formulation: String,
    /// pixelseq: images per forward/backward pass, when fewer than the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<i64>,
}

/// One line of the JSON output: one implementation of one preset at one length. Numbers are
/// `null` when the cell was not measured (`note` says why).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub model: String,
    pub preset: String,
    pub seq_len: i64,
    pub batch: i64,
    pub train_img_per_s: Option<f64>,
    /// pixelseq on CUDA: the training step replayed as a CUDA graph (`train_img_per_s` is the
    /// eager step), where the preset allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_train_img_per_s: Option<f64>,
    pub infer_img_per_s: Option<f64>,
    /// MiB; see `memory` for what it measures.
    pub peak_mem_mb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_allocated_mb: Option<f64>,
    pub params: Option<i64>,
    pub device: String,
    pub precision: String,
    /// "pixelseq" or "pytorch".
    #[serde(rename = "impl")]
    pub implementation: String,
    /// What `peak_mem_mb` measures.
    pub memory: String,
    /// Why a cell is empty (n/a, error) or a parameter-count mismatch; empty when all is well.
    pub note: String,
    /// How the PyTorch reference computes the model (the formulation compared).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub formulation: String,
    /// pixelseq: images per forward/backward pass, when fewer than the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<i64>,
}

impl Record {
    /// What a line of a report stands for: the preset (two presets of one model are two lines),
    /// else the model.
    pub fn label(&self) -> &str {
        if self.preset.is_empty() {
            &self.model
        } else {
            &self.preset
        }
    }
}
