//! What the trainer does differently as one rank of a data-parallel run ([`Peers::Ranks`]), and
//! nothing when it runs alone ([`Peers::Alone`]):
//! - each rank trains on its share of every batch (`train.batch_size` stays the global batch and
//!   must divide among the ranks; see `sampler.rs`) and the gradients are averaged across ranks
//!   before clipping and the update (`step.rs`, [`GradReducer`]);
//! - every rank starts from rank 0's weights and optimizer state (a resumed run: rank 0 reads the
//!   checkpoint and the others receive it, so the run folder need not be visible to them);
//! - before each evaluation every rank takes rank 0's variables, buffers such as BatchNorm's
//!   running statistics included; training normalises each rank's share with its own batch
//!   statistics, as PyTorch's DistributedDataParallel without SyncBatchNorm does, and the
//!   statistics that are evaluated and saved are rank 0's (DDP's `broadcast_buffers`);
//! - evaluations are sharded (each image scored by exactly one rank) and their sums reduced, as
//!   are the training loss and accuracy tallies, so every rank sees the same scores;
//! - only rank 0 writes the run folder and prints.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::eval::{evaluate, Score};
use super::graph::InferenceGraphs;
use super::optim::AdamW;
use super::progress::{self, Tally};
use crate::amp::Precision;
use crate::data::{Split, TaskConfig};
use crate::dist::{Dist, GradReducer, Reduce};
use crate::objective::Learner;
use crate::run::checkpoint::{self, Moments, State};

/// The processes a run is spread over.
pub enum Peers<'a> {
    /// A single process.
    Alone,
    /// One rank of a data-parallel run, with the all-reduce of its model's gradients.
    Ranks { dist: &'a Dist, grads: GradReducer },
}

/// Rank 0's outcome of reading a checkpoint, as the other ranks receive it.
#[derive(Serialize, Deserialize)]
enum Loaded {
    Ok(State),
    Err(String),
}

impl<'a> Peers<'a> {
    /// `Alone` without `dist`; else this rank, reducing the gradients of `vs`'s trainable
    /// variables (overlapped with the backward pass). Ranks other than 0 stop printing progress.
    pub fn new(dist: Option<&'a Dist>, vs: &nn::VarStore) -> Result<Peers<'a>> {
        let Some(dist) = dist else { return Ok(Peers::Alone) };
        if !dist.is_main() {
            progress::silence();
        }
        let params: Vec<Tensor> = vs.trainable_variables().into_iter().filter(|t| t.numel() > 0).collect();
        let grads = GradReducer::new(&dist.group, &params, true)?;
        Ok(Peers::Ranks { dist, grads })
    }

    /// Whether this process writes the run folder and prints (rank 0, or the only process).
    pub fn main(&self) -> bool {
        match self {
            Peers::Alone => true,
            Peers::Ranks { dist, .. } => dist.is_main(),
        }
    }

    pub fn world(&self) -> usize {
        match self {
            Peers::Alone => 1,
            Peers::Ranks { dist, .. } => dist.world.size,
        }
    }

    /// The gradient reducer a step hands to `train_step_synced`.
    pub fn grads(&mut self) -> Option<&mut GradReducer> {
        match self {
            Peers::Alone => None,
            Peers::Ranks { grads, .. } => Some(grads),
        }
    }

    /// A line for the run's header.
    pub fn describe(&self) -> Option<String> {
        match self {
            Peers::Alone => None,
            Peers::Ranks { dist, grads } => Some(format!(
                "{} processes ({}); {}",
                dist.world.size,
                dist.group.backend,
                grads.describe()
            )),
        }
    }

    /// Images of a batch of `batch` that each rank trains on.
    pub fn share(&self, batch: i64) -> Result<i64> {
        let world = self.world() as i64;
        if batch % world != 0 {
            bail!(
                "train.batch_size = {batch} does not divide among {world} processes: the batch is the global one, split evenly across ranks; use a multiple of {world}"
            );
        }
        Ok(batch / world)
    }

    /// The smallest of the ranks' `v`.
    pub fn min(&self, v: i64) -> Result<i64> {
        match self {
            Peers::Alone => Ok(v),
            Peers::Ranks { dist, .. } => Ok(dist.reduce(&[v as f64], Reduce::Min)?[0] as i64),
        }
    }

    /// Whether `flag` holds on any rank (a collective: every rank must ask).
    pub fn any(&self, flag: bool) -> Result<bool> {
        match self {
            Peers::Alone => Ok(flag),
            Peers::Ranks { dist, .. } => dist.any(flag),
        }
    }

    /// Gives every rank rank 0's variables (trainable or not) and, with `opt`, its AdamW moments.
    pub fn sync(&self, vs: &nn::VarStore, opt: Option<&AdamW>) -> Result<()> {
        let Peers::Ranks { dist, .. } = self else { return Ok(()) };
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors: Vec<Tensor> = vars.into_iter().map(|(_, t)| t).collect();
        if let Some(opt) = opt {
            tensors.extend(opt.moments().into_iter().map(|(_, t)| t));
        }
        dist.group
            .broadcast(&tensors, 0)
            .context("failed to give every rank rank 0's weights")
    }

    /// Loads the checkpoint in `dir` into `vs` (and `opt`) on every rank: rank 0 reads it,
    /// checks that it was trained by as many processes as this run has, and gives the others its
    /// state, weights and moments.
    pub fn load(&self, dir: &Path, vs: &mut nn::VarStore, mut opt: Option<&mut AdamW>) -> Result<State> {
        let world = self.world();
        let read = |vs: &mut nn::VarStore, opt: Option<&mut AdamW>| -> Result<State> {
            let state = checkpoint::load(dir, vs, opt.map(|o| o as &mut dyn Moments))?;
            if state.world_size != world {
                bail!(
                    "`{}` was trained by {} process{}; this run has {world}: resume it with --nproc {} (or as many torchrun/srun processes), since each process's share of the batch and its dropout masks depend on their number",
                    dir.display(),
                    state.world_size,
                    if state.world_size == 1 { "" } else { "es" },
                    state.world_size
                );
            }
            Ok(state)
        };
        let Peers::Ranks { dist, .. } = self else { return read(vs, opt) };
        let loaded = if dist.is_main() {
            let state = read(vs, opt.as_deref_mut());
            let shared = match &state {
                Ok(s) => Loaded::Ok(s.clone()),
                Err(e) => Loaded::Err(format!("{e:#}")),
            };
            dist.share(&format!("checkpoint {}", dir.display()), Some(&serde_json::to_vec(&shared)?))?;
            state?;
            shared
        } else {
            let bytes = dist.share(&format!("checkpoint {}", dir.display()), None)?;
            serde_json::from_slice(&bytes).context("rank 0 sent an unreadable checkpoint state")?
        };
        let state = match loaded {
            Loaded::Ok(s) => s,
            Loaded::Err(e) => bail!("rank 0 could not load the checkpoint: {e}"),
        };
        if let Some(opt) = opt.as_deref_mut() {
            opt.t = state.t;
        }
        self.sync(vs, opt.as_deref())?;
        Ok(state)
    }

    /// The process group of a rank; `None` alone (what [`evaluate_across`] takes).
    pub fn dist(&self) -> Option<&'a Dist> {
        match self {
            Peers::Alone => None,
            Peers::Ranks { dist, .. } => Some(*dist),
        }
    }

    /// Mean training loss and accuracy (`None` for a pretrainer) since the last evaluation, over
    /// every rank's images.
    pub fn tally(&self, tally: &Tally) -> Result<(f64, Option<f64>)> {
        let Peers::Ranks { dist, .. } = self else {
            return Ok(tally.means());
        };
        let (loss, correct, seen) = tally.sums();
        let s = dist.reduce(&[loss, correct, seen as f64], Reduce::Sum)?;
        Ok((s[0] / s[2].max(1.0), tally.classifies().then(|| s[1] / s[2].max(1.0))))
    }
}

/// Scores the first `limit` images of `split` (`None`: all): alone, all of them; as a rank of
/// `dist`, its contiguous share, the sums then combined so that every rank gets the score of the
/// whole, each image counted once. `graphs`: the inference graphs of a run with CUDA graphs
/// (never data-parallel).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_across(
    dist: Option<&Dist>,
    learner: &Learner,
    split: &Split,
    task: &TaskConfig,
    batch: i64,
    limit: Option<i64>,
    precision: Precision,
    what: &str,
    graphs: Option<&mut InferenceGraphs>,
) -> Result<Score> {
    let Some(dist) = dist else {
        return evaluate(learner, split, task, batch, limit, precision, what, graphs);
    };
    let n = limit.map_or(split.len(), |l| l.min(split.len()));
    let (start, len) = shard(n, dist.world.rank, dist.world.size);
    let mine = if len > 0 {
        let part = Split {
            images: split.images.narrow(0, start, len),
            labels: split.labels.narrow(0, start, len),
        };
        let s = evaluate(learner, &part, task, batch, None, precision, what, None)?;
        [
            s.loss * len as f64,
            s.correct as f64,
            len as f64,
            len as f64 / s.img_per_s.max(1e-9),
        ]
    } else {
        [0.0; 4]
    };
    let sums = dist.reduce(&mine[..3], Reduce::Sum)?;
    let seconds = dist.reduce(&mine[3..], Reduce::Max)?[0];
    let (images, correct) = (sums[2] as i64, sums[1] as i64);
    Ok(Score {
        loss: sums[0] / sums[2].max(1.0),
        acc: learner.classifies().then(|| correct as f64 / images.max(1) as f64),
        images,
        correct,
        img_per_s: images as f64 / seconds.max(1e-9),
    })
}

/// Rank `rank`'s contiguous share (start, length) of `n` images among `world` ranks: the first
/// `n % world` ranks take one image more.
fn shard(n: i64, rank: usize, world: usize) -> (i64, i64) {
    let (rank, world) = (rank as i64, world as i64);
    let (per, extra) = (n / world, n % world);
    (rank * per + rank.min(extra), per + i64::from(rank < extra))
}

#[cfg(test)]
mod tests {
    use super::shard;

    #[test]
    fn shards_cover_every_image_once() {
        for (n, world) in [(10, 3), (2, 4), (10000, 2), (7, 7), (0, 2)] {
            let mut next = 0;
            for rank in 0..world {
                let (start, len) = shard(n, rank, world);
                assert_eq!(start, next, "n {n} world {world} rank {rank}");
                next += len;
            }
            assert_eq!(next, n);
        }
    }
}
