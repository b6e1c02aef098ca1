//! Self-pretraining on the task's own images: "Never Train from Scratch: Fair Comparison of
//! Long-Sequence Models Requires Data-Driven Priors" (Amos, Berant and Gupta, ICLR 2024; arXiv
//! 2310.02980; code IdoAmos/not-from-scratch). A backbone ([`super::Backbone`]) learns to
//! reconstruct pixels, then a classifier is fine-tuned from it (`pixelseq train --init`).
//!
//! - **masked** ([`Objective::Masked`]): a share `mask_ratio` of each image's positions are
//!   masked and the loss is taken at those positions only. The paper's Image recipe masks 50% and
//!   regresses the pixels with an L1 loss (`configs/experiment/lra/transformer-lra-cifar-mlm.yaml`).
//!   How many are masked is [`MaskDraw`]: exactly `round(ratio · L)` per image, or each position
//!   with probability `ratio` (the code's). What a masked position feeds the model is
//!   [`MaskInput`]: a learned vector after the input encoder (BERT's and MAE's mask token; any
//!   model, and the encoder keeps its shape between the stages), or the code's zeroed value with a
//!   mask-indicator channel (models with a Linear pixel encoder).
//! - **causal** ([`Objective::Causal`]): every position predicts the next pixel from the pixels
//!   up to it (the paper's autoregressive variant, which works about as well).
//!
//! Losses: `l1` and `l2` on the pixel values normalised as the models normalise their inputs
//! (per-channel mean and standard deviation), `ce` a 256-way classification of each channel's
//! grey level. The reconstruction head Linear(d → C, or 256·C for `ce`), initialised as
//! [`HeadInit`] says, and the mask vector or column live under `pretrain.` and are dropped at
//! fine-tuning.
//!
//! # The SPT code, point by point (issue 27)
//! `presets/transformer-spt.toml` (masked) and `transformer-spt-causal.toml` are the code's LRA
//! Image recipe. Besides what they share with it (the 50% ratio, masking whole grey pixels before
//! the positions are added, L1 on the normalised value at masked positions only, the 3 × 64 pre-LN
//! model, AdamW lr 1e-3 without weight decay, constant schedules with 2,500 and 2,000 warm-up
//! steps, batches of 32 and 50, 50 and 200 epochs, no clipping), ten points were checked against
//! the code (paths in IdoAmos/not-from-scratch):
//! 1. Mask count, reproduced: `pretrain.mask = "bernoulli"` draws each pixel with probability 0.5,
//!    `torch.rand_like(x) < mlm_prob` in `src/dataloaders/base.py`; `"exact"` (the default, every
//!    other preset) masks `round(0.5 · 1024) = 512` of every image.
//! 2. A masked pixel's input, reproduced: `pretrain.mask_input = "channel"`. The code feeds
//!    `cat(x·(1 − m), m)` to the encoder Linear(2, 64) (`base.py`; `d_input` 2 in `CIFAR10LM`,
//!    `src/dataloaders/basic.py`), i.e. W·x + b unmasked and b + w_m masked; here w_m is
//!    `pretrain.mask_column` beside the model's Linear(1, 64), all three drawn U(±1/√2) as
//!    PyTorch's Linear(2, 64) is, and fine-tuning leaves the column behind as `train.py`'s
//!    `load_pretrained_model` drops it. `"token"` (the default) is the learned N(0, 0.02) vector.
//! 3. Reconstruction head init, reproduced: `pretrain.head_init = "pytorch"`, U(±1/√64) = ±0.125
//!    as the code's `nn.Linear` (`SequenceDecoder`, `src/tasks/decoders.py`); `"kaiming"` (the
//!    default) is tch's, weights √6 = 2.45 times wider.
//! 4. Positions, reproduced: `model.pos = "sinusoidal"` in the Transformer, fixed sines and cosines
//!    (`PositionalEncoder`, `src/tasks/encoders.py`; `configs/model/transformer.yaml`: encoder
//!    position): 65,536 parameters fewer than learned positions.
//! 5. Fine-tuning classifier, reproduced: `model.head_dim = 64`, Linear(64, 64)–ReLU–Linear(64, 10)
//!    (`NoneLinearSequenceDecoder`, `decoders.py`); the Transformer's default stays `mlp_dim`.
//! 6. Attention init, reproduced: `model.attn_init = "cloned"`, q, k, v and the output projection
//!    start as one draw copied (`clones(nn.Linear(d, d), 4)` deep-copies, `MultiheadAttentionFlash`
//!    in `src/models/sequence/mha.py`).
//! 7. Grayscale, reproduced: `task.gray = "pil"`, torchvision's `Grayscale()` on PIL images
//!    (`basic.py`), PIL's rounded integer formula (`crate::data::gray`); one grey level apart from
//!    TensorFlow's truncated conversion (LRA's, the default) on 25.5% of CIFAR-10's pixels.
//! 8. Validation split, documented: the code takes a `random_split` of 10% with seed 42; pixelseq
//!    keeps LRA's split (the last 5,000 training images) so that the figures compare with the rest
//!    of the LRA table.
//! 9. Pretraining validation, documented: the code validates twice an epoch
//!    (`val_check_interval: 0.5`, `configs/pipeline/cifar-lm.yaml`) on masks drawn afresh in each
//!    pass (the dataset masks in `__getitem__`); pixelseq validates at `train.eval_every` on masks
//!    fixed by a seed (`train::eval`), so successive validation losses score the same pixels.
//!    Either picks a best checkpoint as well; the fixed masks make the comparison less noisy.
//! 10. The fine-tuned checkpoint, both: `train --init RUN` takes the best (lowest validation L1;
//!     the paper's appendix C.1 fine-tunes the best), `--init RUN --last` the last
//!     (`train.init_checkpoint`); the code writes both (`manual_checkpointing`, `train.py`) and
//!     `train.pretrained_model_path` takes either.
//!
//! With these the fine-tuned model has the code's 105,482 parameters, and pretraining trains its
//! 100,801 (the pixelseq pretraining run also holds the unused classifier, 4,810 more). Left as
//! the code's configs have them, against the paper's text: the paper's Table 4 lists max pooling
//! for Image, the configs mean pooling (followed).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::common::torch_linear;
use super::{Backbone, Input, ModelConfig, Objective};
use crate::data::InputSpec;

/// How reconstructed pixels are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Mean absolute error of the normalised pixel values (the paper's choice).
    L1,
    /// Mean squared error of the normalised pixel values.
    L2,
    /// Cross-entropy over the 256 grey levels of each channel.
    Ce,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::L1 => "l1",
            Loss::L2 => "l2",
            Loss::Ce => "ce",
        })
    }
}

/// How the masked positions of an image are drawn (`objective = "masked"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskDraw {
    /// Exactly `round(mask_ratio · L)` positions of each image, uniformly (MAE's shuffle).
    Exact,
    /// Each position on its own with probability `mask_ratio`, so the count varies from image to
    /// image: `torch.rand_like(x) < mlm_prob` in IdoAmos/not-from-scratch
    /// `src/dataloaders/base.py` (`MaskedSequenceDatasetWrapper.mask`).
    Bernoulli,
}

/// Initialisation of the reconstruction head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadInit {
    /// tch's default: Kaiming-uniform weights (bound √(6/d), 0.31 at d = 64), bias U(±1/√d).
    Kaiming,
    /// PyTorch's `nn.Linear` default, weights and bias U(±1/√d) (0.125 at d = 64): the SPT
    /// code's decoder (`SequenceDecoder.output_transform`, `src/tasks/decoders.py`).
    Pytorch,
}

/// What a masked position feeds the backbone (`objective = "masked"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskInput {
    /// A learned vector N(0, 0.02) in place of the pixel's input vector (BERT's and MAE's mask
    /// token); any model.
    Token,
    /// The SPT code's float input: the normalised value is zeroed and a mask-indicator channel
    /// appended, so the encoder is Linear(C + 1 → d) (`MaskedSequenceDatasetWrapper.mask`,
    /// `src/dataloaders/base.py`; `d_input` 2 for grey in `CIFAR10LM`, `src/dataloaders/basic.py`).
    /// Here the extra column is `pretrain.mask_column` (d) beside the model's Linear(C → d): a
    /// masked position gets bias + column, as Linear(C + 1) gives [0, 1]; both columns and the
    /// bias start as PyTorch's Linear(C + 1) does, U(±1/√(C + 1)). Fine-tuning drops the column,
    /// as the SPT code's `load_pretrained_model` (`train.py`) drops it. Models whose pixels
    /// enter through a Linear encoder (`model.input = "linear"`): Transformer, Nyströmformer.
    Channel,
}

/// The `[pretrain]` table of a self-pretraining config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub objective: Objective,
    /// Share of each image's positions that are masked (`masked` only). Paper: 0.5.
    pub mask_ratio: f64,
    /// Exactly the ratio of each image, or each position with that probability (the paper's code).
    pub mask: MaskDraw,
    /// A learned mask vector, or the SPT code's zeroed value with a mask channel.
    pub mask_input: MaskInput,
    pub loss: Loss,
    /// The reconstruction head's initialisation.
    pub head_init: HeadInit,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            objective: Objective::Masked,
            mask_ratio: 0.5,
            mask: MaskDraw::Exact,
            mask_input: MaskInput::Token,
            loss: Loss::L1,
            head_init: HeadInit::Kaiming,
        }
    }
}

impl Config {
    /// Checks the table against the model before any tensor exists.
    pub fn validate(&self, model: &ModelConfig, input: &InputSpec) -> Result<()> {
        if !(self.mask_ratio > 0.0 && self.mask_ratio < 1.0) {
            bail!("key `pretrain.mask_ratio` = {}: must be in (0, 1)", self.mask_ratio);
        }
        if (self.mask_ratio * input.seq_len as f64).round() < 1.0 {
            bail!(
                "key `pretrain.mask_ratio` = {} masks no position of {}",
                self.mask_ratio,
                input.seq_len
            );
        }
        if (self.mask_ratio * input.seq_len as f64).round() >= input.seq_len as f64 {
            bail!(
                "key `pretrain.mask_ratio` = {} masks every position of {}: nothing is left to reconstruct from; lower it",
                self.mask_ratio,
                input.seq_len
            );
        }
        if self.mask_input == MaskInput::Channel {
            if self.objective != Objective::Masked {
                bail!(
                    "key `pretrain.mask_input` = \"channel\" marks masked positions; objective `{}` masks none",
                    self.objective
                );
            }
            if !model.linear_input() {
                bail!(
                    "key `pretrain.mask_input` = \"channel\" needs a transformer or nystromformer with model.input = \"linear\"; use \"token\" for model `{}` as configured",
                    model.name()
                );
            }
        }
        let supported = model.objectives();
        if supported.is_empty() {
            bail!(
                "model `{}` has no self-pretraining form; pretrain supports {}",
                model.name(),
                super::pretrainable()
            );
        }
        if !supported.contains(&self.objective) {
            let names: Vec<String> = supported.iter().map(|o| o.to_string()).collect();
            bail!(
                "key `pretrain.objective` = \"{}\": model `{}` as configured supports {} only",
                self.objective,
                model.name(),
                names.join(", ")
            );
        }
        Ok(())
    }
}

/// What a pretrainer predicts at the positions its objective scores.
pub struct Reconstruction {
    /// The head's outputs (M, C, or 256·C for `ce`).
    pub predicted: Tensor,
    /// The raw pixels they are scored against (M, C).
    pub pixels: Tensor,
}

/// A backbone with the mask vector (or mask column) and the reconstruction head.
pub struct Pretrainer {
    pub backbone: Box<dyn Backbone>,
    /// `token`: the mask vector; `channel`: the mask column of the input encoder.
    mask_token: Tensor,
    head: nn::Linear,
    cfg: Config,
}

/// Values per channel a `ce` head scores.
pub const LEVELS: i64 = 256;

impl Pretrainer {
    /// Builds `model` as a backbone under `p` and the pretraining parts under `p / "pretrain"`.
    pub fn new(p: &nn::Path, model: &ModelConfig, cfg: &Config, input: &InputSpec) -> Result<Pretrainer> {
        cfg.validate(model, input)?;
        let backbone = model.build_backbone(p, input)?;
        let d = backbone.width();
        let q = p / "pretrain";
        let outputs = match cfg.loss {
            Loss::L1 | Loss::L2 => input.channels,
            Loss::Ce => LEVELS * input.channels,
        };
        let mask_token = match cfg.mask_input {
            MaskInput::Token => q
                .set_group(super::NO_DECAY)
                .var("mask_token", &[d], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            MaskInput::Channel => {
                let Some(encoder) = backbone.input_linear() else {
                    bail!(
                        "key `pretrain.mask_input` = \"channel\": model `{}` has no linear input encoder",
                        model.name()
                    );
                };
                // PyTorch's Linear(C + 1 → d): every weight column and the bias U(±1/√(C + 1)).
                let bound = 1.0 / ((input.channels + 1) as f64).sqrt();
                tch::no_grad(|| {
                    let _ = encoder.ws.shallow_clone().uniform_(-bound, bound);
                    if let Some(b) = &encoder.bs {
                        let _ = b.shallow_clone().uniform_(-bound, bound);
                    }
                });
                q.set_group(super::NO_DECAY)
                    .var("mask_column", &[d], nn::Init::Uniform { lo: -bound, up: bound })
            }
        };
        Ok(Pretrainer {
            mask_token,
            head: match cfg.head_init {
                HeadInit::Kaiming => nn::linear(&q / "head", d, outputs, Default::default()),
                HeadInit::Pytorch => torch_linear(&q / "head", d, outputs),
            },
            backbone,
            cfg: cfg.clone(),
        })
    }

    /// Positions to mask (B, L) bool, from torch's generator (seeded per step by the trainer, so
    /// a resumed run masks alike): `round(mask_ratio · L)` per image, uniform (`exact`), or each
    /// position with probability `mask_ratio` (`bernoulli`).
    pub fn draw_mask(&self, b: i64, l: i64, device: tch::Device) -> Tensor {
        let u = Tensor::rand([b, l], (Kind::Float, device)); // (B, L)
        match self.cfg.mask {
            MaskDraw::Exact => {
                let k = (self.cfg.mask_ratio * l as f64).round() as i64;
                u.argsort(-1, false).argsort(-1, false).lt(k) // (B, L)
            }
            MaskDraw::Bernoulli => u.lt(self.cfg.mask_ratio), // (B, L)
        }
    }

    /// The head's predictions (M, out) at the positions the objective scores, beside those
    /// positions' raw pixels (M, C): the masked ones (`mask`, drawn if `None`), or every position
    /// but the last against the next pixel (causal). [`crate::objective::pretrain`] scores them.
    pub fn reconstruct(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Reconstruction {
        let (b, l, c) = xs.size3().expect("pixels are (B, L, C)");
        match self.cfg.objective {
            Objective::Masked => {
                let drawn;
                let mask = match mask {
                    Some(m) => m,
                    None => {
                        drawn = self.draw_mask(b, l, xs.device());
                        &drawn
                    }
                };
                let fill = self.mask_fill(); // (d)
                let input = Input {
                    masked: Some((mask, &fill)),
                    causal: false,
                };
                let predicted = self.backbone.features(xs, input, train).apply(&self.head); // (B, L, out)
                let chosen = mask.view([b * l]).nonzero().squeeze_dim(1); // (M)
                let take = |t: &Tensor| t.reshape([b * l, -1]).index_select(0, &chosen); // (M, ·)
                Reconstruction {
                    predicted: take(&predicted),
                    pixels: take(xs),
                }
            }
            Objective::Causal => {
                let input = Input {
                    masked: None,
                    causal: true,
                };
                let predicted = self.backbone.features(xs, input, train).apply(&self.head); // (B, L, out)
                Reconstruction {
                    predicted: predicted.narrow(1, 0, l - 1).reshape([b * (l - 1), -1]), // (B·(L−1), out)
                    pixels: xs.narrow(1, 1, l - 1).reshape([b * (l - 1), c]),            // (B·(L−1), C)
                }
            }
        }
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &Config {
        &self.cfg
    }

    /// The input vector (d) of a masked position: the mask vector (`token`), or what the
    /// encoder Linear(C + 1) gives the input [0, …, 0, 1]: its bias plus the mask column (`channel`).
    fn mask_fill(&self) -> Tensor {
        match self.cfg.mask_input {
            MaskInput::Token => self.mask_token.shallow_clone(),
            MaskInput::Channel => match self.backbone.input_linear().and_then(|l| l.bs.as_ref()) {
                Some(bias) => bias + &self.mask_token, // (d)
                None => self.mask_token.shallow_clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::normalise;
    use super::*;
    use crate::testing::random_pixels;
    use tch::Device;

    fn transformer() -> ModelConfig {
        toml::from_str("name = \"transformer\"\nd_model = 16\nn_heads = 2\nqkv_dim = 16\nmlp_dim = 16\ndropout = 0.0\nattn_dropout = 0.0")
            .unwrap()
    }

    const INPUT: InputSpec = InputSpec { channels: 1, seq_len: 64 };

    #[test]
    fn the_mask_hides_the_ratio_of_each_image() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = Config {
            mask_ratio: 0.3,
            ..Config::default()
        };
        let p = Pretrainer::new(&vs.root(), &transformer(), &cfg, &INPUT).unwrap();
        let mask = p.draw_mask(5, 64, Device::Cpu);
        let per_image = Vec::<i64>::try_from(mask.sum_dim_intlist(1, false, Kind::Int64)).unwrap();
        assert_eq!(per_image, [19; 5]); // round(0.3 · 64)
        assert!(!mask.get(0).equal(&mask.get(1)), "each image draws its own positions");
    }

    /// The reconstruction holds the masked positions and no others: with every position masked
    /// but one, it is the head's output and the pixels at all the others.
    #[test]
    fn only_masked_positions_are_reconstructed() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = Pretrainer::new(&vs.root(), &transformer(), &Config::default(), &INPUT).unwrap();
        let xs = random_pixels(2, &INPUT);
        let all = Tensor::ones([2, 64], (Kind::Bool, Device::Cpu));
        let _ = all.get(0).get(7).fill_(0);
        let r = tch::no_grad(|| p.reconstruct(&xs, Some(&all), false));
        let predicted = tch::no_grad(|| {
            let input = Input {
                masked: Some((&all, &p.mask_token)),
                causal: false,
            };
            p.backbone.features(&xs, input, false).apply(&p.head)
        }); // (B, L, 1)
        let keep = all.unsqueeze(-1);
        assert_eq!(r.predicted.size(), [127, 1]);
        assert!(r.predicted.view([-1]).allclose(&predicted.masked_select(&keep), 1e-6, 1e-6, false));
        assert!(r.pixels.view([-1]).equal(&xs.masked_select(&keep)));
    }

    /// The prediction at position t has zero gradient with respect to the mask vector placed at
    /// positions after t: no information flows from the future (Transformer, PiT, causal S4D).
    /// Exactly zero for attention; S4D's convolution runs through FFTs, whose rounding spreads
    /// ~1e-8 everywhere, so there it is zero to 1e-5 of the gradient from the past.
    #[test]
    fn the_causal_objective_never_sees_the_future() {
        let models = [
            transformer(),
            toml::from_str("name = \"pit\"\ndepth = 2\nd_model = 16\nd_ff = 16\nn_heads = 2\ndropout = 0.0").unwrap(),
            toml::from_str("name = \"s4d\"\nd_model = 8\nn_layers = 2\nd_state = 8\ndropout = 0.0").unwrap(),
        ];
        for model in models {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = Config {
                objective: Objective::Causal,
                ..Config::default()
            };
            let p = Pretrainer::new(&vs.root(), &model, &cfg, &INPUT).unwrap();
            let xs = random_pixels(2, &INPUT);
            let t = 20;
            let future = Tensor::arange(64, (Kind::Int64, Device::Cpu))
                .gt(t)
                .unsqueeze(0)
                .expand([2, 64], false); // (B, L)
            let input = Input {
                masked: Some((&future, &p.mask_token)),
                causal: true,
            };
            let at_t = p.backbone.features(&xs, input, true).apply(&p.head).select(1, t).sum(Kind::Float);
            let from_future = Tensor::run_backward(&[at_t], &[&p.mask_token], false, false)
                .remove(0)
                .abs()
                .max()
                .double_value(&[]);
            // The past does reach it: with the mask vector before t, the gradient is not zero.
            let past = Tensor::arange(64, (Kind::Int64, Device::Cpu))
                .lt(t)
                .unsqueeze(0)
                .expand([2, 64], false); // (B, L)
            let input = Input {
                masked: Some((&past, &p.mask_token)),
                causal: true,
            };
            let at_t = p.backbone.features(&xs, input, true).apply(&p.head).select(1, t).sum(Kind::Float);
            let from_past = Tensor::run_backward(&[at_t], &[&p.mask_token], false, false)
                .remove(0)
                .abs()
                .max()
                .double_value(&[]);
            assert!(from_past > 0.0, "{}: the past does not reach position {t}", model.name());
            let exact = model.name() != "s4d";
            assert!(
                if exact {
                    from_future == 0.0
                } else {
                    from_future <= 1e-5 * from_past
                },
                "{}: position {t} sees the future ({from_future:e} against {from_past:e} from the past)",
                model.name()
            );
        }
    }

    #[test]
    fn objectives_a_model_cannot_run_are_refused() {
        let cfg = Config {
            objective: Objective::Causal,
            ..Config::default()
        };
        let fnet: ModelConfig = toml::from_str("name = \"fnet\"").unwrap();
        let err = cfg.validate(&fnet, &INPUT).unwrap_err().to_string();
        assert!(err.contains("pretrain.objective") && err.contains("masked only"), "{err}");
        let lru: ModelConfig = toml::from_str("name = \"lru\"").unwrap();
        let err = Config::default().validate(&lru, &INPUT).unwrap_err().to_string();
        assert!(err.contains("lru") && err.contains("no self-pretraining form"), "{err}");
    }

    /// `mask = "bernoulli"` (the SPT code's `rand_like(x) < mlm_prob`): the count varies from
    /// image to image, and the share masked over many positions is the ratio.
    #[test]
    fn the_bernoulli_mask_varies_its_count_around_the_ratio() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = Config {
            mask: MaskDraw::Bernoulli,
            ..Config::default()
        };
        let p = Pretrainer::new(&vs.root(), &transformer(), &cfg, &INPUT).unwrap();
        tch::manual_seed(5);
        let (b, l) = (64, 1024);
        let mask = p.draw_mask(b, l, Device::Cpu); // (B, L)
        let per_image = Vec::<i64>::try_from(mask.sum_dim_intlist(1, false, Kind::Int64)).unwrap();
        let distinct: std::collections::BTreeSet<i64> = per_image.iter().copied().collect();
        assert!(distinct.len() > 10, "counts {per_image:?} hardly vary");
        let share = mask.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        let sd = (0.25 / (b * l) as f64).sqrt();
        assert!((share - 0.5).abs() < 4.0 * sd, "share {share} masked at ratio 0.5");
        // Per image the count spreads as Binomial(1024, 0.5): standard deviation 16.
        let counts = Tensor::from_slice(&per_image).to_kind(Kind::Double);
        let spread = counts.std(true).double_value(&[]);
        assert!((8.0..32.0).contains(&spread), "per-image spread {spread}, expected about 16");
        // `exact` (the default) keeps its fixed count under the same seed.
        let exact = Pretrainer::new(&(vs.root() / "exact"), &transformer(), &Config::default(), &INPUT).unwrap();
        let counts = exact.draw_mask(8, l, Device::Cpu).sum_dim_intlist(1, false, Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(counts).unwrap(), [512; 8]);
    }

    fn linear_transformer() -> ModelConfig {
        toml::from_str(
            "name = \"transformer\"\ninput = \"linear\"\nd_model = 16\nn_heads = 2\nqkv_dim = 16\nmlp_dim = 16\ndropout = 0.0\nattn_dropout = 0.0\npool = \"mean\"\nmask_black_pixels = false\ninit = \"pytorch\"",
        )
        .unwrap()
    }

    /// `mask_input = "channel"` computes what the SPT code's encoder Linear(C + 1 → d) computes on
    /// [x·(1 − m), m]: the model's own Linear(C → d) where m = 0, bias + mask column where m = 1;
    /// the encoder and the column start as PyTorch's Linear(2 → d), U(±1/√2).
    #[test]
    fn the_mask_channel_is_a_linear_encoder_with_one_more_input() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = Config {
            mask_input: MaskInput::Channel,
            ..Config::default()
        };
        let p = Pretrainer::new(&vs.root(), &linear_transformer(), &cfg, &INPUT).unwrap();
        let vars = vs.variables();
        assert!(!vars.contains_key("pretrain.mask_token"));
        let (w, b, column) = (&vars["embed.weight"], &vars["embed.bias"], &vars["pretrain.mask_column"]);
        assert_eq!((w.size(), column.size()), (vec![16, 1], vec![16]));
        for t in [w, b, column] {
            let top = t.abs().max().double_value(&[]);
            assert!(top <= 1.0 / 2f64.sqrt() && top > 0.5, "max |x| = {top}: expected U(±1/√2)");
        }
        // The SPT code's encoder as one Linear(2 → d), applied to its own input.
        let xs = random_pixels(2, &INPUT); // (B, L, 1)
        let mask = p.draw_mask(2, 64, Device::Cpu); // (B, L)
        let m = mask.to_kind(Kind::Float).unsqueeze(-1); // (B, L, 1)
        let spt_input = Tensor::cat(&[normalise(&xs) * (1.0 - &m), m.shallow_clone()], -1); // (B, L, 2)
        let spt_weight = Tensor::cat(&[w.shallow_clone(), column.unsqueeze(1)], 1); // (d, 2)
        let expected = tch::no_grad(|| spt_input.linear(&spt_weight, Some(b))); // (B, L, d)
        let fill = tch::no_grad(|| p.mask_fill());
        let ours = tch::no_grad(|| {
            let hs = normalise(&xs).linear(w, Some(b)); // (B, L, d): what the backbone's encoder gives
            super::super::common::mask_inputs(&hs, &mask, &fill)
        });
        assert!(ours.allclose(&expected, 1e-6, 1e-6, false));
        // The reconstruction trains the column (and the bias through it).
        let loss = p.reconstruct(&xs, Some(&mask), true).predicted.sum(Kind::Float);
        let grads = Tensor::run_backward(&[loss], &[column, b], false, false);
        assert!(grads.iter().all(|g| g.abs().sum(Kind::Float).double_value(&[]) > 0.0));

        // A model without a linear encoder, or the causal objective, is refused naming the key.
        let err = cfg.validate(&transformer(), &INPUT).unwrap_err().to_string();
        assert!(err.contains("pretrain.mask_input") && err.contains("model.input"), "{err}");
        let causal = Config {
            objective: Objective::Causal,
            ..cfg
        };
        let err = causal.validate(&linear_transformer(), &INPUT).unwrap_err().to_string();
        assert!(err.contains("pretrain.mask_input") && err.contains("causal"), "{err}");
    }

    /// `head_init = "pytorch"`: the reconstruction head is U(±1/√d) like the SPT code's
    /// `nn.Linear`, where tch's default (`kaiming`) draws weights √6 = 2.45 times wider.
    #[test]
    fn the_head_init_follows_the_setting() {
        let d = 64;
        let model: ModelConfig = toml::from_str("name = \"transformer\"\nd_model = 64\nn_heads = 4\nqkv_dim = 64").unwrap();
        let widest = |head_init| {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = Config {
                head_init,
                ..Config::default()
            };
            let _p = Pretrainer::new(&vs.root(), &model, &cfg, &INPUT).unwrap();
            let vars = vs.variables();
            let bias = vars["pretrain.head.bias"].abs().max().double_value(&[]);
            (vars["pretrain.head.weight"].abs().max().double_value(&[]), bias)
        };
        let bound = 1.0 / (d as f64).sqrt();
        let (w, b) = widest(HeadInit::Pytorch);
        assert!(w <= bound && w > 0.8 * bound && b <= bound && b > 0.0, "pytorch: {w}, {b}");
        let (w, b) = widest(HeadInit::Kaiming);
        assert!(w > bound * 1.5 && w <= (6.0 / d as f64).sqrt() && b <= bound, "kaiming: {w}, {b}");
    }

    /// The faithful preset's pretraining model has the SPT code's parameters: encoder Linear(2, 64)
    /// 192, three blocks 100,416, final norm 128, head Linear(64, 1) 65; 100,801 trained. The
    /// backbone also holds the classifier (4,810, `head.*`), built but unused until fine-tuning.
    #[test]
    fn the_spt_preset_pretrains_the_reference_count() {
        let cfg = crate::config::RunConfig::load(Some("transformer-spt"), None, &[]).unwrap();
        let method = cfg.pretrain.clone().unwrap().method;
        let vs = nn::VarStore::new(Device::Cpu);
        let _p = Pretrainer::new(&vs.root(), &cfg.model, &method, &cfg.task.input_spec()).unwrap();
        let count =
            |keep: &dyn Fn(&str) -> bool| -> i64 { vs.variables().iter().filter(|(n, _)| keep(n)).map(|(_, t)| t.numel() as i64).sum() };
        assert_eq!(count(&|n| !n.starts_with("head.")), 100_801);
        assert_eq!(count(&|n| n.starts_with("head.")), 4_810);
        assert_eq!(super::super::param_count(&vs), 105_611);
        // The causal preset masks nothing: no mask column, but the (unused) mask vector of the
        // same size; the trained part is 100,801 − 64.
        let cfg = crate::config::RunConfig::load(Some("transformer-spt-causal"), None, &[]).unwrap();
        let stage = cfg.for_pretraining().unwrap();
        let method = stage.pretrain.clone().unwrap().method;
        assert_eq!((method.objective, method.head_init), (Objective::Causal, HeadInit::Pytorch));
        let vs = nn::VarStore::new(Device::Cpu);
        let _p = Pretrainer::new(&vs.root(), &stage.model, &method, &stage.task.input_spec()).unwrap();
        assert_eq!(super::super::param_count(&vs), 105_611);
        assert!(!vs.variables().contains_key("pretrain.mask_column"));
    }
}
