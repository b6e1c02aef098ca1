//! TrellisNet: "Trellis Networks for Sequence Modeling" (Shaojie Bai, J. Zico Kolter, Vladlen Koltun,
//! ICLR 2019, arXiv 1810.06682). Reported figure: 73.42% test accuracy on sequential CIFAR-10
//! (RGB, 1,024 steps of 3 values, raster order, *unpermuted*).
//!
//! Reference code followed: `locuslab/trellisnet` — `TrellisNet/trellisnet.py` (weight-tied
//! convolution, gated activation), `TrellisNet/optimizations.py` (weight norm, variational hidden
//! dropout, temporal DropConnect) and `TrellisNet/seq_MNIST_CIFAR/{model.py, seq_mnist_cifar.py,
//! utils.py}` (readout, hyperparameters, input scaling).
//!
//! One level with dilation d (the same weights at every level, kernel size k = 2):
//! pre_t = W1·[x_{t−d}, x_t] + W2·[h_{t−d}, h_t] + b, split into gate groups (i, o, g, f);
//! c'_t = σ(f)⊙c_{t−d} + σ(i)⊙tanh(g), h'_t = σ(o)⊙tanh(c'_t), with zeros for t < d. The input
//! term W1·x is the input injection: computed once per distinct dilation, added at every level.
//! W1 and W2 are weight-normalised over dim 0 (w = g·v/‖v‖) and initialised N(0, 0.01²) with
//! g = ‖v‖. Readout: the last `nout` channels of h at t = L−1, then Linear(nout, 10).
//!
//! Pixels enter as the reference feeds them, without an encoder: the three channels scaled by
//! torchvision's `Normalize(0.5, 0.5)`, i.e. x/127.5 − 1, straight into W1.
//!
//! Deliberate deviations:
//! - Every dropout is off in eval mode. The reference calls `F.dropout` on the input and on the
//!   logits without the training flag, so those two stay on at test time; here they do not.
//! - The receptive field 1 + (k−1)·Σd must cover the whole sequence (checked in
//!   [`Config::validate`]); the reference cycles its dilation list over `nlevels` levels, here the
//!   list names one dilation per level.
//! - The reference's auxiliary loss (off in its sCIFAR defaults) is not implemented.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::common::{check_positive, check_rates, check_sizes, torch_linear, MAX_SIZE};
use super::{Model, NO_DECAY, NUM_CLASSES};
use crate::data::InputSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Hidden channels besides the output channels (`--nhid 120`, seq_mnist_cifar.py).
    pub nhid: i64,
    /// Output channels, the last `nout` of h; the readout reads them (`nout = n_classes = 10`).
    pub nout: i64,
    /// One dilation per level (`--dilation 1 1 2 4 … 512` with `--nlevels 11`); receptive field
    /// 1 + (k−1)·Σd = 1,025 covers the 1,024 steps.
    pub dilations: Vec<i64>,
    /// Temporal kernel size (`--ksize 2`).
    pub kernel_size: i64,
    /// Dropout on the scaled pixels, element-wise (`--dropouti 0.2`).
    pub dropout_input: f64,
    /// Variational dropout on h before W2, one mask per sample and channel shared by all levels
    /// and steps (`--dropouth 0.2`).
    pub dropout_hidden: f64,
    /// DropConnect on the t−d tap of W1 and W2 (`--wdrop 0.1`, `--temporalwdrop` default on).
    pub dropout_weight: f64,
    /// Dropout on the logits after the readout Linear (`--dropout 0.1`).
    pub dropout_output: f64,
    /// Std of the normal init of W1, W2 and b (`init_weights`, trellisnet.py: 0.01).
    pub init_std: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nhid: 120,
            nout: NUM_CLASSES,
            dilations: vec![1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
            kernel_size: 2,
            dropout_input: 0.2,
            dropout_hidden: 0.2,
            dropout_weight: 0.1,
            dropout_output: 0.1,
            init_std: 0.01,
        }
    }
}

impl Config {
    /// Channels of h: hidden plus output channels.
    pub fn h_size(&self) -> i64 {
        self.nhid + self.nout
    }

    /// Steps of input that reach the last output: 1 + (k−1)·Σd.
    pub fn receptive_field(&self) -> i64 {
        1 + (self.kernel_size - 1) * self.dilations.iter().sum::<i64>()
    }

}

/// A weight-normalised convolution kernel (out, in, k): w = g·v/‖v‖, the norm over dims 1 and 2.
#[derive(Debug)]
struct WeightNormKernel {
    v: Tensor,
    g: Tensor,
}

impl WeightNormKernel {
    /// v ~ N(0, std²) and g = ‖v‖, so that w = v at initialisation (optimizations.py).
    fn new(p: &nn::Path, name: &str, dims: [i64; 3], std: f64) -> WeightNormKernel {
        let v = p.randn(&format!("{name}_v"), &dims, 0.0, std);
        let norm = tch::no_grad(|| v.norm_scalaropt_dim(2, [1, 2], true)); // (out, 1, 1)
        let g = p.set_group(NO_DECAY).var_copy(&format!("{name}_g"), &norm); // a gain, like a norm's
        WeightNormKernel { v, g }
    }

    /// The kernel, with DropConnect on every tap but the last (the past taps) when training.
    /// The norm is taken of the dropped v, as the reference computes weight norm after WeightDrop.
    fn weight(&self, p_drop: f64, train: bool) -> Tensor {
        let k = self.v.size()[2];
        let past = self.v.narrow(2, 0, k - 1).dropout(p_drop, train); // (out, in, k−1)
        let v = Tensor::cat(&[past, self.v.narrow(2, k - 1, 1)], 2); // (out, in, k)
        let norm = v.norm_scalaropt_dim(2, [1, 2], true); // (out, 1, 1)
        &v * (&self.g / norm) // (out, in, k)
    }
}

impl Model for Config {
    const NAME: &'static str = "trellisnet";
    const PAPER: &'static str = "Bai, Kolter, Koltun: \"Trellis Networks for Sequence Modeling\", ICLR 2019, arXiv 1810.06682";

    fn validate(&self, input: &InputSpec) -> Result<()> {
        if !(0..=MAX_SIZE).contains(&self.nhid) {
            bail!("model.nhid = {} must be at least 0 and at most {MAX_SIZE}", self.nhid);
        }
        check_sizes(&[("nout", self.nout), ("kernel_size", self.kernel_size)])?;
        if self.kernel_size < 2 {
            bail!(
                "model.kernel_size = {} must be at least 2 (a kernel of 1 sees no past step)",
                self.kernel_size
            );
        }
        if self.dilations.is_empty()
            || self.dilations.len() as i64 > MAX_SIZE
            || self.dilations.iter().any(|&d| !(1..=MAX_SIZE).contains(&d))
        {
            bail!(
                "model.dilations = {:?} must list 1 to {MAX_SIZE} levels, each dilation at least 1 and at most {MAX_SIZE}",
                self.dilations
            );
        }
        if self.receptive_field() < input.seq_len {
            bail!(
                "model.dilations = {:?} give a receptive field of {} steps, less than the {} steps of the sequence: \
                 the logits would ignore the first pixels (need 1 + (kernel_size−1)·Σd ≥ {})",
                self.dilations,
                self.receptive_field(),
                input.seq_len,
                input.seq_len
            );
        }
        check_rates(&[
            ("dropout_input", self.dropout_input),
            ("dropout_hidden", self.dropout_hidden),
            ("dropout_weight", self.dropout_weight),
            ("dropout_output", self.dropout_output),
        ])?;
        check_positive(&[("init_std", self.init_std)])
    }

    fn min_params(&self, _input: &InputSpec) -> f64 {
        let f = |v: i64| v as f64;
        4.0 * f(self.h_size()) * f(self.h_size()) * f(self.kernel_size)
    }

    fn build(&self, p: &nn::Path, input: &InputSpec) -> Box<dyn nn::ModuleT> {
        Box::new(TrellisNet::new(p, self, input))
    }
}

#[derive(Debug)]
pub struct TrellisNet {
    cfg: Config,
    w1: WeightNormKernel,
    w2: WeightNormKernel,
    b2: Tensor,
    head: nn::Linear,
}

impl TrellisNet {
    pub fn new(p: &nn::Path, cfg: &Config, input: &InputSpec) -> TrellisNet {
        let (h, k, std) = (cfg.h_size(), cfg.kernel_size, cfg.init_std);
        TrellisNet {
            cfg: cfg.clone(),
            w1: WeightNormKernel::new(p, "w1", [4 * h, input.channels, k], std),
            w2: WeightNormKernel::new(p, "w2", [4 * h, h, k], std),
            b2: p.randn("b2", &[4 * h], 0.0, std),
            head: torch_linear(p / "head", cfg.nout, NUM_CLASSES),
        }
    }

    /// The last level's hidden sequence (B, h_size, L) for raw pixels (B, L, C).
    pub fn hidden_states(&self, xs: &Tensor, train: bool) -> Tensor {
        let l = xs.size()[1];
        let (hsz, k) = (self.cfg.h_size(), self.cfg.kernel_size);
        let x = (xs.to_kind(Kind::Float) / 127.5 - 1.0).transpose(1, 2); // (B, C, L) in [−1, 1]
        let x = x.dropout(self.cfg.dropout_input, train); // (B, C, L)
        let w1 = self.w1.weight(self.cfg.dropout_weight, train); // (4H, C, k)
        let w2 = self.w2.weight(self.cfg.dropout_weight, train); // (4H, H, k)
        let ones = x.narrow(1, 0, 1).narrow(2, 0, 1).ones_like(); // (B, 1, 1)
        let mask = ones.repeat([1, hsz, 1]).dropout(self.cfg.dropout_hidden, train); // (B, H, 1)

        // Input injection W1·[x_{t−d}, x_t], once per distinct dilation; zeros before the sequence.
        let mut injected: Vec<(i64, Tensor)> = Vec::new();
        for &d in &self.cfg.dilations {
            if injected.iter().all(|(e, _)| *e != d) {
                let xp = x.constant_pad_nd([(k - 1) * d, 0]); // (B, C, L + (k−1)d)
                let inj = xp.conv1d(&w1, None::<&Tensor>, [1], [0], [d], 1); // (B, 4H, L)
                injected.push((d, inj));
            }
        }

        let mut h = x.narrow(1, 0, 1).zeros_like().repeat([1, hsz, 1]); // (B, H, L)
        let mut c = h.zeros_like(); // (B, H, L)
        for &d in &self.cfg.dilations {
            let inj = &injected.iter().find(|(e, _)| *e == d).unwrap().1; // (B, 4H, L)
            let hp = (&h * &mask).constant_pad_nd([(k - 1) * d, 0]); // (B, H, L + (k−1)d)
            let pre = inj + hp.conv1d(&w2, Some(&self.b2), [1], [0], [d], 1); // (B, 4H, L)
            let gates = pre.chunk(4, 1); // 4 × (B, H, L): i, o, g, f
            let c_past = c.constant_pad_nd([d, 0]).narrow(2, 0, l); // (B, H, L): c_{t−d}, zeros for t < d
            c = gates[3].sigmoid() * c_past + gates[0].sigmoid() * gates[2].tanh(); // (B, H, L)
            h = gates[1].sigmoid() * c.tanh(); // (B, H, L)
        }
        h
    }
}

impl nn::ModuleT for TrellisNet {
    /// Raw pixels (B, L, C) → logits (B, 10).
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = self.hidden_states(xs, train); // (B, H, L)
        let (hsz, l) = (self.cfg.h_size(), h.size()[2]);
        let out = h.narrow(1, hsz - self.cfg.nout, self.cfg.nout).select(2, l - 1); // (B, nout)
        let logits = out.apply(&self.head).dropout(self.cfg.dropout_output, train); // (B, 10)
        logits.to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{param_count, ModelConfig};
    use super::*;
    use crate::testing::{
        assert_eval_is_deterministic, assert_gradients_reach_every_parameter, assert_loss_falls, preset_config, preset_table,
        random_pixels, RGB as SCIFAR,
    };
    use tch::{nn::ModuleT, Device};

    /// The `[model]` table of a preset as a `Config`, and the whole preset.
    fn preset(name: &str) -> (Config, toml::Table) {
        let table = preset_table(name);
        assert_eq!(table["model"]["name"].as_str(), Some("trellisnet"));
        (preset_config(name), table)
    }

    /// A narrow net whose 5 levels reach 17 steps: [1, 1, 2, 4, 8].
    fn small() -> Config {
        Config {
            nhid: 6,
            dilations: vec![1, 1, 2, 4, 8],
            ..Config::default()
        }
    }

    #[test]
    fn output_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        let input = InputSpec { channels: 3, seq_len: 17 };
        let model = TrellisNet::new(&vs.root(), &small(), &input);
        let logits = model.forward_t(&random_pixels(3, &input), true);
        assert_eq!(logits.size(), vec![3, 10]);
        assert_eq!(logits.kind(), Kind::Float);
    }

    #[test]
    fn preset_is_unpermuted_scifar_and_has_139_990_parameters() {
        let (cfg, table) = preset("trellisnet-scifar");
        assert_eq!(cfg, Config::default());
        let task = table["task"].as_table().unwrap();
        assert_eq!(task["name"].as_str(), Some("scifar"));
        assert!(!task.contains_key("permute"), "sCIFAR is read in raster order, not permuted");
        cfg.validate(&SCIFAR).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        TrellisNet::new(&vs.root(), &cfg, &SCIFAR);
        // H = 120 + 10 = 130, 4H = 520, C = 3, k = 2:
        // W1 v 520·3·2 = 3,120 + g 520; W2 v 520·130·2 = 135,200 + g 520; b 520; head 10·10 + 10 = 110.
        assert_eq!(param_count(&vs), 3_120 + 520 + 135_200 + 520 + 520 + 110);
    }

    #[test]
    fn five_levels_are_rejected_for_1024_steps() {
        let err = small().validate(&SCIFAR).unwrap_err().to_string();
        assert!(err.starts_with("model.dilations = [1, 1, 2, 4, 8]"), "{err}");
        assert!(err.contains("receptive field of 17 steps"), "{err}");
        Config::default().validate(&SCIFAR).unwrap();
        assert_eq!(Config::default().receptive_field(), 1025);
    }

    /// Logits after changing only the first pixel, in eval mode.
    fn first_pixel_effect(cfg: &Config) -> f64 {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = TrellisNet::new(&vs.root(), cfg, &SCIFAR);
        let xs = random_pixels(2, &SCIFAR);
        let changed = xs.copy();
        changed.narrow(1, 0, 1).copy_(&xs.narrow(1, 0, 1).bitwise_not()); // invert pixel 0: v → 255 − v
        let (a, b) = tch::no_grad(|| (model.forward_t(&xs, false), model.forward_t(&changed, false)));
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn logits_depend_on_the_first_pixel() {
        let cfg = Config {
            nhid: 6,
            ..Config::default()
        };
        assert!(first_pixel_effect(&cfg) > 0.0, "the first pixel does not reach the logits");
        // Without the last level (receptive field 513) the first pixel cannot reach them at all.
        let short = Config {
            dilations: cfg.dilations[..10].to_vec(),
            ..cfg
        };
        assert_eq!(first_pixel_effect(&short), 0.0);
    }

    #[test]
    fn levels_are_causal() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let input = InputSpec { channels: 3, seq_len: 40 };
        let model = TrellisNet::new(&vs.root(), &small(), &input);
        let xs = random_pixels(2, &input);
        let changed = xs.copy();
        changed.narrow(1, 20, 1).copy_(&xs.narrow(1, 20, 1).bitwise_not()); // invert pixel 20
        let (a, b) = tch::no_grad(|| (model.hidden_states(&xs, false), model.hidden_states(&changed, false)));
        let diff = (a - b).abs().amax([0, 1], false); // (L)
        assert_eq!(diff.narrow(0, 0, 20).max().double_value(&[]), 0.0, "a step sees the future");
        assert!(diff.double_value(&[20]) > 0.0);
    }

    #[test]
    fn gradients_reach_every_parameter() {
        let input = InputSpec { channels: 3, seq_len: 17 };
        assert_gradients_reach_every_parameter(&ModelConfig::Trellisnet(small()), &input);
    }

    #[test]
    fn eval_is_deterministic() {
        let input = InputSpec { channels: 3, seq_len: 17 };
        assert_eval_is_deterministic(&ModelConfig::Trellisnet(small()), &input);
    }

    #[test]
    fn train_mode_drops_out() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let input = InputSpec { channels: 3, seq_len: 17 };
        let model = TrellisNet::new(&vs.root(), &small(), &input);
        let xs = random_pixels(2, &input);
        let (a, b) = tch::no_grad(|| (model.forward_t(&xs, true), model.forward_t(&xs, true)));
        assert!(!a.equal(&b));
    }

    #[test]
    fn loss_falls_on_real_images() {
        let cfg = Config {
            nhid: 2,
            dropout_input: 0.0,
            dropout_hidden: 0.0,
            dropout_weight: 0.0,
            dropout_output: 0.0,
            ..Config::default()
        };
        assert_loss_falls(&ModelConfig::Trellisnet(cfg), &SCIFAR, 8, 12, 2e-2, 0.8);
    }
}
