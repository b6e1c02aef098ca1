//! `train --fit-minutes`: a run sized to a wall-clock budget on this machine, from the measured
//! speed of its own training step and evaluation pass (timed as `bench` times them) and the
//! trainer's own [`Plan`] of the run (batch, evaluation batch and interval, validation images).
//! The fit is recorded (`train.fit`), and the trainer re-plans the steps at each evaluation from
//! the speed it then measures, so a machine that was busy while the fit timed it (or becomes
//! busy) still fills its budget.

use anyhow::{bail, Result};

use super::{measure, Timing};
use crate::amp;
use crate::config::{Fit, RunConfig};
use crate::data::Dataset;
use crate::train::plan::{fitted_total, Plan, Speeds};
use crate::train::{graph, Options};

/// Seconds a run takes before its first step and after its last that a fit does not time: data
/// already loaded, the model built, the memory probe, checkpoints.
const START_UP_S: f64 = 15.0;

/// Sets `train.max_steps` (and the warm-up in proportion) so that the run of `cfg` on `data` fits
/// `minutes` on the run's device (`opts`), from the measured speed of its training step and
/// evaluation pass, and `train.max_minutes` to `minutes`. With `world` data-parallel processes
/// the step is timed on one process's share of the batch (the all-reduce is not timed) and
/// evaluations are shared. A run that captures its step as a CUDA graph (`train.cuda_graphs`;
/// never `pretrain`) is sized by the graph's speed.
pub fn fit(cfg: &mut RunConfig, data: &Dataset, opts: &Options, minutes: f64, world: usize) -> Result<()> {
    let device = opts.device;
    if !(minutes.is_finite() && minutes > 0.0) {
        bail!("--fit-minutes {minutes}: must be a positive number of minutes");
    }
    let plan = Plan::new(cfg, data.train.len());
    let val = plan.val_limit.map_or(data.val.len(), |l| l.min(data.val.len()));
    eprintln!("timing the training step and an evaluation pass to fit {minutes} minutes…");
    let timing = Timing {
        steps: 3,
        warmup: 2,
        profile: None,
    };
    let precision = amp::resolve(cfg.train.precision, device);
    let share = (plan.batch_size / world as i64).max(1);
    let m = measure(cfg, cfg.task.input_spec(), (share, plan.eval_batch), &timing, device, precision)?;
    let infer = m.infer_img_per_s * world as f64;
    // The step the run will take: the CUDA graph's where the trainer captures one.
    let (graphs, _) = graph::decide(cfg, device, precision, world, opts.pretrain)?;
    let train = m.graph_train_img_per_s.filter(|_| graphs).unwrap_or(m.train_img_per_s);
    let speeds = Speeds {
        step_s: share as f64 / train,
        eval_s: val as f64 / infer,
        final_s: (val + data.test.len()) as f64 / infer,
    };
    let steps = fitted_total(0, 0.9 * minutes * 60.0 - START_UP_S, plan.eval_every, plan.total.max(1), &speeds);
    let warmup = cfg.schedule.warmup_steps;
    if warmup > 0 {
        cfg.schedule.warmup_steps = ((warmup as f64 * steps as f64 / plan.total as f64).round() as u64).max(1);
    }
    cfg.train.max_steps = Some(steps);
    cfg.train.max_minutes = Some(minutes);
    cfg.train.fit = Some(Fit {
        minutes,
        recipe_steps: plan.total,
    });
    eprintln!(
        "fitted to {minutes} minutes: {steps} steps ({:.2} epochs, warm-up {} steps) at {:.0} img/s training and {:.0} img/s evaluation (measured)",
        plan.epoch(steps),
        cfg.schedule.warmup_steps,
        train * world as f64,
        infer
    );
    Ok(())
}
