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
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::data::InputSpec;

pub mod common;
pub mod pretrain;

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

/// What a model of the zoo says about itself: one `impl Model for Config` in the model's file, and
/// its line in [`zoo!`]'s list below. Everything the rest of pixelseq needs of a model (its
/// name in presets, its citation in model cards, its pretraining forms, how to build it) comes
/// from here, so nothing else names the models.
pub trait Model: Clone + Default + std::fmt::Debug + Serialize + DeserializeOwned {
    /// The name in presets (`model.name`).
    const NAME: &'static str;
    /// The paper, as a model card cites it.
    const PAPER: &'static str;
    /// Checks every field against the input before any tensor exists.
    fn validate(&self, input: &InputSpec) -> Result<()>;
    /// A lower bound on the model's trainable parameters, from its config alone: its largest
    /// tensors (each block's matrices, S4D's and LRU's state matrices, TrellisNet's kernel), so
    /// that a model too large for the memory is refused before a tensor of it exists
    /// ([`ModelConfig::admit`]). A test holds it between a quarter and all of every preset's
    /// built count.
    fn min_params(&self, input: &InputSpec) -> f64;
    /// Builds the classifier under `p` (validated and admitted already).
    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT>;
    /// Builds the model as a backbone for self-pretraining; `None`: it has no backbone form.
    fn build_backbone(&self, _p: &nn::Path, _input: &InputSpec) -> Option<Box<dyn Backbone>> {
        None
    }
    /// The self-pretraining objectives the model supports as configured (none without a
    /// backbone form). Causal needs a pass in which position t sees only pixels ≤ t.
    fn objectives(&self) -> Vec<Objective> {
        Vec::new()
    }
    /// Name prefixes of the classifier's tensors: what a backbone pretrained without it lacks.
    fn classifier(&self) -> &'static [&'static str] {
        &["head."]
    }
    /// Whether pixels enter through a Linear(C → d) encoder, beside which the `channel` mask
    /// input of self-pretraining sets its column.
    fn linear_input(&self) -> bool {
        false
    }
}

/// The zoo: each line is a model's module and its [`ModelConfig`] variant. The macro declares the
/// modules, the enum (deserialised by `model.name`, the model's [`Model::NAME`]) and its
/// dispatch; a line under `#[cfg(test)]` adds a model for the tests only.
macro_rules! zoo {
    ($($(#[$attr:meta])* $module:ident::$variant:ident),* $(,)?) => {
        $($(#[$attr])* pub mod $module;)*

        /// One model of the zoo with its hyperparameters; `name` selects it in TOML.
        #[derive(Debug, Clone)]
        pub enum ModelConfig {
            $($(#[$attr])* $variant($module::Config),)*
        }

        /// Every model's name, in the zoo's order, and whether it has a self-pretraining form.
        #[allow(clippy::vec_init_then_push)] // one push per line of the zoo, some under cfg
        pub fn zoo() -> Vec<(&'static str, bool)> {
            let mut names = Vec::new();
            $($(#[$attr])* names.push((<$module::Config as Model>::NAME, !Model::objectives(&$module::Config::default()).is_empty()));)*
            names
        }

        impl ModelConfig {
            /// The name used in presets (`model.name`).
            pub fn name(&self) -> &'static str {
                match self {
                    $($(#[$attr])* ModelConfig::$variant(_) => <$module::Config as Model>::NAME,)*
                }
            }

            /// The paper, as a model card cites it.
            pub fn paper(&self) -> &'static str {
                match self {
                    $($(#[$attr])* ModelConfig::$variant(_) => <$module::Config as Model>::PAPER,)*
                }
            }

            /// The model's own description of itself.
            fn spec(&self) -> &dyn Spec {
                match self {
                    $($(#[$attr])* ModelConfig::$variant(c) => c,)*
                }
            }

            /// The config of model `name` from the rest of its table.
            fn named(name: &str, rest: toml::Value) -> Result<ModelConfig, String> {
                $($(#[$attr])* if name == <$module::Config as Model>::NAME {
                    return $module::Config::deserialize(rest).map(ModelConfig::$variant).map_err(|e| e.message().to_string());
                })*
                let known: Vec<String> = zoo().iter().map(|(n, _)| format!("`{n}`")).collect();
                Err(format!("unknown model `{name}`, expected one of {}", known.join(", ")))
            }

            /// Serialises the config as its table, `name` first.
            fn serialize_named<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $($(#[$attr])* ModelConfig::$variant(config) => Named { name: self.name(), config }.serialize(s),)*
                }
            }
        }
    };
}

zoo! {
    s4d::S4d,
    lru::Lru,
    trellisnet::Trellisnet,
    lipschitz::LipschitzRnn,
    fnet::Fnet,
    pit::Pit,
    transformer::Transformer,
    nystromformer::Nystromformer,
    #[cfg(test)]
    toy::Toy,
}

/// [`Model`]'s methods, callable on any model of the zoo (its constants aside).
trait Spec {
    fn validate(&self, input: &InputSpec) -> Result<()>;
    fn min_params(&self, input: &InputSpec) -> f64;
    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT>;
    fn build_backbone(&self, p: &nn::Path, input: &InputSpec) -> Option<Box<dyn Backbone>>;
    fn objectives(&self) -> Vec<Objective>;
    fn classifier(&self) -> &'static [&'static str];
    fn linear_input(&self) -> bool;
}

impl<M: Model> Spec for M {
    fn validate(&self, input: &InputSpec) -> Result<()> {
        Model::validate(self, input)
    }
    fn min_params(&self, input: &InputSpec) -> f64 {
        Model::min_params(self, input)
    }
    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT> {
        Model::build(self, p, input)
    }
    fn build_backbone(&self, p: &nn::Path, input: &InputSpec) -> Option<Box<dyn Backbone>> {
        Model::build_backbone(self, p, input)
    }
    fn objectives(&self) -> Vec<Objective> {
        Model::objectives(self)
    }
    fn classifier(&self) -> &'static [&'static str] {
        Model::classifier(self)
    }
    fn linear_input(&self) -> bool {
        Model::linear_input(self)
    }
}

/// A model's table as presets write it: `name`, then the config's fields.
#[derive(Serialize)]
struct Named<'a, C> {
    name: &'static str,
    #[serde(flatten)]
    config: &'a C,
}

impl Serialize for ModelConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_named(s)
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let name = match table.remove("name") {
            Some(toml::Value::String(name)) => name,
            Some(other) => return Err(D::Error::custom(format!("`name` must be a string, not {other}"))),
            None => return Err(D::Error::missing_field("name")),
        };
        ModelConfig::named(&name, toml::Value::Table(table)).map_err(D::Error::custom)
    }
}

/// The models that have a self-pretraining form, for messages ("transformer, fnet and pit").
pub fn pretrainable() -> String {
    let names: Vec<&str> = zoo().into_iter().filter(|(_, pretrains)| *pretrains).map(|(n, _)| n).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "no model".into(),
    }
}

impl ModelConfig {
    /// Checks every field against the input before any tensor exists.
    pub fn validate(&self, input: &InputSpec) -> Result<()> {
        self.spec().validate(input)
    }

    /// The self-pretraining objectives this model supports as configured (none: it has no
    /// backbone form).
    pub fn objectives(&self) -> Vec<Objective> {
        self.spec().objectives()
    }

    /// Name prefixes of the classifier's tensors: what a backbone pretrained without it lacks.
    pub fn classifier(&self) -> &'static [&'static str] {
        self.spec().classifier()
    }

    /// Whether pixels enter through a Linear(C → d) encoder (the `channel` mask input needs one).
    pub fn linear_input(&self) -> bool {
        self.spec().linear_input()
    }

    /// A lower bound on the model's trainable parameters ([`Model::min_params`]).
    pub fn min_params(&self, input: &InputSpec) -> f64 {
        self.spec().min_params(input)
    }

    /// Builds the model under `p` as a backbone for self-pretraining (validating first).
    pub fn build_backbone(&self, p: &nn::Path, input: &InputSpec) -> Result<Box<dyn Backbone>> {
        self.validate(input)?;
        self.admit(input, p.device(), 1.0)?;
        match self.spec().build_backbone(p, input) {
            Some(backbone) => Ok(backbone),
            None => bail!(
                "model `{}` has no self-pretraining form; pretrain supports {}",
                self.name(),
                pretrainable()
            ),
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
        Ok(self.spec().build(p, input))
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
