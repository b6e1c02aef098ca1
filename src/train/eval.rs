//! Scoring a model on a split: mean cross-entropy and accuracy over every image (no dropped
//! remainder), or a pretrainer's mean reconstruction loss, in eval mode and without gradients,
//! with progress shown as it goes.

use anyhow::Result;
use tch::{Kind, Reduction, Tensor};

use super::graph::InferenceGraphs;
use super::progress::EvalProgress;
use crate::amp::{self, Precision};
use crate::data::{batch_input, Split, TaskConfig};
use crate::objective::Learner;

/// Images per forward pass when scoring, unless a run's config says otherwise.
pub const EVAL_BATCH: i64 = 256;

/// Seed of torch's generator before a pretrainer's evaluation: every evaluation masks the same
/// positions of the same images (for a given evaluation batch).
const EVAL_MASK_SEED: i64 = 0x5eed;

/// What an evaluation pass gives.
#[derive(Debug, Clone, Copy)]
pub struct Score {
    pub loss: f64,
    /// `None` for a pretrainer.
    pub acc: Option<f64>,
    /// Images scored and those classified correctly (0 for a pretrainer).
    pub images: i64,
    pub correct: i64,
    /// Images scored per second.
    pub img_per_s: f64,
}

/// Loss and accuracy of `learner` on the first `limit` images of a split (`None`: every image);
/// `what` names the pass in the progress display. A classifier's forward passes replay `graphs`
/// when given (a run with CUDA graphs).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    learner: &Learner,
    split: &Split,
    task: &TaskConfig,
    batch: i64,
    limit: Option<i64>,
    precision: Precision,
    what: &str,
    mut graphs: Option<&mut InferenceGraphs>,
) -> Result<Score> {
    let n = limit.map_or(split.len(), |l| l.min(split.len()));
    let mut progress = EvalProgress::new(what, n);
    let (mut loss, mut correct) = (
        Tensor::zeros([], (Kind::Float, split.labels.device())),
        Tensor::zeros([], (Kind::Int64, split.labels.device())),
    );
    if !learner.classifies() {
        tch::manual_seed(EVAL_MASK_SEED);
    }
    tch::no_grad(|| -> Result<()> {
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let xs = batch_input(&split.images.narrow(0, start, len), task, false);
            let ys = split.labels.narrow(0, start, len);
            match learner {
                Learner::Classifier(model) => {
                    let forward = |xs: &Tensor| amp::autocast(precision, || model.forward_t(xs, false)).to_kind(Kind::Float);
                    let logits = match graphs.as_deref_mut() {
                        Some(g) => g.logits(&xs, forward)?,
                        None => forward(&xs),
                    };
                    loss += logits.cross_entropy_loss::<Tensor>(&ys, None, Reduction::Sum, -100, 0.0);
                    correct += logits.argmax(-1, false).eq_tensor(&ys).sum(Kind::Int64);
                }
                Learner::Pretrainer(_) => loss += learner.part(&xs, &ys, None, 0.0, precision, false).loss * len as f64,
            }
            start += len;
            progress.update(start);
        }
        Ok(())
    })?;
    let correct = correct.int64_value(&[]);
    Ok(Score {
        loss: loss.double_value(&[]) / n as f64,
        acc: learner.classifies().then(|| correct as f64 / n as f64),
        images: n,
        correct,
        img_per_s: progress.rate(),
    })
}
