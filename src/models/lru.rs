//! LRU: "Resurrecting Recurrent Neural Networks for Long Sequences", Antonio Orvieto, Samuel L.
//! Smith, Albert Gu, Anushan Fernando, Caglar Gulcehre, Razvan Pascanu, Soham De, 2023,
//! arXiv 2303.06349 (ICML 2023).
//!
//! Reported figure: 89.0% on sCIFAR, i.e. **RGB** CIFAR-10 read as 1,024 steps of 3 normalised
//! values (the paper replaced LRA's grayscale image task by colour images).
//!
//! Reference code followed: `NicolasZucchet/minimal-LRU` (`lru/model.py`, `lru/train_helpers.py`,
//! `run_train.py`), itself adapted from the paper's Appendix A pseudocode.
//!
//! The layer is a diagonal complex linear recurrence
//! h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t),  y_t = Re(C h_t) + D ⊙ x_t,
//! with λ = exp(−e^ν + i·e^θ) (ν, θ stored in log space), a ring initialisation of λ (|λ|² uniform
//! between r_min² and r_max², phase uniform in [0, max_phase]) and γ = e^{γ_log}, initialised to
//! √(1 − |λ|²) and then trained freely (as minimal-LRU and the paper's pseudocode do). A block is
//! [norm] → LRU → GELU → dropout → Dense(x) ⊙ σ(Dense′(x)) → dropout → skip → [norm]; the model is
//! Dense encoder, blocks, mean over time, Dense head.
//!
//! The recurrence is linear and time-invariant, so it is computed in parallel rather than stepped:
//! with u = γ ⊙ (B x), each state channel n is the causal convolution h_n = (λ_n^ℓ)_ℓ ∗ u_n, i.e.
//! the kernel K_ℓ = C diag(λ^ℓ)(γ ⊙ B) applied through the state (never materialised as an
//! H × H × L tensor). Two exact parallel forms are implemented ([`Parallel`]): an FFT convolution
//! of length 2L with powers λ^ℓ = exp(ℓ·log λ) in closed form, and a two-level chunked scan
//! (a T × T power matrix inside each chunk, then a (L/T) × (L/T) power matrix that carries the
//! chunk-end states forward). The default is the one measured faster (see [`Parallel`]).
//!
//! Deliberate deviations:
//! - Dense layers use a normal(0, 1/fan_in) initialisation with zero bias instead of Flax's
//!   truncated-normal `lecun_normal`; the input encoder is the shared [`InputEncoder`] (PyTorch's
//!   default uniform ±1/√fan_in).
//! - BatchNorm uses PyTorch's unbiased running variance (Flax: biased) with momentum 0.01
//!   (Flax momentum 0.99); LayerNorm uses ε = 1e-5 (Flax: 1e-6).
//! - 1-D tensors (D, biases, norm gains) skip weight decay (the trainer exempts them);
//!   minimal-LRU's AdamW decays every non-SSM parameter. C gets weight decay, as there.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::f64::consts::TAU;
use tch::{nn, Kind, Tensor};

use super::common::{check_rates, check_sizes, InputEncoder, InputMode};
use super::{Model, NUM_CLASSES, SSM};
use crate::data::InputSpec;

/// Which normalisation a block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// LayerNorm over the H channels of each step.
    Layer,
    /// BatchNorm over batch and time for each channel (running statistics at eval).
    Batch,
}

/// How the recurrence is evaluated in parallel over the sequence (both are exact).
///
/// Forward + backward of one LRU layer at L = 1,024 on a shared 2-core CPU (median of 3, the
/// `timing` test): B 16, H 128, N 64: FFT 1.3 s, chunked 2.1–4.2 s (T = 16/32/64);
/// B 64, H 128, N 64: FFT 4.8 s, chunked 6.7–8.3 s; B 50, H 512, N 384: FFT 19.5 s,
/// chunked 32–43 s. The FFT form is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parallel {
    /// Causal FFT convolution of each state channel with λ^ℓ (FFT length 2L).
    Fft,
    /// Power matrices inside chunks of `chunk` steps, then across chunks.
    Chunked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Model width H (paper, sCIFAR: 512 ✘; minimal-LRU default 256).
    pub d_model: i64,
    /// Number of complex state channels N (paper, sCIFAR: 384 ✘; minimal-LRU default 128).
    pub d_state: i64,
    /// Number of blocks (paper, sCIFAR: 6 ✘; minimal-LRU default 4).
    pub n_layers: i64,
    /// Smallest initial |λ| (paper, sCIFAR: 0.9 ✘; minimal-LRU default 0).
    pub r_min: f64,
    /// Largest initial |λ| (paper, sCIFAR: 0.999 ✘; minimal-LRU default 1).
    pub r_max: f64,
    /// Largest initial phase of λ in radians (minimal-LRU default 6.28, i.e. the full circle).
    pub max_phase: f64,
    /// Dropout probability, one mask per (example, channel) shared over time (minimal-LRU
    /// `--p_dropout 0.1`, `broadcast_dims=[0]`).
    pub dropout: f64,
    /// Normalisation layer (minimal-LRU `--norm batch`).
    pub norm: Norm,
    /// Norm before the LRU instead of after the skip connection (minimal-LRU `--prenorm True`).
    pub prenorm: bool,
    /// Parallel evaluation of the recurrence.
    pub parallel: Parallel,
    /// Chunk length T for `parallel = "chunked"`; must divide the sequence length.
    pub chunk: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            d_model: 512,
            d_state: 384,
            n_layers: 6,
            r_min: 0.9,
            r_max: 0.999,
            max_phase: TAU,
            dropout: 0.1,
            norm: Norm::Batch,
            prenorm: true,
            parallel: Parallel::Fft,
            chunk: 64,
        }
    }
}

/// A Flax-style Dense layer: weights normal(0, 1/fan_in), zero bias.
fn dense(p: nn::Path, d_in: i64, d_out: i64) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0 / (d_in as f64).sqrt(),
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, d_in, d_out, cfg)
}

/// LayerNorm or BatchNorm on (B, L, H).
#[derive(Debug)]
enum NormLayer {
    Layer(nn::LayerNorm),
    Batch(nn::BatchNorm),
}

impl NormLayer {
    fn new(p: nn::Path, norm: Norm, h: i64) -> NormLayer {
        match norm {
            Norm::Layer => NormLayer::Layer(nn::layer_norm(p, vec![h], Default::default())),
            Norm::Batch => {
                let cfg = nn::BatchNormConfig {
                    momentum: 0.01,
                    ws_init: nn::Init::Const(1.0),
                    ..Default::default()
                };
                NormLayer::Batch(nn::batch_norm1d(p, h, cfg))
            }
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            NormLayer::Layer(ln) => xs.apply(ln),                                          // (B, L, H)
            NormLayer::Batch(bn) => xs.transpose(1, 2).apply_t(bn, train).transpose(1, 2), // (B, L, H)
        }
    }
}

/// h_ℓ = Σ_{s ≤ ℓ} λ^{ℓ−s} u_s by FFT: u (B, L, N) complex, log λ (N) → h (B, L, N) complex.
fn fft_scan(u: &Tensor, log_lambda: &Tensor) -> Tensor {
    let l = u.size()[1];
    let pos = Tensor::arange(l, (Kind::Float, u.device())); // (L)
    let powers = (log_lambda.unsqueeze(-1) * pos).exp(); // (N, L): λ^ℓ
                                                         // FFTs along the last axis of (B, N, L) views: faster than along L of (B, L, N) (strided).
    let k_f = powers.fft_fft(2 * l, -1, "backward"); // (N, 2L)
    let u_f = u.transpose(1, 2).fft_fft(2 * l, -1, "backward"); // (B, N, 2L)
    let h = (u_f * k_f).fft_ifft(2 * l, -1, "backward").narrow(2, 0, l); // (B, N, L)
    h.transpose(1, 2) // (B, L, N)
}

/// Powers λ^{k·(i−j)} for i ≥ j and 0 above the diagonal: (size, size, N) complex.
fn lower_powers(size: i64, step: f64, log_lambda: &Tensor) -> Tensor {
    let idx = Tensor::arange(size, (Kind::Float, log_lambda.device())); // (S)
    let lag = idx.unsqueeze(1) - idx.unsqueeze(0); // (S, S): i − j
    let causal = lag.ge(0.0).to_kind(Kind::Float).unsqueeze(-1); // (S, S, 1)
    let powers = (lag.clamp_min(0.0).unsqueeze(-1) * step * log_lambda).exp(); // (S, S, N)
    powers * causal // (S, S, N)
}

/// The same scan in chunks of `t` steps: u (B, L, N) complex, log λ (N) → h (B, L, N) complex.
fn chunked_scan(u: &Tensor, log_lambda: &Tensor, t: i64) -> Tensor {
    let (_, l, n) = u.size3().unwrap();
    let c = l / t;
    let u = u.view([-1, c, t, n]); // (B, C, T, N)
    let within = lower_powers(t, 1.0, log_lambda); // (T, T, N): λ^{i−j}
    let local = Tensor::einsum("ijn,bcjn->bcin", &[&within, &u], None::<i64>); // (B, C, T, N)
    let ends = local.select(2, t - 1); // (B, C, N): each chunk's final state from its own inputs
                                       // The state entering chunk c is Σ_{j<c} λ^{T(c−1−j)} ends_j: a strictly lower power matrix.
    let across = lower_powers(c, t as f64, log_lambda).narrow(0, 0, c - 1); // (C−1, C, N)
    let across = across.constant_pad_nd([0, 0, 0, 0, 1, 0]); // (C, C, N): row c holds λ^{T(c−1−j)}
    let carry = Tensor::einsum("cjn,bjn->bcn", &[&across, &ends], None::<i64>); // (B, C, N)
    let pos = Tensor::arange_start(1, t + 1, (Kind::Float, u.device())); // (T): 1..T
    let decay = (pos.unsqueeze(-1) * log_lambda).exp(); // (T, N): λ^{i+1}
    let h = local + carry.unsqueeze(2) * decay; // (B, C, T, N)
    h.view([-1, l, n]) // (B, L, N)
}

/// The Linear Recurrent Unit on (B, L, H).
#[derive(Debug)]
struct LruLayer {
    nu_log: Tensor,    // (N)
    theta_log: Tensor, // (N)
    gamma_log: Tensor, // (N)
    b_re: Tensor,      // (N, H)
    b_im: Tensor,      // (N, H)
    c_re: Tensor,      // (H, N)
    c_im: Tensor,      // (H, N)
    d: Tensor,         // (H)
    parallel: Parallel,
    chunk: i64,
}

impl LruLayer {
    fn new(p: &nn::Path, cfg: &Config) -> LruLayer {
        let (h, n) = (cfg.d_model, cfg.d_state);
        let opts = (Kind::Float, p.device());
        let ssm = p.set_group(SSM);
        // Ring initialisation: |λ|² uniform on [r_min², r_max²], phase uniform on [0, max_phase].
        let (r2_min, r2_max) = (cfg.r_min * cfg.r_min, cfg.r_max * cfg.r_max);
        let radius2 = Tensor::rand([n], opts) * (r2_max - r2_min) + r2_min; // (N): |λ|²
        let nu_log = ssm.var_copy("nu_log", &(radius2.log() * -0.5).log()); // ν = −½ log|λ|²
        let theta_log = ssm.var_copy("theta_log", &(Tensor::rand([n], opts) * cfg.max_phase).log());
        let gamma_log = ssm.var_copy("gamma_log", &((-radius2 + 1.0).sqrt()).log()); // √(1 − |λ|²)
        let b_std = 1.0 / (2.0 * h as f64).sqrt();
        let c_std = 1.0 / (n as f64).sqrt();
        LruLayer {
            nu_log,
            theta_log,
            gamma_log,
            b_re: ssm.randn("b_re", &[n, h], 0.0, b_std),
            b_im: ssm.randn("b_im", &[n, h], 0.0, b_std),
            c_re: p.randn("c_re", &[h, n], 0.0, c_std),
            c_im: p.randn("c_im", &[h, n], 0.0, c_std),
            d: p.randn_standard("d", &[h]),
            parallel: cfg.parallel,
            chunk: cfg.chunk,
        }
    }

    /// log λ = −e^ν + i·e^θ (N), complex.
    fn log_lambda(&self) -> Tensor {
        Tensor::complex(&-self.nu_log.exp(), &self.theta_log.exp())
    }

    /// The input to the state, γ ⊙ (B x): x (B, L, H) float32 → (B, L, N) complex.
    fn state_input(&self, xs: &Tensor) -> Tensor {
        let gamma = self.gamma_log.exp().unsqueeze(-1); // (N, 1)
        let re = xs.matmul(&(&self.b_re * &gamma).tr()); // (B, L, N)
        let im = xs.matmul(&(&self.b_im * &gamma).tr()); // (B, L, N)
        Tensor::complex(&re, &im) // (B, L, N)
    }

    /// y = Re(C h) + D ⊙ x: h (B, L, N) complex, x (B, L, H) → (B, L, H).
    fn readout(&self, h: &Tensor, xs: &Tensor) -> Tensor {
        let y = h.real().matmul(&self.c_re.tr()) - h.imag().matmul(&self.c_im.tr()); // (B, L, H)
        y + xs * &self.d // (B, L, H)
    }

    /// x (B, L, H) float32 → y (B, L, H) float32.
    fn forward(&self, xs: &Tensor) -> Tensor {
        let u = self.state_input(xs); // (B, L, N)
        let h = match self.parallel {
            Parallel::Fft => fft_scan(&u, &self.log_lambda()),                     // (B, L, N)
            Parallel::Chunked => chunked_scan(&u, &self.log_lambda(), self.chunk), // (B, L, N)
        };
        self.readout(&h, xs) // (B, L, H)
    }
}

/// One block: [norm] → LRU → GELU → dropout → GLU → dropout → skip → [norm].
#[derive(Debug)]
struct Block {
    lru: LruLayer,
    out1: nn::Linear,
    out2: nn::Linear,
    norm: NormLayer,
    dropout: f64,
    prenorm: bool,
}

impl Block {
    fn new(p: &nn::Path, cfg: &Config) -> Block {
        let h = cfg.d_model;
        Block {
            lru: LruLayer::new(&(p / "lru"), cfg),
            out1: dense(p / "out1", h, h),
            out2: dense(p / "out2", h, h),
            norm: NormLayer::new(p / "norm", cfg.norm, h),
            dropout: cfg.dropout,
            prenorm: cfg.prenorm,
        }
    }

    /// Dropout with one mask per (example, channel), shared over time.
    fn drop(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.transpose(1, 2).feature_dropout(self.dropout, train).transpose(1, 2) // (B, L, H)
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let z = if self.prenorm {
            self.norm.forward_t(xs, train)
        } else {
            xs.shallow_clone()
        }; // (B, L, H)
        let z = crate::amp::without_autocast(|| self.lru.forward(&z.to_kind(Kind::Float))); // (B, L, H)
        let z = self.drop(&z.gelu("tanh"), train); // (B, L, H): Flax's default approximate GELU
        let z = z.apply(&self.out1) * z.apply(&self.out2).sigmoid(); // (B, L, H)
        let z = self.drop(&z, train); // (B, L, H)
        let xs = xs + z; // (B, L, H)
        if self.prenorm {
            xs
        } else {
            self.norm.forward_t(&xs, train) // (B, L, H)
        }
    }
}

impl Model for Config {
    const NAME: &'static str = "lru";
    const PAPER: &'static str = "Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De: \"Resurrecting Recurrent Neural Networks for Long Sequences\", ICML 2023, arXiv 2303.06349";

    /// Checks every field before any tensor exists.
    fn validate(&self, input: &InputSpec) -> Result<()> {
        check_sizes(&[("d_model", self.d_model), ("d_state", self.d_state), ("n_layers", self.n_layers)])?;
        if !(0.0..1.0).contains(&self.r_min) {
            bail!("model.r_min = {} must lie in [0, 1)", self.r_min);
        }
        if self.r_max.is_nan() || self.r_max <= self.r_min || self.r_max > 1.0 {
            bail!("model.r_max = {} must lie in (model.r_min = {}, 1]", self.r_max, self.r_min);
        }
        if self.max_phase.is_nan() || self.max_phase <= 0.0 || self.max_phase > TAU {
            bail!("model.max_phase = {} must lie in (0, 2π]", self.max_phase);
        }
        check_rates(&[("dropout", self.dropout)])?;
        if self.parallel == Parallel::Chunked && (self.chunk < 1 || input.seq_len % self.chunk != 0) {
            bail!(
                "model.chunk = {} must be positive and divide the sequence length {}",
                self.chunk,
                input.seq_len
            );
        }
        InputEncoder::validate(InputMode::Linear, input, 0)?;
        Ok(())
    }

    fn min_params(&self, _input: &InputSpec) -> f64 {
        let f = |v: i64| v as f64;
        f(self.n_layers) * (2.0 * f(self.d_model) * f(self.d_model) + 4.0 * f(self.d_model) * f(self.d_state))
    }

    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT> {
        Box::new(Lru::new(p, self, input))
    }
}

#[derive(Debug)]
pub struct Lru {
    encoder: InputEncoder,
    blocks: Vec<Block>,
    head: nn::Linear,
}

impl Lru {
    pub fn new(p: &nn::Path, cfg: &Config, input: &InputSpec) -> Lru {
        let h = cfg.d_model;
        let encoder = InputEncoder::new(&(p / "encoder"), InputMode::Linear, input, h, 0, nn::Init::Const(0.0));
        let blocks = (0..cfg.n_layers).map(|i| Block::new(&(p / "blocks" / i), cfg)).collect();
        Lru {
            encoder,
            blocks,
            head: dense(p / "head", h, NUM_CLASSES),
        }
    }
}

impl nn::ModuleT for Lru {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = self.encoder.forward(xs); // (B, L, H)
        for block in &self.blocks {
            x = block.forward_t(&x, train); // (B, L, H)
        }
        let x = x.mean_dim(1, false, None); // (B, H)
        x.apply(&self.head).to_kind(Kind::Float) // (B, 10)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ModelConfig;
    use super::*;
    use crate::testing::*;
    use tch::{nn::ModuleT, Device};

    fn tiny(parallel: Parallel) -> Config {
        Config {
            d_model: 8,
            d_state: 6,
            n_layers: 2,
            parallel,
            ..Default::default()
        }
    }

    fn preset(name: &str) -> Config {
        preset_config(name)
    }

    fn params(cfg: &Config, input: &InputSpec) -> i64 {
        count(&ModelConfig::Lru(cfg.clone()), input)
    }

    /// Forward + backward time of one LRU layer, in milliseconds (median of `reps` after a warm-up).
    fn time_layer(cfg: &Config, batch: i64, len: i64, reps: usize) -> f64 {
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = LruLayer::new(&vs.root(), cfg);
        let xs = Tensor::randn([batch, len, cfg.d_model], (Kind::Float, Device::Cpu));
        let mut times = Vec::new();
        for _ in 0..=reps {
            let start = std::time::Instant::now();
            layer.forward(&xs).square().mean(None).backward();
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    }

    #[test]
    fn output_shape() {
        for (parallel, input) in [(Parallel::Fft, RGB), (Parallel::Chunked, GRAY)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = Lru::new(&vs.root(), &tiny(parallel), &input);
            let ys = model.forward_t(&random_pixels(3, &input), true);
            assert_eq!(ys.size(), vec![3, 10]);
            assert_eq!(ys.kind(), Kind::Float);
        }
    }

    /// Preset `lru-scifar` (6 × H 512, N 384, sCIFAR). Per block: ν, θ, γ_log 3 · 384 = 1,152;
    /// B re/im 2 · 384 · 512 = 393,216; C re/im 393,216; D 512; two Dense(512 → 512) 2 · 262,656;
    /// BatchNorm 1,024: 1,314,432. Encoder Linear(3 → 512) 2,048, head 5,130:
    /// 6 · 1,314,432 + 7,178 = 7,893,770.
    #[test]
    fn preset_lru_scifar_parameter_count() {
        let cfg = preset("lru-scifar");
        assert_eq!(cfg, Config::default());
        assert_eq!(params(&cfg, &RGB), 7_893_770);
    }

    /// Preset `lru-small` (4 × H 128, N 64, sCIFAR). Per block: 3 · 64 = 192; B 2 · 64 · 128 =
    /// 16,384; C 16,384; D 128; two Dense(128 → 128) 2 · 16,512; BatchNorm 256: 66,368.
    /// Encoder 512, head 1,290: 4 · 66,368 + 1,802 = 267,274.
    #[test]
    fn preset_lru_small_parameter_count() {
        assert_eq!(params(&preset("lru-small"), &RGB), 267_274);
    }

    #[test]
    fn gradients_reach_every_parameter() {
        for parallel in [Parallel::Fft, Parallel::Chunked] {
            let post = Config {
                norm: Norm::Layer,
                prenorm: false,
                ..tiny(parallel)
            };
            assert_gradients_reach_every_parameter(&ModelConfig::Lru(post), &GRAY);
        }
    }

    /// With BatchNorm (whose running statistics are buffers without gradients): every trainable
    /// tensor receives a non-zero gradient.
    #[test]
    fn gradients_reach_every_trainable_tensor_with_batch_norm() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Lru::new(&vs.root(), &tiny(Parallel::Fft), &RGB);
        let loss = model
            .forward_t(&random_pixels(4, &RGB), true)
            .cross_entropy_for_logits(&Tensor::from_slice(&[0i64, 1, 2, 3]));
        loss.backward();
        for t in vs.trainable_variables() {
            assert!(t.grad().defined() && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
    }

    #[test]
    fn eval_is_deterministic() {
        assert_eval_is_deterministic(&ModelConfig::Lru(tiny(Parallel::Fft)), &RGB);
        assert_eval_is_deterministic(&ModelConfig::Lru(tiny(Parallel::Chunked)), &RGB);
    }

    #[test]
    fn loss_falls_on_real_images() {
        let cfg = Config {
            d_model: 16,
            d_state: 16,
            n_layers: 2,
            dropout: 0.0,
            ..Default::default()
        };
        assert_loss_falls(&ModelConfig::Lru(cfg), &RGB, 16, 10, 0.004, 0.8);
    }

    #[test]
    fn ssm_parameters_are_in_the_ssm_group() {
        let vs = nn::VarStore::new(Device::Cpu);
        Lru::new(&vs.root(), &tiny(Parallel::Fft), &RGB);
        let vars = vs.variables_.lock().unwrap();
        let group = |name: &str| {
            let t = &vars.named_variables[name];
            vars.trainable_variables
                .iter()
                .find(|v| v.tensor.data_ptr() == t.data_ptr())
                .unwrap()
                .group
        };
        for name in ["nu_log", "theta_log", "gamma_log", "b_re", "b_im"] {
            assert_eq!(group(&format!("blocks.0.lru.{name}")), SSM, "{name}");
        }
        for name in ["c_re", "c_im", "d"] {
            assert_ne!(group(&format!("blocks.0.lru.{name}")), SSM, "{name}");
        }
    }

    /// The recurrence stepped in time (test only): h_t = λ h_{t−1} + γ ⊙ B x_t, y_t = Re(C h_t) + D x_t.
    fn sequential(layer: &LruLayer, xs: &Tensor) -> Tensor {
        let lambda = layer.log_lambda().exp(); // (N)
        let u = layer.state_input(xs); // (B, L, N)
        let (b, l, _) = xs.size3().unwrap();
        let mut h = Tensor::zeros([b, lambda.size()[0]], (Kind::ComplexFloat, Device::Cpu)); // (B, N)
        let mut states = Vec::new();
        for t in 0..l {
            h = &h * &lambda + u.select(1, t); // (B, N)
            states.push(h.shallow_clone());
        }
        layer.readout(&Tensor::stack(&states, 1), xs) // (B, L, H)
    }

    #[test]
    fn parallel_forms_equal_the_sequential_recurrence() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = Config {
            d_model: 5,
            d_state: 7,
            ..Default::default()
        };
        let mut layer = LruLayer::new(&vs.root(), &cfg);
        let xs = Tensor::randn([2, 96, 5], (Kind::Float, Device::Cpu));
        let expected = tch::no_grad(|| sequential(&layer, &xs));
        let scale = expected.abs().max().double_value(&[]);
        for (parallel, chunk) in [
            (Parallel::Fft, 0),
            (Parallel::Chunked, 16),
            (Parallel::Chunked, 1),
            (Parallel::Chunked, 96),
        ] {
            (layer.parallel, layer.chunk) = (parallel, chunk);
            let ys = tch::no_grad(|| layer.forward(&xs));
            let diff = (&ys - &expected).abs().max().double_value(&[]);
            assert!(diff < 1e-4 * scale.max(1.0), "{parallel:?} chunk {chunk}: diff {diff}");
        }
    }

    /// Ring initialisation: r_min ≤ |λ| ≤ r_max, 0 ≤ arg λ ≤ max_phase, γ = √(1 − |λ|²).
    #[test]
    fn ring_initialisation() {
        let cfg = Config {
            d_model: 4,
            d_state: 4096,
            r_min: 0.4,
            r_max: 0.8,
            max_phase: 0.3,
            ..Default::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = LruLayer::new(&vs.root(), &cfg);
        let lambda = tch::no_grad(|| layer.log_lambda().exp()); // (N)
        let modulus = lambda.abs();
        let phase = layer.theta_log.exp();
        let min_max = |t: &Tensor| (t.min().double_value(&[]), t.max().double_value(&[]));
        let (lo, hi) = min_max(&modulus);
        assert!(lo >= 0.4 - 1e-6 && hi <= 0.8 + 1e-6, "|λ| in [{lo}, {hi}]");
        assert!(lo < 0.41 && hi > 0.79, "|λ| does not fill the ring: [{lo}, {hi}]");
        let (lo, hi) = min_max(&phase);
        assert!(lo >= 0.0 && hi <= 0.3 + 1e-6, "phase in [{lo}, {hi}]");
        // |λ|² uniform on [r_min², r_max²] (uniform over the ring's area): mean (0.16 + 0.64) / 2.
        let mean_r2 = modulus.square().mean(None).double_value(&[]);
        assert!((mean_r2 - 0.4).abs() < 0.01, "mean |λ|² = {mean_r2}");
        let gamma = layer.gamma_log.exp();
        let expected = (-modulus.square() + 1.0).sqrt();
        assert!((gamma - expected).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn validate_names_the_bad_key() {
        let bad = Config {
            r_max: 0.5,
            r_min: 0.9,
            ..Default::default()
        };
        assert!(bad.validate(&RGB).unwrap_err().to_string().contains("model.r_max"));
        let bad = Config {
            parallel: Parallel::Chunked,
            chunk: 48,
            ..Default::default()
        };
        let err = bad.validate(&RGB).unwrap_err().to_string();
        assert!(err.contains("model.chunk") && err.contains("48"), "{err}");
    }

    /// CPU timing of the two parallel forms, forward + backward of one LRU layer (not a timed
    /// assertion): `cargo test --lib models::lru::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        tch::manual_seed(0);
        let sizes = [(16, 128, 64), (64, 128, 64), (50, 512, 384)]; // (B, H, N), L = 1024
        for (batch, h, n) in sizes {
            let base = Config {
                d_model: h,
                d_state: n,
                ..Default::default()
            };
            let fft = time_layer(
                &Config {
                    parallel: Parallel::Fft,
                    ..base.clone()
                },
                batch,
                1024,
                3,
            );
            let mut line = format!("B {batch:3} H {h:3} N {n:3} L 1024: fft {fft:8.1} ms");
            for chunk in [16, 32, 64] {
                let t = time_layer(
                    &Config {
                        parallel: Parallel::Chunked,
                        chunk,
                        ..base.clone()
                    },
                    batch,
                    1024,
                    3,
                );
                line += &format!(" | chunked T={chunk} {t:8.1} ms");
            }
            println!("{line}");
        }
    }
}
