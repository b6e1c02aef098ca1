//! The classifier's objective: cross-entropy of the logits against the labels, with label
//! smoothing and, for mixup and CutMix, the mixed images' labels weighted by their share.

use tch::{Kind, Reduction, Tensor};

use super::PartLoss;

/// Mean loss and correct count of `logits` (b, 10) for `labels` (b); `mix`: the labels of the
/// images mixed in and the weight λ of `labels`.
pub fn loss(logits: &Tensor, labels: &Tensor, mix: Option<(&Tensor, f64)>, label_smoothing: f64) -> PartLoss {
    let ce = |ys: &Tensor| logits.cross_entropy_loss::<Tensor>(ys, None, Reduction::Mean, -100, label_smoothing);
    let loss = match mix {
        Some((other, lam)) => ce(labels) * lam + ce(other) * (1.0 - lam),
        None => ce(labels),
    };
    let correct = tch::no_grad(|| logits.argmax(-1, false).eq_tensor(labels).sum(Kind::Float));
    PartLoss {
        loss,
        correct: Some(correct),
    }
}
