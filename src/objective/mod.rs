//! What a run fits, and its loss: a classifier ([`classify`]: cross-entropy on the labels;
//! `pixelseq train`) or a pretrainer ([`pretrain`]: reconstruction of hidden or next pixels;
//! `pixelseq pretrain`). The step, the evaluation and the memory probe ask a [`Learner`] for the
//! loss of one part of a batch. The models stay loss-free: a classifier gives logits, a
//! pretrainer ([`crate::models::pretrain::Pretrainer`], the backbone with its mask vector and
//! reconstruction head) gives its predictions beside the pixels they are scored against.

pub mod classify;
pub mod pretrain;

use tch::{nn::ModuleT, Kind, Tensor};

use crate::amp::{self, Precision};
use crate::models::pretrain::Pretrainer;

/// The model a run trains, with what its loss is.
pub enum Learner {
    Classifier(Box<dyn ModuleT>),
    Pretrainer(Pretrainer),
}

/// One part's mean loss and, for a classifier, how many of its images were classified right.
pub struct PartLoss {
    /// Mean loss over the part (float32, with gradient in training).
    pub loss: Tensor,
    /// Images whose argmax is their (first) label, float32 (); `None` for a pretrainer.
    pub correct: Option<Tensor>,
}

impl Learner {
    /// The loss of images `xs` (b, L, C) with `labels` (b); `mix`: the labels of the images mixed
    /// in and the weight λ of `labels` (a classifier only).
    pub fn part(
        &self,
        xs: &Tensor,
        labels: &Tensor,
        mix: Option<(&Tensor, f64)>,
        label_smoothing: f64,
        precision: Precision,
        train: bool,
    ) -> PartLoss {
        match self {
            Learner::Classifier(model) => {
                let logits = amp::autocast(precision, || model.forward_t(xs, train)).to_kind(Kind::Float); // (b, 10)
                classify::loss(&logits, labels, mix, label_smoothing)
            }
            Learner::Pretrainer(p) => PartLoss {
                loss: amp::autocast(precision, || pretrain::loss(p, xs, None, train)).to_kind(Kind::Float),
                correct: None,
            },
        }
    }

    /// The classifier, if the learner is one.
    pub fn classifier(&self) -> Option<&dyn ModuleT> {
        match self {
            Learner::Classifier(model) => Some(model.as_ref()),
            Learner::Pretrainer(_) => None,
        }
    }

    /// Whether the learner classifies (it has an accuracy).
    pub fn classifies(&self) -> bool {
        matches!(self, Learner::Classifier(_))
    }
}
