//! Transformer baselines of the LRA Image task: "Long Range Arena: A Benchmark for Efficient
//! Transformers" (Tay, Dehghani, Abnar, Shen, Bahri, Pham, Rao, Yang, Ruder and Metzler, 2020;
//! arXiv 2011.04006), Table 1: the vanilla Transformer scores **42.44%** on LRA Image (grayscale
//! CIFAR-10 as 1,024 tokens 0..255).
//!
//! Reference code: `google-research/long-range-arena`, `lra_benchmarks/models/transformer/transformer.py`,
//! `models/layers/common_layers.py`, `image/configs/cifar10/{base_cifar10_config,transformer_base}.py`
//! and `image/train.py`. The defaults of [`Config`] are that setting: one pre-LN block, width 128,
//! 8 heads sharing a 64-wide q/k/v (head size 8), GELU MLP 128, dropout 0.3, attention dropout 0.2,
//! a zero-initialised CLS token prepended, learned positions, a final LayerNorm, and the classifier
//! Dense(128)–ReLU–Dense(10) on the CLS vector.
//!
//! The same file also builds the softmax baseline of the Nyströmformer paper (Xiong et al. 2021,
//! arXiv 2102.03902, Table 1 "Standard": **38.20%**), `mlpen/Nystromformer` `LRA/code/{model,
//! model_wrapper,attention}.py` with `lra_config.py` "image": two blocks of width 64, 2 heads × 32,
//! FFN 128, dropout 0.1, mean pooling, PyTorch initialisation (preset `transformer-small`). Its body,
//! the embedding, blocks, final norm, pooling and head, is shared with [`super::nystromformer`], which
//! plugs its own attention into [`Encoder`] through [`Mixer`].
//!
//! Three settings serve the self-pretraining code of Amos et al. (IdoAmos/not-from-scratch;
//! preset `transformer-spt`, see [`super::pretrain`]): `pos = "sinusoidal"` (fixed positions, its
//! `PositionalEncoder`), `head_dim` (its classifier Linear(d, d)–ReLU–Linear(d, 10)) and
//! `attn_init = "cloned"` (q, k, v and the output projection start as copies of one draw, its
//! `clones` of one `nn.Linear`). Their defaults (learned, `mlp_dim`, independent) leave the other
//! presets as they were.
//!
//! **Black pixels are padding** (`mask_black_pixels`, on by default as in both references): the
//! LRA code builds its padding mask as `inputs > 0` and the Nyström port as `id != 0`, so a pixel of
//! value 0 can never be attended to; whatever is written at a black pixel cannot reach the
//! prediction. The LRA CLS token copies pixel 0's mask. LRA's flax attention masks query rows as well
//! as keys: a masked query gets the same −1e10 on every key and so attends uniformly to every
//! position, black ones included. That is reproduced (every black query row is the mean of all
//! values); it is visible in one place only: the CLS of an image whose first pixel is black reads the
//! average of every position's value. Mean pooling zeroes black positions and still divides by the
//! full length, as `model.py` does. An image that is entirely black yields finite logits: masks are
//! a finite −1e9 bias, never −∞.
//!
//! Deviations, all deliberate:
//! - The LRA classifier's Dense layers use flax's default LeCun-normal init, here untruncated with
//!   the same standard deviation 1/√fan_in (flax truncates at 2σ).
//! - Masked query rows skip attention dropout (flax drops entries of their uniform weights); this
//!   only adds noise to rows nothing reads except the CLS of an image whose first pixel is black.
//! - Attention runs through libtorch's fused `scaled_dot_product_attention` (on the CPU with
//!   attention dropout, the same math with pixelseq's dropout: [`attention`]); under bf16 autocast
//!   that means bf16 attention, whereas LRA computes in float32.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, ModuleT};
use tch::{Kind, Tensor};

use super::common::{
    attention, causal_bias, check_positive, check_rates, check_sizes, dropout, mask_inputs, nonzero_mask, InputEncoder, InputMode, Pool,
};
use super::{Model, Objective, Backbone, Input, DECAY, NO_DECAY, NUM_CLASSES};
use crate::data::InputSpec;

/// Additive bias that removes masked keys from a softmax. Finite, so a row whose keys are all
/// masked (an all-black image) gets uniform weights instead of NaN.
const MASKED: f64 = -1e9;

/// Weight initialisation of the dense layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Initialisation {
    /// LRA (flax): Xavier-uniform kernels and N(0, 1e-6) biases in blocks; LeCun-normal kernels
    /// and zero biases in the classifier.
    Lra,
    /// PyTorch's `nn.Linear` default: weights and biases U(±1/√fan_in) (Nyströmformer's code).
    Pytorch,
}

/// The GELU of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gelu {
    /// The erf form (PyTorch `nn.GELU()`).
    Exact,
    /// The tanh approximation (`jax.nn.gelu`, which flax's `nn.gelu` calls).
    Tanh,
}

impl Gelu {
    fn approximate(self) -> &'static str {
        match self {
            Gelu::Exact => "none",
            Gelu::Tanh => "tanh",
        }
    }
}

/// Position information added to the embedded pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Positions {
    /// A learned (1, L', d) table, N(0, 0.02) (LRA, Nyströmformer's code).
    Learned,
    /// Fixed sines and cosines, no parameters: PE(t, 2i) = sin(t / 10000^(2i/d)),
    /// PE(t, 2i+1) = cos(t / 10000^(2i/d)), as `PositionalEncoder` in IdoAmos/not-from-scratch
    /// `src/tasks/encoders.py` (after PyTorch's word_language_model), computed in float32 alike.
    Sinusoidal,
}

/// How the four projections of each attention layer start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttnInit {
    /// q, k, v and the output projection each drawn on their own.
    Independent,
    /// One projection drawn, the other three start as copies of it: `clones(nn.Linear(d, d), 4)`
    /// (a deepcopy) in IdoAmos/not-from-scratch `src/models/sequence/mha.py`
    /// (`MultiheadAttentionFlash`). Needs `qkv_dim = d_model`.
    Cloned,
}

/// Hyperparameters. `Default` is the LRA paper's Image setting (`transformer_base.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Pixels enter as token ids (LRA: `input_pipeline.py` casts grey values to int32).
    pub input: InputMode,
    /// Embedding rows; pixel value v uses row v. LRA Image: 256 (`input_pipeline.py`).
    pub vocab: i64,
    /// Std of the token embedding init. LRA: `nn.initializers.normal(stddev=1.0)` (`transformer.py`).
    pub token_init_std: f64,
    /// Model width. `transformer_base.py`: `emb_dim = 128`.
    pub d_model: i64,
    /// Blocks. `transformer_base.py`: `num_layers = 1`.
    pub n_layers: i64,
    /// Attention heads. `transformer_base.py`: `num_heads = 8`.
    pub n_heads: i64,
    /// Width of q, k and v summed over heads (head size = qkv_dim / n_heads). `qkv_dim = 64`.
    pub qkv_dim: i64,
    /// Hidden width of the block MLP and of the classifier (both references use the same number).
    /// `transformer_base.py`: `mlp_dim = 128`.
    pub mlp_dim: i64,
    /// Dropout after the embedding, after attention and in the MLP. `base_cifar10_config.py`: 0.3.
    pub dropout: f64,
    /// Dropout on attention weights. `base_cifar10_config.py`: `attention_dropout_rate = 0.2`.
    pub attn_dropout: f64,
    /// `cls`: a learned zero-initialised token is prepended and its output classified (LRA,
    /// `transformer_base.py`: `classifier_pool = "CLS"`); `mean`: the mean over all positions
    /// (Nyströmformer's code), black positions counting as zeros when masked.
    pub pool: Pool,
    /// Biases in the q, k, v and output projections. LRA: `SelfAttention(..., bias=False)`.
    pub attn_bias: bool,
    /// LRA: Xavier-uniform kernels, N(0, 1e-6) biases (`transformer.py`, `MlpBlock`).
    pub init: Initialisation,
    /// LRA: flax `nn.gelu`, the tanh approximation.
    pub gelu: Gelu,
    /// Flax `nn.LayerNorm` default epsilon.
    pub layer_norm_eps: f64,
    /// Black pixels (value 0) are padding: never attended to (LRA `inputs > 0`).
    pub mask_black_pixels: bool,
    /// Learned positions (LRA, Nyströmformer) or fixed sinusoidal ones (the SPT code).
    pub pos: Positions,
    /// Hidden width of the classifier; `None`: `mlp_dim` (LRA and Nyströmformer use the same
    /// number). The SPT code's decoder is Linear(d, d)–ReLU–Linear(d, 10) (`head_dim = d_model`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    /// Independent or cloned (the SPT code) initial attention projections.
    pub attn_init: AttnInit,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input: InputMode::Embed,
            vocab: 256,
            token_init_std: 1.0,
            d_model: 128,
            n_layers: 1,
            n_heads: 8,
            qkv_dim: 64,
            mlp_dim: 128,
            dropout: 0.3,
            attn_dropout: 0.2,
            pool: Pool::Cls,
            attn_bias: false,
            init: Initialisation::Lra,
            gelu: Gelu::Tanh,
            layer_norm_eps: 1e-6,
            mask_black_pixels: true,
            pos: Positions::Learned,
            head_dim: None,
            attn_init: AttnInit::Independent,
        }
    }
}

impl Config {
    /// Hidden width of the classifier.
    pub fn head_hidden(&self) -> i64 {
        self.head_dim.unwrap_or(self.mlp_dim)
    }
}

/// Fixed sinusoidal positions (1, L, d) float32 on `device`, in the SPT code's float32 order:
/// `div = exp(−ln(10000) · 2i / d)`, `pe[t, 2i] = sin(t · div)`, `pe[t, 2i+1] = cos(t · div)`.
pub fn sinusoidal_positions(l: i64, d: i64, device: tch::Device) -> Tensor {
    let opts = (Kind::Float, device);
    let t = Tensor::arange(l, opts).unsqueeze(1); // (L, 1)
    let div = (Tensor::arange_start_step(0, d, 2, opts) * (-(10000f64.ln()) / d as f64)).exp(); // (d/2)
    let angles = t * div; // (L, d/2)
    Tensor::stack(&[angles.sin(), angles.cos()], -1).view([1, l, d]) // (1, L, d): sin, cos interleaved
}

fn uniform(bound: f64) -> Init {
    Init::Uniform { lo: -bound, up: bound }
}

fn normal(stdev: f64) -> Init {
    Init::Randn { mean: 0.0, stdev }
}

/// A dense layer of a block: LRA's Xavier-uniform kernel and N(0, 1e-6) bias, or PyTorch's
/// default U(±1/√fan_in) for both.
fn dense(p: &nn::Path, fan_in: i64, fan_out: i64, bias: bool, init: Initialisation) -> nn::Linear {
    let (ws_init, bs_init) = match init {
        Initialisation::Lra => (uniform((6.0 / (fan_in + fan_out) as f64).sqrt()), normal(1e-6)),
        Initialisation::Pytorch => (uniform(1.0 / (fan_in as f64).sqrt()), uniform(1.0 / (fan_in as f64).sqrt())),
    };
    let cfg = nn::LinearConfig {
        ws_init,
        bs_init: Some(bs_init),
        bias,
    };
    nn::linear(p, fan_in, fan_out, cfg)
}

/// A dense layer of the classifier: flax `nn.Dense`'s default LeCun-normal kernel (untruncated)
/// and zero bias for LRA, PyTorch's default otherwise.
fn head_dense(p: &nn::Path, fan_in: i64, fan_out: i64, init: Initialisation) -> nn::Linear {
    let (ws_init, bs_init) = match init {
        Initialisation::Lra => (normal(1.0 / (fan_in as f64).sqrt()), Init::Const(0.0)),
        Initialisation::Pytorch => (uniform(1.0 / (fan_in as f64).sqrt()), uniform(1.0 / (fan_in as f64).sqrt())),
    };
    let cfg = nn::LinearConfig {
        ws_init,
        bs_init: Some(bs_init),
        bias: true,
    };
    nn::linear(p, fan_in, fan_out, cfg)
}

/// (B, L) bool, true where a key may be attended → (B, 1, 1, L) additive bias of `kind`.
pub(crate) fn key_bias(keep: &Tensor, kind: Kind) -> Tensor {
    let l = keep.size()[1];
    keep.logical_not().to_kind(kind).g_mul_scalar(MASKED).view([-1, 1, 1, l]) // (B, 1, 1, L)
}

/// The token mixer inside a block: how heads of queries, keys and values become outputs.
pub(crate) trait Mixer: std::fmt::Debug + Send {
    /// `q`, `k`, `v`: (B, H, L, Dh); `keep`: (B, L) bool, true where a position is not padding;
    /// `causal`: position t attends only to positions ≤ t (for self-pretraining; a mixer that
    /// cannot is never asked, see [`crate::models::ModelConfig::objectives`]).
    /// Returns (B, H, L, Dh).
    fn mix(&self, q: &Tensor, k: &Tensor, v: &Tensor, keep: Option<&Tensor>, causal: bool, train: bool) -> Tensor;
}

/// Scaled dot-product softmax attention (fused kernel) with dropout on the weights.
#[derive(Debug)]
pub(crate) struct Softmax {
    dropout: f64,
}

impl Mixer for Softmax {
    fn mix(&self, q: &Tensor, k: &Tensor, v: &Tensor, keep: Option<&Tensor>, causal: bool, train: bool) -> Tensor {
        let l = q.size()[2];
        let bias = match (keep, causal) {
            (Some(keep), false) => Some(key_bias(keep, q.kind())),      // (B, 1, 1, L)
            (None, true) => Some(causal_bias(l, q.kind(), q.device())), // (L, L)
            (None, false) => None,
            (Some(_), true) => unreachable!("causal passes run without the black-pixel mask"),
        };
        let ys = attention(q, k, v, bias.as_ref(), self.dropout, train);
        match keep {
            // LRA masks query rows too: a black query attends uniformly to every position.
            Some(keep) => {
                let uniform = v.mean_dim(-2, true, None); // (B, H, 1, Dh)
                ys.where_self(&keep.unsqueeze(1).unsqueeze(-1), &uniform) // (B, H, L, Dh)
            }
            None => ys, // (B, H, L, Dh)
        }
    }
}

/// Multi-head self-attention: projections around a [`Mixer`].
#[derive(Debug)]
struct SelfAttention<M> {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    mixer: M,
    n_heads: i64,
}

impl<M: Mixer> SelfAttention<M> {
    fn new(p: &nn::Path, cfg: &Config, mixer: M) -> Self {
        let (d, e) = (cfg.d_model, cfg.qkv_dim);
        let attn = SelfAttention {
            q: dense(&(p / "q"), d, e, cfg.attn_bias, cfg.init),
            k: dense(&(p / "k"), d, e, cfg.attn_bias, cfg.init),
            v: dense(&(p / "v"), d, e, cfg.attn_bias, cfg.init),
            out: dense(&(p / "out"), e, d, cfg.attn_bias, cfg.init),
            mixer,
            n_heads: cfg.n_heads,
        };
        if cfg.attn_init == AttnInit::Cloned {
            // The SPT code deep-copies one freshly initialised Linear(d, d) four times.
            tch::no_grad(|| {
                for other in [&attn.k, &attn.v, &attn.out] {
                    other.ws.shallow_clone().copy_(&attn.q.ws);
                    if let (Some(b), Some(q)) = (&other.bs, &attn.q.bs) {
                        b.shallow_clone().copy_(q);
                    }
                }
            });
        }
        attn
    }

    fn forward_t(&self, xs: &Tensor, keep: Option<&Tensor>, causal: bool, train: bool) -> Tensor {
        let heads = |t: Tensor| t.unflatten(-1, [self.n_heads, -1]).transpose(1, 2); // (B, H, L, Dh)
        let q = heads(xs.apply(&self.q)); // (B, H, L, Dh)
        let k = heads(xs.apply(&self.k)); // (B, H, L, Dh)
        let v = heads(xs.apply(&self.v)); // (B, H, L, Dh)
        let ys = self.mixer.mix(&q, &k, &v, keep, causal, train); // (B, H, L, Dh)
        ys.transpose(1, 2).flatten(2, 3).apply(&self.out) // (B, L, d)
    }
}

/// Pre-LN block: x + Dropout(Attn(LN(x))), then x + Dropout(W₂ Dropout(GELU(W₁ LN(x)))).
#[derive(Debug)]
struct Block<M> {
    ln1: nn::LayerNorm,
    attn: SelfAttention<M>,
    ln2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    dropout: f64,
    gelu: Gelu,
}

impl<M: Mixer> Block<M> {
    fn new(p: &nn::Path, cfg: &Config, mixer: M) -> Self {
        let ln = nn::LayerNormConfig {
            eps: cfg.layer_norm_eps,
            ..Default::default()
        };
        Block {
            ln1: nn::layer_norm(p / "ln1", vec![cfg.d_model], ln),
            attn: SelfAttention::new(&(p / "attn"), cfg, mixer),
            ln2: nn::layer_norm(p / "ln2", vec![cfg.d_model], ln),
            fc1: dense(&(p / "fc1"), cfg.d_model, cfg.mlp_dim, true, cfg.init),
            fc2: dense(&(p / "fc2"), cfg.mlp_dim, cfg.d_model, true, cfg.init),
            dropout: cfg.dropout,
            gelu: cfg.gelu,
        }
    }

    fn forward_t(&self, xs: &Tensor, keep: Option<&Tensor>, causal: bool, train: bool) -> Tensor {
        let ys = dropout(&self.attn.forward_t(&xs.apply(&self.ln1), keep, causal, train), self.dropout, train); // (B, L, d)
        let xs = xs + ys; // (B, L, d)
        let ys = xs.apply(&self.ln2).apply(&self.fc1).gelu(self.gelu.approximate()); // (B, L, mlp)
        let ys = dropout(&dropout(&ys, self.dropout, train).apply(&self.fc2), self.dropout, train); // (B, L, d)
        xs + ys // (B, L, d)
    }
}

/// The shared body: pixel embedding (+ CLS) + positions (learned or sinusoidal), blocks, final
/// LayerNorm, pooling and the classifier Linear(d, head)–ReLU–Linear(head, 10).
#[derive(Debug)]
pub(crate) struct Encoder<M> {
    embed: InputEncoder,
    cls: Option<Tensor>,
    pos: Tensor,
    blocks: Vec<Block<M>>,
    norm: nn::LayerNorm,
    head_hidden: nn::Linear,
    head_out: nn::Linear,
    dropout: f64,
    pool: Pool,
    mask_black_pixels: bool,
}

impl<M: Mixer> Encoder<M> {
    /// `mixer` builds the token mixer of each block under the path it is given (`blocks.<i>.attn`).
    pub(crate) fn new(p: &nn::Path, cfg: &Config, input: &InputSpec, mut mixer: impl FnMut(&nn::Path) -> M) -> Self {
        let d = cfg.d_model;
        let group = match cfg.input {
            InputMode::Embed => NO_DECAY,
            InputMode::Linear => DECAY,
        };
        let token_init = normal(cfg.token_init_std);
        let embed_path = p.set_group(group) / "embed";
        let embed = InputEncoder::new(&embed_path, cfg.input, input, d, cfg.vocab, token_init);
        let emb = p.set_group(NO_DECAY);
        let with_cls = cfg.pool == Pool::Cls;
        let cls = with_cls.then(|| emb.zeros("cls", &[1, 1, d])); // (1, 1, d)
        let positions = input.seq_len + i64::from(with_cls);
        let pos = match cfg.pos {
            Positions::Learned => emb.var("pos", &[1, positions, d], normal(0.02)), // (1, L', d)
            Positions::Sinusoidal => sinusoidal_positions(positions, d, p.device()), // (1, L', d), fixed
        };
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let bp = p / "blocks" / i;
                let m = mixer(&(&bp / "attn"));
                Block::new(&bp, cfg, m)
            })
            .collect();
        let ln = nn::LayerNormConfig {
            eps: cfg.layer_norm_eps,
            ..Default::default()
        };
        Encoder {
            embed,
            cls,
            pos,
            blocks,
            norm: nn::layer_norm(p / "norm", vec![d], ln),
            head_hidden: head_dense(&(p / "head" / "hidden"), d, cfg.head_hidden(), cfg.init),
            head_out: head_dense(&(p / "head" / "out"), cfg.head_hidden(), NUM_CLASSES, cfg.init),
            dropout: cfg.dropout,
            pool: cfg.pool,
            mask_black_pixels: cfg.mask_black_pixels,
        }
    }

    /// Pixels (B, L, C) → embedded sequence (B, L', d) with positions and dropout, and the
    /// padding mask (B, L') when black pixels are masked; L' = L + 1 with a CLS token. `input`
    /// replaces masked pixels' vectors (masked pixels are not padding, whatever their value);
    /// a causal pass has no padding mask (a black query's uniform weights would see the future).
    fn embed(&self, xs: &Tensor, input: Input, train: bool) -> (Tensor, Option<Tensor>) {
        let mut hs = self.embed.forward(xs); // (B, L, d)
        let mut keep = (self.mask_black_pixels && !input.causal).then(|| nonzero_mask(xs)); // (B, L)
        if let Some((mask, token)) = input.masked {
            hs = mask_inputs(&hs, mask, token); // (B, L, d)
            keep = keep.map(|k| k.logical_or(mask)); // (B, L)
        }
        if let Some(cls) = &self.cls {
            hs = Tensor::cat(&[cls.expand_as(&hs.narrow(1, 0, 1)), hs], 1); // (B, L+1, d)
            keep = keep.map(|k| Tensor::cat(&[k.narrow(1, 0, 1), k], 1)); // (B, L+1): CLS copies pixel 0
        }
        (dropout(&(hs + &self.pos), self.dropout, train), keep) // (B, L', d)
    }
}

impl<M: Mixer> Encoder<M> {
    /// The final LayerNorm's output (B, L', d) and the padding mask (B, L').
    fn encode(&self, xs: &Tensor, input: Input, train: bool) -> (Tensor, Option<Tensor>) {
        let (mut hs, keep) = self.embed(xs, input, train); // (B, L', d)
        for block in &self.blocks {
            hs = block.forward_t(&hs, keep.as_ref(), input.causal, train); // (B, L', d)
        }
        (hs.apply(&self.norm), keep) // (B, L', d)
    }

    /// One feature vector per pixel (B, L, d): the encoder's outputs without the CLS position.
    pub(crate) fn features(&self, xs: &Tensor, input: Input, train: bool) -> Tensor {
        let (hs, _) = self.encode(xs, input, train); // (B, L', d)
        match self.cls {
            Some(_) => hs.narrow(1, 1, xs.size()[1]), // (B, L, d)
            None => hs,
        }
    }

    pub(crate) fn width(&self) -> i64 {
        self.pos.size()[2]
    }

    /// The Linear(C → d) pixel encoder (`input = "linear"`).
    pub(crate) fn input_linear(&self) -> Option<&nn::Linear> {
        match &self.embed {
            InputEncoder::Linear(l) => Some(l),
            InputEncoder::Embed(_) => None,
        }
    }
}

impl<M: Mixer> ModuleT for Encoder<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (hs, keep) = self.encode(xs, Input::plain(), train); // (B, L', d)
        let pooled = match (self.pool, &keep) {
            (Pool::Cls, _) => hs.select(1, 0),                 // (B, d)
            (Pool::Mean, None) => hs.mean_dim(1, false, None), // (B, d)
            // Black positions count as zeros; the mean still divides by L (Nyström `model.py`).
            (Pool::Mean, Some(k)) => (hs * k.unsqueeze(-1)).mean_dim(1, false, None), // (B, d)
        };
        let logits = pooled.apply(&self.head_hidden).relu().apply(&self.head_out); // (B, 10)
        logits.to_kind(Kind::Float)
    }
}

impl Model for Config {
    const NAME: &'static str = "transformer";
    const PAPER: &'static str = "Tay et al.: \"Long Range Arena: A Benchmark for Efficient Transformers\", 2020, arXiv 2011.04006 (its Transformer baseline)";

    /// Checks every field against the input before any tensor exists.
    fn validate(&self, input: &InputSpec) -> Result<()> {
        InputEncoder::validate(self.input, input, self.vocab)?;
        check_sizes(&[
            ("vocab", self.vocab),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("qkv_dim", self.qkv_dim),
            ("mlp_dim", self.mlp_dim),
            ("head_dim", self.head_hidden()),
        ])?;
        if self.qkv_dim % self.n_heads != 0 {
            bail!(
                "model.qkv_dim = {} must be divisible by model.n_heads = {}",
                self.qkv_dim,
                self.n_heads
            );
        }
        if self.attn_init == AttnInit::Cloned && self.qkv_dim != self.d_model {
            bail!(
                "model.attn_init = \"cloned\" needs model.qkv_dim = model.d_model (the four projections share one shape); got {} and {}",
                self.qkv_dim,
                self.d_model
            );
        }
        if self.pos == Positions::Sinusoidal && self.d_model % 2 != 0 {
            bail!(
                "model.pos = \"sinusoidal\" needs an even model.d_model (sine, cosine pairs); got {}",
                self.d_model
            );
        }
        check_rates(&[("dropout", self.dropout), ("attn_dropout", self.attn_dropout)])?;
        check_positive(&[("token_init_std", self.token_init_std), ("layer_norm_eps", self.layer_norm_eps)])?;
        Ok(())
    }

    fn min_params(&self, _input: &InputSpec) -> f64 {
        let f = |v: i64| v as f64;
        // Each block's q, k, v, out and feed-forward matrices, and the head's hidden layer.
        f(self.n_layers) * (4.0 * f(self.d_model) * f(self.qkv_dim) + 2.0 * f(self.d_model) * f(self.mlp_dim))
            + f(self.d_model) * f(self.head_hidden())
    }

    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT> {
        Box::new(Transformer::new(p, self, input))
    }

    fn build_backbone(&self, p: &nn::Path, input: &InputSpec) -> Option<Box<dyn Backbone>> {
        Some(Box::new(Transformer::new(p, self, input)))
    }

    /// Softmax attention takes a causal mask: both objectives.
    fn objectives(&self) -> Vec<Objective> {
        vec![Objective::Masked, Objective::Causal]
    }

    fn linear_input(&self) -> bool {
        self.input == InputMode::Linear
    }
}

/// The Transformer classifier: [`Encoder`] with softmax attention.
#[derive(Debug)]
pub struct Transformer {
    body: Encoder<Softmax>,
}

impl Transformer {
    pub fn new(p: &nn::Path, cfg: &Config, input: &InputSpec) -> Transformer {
        Transformer {
            body: Encoder::new(p, cfg, input, |_| Softmax { dropout: cfg.attn_dropout }),
        }
    }
}

impl ModuleT for Transformer {
    /// Raw pixels (B, L, C) uint8 → logits (B, 10) float32.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.body.forward_t(xs, train)
    }
}

impl Backbone for Transformer {
    fn features(&self, xs: &Tensor, input: Input, train: bool) -> Tensor {
        self.body.features(xs, input, train)
    }

    fn width(&self) -> i64 {
        self.body.width()
    }

    fn input_linear(&self) -> Option<&nn::Linear> {
        self.body.input_linear()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::models::ModelConfig;
    use crate::testing::{count as built_params, GRAY as LRA_IMAGE, *};
    use tch::Device;

    /// A few black pixels away from position 0 (whose mask the LRA CLS copies), the rest random.
    pub(crate) fn pixels_with_black(b: i64, input: &InputSpec) -> Tensor {
        let xs = random_pixels(b, input).clamp_min(1); // (B, L, 1)
        let _ = xs.narrow(1, 5, 40).fill_(0);
        let _ = xs.narrow(1, 300, 3).fill_(0);
        xs
    }

    fn small() -> Config {
        Config {
            d_model: 32,
            n_heads: 2,
            qkv_dim: 32,
            mlp_dim: 32,
            dropout: 0.0,
            attn_dropout: 0.0,
            ..Config::default()
        }
    }

    #[test]
    fn output_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Transformer::new(&vs.root(), &small(), &LRA_IMAGE);
        let ys = model.forward_t(&random_pixels(3, &LRA_IMAGE), false);
        assert_eq!(ys.size(), vec![3, 10]);
        assert_eq!(ys.kind(), Kind::Float);
    }

    #[test]
    fn preset_param_counts() {
        // transformer-lra, by hand: tokens 256·128 + CLS 128 + positions 1025·128 = 164,096;
        // block: 2 LN 512 + q,k,v 3·128·64 (no bias) + out 64·128 + MLP 128·128+128 + 128·128+128 = 66,304;
        // final LN 256; head 128·128+128 + 128·10+10 = 17,802. Total 248,458.
        assert_eq!(built_params(&preset_model("transformer-lra"), &LRA_IMAGE), 248_458);
        assert_eq!(built_params(&ModelConfig::Transformer(Config::default()), &LRA_IMAGE), 248_458);
        // transformer-small, the Nyströmformer paper's "Standard": tokens 512·64 + positions 1024·64
        // = 98,304; block: 2 LN 256 + q,k,v,out 4·(64·64+64) + FFN 64·128+128 + 128·64+64 = 33,472
        // (×2); final LN 128; head 64·128+128 + 128·10+10 = 9,610. Total 174,986.
        assert_eq!(built_params(&preset_model("transformer-small"), &LRA_IMAGE), 174_986);
        // transformer-spt, the SPT code's model fine-tuned (IdoAmos/not-from-scratch): encoder
        // Linear(1, 64) 128, no position parameters (sinusoidal); block: 2 LN 256 + q,k,v,out
        // 4·(64·64+64) + FFN 64·128+128 + 128·64+64 = 33,472 (×3); final LN 128; classifier
        // 64·64+64 + 64·10+10 = 4,810. Total 105,482, the reference's count.
        assert_eq!(built_params(&preset_model("transformer-spt"), &LRA_IMAGE), 105_482);
        assert_eq!(built_params(&preset_model("transformer-spt-causal"), &LRA_IMAGE), 105_482);
    }

    fn spt() -> Config {
        match preset_model("transformer-spt") {
            ModelConfig::Transformer(c) => c,
            other => panic!("transformer-spt builds {}", other.name()),
        }
    }

    /// `pos = "sinusoidal"`: the positions added to the embedded pixels are PE(t, 2i) =
    /// sin(t / 10000^(2i/d)), PE(t, 2i+1) = cos(t / 10000^(2i/d)) (the SPT code's
    /// `PositionalEncoder`), computed here in double precision, and they are no parameter.
    #[test]
    fn sinusoidal_positions_are_the_formula_and_no_parameter() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Transformer::new(&vs.root(), &spt(), &LRA_IMAGE);
        assert!(!vs.variables().contains_key("pos"), "sinusoidal positions must not be a variable");
        let d = 64;
        let mut expected = vec![0f64; 1024 * d];
        for t in 0..1024 {
            for i in 0..d / 2 {
                let angle = t as f64 / 10000f64.powf(2.0 * i as f64 / d as f64);
                expected[t * d + 2 * i] = angle.sin();
                expected[t * d + 2 * i + 1] = angle.cos();
            }
        }
        let expected = Tensor::from_slice(&expected).view([1, 1024, d as i64]).to_kind(Kind::Float);
        // float32 arguments up to 1,023 rad carry ~6e-5 of rounding, as in PyTorch.
        assert!(model.body.pos.allclose(&expected, 0.0, 2e-4, false));
        assert!(!model.body.pos.requires_grad());
        // The embedded sequence is the pixel encoding plus these values.
        let xs = random_pixels(2, &LRA_IMAGE);
        let (hs, _) = tch::no_grad(|| model.body.embed(&xs, Input::plain(), false)); // (B, L, d)
        let encoded = tch::no_grad(|| model.body.embed.forward(&xs)); // (B, L, d)
        assert!((hs - encoded).allclose(&expected.expand([2, 1024, d as i64], false), 0.0, 2e-4, false));
        // Odd widths have no sine/cosine pairs: refused.
        let odd = Config {
            d_model: 63,
            qkv_dim: 63,
            n_heads: 3,
            ..spt()
        };
        let err = odd.validate(&LRA_IMAGE).unwrap_err().to_string();
        assert!(err.starts_with("model.pos = \"sinusoidal\""), "{err}");
    }

    /// `head_dim` sets the classifier's hidden width (the SPT code's Linear(64, 64)); without it
    /// the classifier keeps `mlp_dim` (LRA, Nyströmformer).
    #[test]
    fn the_classifier_has_the_configured_hidden_width() {
        let shapes = |cfg: &Config| {
            let vs = nn::VarStore::new(Device::Cpu);
            let _model = Transformer::new(&vs.root(), cfg, &LRA_IMAGE);
            let vars = vs.variables();
            (vars["head.hidden.weight"].size(), vars["head.out.weight"].size())
        };
        assert_eq!(shapes(&spt()), (vec![64, 64], vec![10, 64]));
        assert_eq!(shapes(&Config { head_dim: None, ..spt() }), (vec![128, 64], vec![10, 128]));
        assert_eq!(shapes(&Config::default()), (vec![128, 128], vec![10, 128]));
        let err = Config {
            head_dim: Some(0),
            ..spt()
        }
        .validate(&LRA_IMAGE)
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("model.head_dim = 0"), "{err}");
    }

    /// `attn_init = "cloned"`: q, k, v and the output projection of each layer start equal (the
    /// SPT code deep-copies one Linear), and train apart; independent draws differ.
    #[test]
    fn cloned_attention_projections_start_equal() {
        let projections = |cfg: &Config, layer: usize| {
            let vs = nn::VarStore::new(Device::Cpu);
            let _model = Transformer::new(&vs.root(), cfg, &LRA_IMAGE);
            let vars = vs.variables();
            ["q", "k", "v", "out"].map(|n| {
                (
                    vars[&format!("blocks.{layer}.attn.{n}.weight")].copy(),
                    vars[&format!("blocks.{layer}.attn.{n}.bias")].copy(),
                )
            })
        };
        for layer in 0..3 {
            let [q, k, v, out] = projections(&spt(), layer);
            for other in [&k, &v, &out] {
                assert!(q.0.equal(&other.0) && q.1.equal(&other.1), "layer {layer}: projections differ");
            }
        }
        let a = projections(&spt(), 0)[0].0.shallow_clone();
        let b = projections(&spt(), 1)[0].0.shallow_clone();
        assert!(!a.equal(&b), "each layer draws its own");
        let independent = Config {
            attn_init: AttnInit::Independent,
            ..spt()
        };
        let [q, k, _, _] = projections(&independent, 0);
        assert!(!q.0.equal(&k.0));
        let err = Config { qkv_dim: 32, ..spt() }.validate(&LRA_IMAGE).unwrap_err().to_string();
        assert!(err.starts_with("model.attn_init = \"cloned\""), "{err}");
    }

    #[test]
    fn gradients_reach_every_parameter() {
        assert_gradients_reach_every_parameter(&ModelConfig::Transformer(Config::default()), &LRA_IMAGE);
        assert_gradients_reach_every_parameter(&preset_model("transformer-small"), &LRA_IMAGE);
    }

    #[test]
    fn eval_is_deterministic() {
        assert_eval_is_deterministic(&ModelConfig::Transformer(Config::default()), &LRA_IMAGE);
        assert_eval_is_deterministic(&preset_model("transformer-small"), &LRA_IMAGE);
    }

    #[test]
    fn loss_falls_on_real_images() {
        assert_loss_falls(&ModelConfig::Transformer(small()), &LRA_IMAGE, 8, 10, 1e-2, 0.6);
    }

    #[test]
    fn dropout_is_off_in_eval_and_on_in_training() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Transformer::new(&vs.root(), &Config::default(), &LRA_IMAGE);
        let xs = random_pixels(2, &LRA_IMAGE);
        let a = tch::no_grad(|| model.forward_t(&xs, true));
        let b = tch::no_grad(|| model.forward_t(&xs, true));
        assert!(
            !a.allclose(&b, 1e-6, 1e-6, false),
            "training forward passes should differ (dropout)"
        );
    }

    /// Changes the embedding row of black (token 0) and returns logits before and after, in eval mode.
    pub(crate) fn logits_before_after_black_change(cfg: &ModelConfig, xs: &Tensor) -> (Tensor, Tensor) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = cfg.build(&vs.root(), &LRA_IMAGE).unwrap();
        let before = tch::no_grad(|| model.forward_t(xs, false));
        let table = &vs.variables()["embed.weight"];
        let new_black = Tensor::randn([table.size()[1]], (Kind::Float, Device::Cpu)) * 3.0; // (d)
        tch::no_grad(|| table.get(0).copy_(&new_black));
        let after = tch::no_grad(|| model.forward_t(xs, false));
        (before, after)
    }

    #[test]
    fn masked_black_pixels_cannot_be_attended_to() {
        let xs = pixels_with_black(2, &LRA_IMAGE);
        for mut cfg in [
            Config::default(),
            small(),
            Config {
                pool: Pool::Mean,
                n_layers: 2,
                ..small()
            },
        ] {
            let (before, after) = logits_before_after_black_change(&ModelConfig::Transformer(cfg.clone()), &xs);
            assert!(
                before.allclose(&after, 1e-5, 1e-6, false),
                "a masked black pixel changed the output"
            );
            cfg.mask_black_pixels = false;
            let (before, after) = logits_before_after_black_change(&ModelConfig::Transformer(cfg), &xs);
            assert!(
                !before.allclose(&after, 1e-5, 1e-6, false),
                "without the mask black pixels must matter"
            );
        }
    }

    #[test]
    fn all_black_image_gives_finite_logits_and_gradients() {
        for cfg in [Config::default(), preset_config_small()] {
            tch::manual_seed(0);
            let vs = nn::VarStore::new(Device::Cpu);
            let model = Transformer::new(&vs.root(), &cfg, &LRA_IMAGE);
            let xs = Tensor::zeros([2, 1024, 1], (Kind::Uint8, Device::Cpu));
            let loss = model.forward_t(&xs, true).cross_entropy_for_logits(&Tensor::from_slice(&[1i64, 2]));
            loss.backward();
            assert!(loss.double_value(&[]).is_finite());
            for (name, t) in vs.variables() {
                assert!(t.grad().isfinite().all().int64_value(&[]) == 1, "{name}: non-finite gradient");
            }
        }
    }

    fn preset_config_small() -> Config {
        match preset_model("transformer-small") {
            ModelConfig::Transformer(c) => c,
            other => panic!("transformer-small builds {}", other.name()),
        }
    }

    /// Tokens are the raw grey values: pixel v reads embedding row v (no binning, no normalisation).
    pub(crate) fn assert_tokens_are_raw_grey_values<M: Mixer>(body: &Encoder<M>, table: &Tensor, pos: &Tensor) {
        let values = Tensor::arange(1024, (Kind::Int64, Device::Cpu)).remainder(256); // (L)
        let xs = values.to_kind(Kind::Uint8).view([1, 1024, 1]); // (1, L, 1)
        let (hs, _) = tch::no_grad(|| body.embed(&xs, Input::plain(), false)); // (1, L', d)
        let skip = hs.size()[1] - 1024; // the CLS slot, if any
        let tokens = tch::no_grad(|| hs.narrow(1, skip, 1024) - pos.narrow(1, skip, 1024)); // (1, L, d)
        let expected = table.index_select(0, &values).unsqueeze(0); // (1, L, d)
        assert!(tokens.allclose(&expected, 1e-5, 1e-5, false), "pixel v must use embedding row v");
        assert!(
            !table.get(0).allclose(&table.get(1), 1e-3, 1e-3, false),
            "dark tokens 0 and 1 must differ"
        );
    }

    #[test]
    fn tokens_are_raw_grey_values() {
        for cfg in [Config::default(), preset_config_small()] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = Transformer::new(&vs.root(), &cfg, &LRA_IMAGE);
            let vars = vs.variables();
            assert_tokens_are_raw_grey_values(&model.body, &vars["embed.weight"], &vars["pos"]);
        }
    }

    #[test]
    fn validate_names_the_bad_key() {
        let bad = Config {
            n_heads: 3,
            ..Config::default()
        };
        let err = bad.validate(&LRA_IMAGE).unwrap_err().to_string();
        assert!(err.starts_with("model.qkv_dim = 64"), "{err}");
        let rgb = InputSpec {
            channels: 3,
            seq_len: 1024,
        };
        assert!(Config::default().validate(&rgb).is_err());
        assert!(Config {
            input: InputMode::Linear,
            ..Config::default()
        }
        .validate(&rgb)
        .is_ok());
    }
}
