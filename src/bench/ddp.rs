//! `pixelseq bench --nproc N` (or under torchrun/srun): what data parallelism costs. Each rank
//! trains its share of the batch (B / N images) of each preset at each length, on random pixels,
//! and times, median of `--steps` after `--warmup`, device synchronised:
//! - `alone`: the step without any communication (each rank on its own);
//! - `after`: the step with the gradient all-reduce started after the backward pass;
//! - `overlapped`: the step with each bucket's all-reduce started by a hook as soon as backward
//!   has produced its gradients (what `pixelseq train` does);
//! - `all-reduce`: the all-reduce alone (bucket copies included), gradients already there.
//!
//! The overhead is `overlapped` over `alone`. Rank 0 prints the table and writes `--json`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::measure::{median_seconds, step_inputs};
use super::{resolve_precision, Options};
use crate::data::InputSpec;
use crate::dist::{Dist, GradReducer};
use crate::objective::Learner;
use crate::train::memory;
use crate::train::optim::AdamW;
use crate::train::step::{train_step_synced, LossScaler};
use crate::{device, files};

/// One (preset, L) measured across the ranks; times in milliseconds on rank 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DdpRecord {
    pub preset: String,
    pub seq_len: i64,
    /// The global batch; each rank trains batch / ranks images.
    pub batch: i64,
    pub ranks: usize,
    pub backend: String,
    pub device: String,
    pub grad_mb: f64,
    pub buckets: usize,
    pub alone_ms: f64,
    pub after_ms: f64,
    pub overlapped_ms: f64,
    pub all_reduce_ms: f64,
    /// `overlapped_ms / alone_ms - 1`, percent.
    pub overhead_pct: f64,
}

/// Measures every source at every length on this rank; rank 0 prints and saves.
pub fn run(o: &Options, dist: &Dist) -> Result<()> {
    let ranks = dist.world.size;
    let mut records = Vec::new();
    for source in &o.sources {
        let cfg = source.load(&o.overrides)?;
        for &seq_len in &o.seq_lens {
            let input = InputSpec {
                channels: cfg.task.name.channels(),
                seq_len,
            };
            cfg.model.validate(&input)?;
            let batch = o.batch.unwrap_or(cfg.train.batch_size);
            if batch % ranks as i64 != 0 {
                anyhow::bail!("batch {batch} does not divide among {ranks} processes");
            }
            let share = batch / ranks as i64;
            let precision = resolve_precision(o.precision.unwrap_or(cfg.train.precision), o.device)?;
            tch::manual_seed(0);
            let vs = nn::VarStore::new(o.device);
            let learner = Learner::Classifier(cfg.model.build(&vs.root(), &input)?);
            let mut opt = AdamW::new(&vs, &cfg.optim)?;
            let plan = memory::plan(&learner, &vs, input, share, share, cfg.train.micro_batch, o.device, precision)?;
            let params: Vec<Tensor> = vs.trainable_variables().into_iter().filter(|t| t.numel() > 0).collect();
            let mut grads = GradReducer::new(&dist.group, &params, true)?;
            let (inputs, settings) = step_inputs(&cfg, input, share, plan.micro_batch, o.device, precision); // (B/N, L, C)
            let mut scaler = LossScaler::new(precision);
            let label = source_label(source);
            if dist.is_main() {
                eprintln!("{label} L={seq_len} batch {batch} over {ranks} ranks …");
            }
            let mut step =
                |g: Option<&mut GradReducer>| train_step_synced(&learner, &mut opt, &inputs, &settings, &mut scaler, g).map(|_| ());
            let (warmup, steps) = (o.warmup, o.steps);
            let alone = median_seconds(warmup, steps, o.device, || step(None))?;
            grads.set_overlap(false);
            let after = median_seconds(warmup, steps, o.device, || step(Some(&mut grads)))?;
            grads.set_overlap(true);
            let overlapped = median_seconds(warmup, steps, o.device, || step(Some(&mut grads)))?;
            let all_reduce = median_seconds(warmup, steps, o.device, || grads.finish())?;
            let (buckets, bytes) = grads.layout();
            records.push(DdpRecord {
                preset: label,
                seq_len,
                batch,
                ranks,
                backend: dist.group.backend.to_string(),
                device: device::name(o.device),
                grad_mb: bytes as f64 / 1e6,
                buckets,
                alone_ms: 1e3 * alone,
                after_ms: 1e3 * after,
                overlapped_ms: 1e3 * overlapped,
                all_reduce_ms: 1e3 * all_reduce,
                overhead_pct: 100.0 * (overlapped / alone - 1.0),
            });
        }
    }
    if dist.is_main() {
        print!("{}", table(&records));
        if let Some(path) = &o.json {
            files::write_bytes(path, serde_json::to_string_pretty(&records)?.as_bytes())?;
            eprintln!("wrote {} records to {}", records.len(), path.display());
        }
    }
    Ok(())
}

fn source_label(s: &super::Source) -> String {
    match s {
        super::Source::Preset(name) => name.clone(),
        super::Source::File(path) => path.file_stem().unwrap_or_default().to_string_lossy().into_owned(),
    }
}

/// A markdown table of the records.
pub fn table(records: &[DdpRecord]) -> String {
    let mut out = String::from(
        "| Preset | L | Batch | Ranks | Backend | Device | Gradients MB | Buckets | Step alone ms | All-reduce after backward ms | Overlapped ms | All-reduce alone ms | Overhead |\n|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in records {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:+.1}% |\n",
            r.preset,
            r.seq_len,
            r.batch,
            r.ranks,
            r.backend,
            r.device,
            r.grad_mb,
            r.buckets,
            r.alone_ms,
            r.after_ms,
            r.overlapped_ms,
            r.all_reduce_ms,
            r.overhead_pct
        );
    }
    out
}
