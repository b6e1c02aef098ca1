//! A model that exists only in the tests: a linear map of each normalised pixel, mean-pooled, and
//! a linear classifier.
//! It is the zoo's proof that a model is its file plus its line in `zoo!` (`models/mod.rs`):
//! nothing else in pixelseq names it, yet it trains, exports, and is refused by `pretrain` with
//! the message derived from the registry.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::common::{InputEncoder, InputMode};
use super::{Model, NUM_CLASSES};
use crate::data::InputSpec;

/// Hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Width of the pixel embedding.
    pub d_model: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config { d_model: 8 }
    }
}

impl Model for Config {
    const NAME: &'static str = "toy";
    const PAPER: &'static str = "none: a model of pixelseq's tests";

    fn validate(&self, input: &InputSpec) -> Result<()> {
        InputEncoder::validate(InputMode::Linear, input, 0)?;
        if !(1..=64).contains(&self.d_model) {
            bail!("model.d_model = {}: must be in 1..=64", self.d_model);
        }
        Ok(())
    }

    fn min_params(&self, _input: &InputSpec) -> f64 {
        (self.d_model * NUM_CLASSES) as f64
    }

    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT> {
        Box::new(Toy {
            encoder: InputEncoder::new(&(p / "embed"), InputMode::Linear, input, self.d_model, 0, nn::Init::Const(0.0)),
            head: nn::linear(p / "head", self.d_model, NUM_CLASSES, Default::default()),
        })
    }
}

#[derive(Debug)]
struct Toy {
    encoder: InputEncoder,
    head: nn::Linear,
}

impl nn::ModuleT for Toy {
    /// Pixels (B, L, C) uint8 → logits (B, 10).
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        self.encoder.forward(xs).mean_dim(1, false, None).apply(&self.head) // (B, 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{pretrain, ModelConfig};
    use crate::run::{open_run, Which};
    use crate::testing::{assert_loss_falls, tiny_run_of};
    use tch::{Device, Kind};

    const LRA: InputSpec = InputSpec { channels: 1, seq_len: 1024 };

    /// Registered by its line in `zoo!` alone, the toy model learns on real images, trains and
    /// exports through the whole pipeline, and `pretrain` refuses it with the registry's list.
    #[test]
    fn a_model_registered_in_one_line_trains_exports_and_is_refused_by_pretrain() {
        let cfg: ModelConfig = toml::from_str("name = \"toy\"\nd_model = 16").unwrap();
        assert_eq!((cfg.name(), cfg.paper()), ("toy", Config::PAPER));
        assert_loss_falls(&cfg, &LRA, 16, 20, 0.05, 0.95);

        let dir = tempfile::tempdir().unwrap();
        let run = tiny_run_of(&dir.path().join("run"), "name = \"toy\"");
        let out = dir.path().join("toy.pt");
        crate::export::torchscript::export(&run, &out).unwrap();
        let module = tch::CModule::load(&out).unwrap();
        let xs = Tensor::randint(256, [2, 1024], (Kind::Uint8, Device::Cpu)); // the module's (B, L)
        let exported = module.forward_ts(&[&xs]).unwrap(); // (2, 10)
        let opened = open_run(&run, Which::Best, Device::Cpu).unwrap();
        let model = opened.model.classifier().unwrap();
        let eager = tch::no_grad(|| model.forward_t(&xs.unsqueeze(-1), false)); // (2, 10)
        assert!(exported.allclose(&eager, 1e-5, 1e-5, false));

        let vs = nn::VarStore::new(Device::Cpu);
        let err = pretrain::Pretrainer::new(&vs.root(), &cfg, &pretrain::Config::default(), &LRA)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("model `toy` has no self-pretraining form; pretrain supports s4d, fnet, pit, transformer and nystromformer"),
            "{err}"
        );
    }
}
