//! The model zoo. Every model reads the same input, the raw pixels of a batch as a `Uint8` tensor
//! of shape (B, L, C) — L = 1,024 steps, C = 1 (grayscale LRA Image) or 3 (RGB sCIFAR) — and returns
//! float32 logits of shape (B, 10). How pixels become vectors (a 256-entry embedding or a linear
//! map of normalised values) is each model's choice, made with [`common::InputEncoder`].
//!
//! Each model file opens with its paper, the setting its figure is for, the reference code followed
//! and every deliberate deviation. Where a fact carries a marker, the marker says how it was
//! checked: ✔ read in the reference code or the paper; ~ from a third-party page, leaderboard or
//! reproduction; ✘ not verified (from memory, or the source could not be read).
//!
//! A model reads the batch size only inside tensor operations (`-1` in views, `expand_as`,
//! `zeros_like`), never as a number from `size()`, and makes no constant tensor from a slice in
//! `forward_t`: a TorchScript trace (`pixelseq export`) would fix the first and record the second
//! as an uninitialised tensor.
//!
//! Parameters are tagged with an optimizer group through `nn::Path::set_group`: [`DECAY`] (the
//! default; 1-D tensors in it, biases and norm gains, are exempt from weight decay), [`NO_DECAY`]
//! (embeddings and anything the paper exempts) and [`SSM`] (state-space parameters that the paper
//! trains with their own small learning rate and no weight decay). The trainer follows the tags.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::data::InputSpec;

pub mod common;
pub mod fnet;
pub mod lipschitz;
pub mod lru;
pub mod nystromformer;
pub mod pit;
pub mod pretrain;
pub mod s4d;
pub mod transformer;
pub mod trellisnet;

/// Optimizer group of matrices that take weight decay (1-D tensors in it are exempt).
pub const DECAY: usize = 0;
/// Optimizer group that never takes weight decay (embeddings, norms, biases by choice).
pub const NO_DECAY: usize = 1;
/// State-space parameters (S4D's A and Δ, LRU's ν, θ, γ, B): `optim.ssm_lr`, no weight decay.
pub const SSM: usize = 2;

/// Number of CIFAR-10 classes.
pub const NUM_CLASSES: i64 = 10;

/// What a self-pretraining run (`pixelseq pretrain`) predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Hidden pixels from the others: a share of the positions get the learned mask vector
    /// instead of their pixel (BERT, MAE; Amos et al. 2024's main recipe).
    Masked,
    /// The next pixel from the ones before it, every position at once (GPT); needs a model
    /// whose position t can be made to see only pixels ≤ t.
    Causal,
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Objective::Masked => "masked",
            Objective::Causal => "causal",
        })
    }
}

/// How a backbone pass treats its input (self-pretraining); [`Input::plain`] for classification.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Positions (B, L) bool whose input vector is replaced by a learned mask vector (d).
    pub masked: Option<(&'a Tensor, &'a Tensor)>,
    /// Position t sees only pixels ≤ t.
    pub causal: bool,
}

impl Input<'_> {
    /// Every pixel as it is, nothing hidden.
    pub fn plain() -> Input<'static> {
        Input {
            masked: None,
            causal: false,
        }
    }
}

/// A model seen as a backbone: one feature vector per pixel, before pooling and the classifier.
/// What self-pretraining trains; the classifier (`head`, FNet's `pooler`) is left out of it.
pub trait Backbone: nn::ModuleT {
    /// Raw pixels (B, L, C) uint8 → features (B, L, d), position t for pixel t.
    fn features(&self, xs: &Tensor, input: Input, train: bool) -> Tensor;
    /// The feature width d.
    fn width(&self) -> i64;
    /// The Linear(C → d) input encoder of normalised pixels, where the backbone exposes one: the
    /// `channel` mask input of self-pretraining sets a mask column beside it.
    fn input_linear(&self) -> Option<&nn::Linear> {
        None
    }
}

/// One model of the zoo with its hyperparameters; `name` selects it in TOML.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum ModelConfig {
    S4d(s4d::Config),
    Lru(lru::Config),
    Trellisnet(trellisnet::Config),
    LipschitzRnn(lipschitz::Config),
    Fnet(fnet::Config),
    Pit(pit::Config),
    Transformer(transformer::Config),
    Nystromformer(nystromformer::Config),
}

impl ModelConfig {
    /// The name used in presets (`model.name`).
    pub fn name(&self) -> &'static str {
        match self {
            ModelConfig::S4d(_) => "s4d",
            ModelConfig::Lru(_) => "lru",
            ModelConfig::Trellisnet(_) => "trellisnet",
            ModelConfig::LipschitzRnn(_) => "lipschitz-rnn",
            ModelConfig::Fnet(_) => "fnet",
            ModelConfig::Pit(_) => "pit",
            ModelConfig::Transformer(_) => "transformer",
            ModelConfig::Nystromformer(_) => "nystromformer",
        }
    }

    /// Checks every field against the input before any tensor exists.
    pub fn validate(&self, input: &InputSpec) -> Result<()> {
        match self {
            ModelConfig::S4d(cfg) => cfg.validate(input),
            ModelConfig::Lru(cfg) => cfg.validate(input),
            ModelConfig::Trellisnet(cfg) => cfg.validate(input),
            ModelConfig::LipschitzRnn(cfg) => cfg.validate(input),
            ModelConfig::Fnet(cfg) => cfg.validate(input),
            ModelConfig::Pit(cfg) => cfg.validate(input),
            ModelConfig::Transformer(cfg) => cfg.validate(input),
            ModelConfig::Nystromformer(cfg) => cfg.validate(input),
        }
    }

    /// The self-pretraining objectives this model supports (none: it has no backbone form).
    /// Causal needs a pass in which position t sees only pixels ≤ t: softmax attention with a
    /// causal mask (Transformer, PiT) or a causal convolution kernel without BatchNorm statistics
    /// over positions (unidirectional S4D with LayerNorm). Nyström landmarks and FNet's Fourier
    /// mixing average over the whole sequence: masked only.
    pub fn objectives(&self) -> Vec<Objective> {
        match self {
            ModelConfig::Transformer(_) | ModelConfig::Pit(_) => vec![Objective::Masked, Objective::Causal],
            ModelConfig::S4d(cfg) if !cfg.bidirectional && cfg.norm != s4d::Norm::Batch => vec![Objective::Masked, Objective::Causal],
            ModelConfig::S4d(_) | ModelConfig::Nystromformer(_) | ModelConfig::Fnet(_) => vec![Objective::Masked],
            ModelConfig::Lru(_) | ModelConfig::Trellisnet(_) | ModelConfig::LipschitzRnn(_) => vec![],
        }
    }

    /// Name prefixes of the classifier's tensors: what a backbone pretrained without it lacks.
    pub fn classifier(&self) -> &'static [&'static str] {
        match self {
            ModelConfig::Fnet(_) => &["head.", "pooler."],
            _ => &["head."],
        }
    }

    /// Builds the model under `p` as a backbone for self-pretraining (validating first).
    pub fn build_backbone(&self, p: &nn::Path, input: &InputSpec) -> Result<Box<dyn Backbone>> {
        self.validate(input)?;
        self.admit(input, p.device(), 1.0)?;
        Ok(match self {
            ModelConfig::S4d(cfg) => Box::new(s4d::S4d::new(p, cfg, input)),
            ModelConfig::Fnet(cfg) => Box::new(fnet::FNet::new(p, cfg, input)),
            ModelConfig::Pit(cfg) => Box::new(pit::Pit::new(p, cfg, input)),
            ModelConfig::Transformer(cfg) => Box::new(transformer::Transformer::new(p, cfg, input)),
            ModelConfig::Nystromformer(cfg) => Box::new(nystromformer::Nystromformer::new(p, cfg, input)),
            ModelConfig::Lru(_) | ModelConfig::Trellisnet(_) | ModelConfig::LipschitzRnn(_) => bail!(
                "model `{}` has no self-pretraining form; pretrain supports transformer, nystromformer, fnet, pit and s4d",
                self.name()
            ),
        })
    }

    /// A lower bound on the model's trainable parameters, from its config alone: its largest
    /// tensors (each block's matrices, S4D's and LRU's state matrices, TrellisNet's kernel), so that
    /// a model too large for the memory is refused before a tensor of it exists ([`admit`]). A test
    /// holds it between a quarter and all of every preset's built count.
    pub fn min_params(&self, input: &InputSpec) -> f64 {
        let f = |v: i64| v as f64;
        match self {
            ModelConfig::S4d(c) => f(c.n_layers) * 2.0 * f(c.d_model) * f(c.d_model),
            ModelConfig::Lru(c) => f(c.n_layers) * (2.0 * f(c.d_model) * f(c.d_model) + 4.0 * f(c.d_model) * f(c.d_state)),
            ModelConfig::Trellisnet(c) => 4.0 * f(c.h_size()) * f(c.h_size()) * f(c.kernel_size),
            ModelConfig::LipschitzRnn(c) => 2.0 * f(c.n_units) * f(c.n_units),
            ModelConfig::Fnet(c) => {
                f(c.n_layers) * 2.0 * f(c.d_model) * f(c.d_ff) + f(c.d_model) * f(c.d_model) + f(input.seq_len) * f(c.d_emb)
            }
            ModelConfig::Pit(c) => f(c.depth) * (4.0 * f(c.d_model) * f(c.d_model) + 2.0 * f(c.d_model) * f(c.d_ff)),
            // Each block's q, k, v, out and feed-forward matrices, and the head's hidden layer.
            ModelConfig::Transformer(c) => {
                f(c.n_layers) * (4.0 * f(c.d_model) * f(c.qkv_dim) + 2.0 * f(c.d_model) * f(c.mlp_dim))
                    + f(c.d_model) * f(c.head_dim.unwrap_or(c.mlp_dim))
            }
            // Each block's q, k, v, out and feed-forward matrices, and the head's hidden layer.
            ModelConfig::Nystromformer(c) => {
                f(c.n_layers) * (4.0 * f(c.d_model) * f(c.qkv_dim) + 2.0 * f(c.d_model) * f(c.mlp_dim)) + f(c.d_model) * f(c.mlp_dim)
            }
        }
    }

    /// Refuses, before any tensor exists, a model whose parameters alone, `copies` times (1: the
    /// weights; 4 for training: gradients and AdamW's two moments beside them), in float32 would
    /// not fit in the memory available on `device`.
    pub fn admit(&self, input: &InputSpec, device: tch::Device, copies: f64) -> Result<()> {
        let params = self.min_params(input);
        let bytes = 4.0 * copies * params;
        let available = crate::device::memory_available(device)?;
        if bytes > 0.95 * available {
            let what = if copies > 1.0 {
                "with their gradients and AdamW's two moments"
            } else {
                "in float32"
            };
            bail!(
                "the model does not fit: it has at least {params:.3e} parameters, {:.1} GiB {what}, and {:.1} GiB are available on {}; reduce its sizes (model.*)",
                bytes / GIB,
                available / GIB,
                crate::device::name(device)
            );
        }
        Ok(())
    }

    /// Builds the model under `p` (validating first, and refusing a model whose weights cannot
    /// fit on `p`'s device).
    pub fn build(&self, p: &nn::Path, input: &InputSpec) -> Result<Box<dyn nn::ModuleT>> {
        self.validate(input)?;
        self.admit(input, p.device(), 1.0)?;
        Ok(match self {
            ModelConfig::S4d(cfg) => Box::new(s4d::S4d::new(p, cfg, input)),
            ModelConfig::Lru(cfg) => Box::new(lru::Lru::new(p, cfg, input)),
            ModelConfig::Trellisnet(cfg) => Box::new(trellisnet::TrellisNet::new(p, cfg, input)),
            ModelConfig::LipschitzRnn(cfg) => Box::new(lipschitz::LipschitzRnn::new(p, cfg, input)),
            ModelConfig::Fnet(cfg) => Box::new(fnet::FNet::new(p, cfg, input)),
            ModelConfig::Pit(cfg) => Box::new(pit::Pit::new(p, cfg, input)),
            ModelConfig::Transformer(cfg) => Box::new(transformer::Transformer::new(p, cfg, input)),
            ModelConfig::Nystromformer(cfg) => Box::new(nystromformer::Nystromformer::new(p, cfg, input)),
        })
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Number of trainable scalars in a variable store.
pub fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count that admits a model before it is built is a lower bound, and a close one: between
    /// a quarter and all of the built count, for every shipped preset.
    #[test]
    fn the_parameter_bound_holds_for_every_preset() {
        let mut wrong = Vec::new();
        for name in crate::config::preset_names().unwrap() {
            let cfg = crate::config::RunConfig::load(Some(&name), None, &[]).unwrap();
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let _model = cfg.model.build(&vs.root(), &cfg.task.input_spec()).unwrap();
            let (bound, built) = (cfg.model.min_params(&cfg.task.input_spec()), param_count(&vs) as f64);
            if !(bound <= built && bound >= 0.25 * built) {
                wrong.push(format!("{name}: bound {bound} against {built} built"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
