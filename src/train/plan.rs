//! The sizes of a run, derived from its config and the training split: what the trainer runs and
//! what `--fit-minutes` sizes ([`crate::bench::fit`]).

use super::eval::EVAL_BATCH;
use crate::config::RunConfig;

/// The sizes of a run, derived from its config and the training split.
pub struct Plan {
    pub batch_size: i64,
    /// Images per forward/backward pass (see `train::memory`).
    pub micro_batch: i64,
    pub steps_per_epoch: u64,
    pub total: u64,
    pub eval_every: u64,
    pub eval_batch: i64,
    /// Validation images per evaluation during training (`None`: all).
    pub val_limit: Option<i64>,
}

impl Plan {
    pub fn new(cfg: &RunConfig, n_train: i64) -> Plan {
        let t = &cfg.train;
        let batch_size = t.batch_size.min(n_train);
        let steps_per_epoch = (n_train / batch_size) as u64;
        let eval_batch = if t.eval_batch_size > 0 {
            t.eval_batch_size
        } else {
            batch_size.max(EVAL_BATCH)
        };
        Plan {
            batch_size,
            micro_batch: batch_size,
            steps_per_epoch,
            total: t.max_steps.unwrap_or(t.epochs * steps_per_epoch),
            eval_every: if t.eval_every == 0 { steps_per_epoch } else { t.eval_every },
            eval_batch,
            val_limit: (t.eval_batches > 0).then(|| t.eval_batches * eval_batch),
        }
    }

    pub fn epoch(&self, step: u64) -> f64 {
        step as f64 / self.steps_per_epoch as f64
    }
}

/// The seconds a run's remaining parts take: one training step, one evaluation during
/// training, and the final validation and test passes.
pub struct Speeds {
    pub step_s: f64,
    pub eval_s: f64,
    pub final_s: f64,
}

/// The step a run with `usable_s` more seconds from `step` should end at: as many steps as fit
/// in them after the final passes, with an evaluation every `eval_every` steps; at least one more
/// step and at most `recipe` in all. `--fit-minutes` sizes a run with it before the first step,
/// and the trainer re-plans with it at each evaluation.
pub fn fitted_total(step: u64, usable_s: f64, eval_every: u64, recipe: u64, s: &Speeds) -> u64 {
    let per_step = s.step_s + s.eval_s / eval_every.max(1) as f64;
    let more = ((usable_s - s.final_s) / per_step).floor().max(1.0) as u64;
    (step + more).min(recipe).max(step + 1)
}
