//! Timing one model in the child process: the trainer's step (eager, and on CUDA also captured as
//! a CUDA graph where the run would capture it) and inference, each the median of `steps` after
//! `warmup`, between device synchronisations. Both take the batch in the parts the
//! trainer would (`train.micro_batch`, `auto` by default: see `train::memory`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use tch::{nn, Device, Kind, Tensor};

use super::Measurement;
use crate::amp::Precision;
use crate::config::RunConfig;
use crate::data::InputSpec;
use crate::models::{param_count, NUM_CLASSES};
use crate::objective::Learner;
use crate::train::graph::{self, StepGraph};
use crate::train::memory;
use crate::train::optim::AdamW;
use crate::train::step::{train_step, Batch, LossScaler, Settings};
use crate::{device, files};

/// How [`measure`] times: `warmup` untimed steps, the median of `steps` timed ones, then
/// optionally `steps` training steps under the profiler, written to `<profile>.txt` and `.json`.
pub struct Timing {
    pub steps: usize,
    pub warmup: usize,
    pub profile: Option<PathBuf>,
}

/// What a timed training step of `cfg` takes: `batch` random images (B, L, C) with random
/// labels, and the recipe's step settings at the schedule's full learning rate.
pub(super) fn step_inputs(
    cfg: &RunConfig,
    input: InputSpec,
    batch: i64,
    micro_batch: i64,
    device: Device,
    precision: Precision,
) -> (Batch, Settings) {
    let inputs = Batch {
        xs: Tensor::randint(256, [batch, input.seq_len, input.channels], (Kind::Uint8, device)), // (B, L, C)
        labels: Tensor::randint(NUM_CLASSES, [batch], (Kind::Int64, device)),                    // (B)
        mix: None,
    };
    let settings = Settings {
        precision,
        label_smoothing: cfg.optim.label_smoothing,
        clip_norm: cfg.optim.clip_norm,
        lr_factor: 1.0,
        micro_batch,
    };
    (inputs, settings)
}

/// Times `cfg`'s model on random pixels (B, L, C): training, then inference of the same `batch`
/// images in evaluation batches of at most `eval_batch`.
pub fn measure(
    cfg: &RunConfig,
    input: InputSpec,
    (batch, eval_batch): (i64, i64),
    t: &Timing,
    device: Device,
    precision: Precision,
) -> Result<Measurement> {
    let (steps, warmup) = (t.steps, t.warmup);
    let gpu = match device {
        Device::Cuda(i) => Some(device::CudaMemory::new(i)?),
        _ => None,
    };
    let mut peak = 0u64;
    let mut sample = || {
        if let Some(g) = &gpu {
            peak = peak.max(g.used().unwrap_or(0));
        }
    };
    let graphs = graph::measurable(cfg, device, precision)?;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let learner = Learner::Classifier(cfg.model.build(&vs.root(), &input)?);
    let mut opt = AdamW::new(&vs, &cfg.optim)?;
    let memory = memory::plan(&learner, &vs, input, batch, eval_batch, cfg.train.micro_batch, device, precision)?;
    let (inputs, settings) = step_inputs(cfg, input, batch, memory.micro_batch, device, precision);
    let mut scaler = LossScaler::new(precision);
    let train = median_seconds(warmup, steps, device, || {
        train_step(&learner, &mut opt, &inputs, &settings, &mut scaler)?;
        sample();
        Ok(())
    })?;
    let infer = median_seconds(warmup, steps, device, || {
        for start in (0..batch).step_by(memory.eval_batch as usize) {
            let xs = inputs.xs.narrow(0, start, memory.eval_batch.min(batch - start));
            let _ = tch::no_grad(|| learner.part(&xs, &inputs.labels.narrow(0, start, xs.size()[0]), None, 0.0, precision, false));
        }
        sample();
        Ok(())
    })?;
    let peak_mem_mb = match &gpu {
        Some(g) => peak.saturating_sub(g.baseline) as f64 / MIB,
        None => device::peak_rss_mib().context("cannot read VmHWM from /proc/self/status")?,
    };
    if let Some(prefix) = &t.profile {
        let trace = PathBuf::from(format!("{}.json", prefix.display()));
        let ((), summary) = crate::profile::profile(device.is_cuda(), &trace, || {
            for _ in 0..steps {
                train_step(&learner, &mut opt, &inputs, &settings, &mut scaler)?;
            }
            device::sync(device);
            Ok(())
        })?;
        let text = format!(
            "{} training steps of batch {batch} at L = {}, {device:?}\n\n{summary}",
            steps, input.seq_len
        );
        files::write_bytes(&prefix.with_extension("txt"), text.as_bytes())?;
    }
    // The same step captured as a CUDA graph, where a run could capture it, last: the eager
    // figures and their peak memory are the eager step's alone, and a graph that fails leaves
    // them measured (its error goes into the record's note).
    let graph = graphs.then(|| {
        let warmup = warmup.max(graph::WARMUP_STEPS as usize + 1);
        StepGraph::new(device, &mut opt)
            .and_then(|mut g| median_seconds(warmup, steps, device, || g.step(&learner, &mut opt, &inputs, &settings).map(|_| ())))
            .map_err(|e| format!("{e:#}"))
    });
    Ok(Measurement {
        params: param_count(&vs),
        train_img_per_s: batch as f64 / train,
        graph_train_img_per_s: graph.as_ref().and_then(|g| g.as_ref().ok()).map(|t| batch as f64 / t),
        graph_error: graph.and_then(Result::err),
        infer_img_per_s: batch as f64 / infer,
        peak_mem_mb,
        max_allocated_mb: None,
        formulation: String::new(),
        micro_batch: (memory.micro_batch < batch).then_some(memory.micro_batch),
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// Runs `f` `warmup` times, then `steps` times timed, each between device synchronisations;
/// returns the median seconds.
pub(super) fn median_seconds(warmup: usize, steps: usize, device: Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        device::sync(device);
        let start = Instant::now();
        f()?;
        device::sync(device);
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(median(&mut times))
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
