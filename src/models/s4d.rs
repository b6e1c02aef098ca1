//! S4D: "On the Parameterization and Initialization of Diagonal State Space Models",
//! Albert Gu, Ankit Gupta, Karan Goel, Christopher Ré, 2022, arXiv 2206.11893.
//!
//! Reported figures: LRA Image (grayscale CIFAR-10, 1,024 normalised pixels) ≈ 88% for the large
//! model: the S4 repository's run of `configs/experiment/mega/lra-image/large-s4d.yaml` (6 × 512,
//! bidirectional, BatchNorm prenorm, S4D-Lin, ZOH) reached 88.28% validation accuracy with 3.96M
//! parameters (`configs/experiment/mega/lra-image/README.md`). The minimal 4 × 128 model of
//! `example.py` reaches ≈ 88% on RGB sCIFAR (`models/s4/README.md`).
//!
//! Reference code followed: `state-spaces/s4` — `models/s4/s4d.py` (kernel and layer) and
//! `example.py` (backbone, optimizer groups); for the options of the large LRA model,
//! `src/models/sequence/kernels/{ssm.py, fftconv.py}`, `src/models/sequence/modules/s4block.py`
//! and `src/models/sequence/backbones/{block.py, model.py}`. [`Config::default`] is the minimal
//! `example.py` model; the preset `s4d-lra` switches on the large model's options.
//!
//! The layer: a diagonal SSM with N/2 complex modes per channel, S4D-Lin initialisation
//! A_n = −½ + iπn (stored as log(−Re A) and Im A), zero-order-hold discretisation, the Vandermonde
//! kernel K_ℓ = 2·Re Σ_n C_n B̄_n e^{ΔA_n ℓ} (in factorised form, [`Kernel::forward`]), a causal
//! FFT convolution of length 2L plus the D skip, then GELU, dropout, Linear(H → 2H) + GLU.
//! Blocks are residual with a post- (or pre-) norm; the encoder is Linear(C → H) on normalised
//! pixels, the head a mean over L and a Linear. All Linear layers use PyTorch's default
//! initialisation ([`torch_linear`]), as the reference does.
//!
//! Deliberate deviations:
//! - Δ is stored as log Δ (`s4d.py`; the full repository's configs default to a softplus
//!   transform, but the README's S4D runs predate that change and the paper uses log Δ).
//! - With `prenorm`, a final norm follows the last block (as the full repository's backbone);
//!   `example.py --prenorm` has none.
//! - With `c_ssm_lr` (full repository, scalar `layer.lr`), C is trained at the SSM learning rate
//!   but, unlike there, without weight decay: pixelseq's SSM group has none. D and all 1-D tensors
//!   skip weight decay (the trainer exempts them); `example.py` decays them too.
//! - The bidirectional kernel keeps the repository's deliberate off-by-one: the backward kernel's
//!   first tap acts at lag −1, so only the forward kernel sees the current step.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use tch::{nn, Kind, Tensor};

use super::common::{check_positive, check_rates, check_sizes, mask_inputs, torch_linear, InputEncoder, InputMode};
use super::{Model, Objective, Backbone, Input, NUM_CLASSES, SSM};
use crate::data::InputSpec;

/// Which normalisation a block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// LayerNorm over the H channels of each step.
    Layer,
    /// BatchNorm1d over batch and length for each channel (running statistics at eval).
    Batch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Model width H (`example.py --d_model 128`).
    pub d_model: i64,
    /// Number of residual S4D blocks (`example.py --n_layers 4`).
    pub n_layers: i64,
    /// State size N; the kernel has N/2 complex modes per channel (`s4d.py` `d_state=64`).
    pub d_state: i64,
    /// Dropout probability (`example.py --dropout 0.1`).
    pub dropout: f64,
    /// One dropout mask per (example, channel), shared over all L steps (`example.py` Dropout1d,
    /// `s4d.py` DropoutNd); false drops elements independently (large LRA model `tie_dropout: false`).
    pub tie_dropout: bool,
    /// Norm before the layer instead of after the residual add (`example.py` default: post).
    pub prenorm: bool,
    /// Normalisation layer (`example.py`: LayerNorm).
    pub norm: Norm,
    /// Two-sided kernel: a second C gives a flipped kernel over later steps (`fftconv.py`);
    /// false keeps the layer causal (`s4d.py`).
    pub bidirectional: bool,
    /// Train B (initialised to 1, SSM group) instead of folding it into C (`s4d.py` folds it).
    pub train_b: bool,
    /// Train C at `optim.ssm_lr` (full repository with a scalar `layer.lr`); false: the default
    /// group with weight decay (`example.py`).
    pub c_ssm_lr: bool,
    /// Extra dropout on the convolution output before GELU (full repository `FFTConv`; not in `s4d.py`).
    pub conv_dropout: bool,
    /// Smallest initial step size Δ (`s4d.py` `dt_min=0.001`).
    pub dt_min: f64,
    /// Largest initial step size Δ (`s4d.py` `dt_max=0.1`).
    pub dt_max: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            d_model: 128,
            n_layers: 4,
            d_state: 64,
            dropout: 0.1,
            tie_dropout: true,
            prenorm: false,
            norm: Norm::Layer,
            bidirectional: false,
            train_b: false,
            c_ssm_lr: false,
            conv_dropout: false,
            dt_min: 0.001,
            dt_max: 0.1,
        }
    }
}

impl Config {
    /// Number of complex modes per channel.
    fn modes(&self) -> i64 {
        self.d_state / 2
    }
}

/// Dropout on (B, L, H); `tied` shares one mask over L (Dropout1d). Identity at eval.
fn dropout(xs: &Tensor, p: f64, tied: bool, train: bool) -> Tensor {
    if tied {
        xs.transpose(1, 2).feature_dropout(p, train).transpose(1, 2) // (B, L, H)
    } else {
        super::common::dropout(xs, p, train) // (B, L, H)
    }
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
                    ws_init: nn::Init::Const(1.0),
                    ..Default::default()
                };
                NormLayer::Batch(nn::batch_norm1d(p, h, cfg))
            }
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            NormLayer::Layer(ln) => xs.apply(ln), // (B, L, H)
            // BatchNorm1d over (B·L, H) rows: the statistics of (B, H, L) over B and L, without
            // the strided (B, H, L) view that the CPU kernel reads slowly.
            NormLayer::Batch(bn) => xs.reshape([-1, *xs.size().last().unwrap()]).apply_t(bn, train).view_as(xs), // (B, L, H)
        }
    }
}

/// The diagonal SSM's parameters and its convolution kernel (`s4d.py` `S4DKernel`).
#[derive(Debug)]
struct Kernel {
    log_dt: Tensor,     // (H)
    log_a_real: Tensor, // (H, N/2)
    a_imag: Tensor,     // (H, N/2)
    b: Option<Tensor>,  // (H, N/2, 2) complex as (re, im)
    c: Tensor,          // (K, H, N/2, 2), K = 2 kernels if bidirectional else 1
}

impl Kernel {
    fn new(p: &nn::Path, cfg: &Config) -> Kernel {
        let (h, n) = (cfg.d_model, cfg.modes());
        let ssm = p.set_group(SSM);
        let log_dt = ssm.uniform("log_dt", &[h], cfg.dt_min.ln(), cfg.dt_max.ln());
        let log_a_real = ssm.var("log_a_real", &[h, n], nn::Init::Const(0.5f64.ln()));
        let lin = Tensor::arange(n, (Kind::Float, p.device())) * PI; // (N/2): S4D-Lin Im A_n = πn
        let a_imag = ssm.var_copy("a_imag", &lin.unsqueeze(0).repeat([h, 1]));
        let b = cfg.train_b.then(|| {
            let one = Tensor::from_slice(&[1f32, 0.0]).to_device(p.device()); // 1 + 0i
            ssm.var_copy("b", &one.view([1, 1, 2]).repeat([h, n, 1]))
        });
        let k = if cfg.bidirectional { 2 } else { 1 };
        let c_path = if cfg.c_ssm_lr { &ssm } else { p };
        // C ~ complex standard normal: re and im each N(0, ½) (`torch.randn(..., dtype=cfloat)`).
        let c = c_path.randn("c", &[k, h, n, 2], 0.0, 0.5f64.sqrt());
        Kernel {
            log_dt,
            log_a_real,
            a_imag,
            b,
            c,
        }
    }

    /// The discretised state matrix ΔA and the input-output weights C·B̄ of each mode.
    fn discretised(&self) -> (Tensor, Tensor) {
        let dt = self.log_dt.exp(); // (H)
        let a = Tensor::complex(&-self.log_a_real.exp(), &self.a_imag); // (H, N/2)
        let dta = &a * dt.unsqueeze(-1); // (H, N/2)
        let b_bar = (dta.exp() - 1.0) / &a; // (H, N/2): ZOH B̄ with B = 1
        let b_bar = match &self.b {
            Some(b) => b_bar * b.view_as_complex(), // (H, N/2)
            None => b_bar,
        };
        let cb = self.c.view_as_complex() * b_bar; // (K, H, N/2)
        (dta, cb)
    }

    /// The kernels K_ℓ = 2·Re Σ_n C_n B̄_n e^{ΔA_n ℓ}, ℓ = 0..L, as (K, H, L) float32.
    ///
    /// `s4d.py` builds the whole Vandermonde matrix e^{ΔA_n ℓ}, (H, N/2, L) complex, and so does
    /// autograd's backward: most of a training step's time. Here ℓ = S·q + r with S = ⌈√L⌉ and
    /// e^{ΔA ℓ} = e^{ΔA S q} · e^{ΔA r}, so K_{Sq+r} = Σ_n (C_n B̄_n e^{ΔA_n S q}) · e^{ΔA_n r}: a
    /// (K·Q × N/2) by (N/2 × S) matrix product per channel from 2√L exponentials per mode instead
    /// of L. The same kernel up to float rounding (`factorised_kernel_equals_the_vandermonde_product`).
    fn forward(&self, l: i64) -> Tensor {
        let (dta, cb) = self.discretised();
        let (k, h, n) = cb.size3().unwrap();
        let s = (l as f64).sqrt().ceil() as i64;
        let q = (l + s - 1) / s;
        let options = (Kind::Float, dta.device());
        let inner = (dta.unsqueeze(-1) * Tensor::arange(s, options)).exp(); // (H, N/2, S): e^{ΔA r}
        let outer = (dta.unsqueeze(-1) * (Tensor::arange(q, options) * s as f64)).exp(); // (H, N/2, Q)
        let weights = (cb.unsqueeze(-1) * outer).permute([1, 0, 3, 2]).reshape([h, k * q, n]); // (H, K·Q, N/2)
        let kernel = weights.matmul(&inner).view([h, k, q * s]).narrow(2, 0, l); // (H, K, L)
        kernel.real().transpose(0, 1) * 2.0 // (K, H, L)
    }
}

/// One residual block: [norm] → SSM conv + D·u → GELU → dropout → Linear(H → 2H) + GLU →
/// dropout → residual add → [norm].
#[derive(Debug)]
struct Block {
    kernel: Kernel,
    d: Tensor, // (H)
    out: nn::Linear,
    norm: NormLayer,
    cfg: Config,
}

impl Block {
    fn new(p: &nn::Path, cfg: &Config) -> Block {
        let h = cfg.d_model;
        Block {
            kernel: Kernel::new(&(p / "kernel"), cfg),
            d: p.randn_standard("d", &[h]),
            out: torch_linear(p / "out", h, 2 * h),
            norm: NormLayer::new(p / "norm", cfg.norm, h),
            cfg: cfg.clone(),
        }
    }

    /// y = K ∗ u + D·u with an FFT of length 2L (a linear, not circular, convolution).
    /// u: (B, L, H) float32 → (B, L, H) float32.
    fn ssm_conv(&self, u: &Tensor) -> Tensor {
        let l = u.size()[1];
        let k = self.kernel.forward(l); // (K, H, L)
        let k = if self.cfg.bidirectional {
            // Forward kernel on lags 0..L, flipped backward kernel on lags −L..−1 (`fftconv.py`).
            let backward = k.get(1).flip([-1]).constant_pad_nd([l, 0]); // (H, 2L)
            k.get(0).constant_pad_nd([0, l]) + backward // (H, 2L)
        } else {
            k.get(0) // (H, L)
        };
        // FFTs along the last axis of (B, H, L) views: faster than along L of (B, L, H) (strided).
        let k_f = k.fft_rfft(2 * l, -1, "backward"); // (H, L+1)
        let u_f = u.transpose(1, 2).fft_rfft(2 * l, -1, "backward"); // (B, H, L+1)
        let y = (u_f * k_f).fft_irfft(2 * l, -1, "backward").narrow(2, 0, l); // (B, H, L)

        // The contiguous operand first: the sum, and GELU's backward after it, then run in the
        // (B, L, H) layout instead of the transposed one (there GELU's backward was 20× slower).
        u * &self.d + y.transpose(1, 2) // (B, L, H)
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (p, tied) = (self.cfg.dropout, self.cfg.tie_dropout);
        let z = if self.cfg.prenorm {
            self.norm.forward_t(xs, train)
        } else {
            xs.shallow_clone()
        }; // (B, L, H)
        let z = crate::amp::without_autocast(|| self.ssm_conv(&z.to_kind(Kind::Float))); // (B, L, H)
        let z = if self.cfg.conv_dropout { dropout(&z, p, tied, train) } else { z }; // (B, L, H)
        let z = dropout(&z.gelu("none"), p, tied, train); // (B, L, H)
        let z = z.apply(&self.out).glu(-1); // (B, L, H)
        let z = dropout(&z, p, tied, train); // (B, L, H)
        let xs = xs + z; // (B, L, H)
        if self.cfg.prenorm {
            xs
        } else {
            self.norm.forward_t(&xs, train) // (B, L, H)
        }
    }
}

impl Model for Config {
    const NAME: &'static str = "s4d";
    const PAPER: &'static str = "Gu, Gupta, Goel, Ré: \"On the Parameterization and Initialization of Diagonal State Space Models\", 2022, arXiv 2206.11893";

    /// Checks every field before any tensor exists.
    fn validate(&self, input: &InputSpec) -> Result<()> {
        check_sizes(&[("d_model", self.d_model), ("n_layers", self.n_layers), ("d_state", self.d_state)])?;
        if self.d_state < 2 || self.d_state % 2 != 0 {
            bail!("model.d_state = {} must be an even number ≥ 2 (N/2 complex modes)", self.d_state);
        }
        check_rates(&[("dropout", self.dropout)])?;
        check_positive(&[("dt_min", self.dt_min), ("dt_max", self.dt_max)])?;
        if self.dt_max < self.dt_min {
            bail!("model.dt_max = {} must be at least model.dt_min = {}", self.dt_max, self.dt_min);
        }
        InputEncoder::validate(InputMode::Linear, input, 0)?;
        Ok(())
    }

    fn min_params(&self, _input: &InputSpec) -> f64 {
        let f = |v: i64| v as f64;
        f(self.n_layers) * 2.0 * f(self.d_model) * f(self.d_model)
    }

    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT> {
        Box::new(S4d::new(p, self, input))
    }

    fn build_backbone(&self, p: &nn::Path, input: &InputSpec) -> Option<Box<dyn Backbone>> {
        Some(Box::new(S4d::new(p, self, input)))
    }

    /// Causal needs the convolution kernel to run one way and no BatchNorm statistics over
    /// positions (unidirectional, LayerNorm).
    fn objectives(&self) -> Vec<Objective> {
        if !self.bidirectional && self.norm != Norm::Batch {
            vec![Objective::Masked, Objective::Causal]
        } else {
            vec![Objective::Masked]
        }
    }
}

#[derive(Debug)]
pub struct S4d {
    encoder: InputEncoder,
    blocks: Vec<Block>,
    final_norm: Option<NormLayer>,
    head: nn::Linear,
}

impl S4d {
    pub fn new(p: &nn::Path, cfg: &Config, input: &InputSpec) -> S4d {
        let h = cfg.d_model;
        let encoder = InputEncoder::new(&(p / "encoder"), InputMode::Linear, input, h, 0, nn::Init::Const(0.0));
        let blocks = (0..cfg.n_layers).map(|i| Block::new(&(p / "blocks" / i), cfg)).collect();
        let final_norm = cfg.prenorm.then(|| NormLayer::new(p / "final_norm", cfg.norm, h));
        let head = torch_linear(p / "head", h, NUM_CLASSES);
        S4d {
            encoder,
            blocks,
            final_norm,
            head,
        }
    }
}

impl S4d {
    /// The blocks' output (B, L, H), after the final norm; `input` masks pixels (self-pretraining;
    /// the kernel is causal unless `bidirectional`).
    fn encode(&self, xs: &Tensor, input: Input, train: bool) -> Tensor {
        let mut x = self.encoder.forward(xs); // (B, L, H)
        if let Some((mask, token)) = input.masked {
            x = mask_inputs(&x, mask, token); // (B, L, H)
        }
        for block in &self.blocks {
            x = block.forward_t(&x, train); // (B, L, H)
        }
        if let Some(norm) = &self.final_norm {
            x = norm.forward_t(&x, train); // (B, L, H)
        }
        x
    }
}

impl nn::ModuleT for S4d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = self.encode(xs, Input::plain(), train).mean_dim(1, false, None); // (B, H)
        x.apply(&self.head).to_kind(Kind::Float) // (B, 10)
    }
}

impl Backbone for S4d {
    /// Causal when the kernel is (`bidirectional = false`) and no BatchNorm pools statistics over
    /// positions; [`crate::models::ModelConfig::objectives`] offers the causal objective only then.
    fn features(&self, xs: &Tensor, input: Input, train: bool) -> Tensor {
        self.encode(xs, input, train)
    }

    fn width(&self) -> i64 {
        self.head.ws.size()[1]
    }
}

#[cfg(test)]
mod tests {
    use super::super::ModelConfig;
    use super::*;
    use crate::testing::*;
    use tch::{nn::ModuleT, Device};

    fn tiny() -> Config {
        Config {
            d_model: 8,
            n_layers: 2,
            d_state: 8,
            ..Default::default()
        }
    }

    /// The large LRA model's options (preset `s4d-lra`) on a tiny width.
    fn tiny_full() -> Config {
        Config {
            prenorm: true,
            norm: Norm::Batch,
            bidirectional: true,
            train_b: true,
            c_ssm_lr: true,
            conv_dropout: true,
            tie_dropout: false,
            ..tiny()
        }
    }

    fn preset(name: &str) -> Config {
        preset_config(name)
    }

    fn params(cfg: &Config, input: &InputSpec) -> i64 {
        count(&ModelConfig::S4d(cfg.clone()), input)
    }

    /// BatchNorm on (B·L, H) rows normalises, and updates its running statistics, exactly as
    /// BatchNorm1d on the (B, H, L) layout of the reference.
    #[test]
    fn batch_norm_rows_match_the_channel_layout() {
        let vs = nn::VarStore::new(Device::Cpu);
        let ours = NormLayer::new(vs.root() / "ours", Norm::Batch, 6);
        let cfg = nn::BatchNormConfig {
            ws_init: nn::Init::Const(1.0),
            ..Default::default()
        };
        let theirs = nn::batch_norm1d(vs.root() / "theirs", 6, cfg);
        let xs = Tensor::randn([3, 10, 6], (Kind::Float, Device::Cpu)) * 2.0 + 1.0; // (B, L, H)
        for train in [true, true, false] {
            let a = ours.forward_t(&xs, train);
            let b = xs.transpose(1, 2).apply_t(&theirs, train).transpose(1, 2);
            assert!(a.allclose(&b, 1e-5, 1e-5, false), "train = {train}");
        }
    }

    #[test]
    fn output_shape() {
        for (cfg, input) in [(tiny(), GRAY), (tiny_full(), RGB)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = S4d::new(&vs.root(), &cfg, &input);
            let ys = model.forward_t(&random_pixels(3, &input), true);
            assert_eq!(ys.size(), vec![3, 10]);
            assert_eq!(ys.kind(), Kind::Float);
        }
    }

    /// Preset `s4d-small` (4 × 128, N = 64, LRA Image). Per block: D 128, log Δ 128,
    /// log(−Re A) 128·32 = 4,096, Im A 4,096, C 128·32·2 = 8,192 (N/2 = 32 complex modes),
    /// Linear(128 → 256) 33,024, LayerNorm 256: 49,920. Encoder Linear(1 → 128) 256, head 1,290:
    /// 256 + 4 · 49,920 + 1,290 = 201,226 (`example.py`'s model, "~200K parameters").
    #[test]
    fn preset_s4d_small_parameter_count() {
        let cfg = preset("s4d-small");
        assert_eq!(cfg, Config::default());
        assert_eq!(params(&cfg, &GRAY), 201_226);
    }

    /// Preset `s4d-lra` (6 × 512, N = 64, bidirectional, trained B, BatchNorm prenorm). Per block:
    /// D 512, log Δ 512, A 2 · 512 · 32 = 32,768, B 512 · 32 · 2 = 32,768, C for two kernels
    /// 2 · 512 · 32 · 2 = 65,536, Linear(512 → 1024) 525,312, BatchNorm 1,024: 658,432.
    /// Encoder 1,024, final BatchNorm 1,024, head 5,130: 6 · 658,432 + 7,178 = 3,957,770, the
    /// "3.96M" of `configs/experiment/mega/lra-image/README.md` (large S4D).
    #[test]
    fn preset_s4d_lra_parameter_count() {
        assert_eq!(params(&preset("s4d-lra"), &GRAY), 3_957_770);
    }

    #[test]
    fn gradients_reach_every_parameter() {
        assert_gradients_reach_every_parameter(&ModelConfig::S4d(tiny()), &GRAY);
        let full_with_layer_norm = Config {
            norm: Norm::Layer,
            ..tiny_full()
        };
        assert_gradients_reach_every_parameter(&ModelConfig::S4d(full_with_layer_norm), &RGB);
    }

    /// With BatchNorm (whose running statistics are buffers without gradients): every trainable
    /// tensor receives a non-zero gradient.
    #[test]
    fn gradients_reach_every_trainable_tensor_with_batch_norm() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = S4d::new(&vs.root(), &tiny_full(), &RGB);
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
        assert_eval_is_deterministic(&ModelConfig::S4d(tiny()), &GRAY);
        assert_eval_is_deterministic(&ModelConfig::S4d(tiny_full()), &GRAY);
    }

    #[test]
    fn loss_falls_on_real_images() {
        let cfg = Config {
            d_model: 16,
            n_layers: 2,
            dropout: 0.0,
            ..Default::default()
        };
        assert_loss_falls(&ModelConfig::S4d(cfg), &GRAY, 16, 10, 0.01, 0.8);
    }

    #[test]
    fn ssm_parameters_are_in_the_ssm_group() {
        let vs = nn::VarStore::new(Device::Cpu);
        S4d::new(&vs.root(), &tiny_full(), &GRAY);
        let vars = vs.variables_.lock().unwrap();
        let group = |name: &str| {
            let t = &vars.named_variables[name];
            vars.trainable_variables
                .iter()
                .find(|v| v.tensor.data_ptr() == t.data_ptr())
                .unwrap()
                .group
        };
        for name in ["log_dt", "log_a_real", "a_imag", "b", "c"] {
            assert_eq!(group(&format!("blocks.0.kernel.{name}")), SSM, "{name}");
        }
        assert_ne!(group("blocks.0.d"), SSM);
        assert_ne!(group("blocks.0.out.weight"), SSM);
    }

    /// The ZOH-discretised SSM stepped in time with complex arithmetic, from the raw parameters:
    /// x_t = Ā x_{t−1} + B̄ u_t, y_t = 2·Re(C x_t), with Ā = e^{ΔA}, B̄ = (e^{ΔA} − 1)/A · B, for
    /// kernel `k` of a block; u (B, L, H).
    fn recurrence(block: &Block, u: &Tensor, k: i64) -> Tensor {
        let kern = &block.kernel;
        let dt = kern.log_dt.exp().unsqueeze(-1); // (H, 1)
        let a = Tensor::complex(&-kern.log_a_real.exp(), &kern.a_imag); // (H, N/2)
        let a_bar = (&a * &dt).exp(); // (H, N/2)
        let b = match &kern.b {
            Some(b) => b.view_as_complex(),
            None => Tensor::ones_like(&a),
        };
        let b_bar = (&a_bar - 1.0) / &a * b; // (H, N/2)
        let c = kern.c.view_as_complex().get(k); // (H, N/2)
        let (batch, l, h) = u.size3().unwrap();
        let mut x = Tensor::zeros([batch, h, a.size()[1]], (Kind::ComplexFloat, Device::Cpu)); // (B, H, N/2)
        let mut ys = Vec::new();
        for t in 0..l {
            x = &x * &a_bar + &b_bar * u.select(1, t).unsqueeze(-1); // (B, H, N/2)
            ys.push((&x * &c).sum_dim_intlist(-1, false, None).real() * 2.0); // (B, H)
        }
        Tensor::stack(&ys, 1) // (B, L, H)
    }

    fn block_and_input(cfg: &Config, l: i64) -> (nn::VarStore, Block, Tensor) {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut block = Block::new(&vs.root(), cfg);
        // Larger Δ than the default so that the kernel does not vanish over a short sequence.
        tch::no_grad(|| {
            let _ = block.kernel.log_dt.uniform_(0.01f64.ln(), 0.5f64.ln());
            if let Some(b) = &mut block.kernel.b {
                let _ = b.normal_(0.0, 1.0);
            }
        });
        let u = Tensor::randn([2, l, cfg.d_model], (Kind::Float, Device::Cpu));
        (vs, block, u)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn fft_convolution_equals_the_recurrence() {
        let cfg = Config {
            d_model: 3,
            d_state: 8,
            train_b: true,
            ..Default::default()
        };
        let (_vs, block, u) = block_and_input(&cfg, 24);
        let conv = tch::no_grad(|| block.ssm_conv(&u));
        assert!(conv.is_contiguous(), "the sum comes out in the transposed layout");
        let expected = tch::no_grad(|| recurrence(&block, &u, 0) + &u * &block.d);
        let scale = expected.abs().max().double_value(&[]);
        assert!(
            max_diff(&conv, &expected) < 1e-4 * scale.max(1.0),
            "diff {}",
            max_diff(&conv, &expected)
        );
    }

    /// The factorised kernel equals `s4d.py`'s product with the whole Vandermonde matrix, in value
    /// and in the gradient of every SSM parameter, at a length that is not a square (S = 32, Q = 32,
    /// the last 24 positions cut) and with the preset's range of Δ.
    #[test]
    fn factorised_kernel_equals_the_vandermonde_product() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = Config {
            d_model: 4,
            bidirectional: true,
            train_b: true,
            c_ssm_lr: true,
            ..Default::default()
        };
        let kernel = Kernel::new(&vs.root(), &cfg);
        let _ = tch::no_grad(|| kernel.b.as_ref().unwrap().shallow_clone().normal_(0.0, 1.0));
        let l = 1000;
        let vandermonde = || {
            let (dta, cb) = kernel.discretised();
            let pos = Tensor::arange(l, (Kind::Float, Device::Cpu));
            let k = cb.transpose(0, 1).matmul(&(dta.unsqueeze(-1) * pos).exp()); // (H, K, L)
            k.real().transpose(0, 1) * 2.0 // (K, H, L)
        };
        let weights = Tensor::randn([2, 4, l], (Kind::Float, Device::Cpu));
        let vars = vs.trainable_variables();
        let [ours, theirs] = [kernel.forward(l), vandermonde()];
        assert_eq!(ours.size(), vec![2, 4, l]);
        let scale = theirs.abs().max().double_value(&[]);
        assert!(
            max_diff(&ours, &theirs) < 1e-5 * scale,
            "diff {} of {scale}",
            max_diff(&ours, &theirs)
        );
        let grads = |k: &Tensor| Tensor::run_backward(&[(k * &weights).sum(Kind::Float)], &vars, false, false);
        for (a, b) in grads(&ours).iter().zip(grads(&theirs)) {
            let scale = b.abs().max().double_value(&[]);
            assert!(max_diff(a, &b) < 1e-4 * scale, "gradient diff {} of {scale}", max_diff(a, &b));
        }
    }

    /// Bidirectional: forward recurrence, plus the second kernel run backward in time and shifted
    /// by one step (the repository's off-by-one: the backward part starts at lag −1).
    #[test]
    fn bidirectional_convolution_equals_two_recurrences() {
        let cfg = Config {
            d_model: 3,
            d_state: 8,
            bidirectional: true,
            ..Default::default()
        };
        let (_vs, block, u) = block_and_input(&cfg, 20);
        let conv = tch::no_grad(|| block.ssm_conv(&u));
        let forward = tch::no_grad(|| recurrence(&block, &u, 0));
        let backward = tch::no_grad(|| recurrence(&block, &u.flip([1]), 1).flip([1])); // (B, L, H)
        let shifted = backward.narrow(1, 1, 19).constant_pad_nd([0, 0, 0, 1]); // y_t ← backward_{t+1}
        let expected = forward + shifted + &u * &block.d;
        assert!(max_diff(&conv, &expected) < 1e-4, "diff {}", max_diff(&conv, &expected));
    }

    /// Changing the inputs after step t leaves every output up to t unchanged.
    #[test]
    fn unidirectional_block_is_causal() {
        let (_vs, block, u) = block_and_input(&tiny(), 32);
        let t = 11;
        let later = Tensor::zeros_like(&u).index_fill(1, &Tensor::arange_start(t + 1, 32, (Kind::Int64, Device::Cpu)), 5.0);
        let a = tch::no_grad(|| block.forward_t(&u, false));
        let b = tch::no_grad(|| block.forward_t(&(&u + later), false));
        assert!(max_diff(&a.narrow(1, 0, t + 1), &b.narrow(1, 0, t + 1)) < 1e-5);
        assert!(max_diff(&a.narrow(1, t + 1, 32 - t - 1), &b.narrow(1, t + 1, 32 - t - 1)) > 1e-3);
    }

    /// FFT length 2L: an impulse at the last step must not wrap around to the first output.
    #[test]
    fn last_input_does_not_reach_first_output() {
        let cfg = Config {
            d_model: 3,
            d_state: 8,
            ..Default::default()
        };
        let (_vs, block, _) = block_and_input(&cfg, 16);
        let impulse = Tensor::zeros([1, 16, 3], (Kind::Float, Device::Cpu)).index_fill(1, &Tensor::from_slice(&[15i64]), 1.0);
        let y = tch::no_grad(|| block.ssm_conv(&impulse));
        assert!(y.narrow(1, 0, 15).abs().max().double_value(&[]) < 1e-6);
        assert!(y.select(1, 15).abs().max().double_value(&[]) > 1e-3);
    }

    #[test]
    fn bidirectional_block_sees_later_steps() {
        let cfg = Config {
            bidirectional: true,
            ..tiny()
        };
        let (_vs, block, u) = block_and_input(&cfg, 32);
        let last = Tensor::zeros_like(&u).index_fill(1, &Tensor::from_slice(&[31i64]), 5.0);
        let a = tch::no_grad(|| block.forward_t(&u, false));
        let b = tch::no_grad(|| block.forward_t(&(&u + last), false));
        assert!(max_diff(&a.narrow(1, 0, 1), &b.narrow(1, 0, 1)) > 1e-4);
    }

    #[test]
    fn validate_names_the_bad_key() {
        let bad = Config {
            d_state: 7,
            ..Default::default()
        };
        let err = bad.validate(&GRAY).unwrap_err().to_string();
        assert!(err.contains("model.d_state") && err.contains('7'), "{err}");
        let bad = Config {
            dt_max: 1e-4,
            ..Default::default()
        };
        assert!(bad.validate(&GRAY).unwrap_err().to_string().contains("model.dt_max"));
    }
}
