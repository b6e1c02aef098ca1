//! FNet: "FNet: Mixing Tokens with Fourier Transforms" (Lee-Thorp, Ainslie, Eckstein, Ontañón;
//! NAACL 2022; arXiv 2105.03824). Reported figure: 38.67% on LRA Image (grayscale CIFAR-10, 1,024
//! pixel tokens), FNet row of the paper's LRA table.
//!
//! Every self-attention sublayer of a post-norm Transformer encoder is replaced by the real part of
//! a 2-D discrete Fourier transform over the (sequence, hidden) axes, which has no parameters:
//! x ← LN(x + Re(FFT₂(x))), then x ← LN(x + Dropout(W₂·GELU(W₁x + b₁) + b₂)), LN eps 1e-12.
//!
//! Reference code followed: `google-research/google-research:f_net/{layers.py, models.py}`
//! (`EmbeddingLayer`, `FourierTransform`, `FeedForwardLayer`, `EncoderBlock`, the pooler in
//! `EncoderModel`, `OutputProjection`): word + learned position embeddings (N(0, 0.02)), LayerNorm,
//! Dense(d_emb → d_model) with Flax's default LeCun-normal kernel and zero bias, dropout; GELU is
//! Flax's default tanh approximation; the feed-forward kernels and first bias are N(0, 0.02), the
//! second bias zero; the pooler is Dense + tanh on token 0 (kernel N(0, 0.02), zero bias), then an
//! output projection with kernel and bias N(0, 0.02).
//!
//! The LRA configuration of FNet is not in `f_net/` or the LRA repository, and the paper's LRA
//! appendix could not be read here (✘). [`Config::default`] therefore takes the size of the LRA
//! Transformer it was compared with (`long-range-arena:lra_benchmarks/image/configs/cifar10/
//! transformer_base.py`: 1 layer, width 128, MLP 128, dropout 0.3) with the attention swapped for
//! Fourier mixing, as the paper describes its LRA runs.
//!
//! Deliberate deviations:
//! - Token 0 is a learned [CLS] vector prepended to the 1,024 pixels (FNet classifies from token 0,
//!   which is BERT's [CLS]; the LRA Transformer also prepends a CLS token), so the FFT runs over
//!   1,025 positions and the [CLS] takes part in the mixing like any other token.
//! - Type embeddings are dropped (one segment only).
//! - No padding mask: FNet's Fourier sublayer ignores it, so LRA's "black pixels are padding" rule
//!   has nothing to act on.
//! - Flax's LeCun normal is truncated; here it is a plain normal of the same variance (1 / fan-in).
//! - Embeddings (word, [CLS], position) are in the `NO_DECAY` group; the LRA preset uses no weight
//!   decay, so this only matters for other recipes.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::{nn, Kind, Tensor};

use super::common::{check_rates, check_sizes, dropout, mask_inputs, InputEncoder, InputMode};
use super::{Model, Objective, Backbone, Input, NO_DECAY, NUM_CLASSES};
use crate::data::InputSpec;
use crate::ops::fourier_mix;

/// FNet's `LAYER_NORM_EPSILON` (`f_net/layers.py`).
const LN_EPS: f64 = 1e-12;
/// FNet's `default_kernel_init` / `default_bias_init`: N(0, 0.02) (`f_net/layers.py`).
const INIT_STD: f64 = 0.02;
/// Pixel tokens take 256 grey values.
const VOCAB: i64 = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How pixels enter: a 256-entry token embedding (LRA's tokens; FNet's word embedding), or
    /// Linear(C → d_emb) on normalised values (needed for RGB sCIFAR).
    pub input: InputMode,
    /// Encoder blocks: 1, as the LRA Transformer FNet replaced (`transformer_base.py`, ✘ for FNet).
    pub n_layers: i64,
    /// Embedding width before `hidden_mapping_in`: 128 (LRA `emb_dim`, ✘ for FNet).
    pub d_emb: i64,
    /// Model width: 128 (LRA `emb_dim`, ✘ for FNet).
    pub d_model: i64,
    /// Feed-forward width: 128 (LRA `mlp_dim`, ✘ for FNet).
    pub d_ff: i64,
    /// Dropout after the embedding projection and after each feed-forward sublayer: 0.3 (LRA
    /// `dropout_rate`, ✘ for FNet).
    pub dropout: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input: InputMode::Embed,
            n_layers: 1,
            d_emb: 128,
            d_model: 128,
            d_ff: 128,
            dropout: 0.3,
        }
    }
}

/// A Dense layer initialised as FNet's `nn.Dense(kernel_init=N(0, 0.02), bias_init=…)`.
fn dense(p: nn::Path, d_in: i64, d_out: i64, bias_std: f64) -> nn::Linear {
    let bs_init = if bias_std == 0.0 {
        nn::Init::Const(0.0)
    } else {
        nn::Init::Randn {
            mean: 0.0,
            stdev: bias_std,
        }
    };
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        },
        bs_init: Some(bs_init),
        bias: true,
    };
    nn::linear(p, d_in, d_out, cfg)
}

fn layer_norm(p: nn::Path, d: i64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![d],
        nn::LayerNormConfig {
            eps: LN_EPS,
            ..Default::default()
        },
    )
}

/// `EncoderBlock` with a `FourierTransform` mixing sublayer: post-norm, no attention parameters.
#[derive(Debug)]
struct Block {
    mixing_norm: nn::LayerNorm,
    ff_in: nn::Linear,
    ff_out: nn::Linear,
    output_norm: nn::LayerNorm,
    dropout: f64,
}

impl Block {
    fn new(p: nn::Path, cfg: &Config) -> Block {
        Block {
            mixing_norm: layer_norm(&p / "mixing_norm", cfg.d_model),
            ff_in: dense(&p / "ff_in", cfg.d_model, cfg.d_ff, INIT_STD),
            ff_out: dense(&p / "ff_out", cfg.d_ff, cfg.d_model, 0.0),
            output_norm: layer_norm(&p / "output_norm", cfg.d_model),
            dropout: cfg.dropout,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = (xs + fourier_mix(xs)).apply(&self.mixing_norm); // (B, L, D)
        let ff = x.apply(&self.ff_in).gelu("tanh"); // (B, L, F)
        let ff = dropout(&ff.apply(&self.ff_out), self.dropout, train); // (B, L, D)
        (x + ff).apply(&self.output_norm) // (B, L, D)
    }
}

impl Model for Config {
    const NAME: &'static str = "fnet";
    const PAPER: &'static str = "Lee-Thorp, Ainslie, Eckstein, Ontañón: \"FNet: Mixing Tokens with Fourier Transforms\", NAACL 2022, arXiv 2105.03824";

    fn validate(&self, input: &InputSpec) -> Result<()> {
        check_sizes(&[
            ("n_layers", self.n_layers),
            ("d_emb", self.d_emb),
            ("d_model", self.d_model),
            ("d_ff", self.d_ff),
        ])?;
        check_rates(&[("dropout", self.dropout)])?;
        InputEncoder::validate(self.input, input, VOCAB)
    }

    fn min_params(&self, input: &InputSpec) -> f64 {
        let f = |v: i64| v as f64;
        f(self.n_layers) * 2.0 * f(self.d_model) * f(self.d_ff) + f(self.d_model) * f(self.d_model) + f(input.seq_len) * f(self.d_emb)
    }

    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT> {
        Box::new(FNet::new(p, self, input))
    }

    fn build_backbone(&self, p: &nn::Path, input: &InputSpec) -> Option<Box<dyn Backbone>> {
        Some(Box::new(FNet::new(p, self, input)))
    }

    /// Fourier mixing averages over the whole sequence: masked only.
    fn objectives(&self) -> Vec<Objective> {
        vec![Objective::Masked]
    }

    fn classifier(&self) -> &'static [&'static str] {
        &["head.", "pooler."]
    }
}

#[derive(Debug)]
pub struct FNet {
    encoder: InputEncoder,
    cls: Tensor,
    pos: Tensor,
    emb_norm: nn::LayerNorm,
    hidden_mapping_in: nn::Linear,
    layers: Vec<Block>,
    pooler: nn::Linear,
    head: nn::Linear,
    dropout: f64,
}

impl FNet {
    pub fn new(p: &nn::Path, cfg: &Config, input: &InputSpec) -> FNet {
        let emb = p / "embed";
        let emb_no_decay = emb.set_group(NO_DECAY);
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let encoder_path = if cfg.input == InputMode::Embed { &emb_no_decay } else { &emb };
        let lecun_normal = nn::Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanIn,
            non_linearity: NonLinearity::Linear,
        };
        let mapping_cfg = nn::LinearConfig {
            ws_init: lecun_normal,
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        FNet {
            encoder: InputEncoder::new(&(encoder_path / "word"), cfg.input, input, cfg.d_emb, VOCAB, init),
            cls: emb_no_decay.var("cls", &[1, 1, cfg.d_emb], init),
            pos: emb_no_decay.var("pos", &[1, input.seq_len + 1, cfg.d_emb], init),
            emb_norm: layer_norm(&emb / "norm", cfg.d_emb),
            hidden_mapping_in: nn::linear(&emb / "hidden_mapping_in", cfg.d_emb, cfg.d_model, mapping_cfg),
            layers: (0..cfg.n_layers).map(|i| Block::new(p / "layers" / i, cfg)).collect(),
            pooler: dense(p / "pooler", cfg.d_model, cfg.d_model, 0.0),
            head: dense(p / "head", cfg.d_model, NUM_CLASSES, INIT_STD),
            dropout: cfg.dropout,
        }
    }
}

impl FNet {
    /// The sequence after the blocks, [CLS] first (B, L+1, D); `input` masks pixels
    /// (self-pretraining; the Fourier mixing sees every position, so there is no causal pass).
    fn encode(&self, xs: &Tensor, input: Input, train: bool) -> Tensor {
        let mut words = self.encoder.forward(xs); // (B, L, E)
        if let Some((mask, token)) = input.masked {
            words = mask_inputs(&words, mask, token); // (B, L, E)
        }
        let cls = self.cls.expand_as(&words.narrow(1, 0, 1)).to_kind(words.kind()); // (B, 1, E)
        let x = Tensor::cat(&[cls, words], 1) + &self.pos; // (B, L+1, E)
        let x = x.apply(&self.emb_norm).apply(&self.hidden_mapping_in); // (B, L+1, D)
        let mut x = dropout(&x, self.dropout, train); // (B, L+1, D)
        for layer in &self.layers {
            x = layer.forward_t(&x, train); // (B, L+1, D)
        }
        x
    }
}

impl nn::ModuleT for FNet {
    /// Raw pixels (B, L, C) uint8 → logits (B, 10) float32.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = self.encode(xs, Input::plain(), train); // (B, L+1, D)
        let pooled = x.select(1, 0).apply(&self.pooler).tanh(); // (B, D)
        pooled.apply(&self.head).to_kind(Kind::Float) // (B, 10)
    }
}

impl Backbone for FNet {
    /// The pixel positions of the last block's output (B, L, D).
    fn features(&self, xs: &Tensor, input: Input, train: bool) -> Tensor {
        assert!(!input.causal, "FNet has no causal form");
        self.encode(xs, input, train).narrow(1, 1, xs.size()[1]) // (B, L, D)
    }

    fn width(&self) -> i64 {
        self.pooler.ws.size()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::super::ModelConfig;
    use super::*;
    use crate::testing::{self, count, preset_model as preset, GRAY as LRA, RGB as SCIFAR};
    use tch::{nn::ModuleT, Device};

    fn tiny() -> Config {
        Config {
            d_emb: 24,
            d_model: 32,
            d_ff: 48,
            n_layers: 2,
            ..Config::default()
        }
    }

    #[test]
    fn output_shape_on_both_tasks() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = FNet::new(&vs.root(), &tiny(), &LRA);
        let out = model.forward_t(&testing::random_pixels(3, &LRA), false);
        assert_eq!((out.size(), out.kind()), (vec![3, 10], Kind::Float));
        let cfg = Config {
            input: InputMode::Linear,
            ..tiny()
        };
        let model = FNet::new(&(vs.root() / "rgb"), &cfg, &SCIFAR);
        assert_eq!(model.forward_t(&testing::random_pixels(3, &SCIFAR), false).size(), vec![3, 10]);
    }

    #[test]
    fn preset_parameter_count() {
        let cfg = preset("fnet-lra");
        let ModelConfig::Fnet(fnet) = &cfg else {
            panic!("fnet-lra is not an FNet preset")
        };
        assert_eq!(fnet, &Config::default());
        // word 256·128 = 32,768; [CLS] 128; positions 1,025·128 = 131,200; embedding LN 256;
        // hidden_mapping_in 128·128 + 128 = 16,512 → embedder 180,864.
        // Block: mixing LN 256 + W1 128·128 + 128 + W2 128·128 + 128 + output LN 256 = 33,536.
        // Pooler 16,512; head 128·10 + 10 = 1,290.
        // Total 180,864 + 33,536 + 16,512 + 1,290 = 232,202.
        assert_eq!(count(&cfg, &LRA), 232_202);
    }

    #[test]
    fn mixing_has_no_parameters() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = tiny();
        FNet::new(&vs.root(), &cfg, &LRA);
        let vars = vs.variables();
        for name in vars.keys() {
            for word in ["attn", "attention", "query", "key", "value", "qkv"] {
                assert!(!name.contains(word), "{name} looks like an attention parameter");
            }
        }
        // Each block holds exactly two LayerNorms and the two feed-forward Dense layers.
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let per_block = 2 * (2 * d) + (d * f + f) + (f * d + d);
        let in_layers: i64 = vars
            .iter()
            .filter(|(n, _)| n.starts_with("layers."))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        assert_eq!(in_layers, cfg.n_layers * per_block);
    }

    #[test]
    fn mixing_matches_direct_dft() {
        let (n, h) = (6usize, 4usize);
        let xs = Tensor::randn([2, n as i64, h as i64], (Kind::Float, Device::Cpu));
        let got = fourier_mix(&xs);
        let x: Vec<f64> = Vec::try_from(xs.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let got: Vec<f64> = Vec::try_from(got.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        for b in 0..2 {
            for p in 0..n {
                for q in 0..h {
                    // Re Σ_{t,k} x[t,k] e^{-2πi(pt/N + qk/H)} = Σ x[t,k] cos(2π(pt/N + qk/H)).
                    let mut want = 0.0;
                    for t in 0..n {
                        for k in 0..h {
                            let angle = 2.0 * std::f64::consts::PI * ((p * t) as f64 / n as f64 + (q * k) as f64 / h as f64);
                            want += x[(b * n + t) * h + k] * angle.cos();
                        }
                    }
                    let g = got[(b * n + p) * h + q];
                    assert!((g - want).abs() < 1e-4, "Re(FFT2)[{b},{p},{q}] = {g}, direct DFT {want}");
                }
            }
        }
    }

    #[test]
    fn mixing_and_its_gradient_equal_autograd_of_fft2() {
        // Even and odd widths and lengths, the preset's (1,025, 128), and the degenerate D = 1.
        for (l, d) in [(1025, 128), (7, 5), (6, 4), (5, 1), (1, 3)] {
            let xs = Tensor::randn([2, l, d], (Kind::Float, Device::Cpu));
            let grad = Tensor::randn([2, l, d], (Kind::Float, Device::Cpu));
            let with_grad = |f: &dyn Fn(&Tensor) -> Tensor| {
                let xs = xs.copy().set_requires_grad(true);
                let out = f(&xs);
                let dx = Tensor::run_backward(&[(&out * &grad).sum(None)], &[&xs], false, false).remove(0);
                (out.detach(), dx)
            };
            let (want, want_dx) = with_grad(&|x| x.fft_fft2(None::<&[i64]>, [-2, -1], "backward").real());
            let (got, got_dx) = with_grad(&fourier_mix);
            let rel = |a: &Tensor, b: &Tensor| ((a - b).abs().max() / b.abs().max()).double_value(&[]);
            assert!(rel(&got, &want) < 1e-5, "Re(FFT2) differs at L = {l}, D = {d}");
            assert!(rel(&got_dx, &want_dx) < 1e-5, "its gradient differs at L = {l}, D = {d}");
        }
    }

    #[test]
    fn mixing_is_float32_under_reduced_precision() {
        let xs = Tensor::randn([2, 8, 4], (Kind::BFloat16, Device::Cpu));
        assert_eq!(fourier_mix(&xs).kind(), Kind::Float);
    }

    #[test]
    fn gradients_reach_every_parameter() {
        testing::assert_gradients_reach_every_parameter(&ModelConfig::Fnet(tiny()), &LRA);
        let rgb = Config {
            input: InputMode::Linear,
            ..tiny()
        };
        testing::assert_gradients_reach_every_parameter(&ModelConfig::Fnet(rgb), &SCIFAR);
    }

    #[test]
    fn eval_is_deterministic() {
        testing::assert_eval_is_deterministic(&preset("fnet-lra"), &LRA);
    }

    #[test]
    fn dropout_is_active_in_training() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = FNet::new(&vs.root(), &tiny(), &LRA);
        let xs = testing::random_pixels(2, &LRA);
        let (a, b) = tch::no_grad(|| (model.forward_t(&xs, true), model.forward_t(&xs, true)));
        assert!(!a.equal(&b), "training forward passes should differ through dropout");
    }

    #[test]
    fn loss_falls_on_real_images() {
        let cfg = Config { dropout: 0.0, ..tiny() };
        testing::assert_loss_falls(&ModelConfig::Fnet(cfg), &LRA, 16, 15, 1e-2, 0.5);
    }

    #[test]
    fn validate_names_the_bad_key() {
        let bad = Config {
            d_ff: 0,
            ..Config::default()
        };
        assert!(bad.validate(&LRA).unwrap_err().to_string().contains("model.d_ff = 0"));
        let bad = Config {
            dropout: 1.0,
            ..Config::default()
        };
        assert!(bad.validate(&LRA).unwrap_err().to_string().contains("model.dropout = 1"));
        let err = Config::default().validate(&SCIFAR).unwrap_err().to_string();
        assert!(err.contains("model.input"), "{err}");
    }
}
