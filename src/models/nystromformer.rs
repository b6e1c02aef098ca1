//! Nyströmformer: "Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention"
//! (Xiong, Zeng, Chakraborty, Tan, Fung, Li and Singh, AAAI 2021; arXiv 2102.03902), Table 1:
//! **41.58%** on LRA Image (grayscale CIFAR-10 as 1,024 tokens 0..255), against 38.20% for the
//! softmax Transformer of the same size (preset `transformer-small`).
//!
//! Reference code: `mlpen/Nystromformer`, `LRA/code/attention_nystrom.py` (the attention),
//! `attention.py`, `model.py`, `model_wrapper.py` (the body, shared here with
//! [`super::transformer::Encoder`]), `lra_config.py` "image" and `run_tasks.py` (`nystrom-64`).
//! Two pre-LN blocks of width 64, 2 heads × 32, GELU FFN 128, dropout 0.1, token (vocab 512) and
//! learned position embeddings N(0, 0.02), PyTorch default init elsewhere, final LayerNorm, mean
//! pooling over all 1,024 positions, head Linear(64, 128)–ReLU–Linear(128, 10).
//!
//! Attention per head, with d the head size, m landmarks and black pixels masked (`id != 0`):
//! Q̃ = Q·d^-¼ and K̃ = K·d^-¼ with masked rows zeroed; Q̂, K̂ = means of m contiguous segments of
//! Q̃, K̃; F = softmax(Q̃K̂ᵀ), A = softmax(Q̂K̂ᵀ), B = softmax(Q̂K̃ᵀ + mask); output F·A⁺·(B·V) plus a
//! depthwise convolution of the masked V along the sequence (kernel 35 per head, no bias). A⁺ is 6
//! iterations of Z ← ¼Z(13I − AZ(15I − AZ(7I − AZ))). The whole attention runs in float32 with
//! autocast off, as the reference does. As in the reference, m = L switches to exact softmax, and
//! there is no attention dropout (`attention_dropout` in `lra_config.py` is read only by the
//! softmax baseline).
//!
//! Deliberate choice, Z₀ ([`PinvInit`]): the paper sets Z₀ = Aᵀ/(‖A‖₁‖A‖∞) per matrix. The code's
//! default "original" option divides by one maximum column sum taken over the whole batch and all
//! heads; its README (Feb 27th, 2021) calls that a scale bug and recommends the per-matrix form,
//! but a key-name typo (`inv_coeff_init_option` tested, `inv_init_coeff_option` read) keeps that
//! option unreachable, and the LRA scores were posted on Feb 14th: 41.58% came from "original".
//! Here the default is the paper's per-matrix Z₀, because with the global maximum an image's
//! prediction depends on which other images share its batch (and on the evaluation batch size).
//! Both start the same iteration, the global one with a smaller step, so accuracy should not move;
//! `pinv_init = "original"` restores the code's behaviour exactly.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, ModuleT};
use tch::{Kind, Tensor};

use super::common::{InputMode, Pool, MAX_SIZE};
use super::transformer::{key_bias, AttnInit, Encoder, Gelu, Initialisation, Mixer, Positions};
use super::{Model, Objective, Backbone, Input};
use crate::data::InputSpec;

/// The starting point Z₀ of the iterative pseudo-inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinvInit {
    /// Z₀ = Aᵀ/(‖A‖₁‖A‖∞) for each (image, head) matrix (the paper, Section 3).
    Paper,
    /// Z₀ = Aᵀ / (largest column sum over the whole batch and all heads), `attention_nystrom.py`'s
    /// default "original": predictions then depend on the rest of the batch.
    Original,
}

/// The most iterations of the pseudo-inverse a config may ask for: the paper's 6 already converge.
const MAX_PINV_ITERS: i64 = 100;

/// Hyperparameters. `Default` is the paper's LRA Image setting (`lra_config.py` "image", `nystrom-64`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Pixels enter as token ids (`LRA/datasets/cifar10.py` keeps LRA's integer grey values).
    pub input: InputMode,
    /// Embedding rows; pixel value v uses row v. `lra_config.py`: `vocab_size = 512`.
    pub vocab: i64,
    /// Std of the token embedding init. `model.py`: `normal_(std=0.02)`.
    pub token_init_std: f64,
    /// Model width. `lra_config.py`: `transformer_dim = 64`.
    pub d_model: i64,
    /// Blocks. `lra_config.py`: `num_layers = 2`.
    pub n_layers: i64,
    /// Heads. `lra_config.py`: `num_head = 2`.
    pub n_heads: i64,
    /// Width of q, k and v summed over heads. `lra_config.py`: `head_dim = 32` × 2 heads.
    pub qkv_dim: i64,
    /// FFN hidden width, also the classifier's. `lra_config.py`: `transformer_hidden_dim = 128`.
    pub mlp_dim: i64,
    /// Dropout after the embedding, after attention and in the FFN. `lra_config.py`: 0.1.
    pub dropout: f64,
    /// Landmarks m; the sequence length must be a multiple. `run_tasks.py --model nystrom-64`.
    pub landmarks: i64,
    /// Kernel of the depthwise convolution skip on V (odd; 0 = none). `lra_config.py`: 35.
    pub conv_kernel: i64,
    /// Iterations of the pseudo-inverse. `attention_nystrom.py`: `n_iter = 6`.
    pub pinv_iters: i64,
    /// Z₀ of the pseudo-inverse: the paper's per-matrix form (see the module doc).
    pub pinv_init: PinvInit,
    /// Black pixels (value 0) are padding, as in `dataset.py` (`mask = input_ids != 0`).
    pub mask_black_pixels: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input: InputMode::Embed,
            vocab: 512,
            token_init_std: 0.02,
            d_model: 64,
            n_layers: 2,
            n_heads: 2,
            qkv_dim: 64,
            mlp_dim: 128,
            dropout: 0.1,
            landmarks: 64,
            conv_kernel: 35,
            pinv_iters: 6,
            pinv_init: PinvInit::Paper,
            mask_black_pixels: true,
        }
    }
}

impl Config {
    /// The shared body as the reference builds it (`model.py`, `attention.py`,
    /// `model_wrapper.py`). Every field is written out, none taken from the Transformer's
    /// defaults: a new field of [`super::transformer::Config`] is a compile error here, and a
    /// change of the Transformer's defaults cannot reach the Nyströmformer.
    fn body(&self) -> super::transformer::Config {
        super::transformer::Config {
            input: self.input,
            vocab: self.vocab,
            token_init_std: self.token_init_std,
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            qkv_dim: self.qkv_dim,
            mlp_dim: self.mlp_dim,
            dropout: self.dropout,
            attn_dropout: 0.0,               // the Nyström attention has no dropout (module doc)
            pool: Pool::Mean,                // model_wrapper.py: mean over every position
            attn_bias: true,                 // attention.py: nn.Linear defaults
            init: Initialisation::Pytorch,   // PyTorch's default init outside the embeddings
            gelu: Gelu::Exact,               // nn.GELU()
            layer_norm_eps: 1e-5,            // nn.LayerNorm default
            mask_black_pixels: self.mask_black_pixels,
            pos: Positions::Learned,         // model.py: nn.Embedding of positions, N(0, 0.02)
            head_dim: None,                  // the classifier's hidden width is mlp_dim (128)
            attn_init: AttnInit::Independent, // q, k, v and output projections drawn separately
        }
    }
}

/// Iterative Moore–Penrose pseudo-inverse of `a` (.., m, m), batched over leading dimensions:
/// the paper's Section 3 iteration (from Razavi, Kerayechian, Gachpazan and Shateyi, "A new
/// iterative method for finding approximate inverses of complete and incomplete matrices", 2014),
///
///   Z_{j+1} = ¼ Z_j (13I − A Z_j (15I − A Z_j (7I − A Z_j))),
///
/// started at Z₀ of [`PinvInit`]; the same constants 7, 15, 13 and ¼ as
/// `attention_nystrom.py` `NystromAttention.iterative_inv`, whose `n_iter = 6`.
fn iterative_pinv(a: &Tensor, iters: i64, init: PinvInit) -> Tensor {
    let m = a.size()[a.dim() - 1];
    let eye = Tensor::eye(m, (a.kind(), a.device())); // (m, m)
    let at = a.transpose(-1, -2); // (.., m, m)
    let mut z = match init {
        PinvInit::Paper => {
            let norm_1 = a.abs().sum_dim_intlist(-2, false, None).amax(-1, true); // (.., 1) max column sum
            let norm_inf = a.abs().sum_dim_intlist(-1, false, None).amax(-1, true); // (.., 1) max row sum
            at / (norm_1 * norm_inf).unsqueeze(-1) // (.., m, m)
        }
        PinvInit::Original => at / a.sum_dim_intlist(-2, false, None).max(), // (.., m, m)
    };
    for _ in 0..iters {
        let az = a.matmul(&z); // (.., m, m)
        let inner = az.matmul(&(&eye * 7.0 - &az)); // (.., m, m)
        let inner = az.matmul(&(&eye * 15.0 - inner)); // (.., m, m)
        z = (z * 0.25).matmul(&(&eye * 13.0 - inner)); // (.., m, m)
    }
    z
}

/// Nyström attention with the depthwise convolution skip, one per block.
#[derive(Debug)]
struct Nystrom {
    landmarks: i64,
    pinv_iters: i64,
    pinv_init: PinvInit,
    /// Depthwise kernel (H, 1, K, 1): one length-K filter per head, shared by its channels.
    conv: Option<Tensor>,
}

impl Nystrom {
    fn new(p: &nn::Path, cfg: &Config) -> Nystrom {
        let k = cfg.conv_kernel;
        let bound = 1.0 / (k as f64).sqrt(); // PyTorch Conv2d default, fan_in = 1·K·1
        let init = Init::Uniform { lo: -bound, up: bound };
        let conv = (k > 0).then(|| (p / "conv").var("weight", &[cfg.n_heads, 1, k, 1], init));
        Nystrom {
            landmarks: cfg.landmarks,
            pinv_iters: cfg.pinv_iters,
            pinv_init: cfg.pinv_init,
            conv,
        }
    }

    /// F·A⁺·(B·V) for scaled, masked `q`, `k` and `v` (B, H, L, Dh); `bias` (B, 1, 1, L) masks keys.
    fn approximate(&self, q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let (_, h, l, dh) = q.size4().unwrap();
        let segments = [-1, h, self.landmarks, l / self.landmarks, dh];
        let q_land = q.reshape(segments).mean_dim(-2, false, None); // (B, H, m, Dh)
        let k_land = k.reshape(segments).mean_dim(-2, false, None); // (B, H, m, Dh)
        let f = q.matmul(&k_land.transpose(-1, -2)).softmax(-1, None); // (B, H, L, m)
        let a = q_land.matmul(&k_land.transpose(-1, -2)).softmax(-1, None); // (B, H, m, m)
        let logits = q_land.matmul(&k.transpose(-1, -2)); // (B, H, m, L)
        let logits = match bias {
            Some(bias) => logits + bias, // (B, H, m, L)
            None => logits,
        };
        let bv = logits.softmax(-1, None).matmul(v); // (B, H, m, Dh)
        let a_pinv = iterative_pinv(&a, self.pinv_iters, self.pinv_init); // (B, H, m, m)
        f.matmul(&a_pinv).matmul(&bv) // (B, H, L, Dh)
    }

    /// The attention on float32 inputs (B, H, L, Dh).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, keep: Option<&Tensor>) -> Tensor {
        let (_, h, l, dh) = q.size4().unwrap();
        let scale = (dh as f64).powf(-0.25);
        let keep_rows = keep.map(|keep| keep.to_kind(Kind::Float).unsqueeze(1).unsqueeze(-1)); // (B, 1, L, 1)
        let zero_padding = |t: &Tensor| match &keep_rows {
            Some(rows) => t * rows, // (B, H, L, Dh)
            None => t.shallow_clone(),
        };
        let q = zero_padding(q) * scale; // (B, H, L, Dh)
        let k = zero_padding(k) * scale; // (B, H, L, Dh)
        let bias = keep.map(|keep| key_bias(keep, Kind::Float)); // (B, 1, 1, L)
        let ys = if self.landmarks == l {
            // Every position is its own landmark: exact softmax (B, H, L, Dh), as the reference does.
            Tensor::scaled_dot_product_attention(&q, &k, v, bias, 0.0, false, 1.0, false)
        } else {
            self.approximate(&q, &k, v, bias.as_ref()) // (B, H, L, Dh)
        };
        let Some(w) = &self.conv else { return ys };
        let padding = [w.size()[2] / 2, 0];
        let skip = zero_padding(v).conv2d(w, None::<Tensor>, [1, 1], padding, [1, 1], h); // (B, H, L, Dh)
        ys + skip // (B, H, L, Dh)
    }
}

impl Mixer for Nystrom {
    /// Landmarks average over the whole sequence, so there is no causal form: `causal` is never
    /// set for this model (its only self-pretraining objective is masked).
    fn mix(&self, q: &Tensor, k: &Tensor, v: &Tensor, keep: Option<&Tensor>, causal: bool, _train: bool) -> Tensor {
        assert!(!causal, "Nyström attention has no causal form");
        // The reference computes attention in float32 with autocast off.
        let float = |t: &Tensor| t.to_kind(Kind::Float); // (B, H, L, Dh)
        crate::amp::without_autocast(|| self.attend(&float(q), &float(k), &float(v), keep))
    }
}

impl Model for Config {
    const NAME: &'static str = "nystromformer";
    const PAPER: &'static str = "Xiong, Zeng, Chakraborty, Tan, Fung, Li, Singh: \"Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention\", AAAI 2021, arXiv 2102.03902";

    /// Checks every field against the input before any tensor exists.
    fn validate(&self, input: &InputSpec) -> Result<()> {
        self.body().validate(input)?;
        if self.landmarks < 1 || input.seq_len % self.landmarks != 0 {
            bail!(
                "model.landmarks = {} must divide the sequence length {}",
                self.landmarks,
                input.seq_len
            );
        }
        if !(0..=MAX_SIZE).contains(&self.conv_kernel) || (self.conv_kernel > 0 && self.conv_kernel % 2 == 0) {
            bail!(
                "model.conv_kernel = {} must be odd and at most {MAX_SIZE} (or 0 for no convolution)",
                self.conv_kernel
            );
        }
        if !(1..=MAX_PINV_ITERS).contains(&self.pinv_iters) {
            bail!(
                "model.pinv_iters = {} must be at least 1 and at most {MAX_PINV_ITERS} (the paper's 6 already converge)",
                self.pinv_iters
            );
        }
        Ok(())
    }

    fn min_params(&self, _input: &InputSpec) -> f64 {
        let f = |v: i64| v as f64;
        // Each block's q, k, v, out and feed-forward matrices, and the head's hidden layer.
        f(self.n_layers) * (4.0 * f(self.d_model) * f(self.qkv_dim) + 2.0 * f(self.d_model) * f(self.mlp_dim))
            + f(self.d_model) * f(self.mlp_dim)
    }

    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT> {
        Box::new(Nystromformer::new(p, self, input))
    }

    fn build_backbone(&self, p: &nn::Path, input: &InputSpec) -> Option<Box<dyn Backbone>> {
        Some(Box::new(Nystromformer::new(p, self, input)))
    }

    /// Nyström landmarks average over the whole sequence: masked only.
    fn objectives(&self) -> Vec<Objective> {
        vec![Objective::Masked]
    }

    fn linear_input(&self) -> bool {
        self.input == InputMode::Linear
    }
}

/// The Nyströmformer classifier: the shared Transformer body with Nyström attention.
#[derive(Debug)]
pub struct Nystromformer {
    body: Encoder<Nystrom>,
}

impl Nystromformer {
    pub fn new(p: &nn::Path, cfg: &Config, input: &InputSpec) -> Nystromformer {
        Nystromformer {
            body: Encoder::new(p, &cfg.body(), input, |mp| Nystrom::new(mp, cfg)),
        }
    }
}

impl ModuleT for Nystromformer {
    /// Raw pixels (B, L, C) uint8 → logits (B, 10) float32.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.body.forward_t(xs, train)
    }
}

impl Backbone for Nystromformer {
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
mod tests {
    use super::*;
    use crate::models::transformer::tests::{assert_tokens_are_raw_grey_values, logits_before_after_black_change, pixels_with_black};
    use crate::models::ModelConfig;
    use crate::testing::{count as built_params, GRAY as LRA_IMAGE, *};
    use tch::Device;

    fn small() -> Config {
        Config {
            d_model: 32,
            n_layers: 1,
            qkv_dim: 32,
            mlp_dim: 32,
            dropout: 0.0,
            ..Config::default()
        }
    }

    #[test]
    fn output_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Nystromformer::new(&vs.root(), &small(), &LRA_IMAGE);
        let ys = model.forward_t(&random_pixels(3, &LRA_IMAGE), false);
        assert_eq!(ys.size(), vec![3, 10]);
        assert_eq!(ys.kind(), Kind::Float);
    }

    #[test]
    fn preset_param_count() {
        // The softmax baseline's 174,986 (see transformer::tests) plus one depthwise kernel per
        // block: 2 heads × 35 taps × 2 blocks = 140. Total 175,126.
        assert_eq!(built_params(&preset_model("nystromformer-lra"), &LRA_IMAGE), 175_126);
        assert_eq!(built_params(&ModelConfig::Nystromformer(Config::default()), &LRA_IMAGE), 175_126);
    }

    #[test]
    fn gradients_reach_every_parameter() {
        assert_gradients_reach_every_parameter(&preset_model("nystromformer-lra"), &LRA_IMAGE);
    }

    #[test]
    fn eval_is_deterministic() {
        assert_eval_is_deterministic(&preset_model("nystromformer-lra"), &LRA_IMAGE);
    }

    #[test]
    fn loss_falls_on_real_images() {
        assert_loss_falls(&ModelConfig::Nystromformer(small()), &LRA_IMAGE, 8, 10, 1e-2, 0.7);
    }

    #[test]
    fn pinv_matches_linalg_pinv_on_softmax_matrices() {
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        // Well conditioned (a peaked diagonal): the default 6 iterations suffice.
        let a = (Tensor::randn([2, 3, 32, 32], opts) + Tensor::eye(32, opts) * 6.0).softmax(-1, None);
        let z = iterative_pinv(&a, 6, PinvInit::Paper);
        assert!(z.allclose(&a.linalg_pinv(1e-15, false), 1e-4, 1e-4, false));
        // Condition number in the hundreds: the iteration still converges, given more steps.
        let a = (Tensor::randn([2, 3, 32, 32], opts) + Tensor::eye(32, opts) * 3.0).softmax(-1, None);
        let exact = a.linalg_pinv(1e-15, false);
        let z = iterative_pinv(&a, 20, PinvInit::Paper);
        let err = (&z - &exact).abs().max().double_value(&[]) / exact.abs().max().double_value(&[]);
        assert!(err < 1e-4, "relative error {err}");
    }

    #[test]
    fn every_position_a_landmark_gives_softmax_attention() {
        tch::manual_seed(0);
        let (l, dh) = (64, 32);
        let opts = (Kind::Float, Device::Cpu);
        let scale = (dh as f64).powf(-0.25);
        // Keys equal to queries make A = softmax(QKᵀ) well conditioned, so A⁺ is exact after 6 steps.
        let q = Tensor::randn([2, 2, l, dh], opts) * scale; // (B, H, L, Dh)
        let v = Tensor::randn([2, 2, l, dh], opts); // (B, H, L, Dh)
        let nystrom = |landmarks| Nystrom {
            landmarks,
            pinv_iters: 6,
            pinv_init: PinvInit::Paper,
            conv: None,
        };
        let approx = nystrom(l).approximate(&q, &q, &v, None);
        let exact = q.matmul(&q.transpose(-1, -2)).softmax(-1, None).matmul(&v);
        let err = (&approx - &exact).abs().max().double_value(&[]);
        assert!(err < 1e-3, "max error {err}");
        // Fewer landmarks only approximate it.
        let coarse = nystrom(16).approximate(&q, &q, &v, None);
        assert!(!coarse.allclose(&exact, 1e-3, 1e-3, false));
    }

    #[test]
    fn paper_init_keeps_images_independent_of_their_batch() {
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        // Six steps leave this one unconverged, so where the iteration starts shows in the result.
        let a = (Tensor::randn([1, 32, 32], opts) + Tensor::eye(32, opts) * 3.0).softmax(-1, None); // (1, m, m)
        let spread = (Tensor::randn([1, 32, 32], opts) * 3.0).softmax(-1, None); // (1, m, m): larger column sums
        let batch = Tensor::cat(&[&a, &spread], 0); // (2, m, m)
        for (init, independent) in [(PinvInit::Paper, true), (PinvInit::Original, false)] {
            let together = iterative_pinv(&batch, 6, init).narrow(0, 0, 1);
            let alone = iterative_pinv(&a, 6, init);
            assert_eq!(together.allclose(&alone, 1e-5, 1e-5, false), independent, "{init:?}");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Nystromformer::new(&vs.root(), &small(), &LRA_IMAGE);
        let xs = random_pixels(4, &LRA_IMAGE);
        let together = tch::no_grad(|| model.forward_t(&xs, false)).narrow(0, 0, 1);
        let alone = tch::no_grad(|| model.forward_t(&xs.narrow(0, 0, 1), false));
        assert!(together.allclose(&alone, 1e-5, 1e-5, false));
    }

    #[test]
    fn masked_black_pixels_cannot_be_attended_to() {
        let xs = pixels_with_black(2, &LRA_IMAGE);
        let masked = ModelConfig::Nystromformer(small());
        let (before, after) = logits_before_after_black_change(&masked, &xs);
        assert!(
            before.allclose(&after, 1e-5, 1e-6, false),
            "a masked black pixel changed the output"
        );
        let unmasked = ModelConfig::Nystromformer(Config {
            mask_black_pixels: false,
            ..small()
        });
        let (before, after) = logits_before_after_black_change(&unmasked, &xs);
        assert!(
            !before.allclose(&after, 1e-5, 1e-6, false),
            "without the mask black pixels must matter"
        );
    }

    #[test]
    fn all_black_image_gives_finite_logits_and_gradients() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Nystromformer::new(&vs.root(), &Config::default(), &LRA_IMAGE);
        let xs = Tensor::zeros([2, 1024, 1], (Kind::Uint8, Device::Cpu));
        let loss = model.forward_t(&xs, true).cross_entropy_for_logits(&Tensor::from_slice(&[1i64, 2]));
        loss.backward();
        assert!(loss.double_value(&[]).is_finite());
        for (name, t) in vs.variables() {
            assert!(t.grad().isfinite().all().int64_value(&[]) == 1, "{name}: non-finite gradient");
        }
    }

    #[test]
    fn tokens_are_raw_grey_values() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Nystromformer::new(&vs.root(), &Config::default(), &LRA_IMAGE);
        let vars = vs.variables();
        assert_tokens_are_raw_grey_values(&model.body, &vars["embed.weight"], &vars["pos"]);
    }

    #[test]
    fn validate_names_the_bad_key() {
        let err = Config {
            landmarks: 48,
            ..Config::default()
        }
        .validate(&LRA_IMAGE)
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("model.landmarks = 48"), "{err}");
        let err = Config {
            conv_kernel: 34,
            ..Config::default()
        }
        .validate(&LRA_IMAGE)
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("model.conv_kernel = 34"), "{err}");
        let short = InputSpec { channels: 1, seq_len: 64 };
        assert!(Config {
            landmarks: 64,
            ..Config::default()
        }
        .validate(&short)
        .is_ok());
    }
}
