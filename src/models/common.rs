//! Pieces that three or more models use unchanged: how pixels enter a model, and the
//! test helpers every model's tests share.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::InputSpec;

/// Per-channel mean and standard deviation on the 0–255 scale used to normalise pixels.
/// Grayscale: the S4 repository's LRA values (122.6, 61.0); RGB: the CIFAR-10 training set.
pub fn channel_stats(channels: i64) -> (&'static [f64], &'static [f64]) {
    if channels == 1 {
        (&[122.6], &[61.0])
    } else {
        (&[125.307, 122.950, 113.865], &[62.993, 62.089, 66.705])
    }
}

/// Raw pixels (B, L, C) of any integer kind → float32 (B, L, C), zero mean and unit variance per channel.
pub fn normalise(xs: &Tensor) -> Tensor {
    let c = xs.size()[2];
    let (mean, std) = channel_stats(c);
    let dev = xs.device();
    let mean = Tensor::from_slice(mean).to_kind(Kind::Float).to_device(dev);
    let std = Tensor::from_slice(std).to_kind(Kind::Float).to_device(dev);
    (xs.to_kind(Kind::Float) - mean) / std // (B, L, C)
}

/// `nn.Linear` with PyTorch's default initialisation: weights and biases U(±1/√fan_in). tch's
/// own default draws weights 2.45× wider (Kaiming with the ReLU gain), so models ported from
/// PyTorch code use this one.
pub fn torch_linear(p: nn::Path, fan_in: i64, fan_out: i64) -> nn::Linear {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let init = nn::Init::Uniform { lo: -bound, up: bound };
    nn::linear(
        p,
        fan_in,
        fan_out,
        nn::LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias: true,
        },
    )
}

/// How pixel values become model vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputMode {
    /// Grayscale value 0..255 is a token id looked up in an embedding table (LRA, Nyströmformer).
    Embed,
    /// Normalised values of the C channels go through Linear(C → d) with PyTorch's default
    /// initialisation (S4, LRU, PiT, RNNs).
    Linear,
}

/// Turns raw pixels (B, L, C) into vectors (B, L, d).
#[derive(Debug)]
pub enum InputEncoder {
    Embed(nn::Embedding),
    Linear(nn::Linear),
}

impl InputEncoder {
    /// `vocab` is the embedding size for [`InputMode::Embed`] (at least 256); `init` its weight init.
    pub fn new(p: &nn::Path, mode: InputMode, input: &InputSpec, d: i64, vocab: i64, init: nn::Init) -> InputEncoder {
        match mode {
            InputMode::Embed => {
                let cfg = nn::EmbeddingConfig {
                    ws_init: init,
                    ..Default::default()
                };
                InputEncoder::Embed(nn::embedding(p, vocab, d, cfg))
            }
            InputMode::Linear => InputEncoder::Linear(torch_linear(p.clone(), input.channels, d)),
        }
    }

    /// The checks a config with this input mode must pass.
    pub fn validate(mode: InputMode, input: &InputSpec, vocab: i64) -> Result<()> {
        if mode == InputMode::Embed {
            if input.channels != 1 {
                bail!(
                    "model.input = \"embed\" needs grayscale pixels (task lra-image); this task has {} channels — use input = \"linear\"",
                    input.channels
                );
            }
            if vocab < 256 {
                bail!("model.vocab = {vocab} is too small: pixel tokens take 256 values");
            }
        }
        Ok(())
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        match self {
            InputEncoder::Embed(e) => xs.squeeze_dim(-1).to_kind(Kind::Int64).apply(e), // (B, L, d)
            InputEncoder::Linear(l) => normalise(xs).apply(l),                          // (B, L, d)
        }
    }
}

/// Black pixels, as the LRA code sees them: `true` where a grayscale pixel is non-zero (B, L).
/// The LRA Transformer and Nyströmformer treat value 0 as padding; models that reproduce this
/// (behind a config switch) build their attention mask from it.
pub fn nonzero_mask(xs: &Tensor) -> Tensor {
    xs.ne(0).any_dim(-1, false) // (B, L)
}

#[cfg(test)]
pub mod testing {
    //! Checks shared by every model's tests.
    use super::super::{InputSpec, ModelConfig};
    use tch::{nn, Device, Kind, Tensor};

    /// A random batch of raw pixels (B, L, C), uint8.
    pub fn random_pixels(b: i64, input: &InputSpec) -> Tensor {
        Tensor::randint(256, [b, input.seq_len, input.channels], (Kind::Uint8, Device::Cpu))
    }

    /// The shared read-only CIFAR-10 folder (`../shared/data/cifar-10-batches-bin` beside the
    /// checkout, or `$PIXELSEQ_TEST_DATA`).
    pub fn shared_cifar_dir() -> std::path::PathBuf {
        match std::env::var_os("PIXELSEQ_TEST_DATA") {
            Some(d) => d.into(),
            None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-batches-bin"),
        }
    }

    /// The first `n` real training images of `data_batch_1.bin` as raw pixels (n, 1024, C) uint8
    /// and labels (n) int64; grayscale when `input.channels == 1`.
    pub fn real_pixels(n: i64, input: &InputSpec) -> (Tensor, Tensor) {
        let bytes = std::fs::read(shared_cifar_dir().join("data_batch_1.bin")).expect("shared CIFAR-10 data_batch_1.bin");
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for rec in bytes.chunks(3073).take(n as usize) {
            labels.push(rec[0] as i64);
            let (r, g, b) = (&rec[1..1025], &rec[1025..2049], &rec[2049..3073]);
            for i in 0..1024 {
                if input.channels == 1 {
                    pixels.push(crate::data::gray_pixel(r[i], g[i], b[i]));
                } else {
                    pixels.extend([r[i], g[i], b[i]]);
                }
            }
        }
        let pixels = Tensor::from_slice(&pixels).view([n, 1024, input.channels]); // (n, L, C)
        (pixels, Tensor::from_slice(&labels))
    }

    /// Every trainable tensor receives a non-zero gradient from one backward pass.
    pub fn assert_gradients_reach_every_parameter(cfg: &ModelConfig, input: &InputSpec) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = cfg.build(&vs.root(), input).unwrap();
        let xs = random_pixels(4, input);
        let ys = Tensor::from_slice(&[0i64, 1, 2, 3]);
        let loss = model.forward_t(&xs, true).cross_entropy_for_logits(&ys);
        loss.backward();
        for (name, t) in vs.variables().into_iter().filter(|(_, t)| t.requires_grad()) {
            let g = t.grad();
            assert!(g.defined(), "{name}: no gradient");
            assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}: zero gradient");
        }
    }

    /// Fitting one small batch of real images: after `steps` Adam steps at `lr` the training loss
    /// is below `ratio` × its first value. Returns (first, last) loss.
    pub fn assert_loss_falls(cfg: &ModelConfig, input: &InputSpec, n: i64, steps: usize, lr: f64, ratio: f64) -> (f64, f64) {
        use tch::nn::OptimizerConfig;
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = cfg.build(&vs.root(), input).unwrap();
        let mut opt = nn::Adam::default().build(&vs, lr).unwrap();
        let (xs, ys) = real_pixels(n, input);
        let mut losses = Vec::new();
        for _ in 0..steps {
            let loss = model.forward_t(&xs, true).cross_entropy_for_logits(&ys);
            opt.backward_step(&loss);
            losses.push(loss.double_value(&[]));
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(last.is_finite() && last < ratio * first, "loss did not fall: {losses:?}");
        (first, last)
    }

    /// In eval mode (dropout off) two forward passes give identical logits.
    pub fn assert_eval_is_deterministic(cfg: &ModelConfig, input: &InputSpec) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = cfg.build(&vs.root(), input).unwrap();
        let xs = random_pixels(2, input);
        let a = tch::no_grad(|| model.forward_t(&xs, false));
        let b = tch::no_grad(|| model.forward_t(&xs, false));
        assert_eq!(a.size(), vec![2, 10]);
        assert!(a.equal(&b), "eval mode is not deterministic");
    }
}
