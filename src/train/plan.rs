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
