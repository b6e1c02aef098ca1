//! Self-pretraining on the task's own images: "Never Train from Scratch: Fair Comparison of
//! Long-Sequence Models Requires Data-Driven Priors" (Amos, Berant and Gupta, ICLR 2024; arXiv
//! 2310.02980; code IdoAmos/not-from-scratch). A backbone ([`super::Backbone`]) learns to
//! reconstruct pixels, then a classifier is fine-tuned from it (`pixelseq train --init`).
//!
//! - **masked** ([`Objective::Masked`]): a share `mask_ratio` of each image's positions, drawn
//!   uniformly per image, get a learned mask vector instead of their pixel's input vector, and
//!   the loss is taken at those positions only. The paper's Image recipe masks 50% and regresses
//!   the pixels with an L1 loss (`configs/experiment/lra/transformer-lra-cifar-mlm.yaml`).
//!   Deviation: the paper's code feeds float models a mask value and a mask channel; here every
//!   model gets the learned vector after its input encoder (BERT's and MAE's mask token), so the
//!   encoder has the same shape in pretraining and fine-tuning and loads whole.
//! - **causal** ([`Objective::Causal`]): every position predicts the next pixel from the pixels
//!   up to it (the paper's autoregressive variant, which works about as well).
//!
//! Losses: `l1` and `l2` on the pixel values normalised as the models normalise their inputs
//! (per-channel mean and standard deviation), `ce` a 256-way classification of each channel's
//! grey level. The reconstruction head Linear(d → C, or 256·C for `ce`) and the mask vector live
//! under `pretrain.` and are dropped at fine-tuning.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Reduction, Tensor};

use super::common::normalise;
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

/// The `[pretrain]` table of a self-pretraining config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub objective: Objective,
    /// Share of each image's positions that are masked (`masked` only). Paper: 0.5.
    pub mask_ratio: f64,
    pub loss: Loss,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            objective: Objective::Masked,
            mask_ratio: 0.5,
            loss: Loss::L1,
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
        let supported = model.objectives();
        if supported.is_empty() {
            bail!(
                "model `{}` has no self-pretraining form; pretrain supports transformer, nystromformer, fnet, pit and s4d",
                model.name()
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

/// A backbone with the mask vector and the reconstruction head.
pub struct Pretrainer {
    pub backbone: Box<dyn Backbone>,
    mask_token: Tensor,
    head: nn::Linear,
    cfg: Config,
    channels: i64,
}

/// Values per channel a `ce` head scores.
const LEVELS: i64 = 256;

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
        Ok(Pretrainer {
            mask_token: q
                .set_group(super::NO_DECAY)
                .var("mask_token", &[d], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            head: nn::linear(&q / "head", d, outputs, Default::default()),
            backbone,
            cfg: cfg.clone(),
            channels: input.channels,
        })
    }

    /// Positions to mask (B, L) bool: `round(mask_ratio · L)` per image, uniform, from torch's
    /// generator (seeded per step by the trainer, so a resumed run masks alike).
    pub fn draw_mask(&self, b: i64, l: i64, device: tch::Device) -> Tensor {
        let k = (self.cfg.mask_ratio * l as f64).round() as i64;
        let ranks = Tensor::rand([b, l], (Kind::Float, device)).argsort(-1, false).argsort(-1, false); // (B, L)
        ranks.lt(k) // (B, L)
    }

    /// Mean reconstruction loss of raw pixels `xs` (B, L, C) over the positions the objective
    /// scores: the masked ones (`mask`, drawn if `None`), or every next pixel (causal).
    pub fn loss(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
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
                let input = Input {
                    masked: Some((mask, &self.mask_token)),
                    causal: false,
                };
                let predicted = self.backbone.features(xs, input, train).apply(&self.head); // (B, L, out)
                let chosen = mask.view([b * l]).nonzero().squeeze_dim(1); // (M)
                let take = |t: &Tensor| t.reshape([b * l, -1]).index_select(0, &chosen); // (M, ·)
                self.score(&take(&predicted), &take(xs)) // ()
            }
            Objective::Causal => {
                let input = Input {
                    masked: None,
                    causal: true,
                };
                let predicted = self.backbone.features(xs, input, train).apply(&self.head); // (B, L, out)
                let before = predicted.narrow(1, 0, l - 1).reshape([b * (l - 1), -1]); // (B·(L−1), out)
                let next = xs.narrow(1, 1, l - 1).reshape([b * (l - 1), c]); // (B·(L−1), C)
                self.score(&before, &next) // ()
            }
        }
    }

    /// Loss of predictions (M, out) for raw pixels (M, C).
    fn score(&self, predicted: &Tensor, pixels: &Tensor) -> Tensor {
        let predicted = predicted.to_kind(Kind::Float);
        match self.cfg.loss {
            Loss::L1 | Loss::L2 => {
                let target = normalise(&pixels.unsqueeze(0)).squeeze_dim(0); // (M, C)
                let diff = predicted - target; // (M, C)
                match self.cfg.loss {
                    Loss::L1 => diff.abs().mean(Kind::Float),
                    _ => diff.square().mean(Kind::Float),
                }
            }
            Loss::Ce => {
                let m = pixels.size()[0];
                let logits = predicted.view([m * self.channels, LEVELS]); // (M·C, 256)
                let target = pixels.to_kind(Kind::Int64).view([m * self.channels]); // (M·C)
                logits.cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
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

    /// Changing a pixel that is not masked changes the input of a masked position's prediction
    /// but not the loss terms' targets; changing a masked pixel changes only its target: the loss
    /// reads the masked positions and no others.
    #[test]
    fn only_masked_positions_enter_the_loss() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = Config {
            loss: Loss::L2,
            ..Config::default()
        };
        let p = Pretrainer::new(&vs.root(), &transformer(), &cfg, &INPUT).unwrap();
        let xs = random_pixels(2, &INPUT);
        let mask = p.draw_mask(2, 64, Device::Cpu);
        let loss = |xs: &Tensor| tch::no_grad(|| p.loss(xs, Some(&mask), false).double_value(&[]));
        let base = loss(&xs);
        // A masked pixel's value: only its own target moves.
        let masked_at = Vec::<i64>::try_from(mask.get(0).nonzero().squeeze_dim(1)).unwrap()[0];
        let changed = xs.copy();
        let _ = changed.get(0).get(masked_at).fill_(255 - xs.int64_value(&[0, masked_at, 0]));
        assert_ne!(loss(&changed), base);
        // With every position masked but one, the loss is the mean over the masked ones.
        let all = mask.ones_like().to_kind(Kind::Bool);
        let _ = all.get(0).get(masked_at).fill_(0);
        let predicted = tch::no_grad(|| {
            let input = Input {
                masked: Some((&all, &p.mask_token)),
                causal: false,
            };
            p.backbone.features(&xs, input, false).apply(&p.head)
        }); // (B, L, 1)
        let target = normalise(&xs); // (B, L, 1)
        let by_hand = (predicted - target)
            .square()
            .squeeze_dim(-1)
            .masked_select(&all)
            .mean(Kind::Float)
            .double_value(&[]);
        let ours = tch::no_grad(|| p.loss(&xs, Some(&all), false).double_value(&[]));
        assert!((ours - by_hand).abs() < 1e-6, "{ours} vs {by_hand}");
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
}
