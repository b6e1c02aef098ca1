//! Pieces that three or more models use unchanged: range checks of config fields, how pixels enter
//! a model, dropout and softmax attention.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::data::InputSpec;
use crate::ops::dropout_mask;

/// The largest size (width, depth, state size, …) a model field may take. Far beyond any model
/// that fits in memory; it keeps every product of sizes well inside `i64`.
pub const MAX_SIZE: i64 = 1 << 20;

/// Each named size must lie in 1..=[`MAX_SIZE`]; the error names `model.<key>`.
pub fn check_sizes(sizes: &[(&str, i64)]) -> Result<()> {
    for &(key, value) in sizes {
        if !(1..=MAX_SIZE).contains(&value) {
            bail!("model.{key} = {value} must be at least 1 and at most {MAX_SIZE}");
        }
    }
    Ok(())
}

/// Each named rate (a dropout probability) must lie in [0, 1).
pub fn check_rates(rates: &[(&str, f64)]) -> Result<()> {
    for &(key, value) in rates {
        if !(0.0..1.0).contains(&value) {
            bail!("model.{key} = {value} must be in [0, 1)");
        }
    }
    Ok(())
}

/// Each named value must be finite and positive.
pub fn check_positive(values: &[(&str, f64)]) -> Result<()> {
    for &(key, value) in values {
        if !(value.is_finite() && value > 0.0) {
            bail!("model.{key} = {value} must be finite and positive");
        }
    }
    Ok(())
}

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
    // Built from scalars, not copied from a slice: a TorchScript trace records `scalar_tensor`
    // with its value, but a slice's copy as an uninitialised `empty`.
    let constant = |v: &[f64]| {
        Tensor::stack(
            &v.iter().map(|&x| Tensor::scalar_tensor(x, (Kind::Float, dev))).collect::<Vec<_>>(),
            0,
        )
    };
    let (mean, std) = (constant(mean), constant(std));
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

/// How an encoder's outputs become one vector per image (the Transformer, Nyströmformer and PiT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// A learned token is prepended to the sequence and its output is classified.
    Cls,
    /// The mean of the outputs over the sequence.
    Mean,
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

/// Inverted dropout: in training each element is zeroed with probability `p` and the others
/// scaled by 1/(1 − p); the identity at evaluation. On the CPU the mask comes from
/// `dropout_mask` (libtorch's CPU `bernoulli_` runs on one thread: its dropout of 4M elements
/// takes 20 ms where this one takes 4); on a GPU from libtorch's own fused dropout kernel.
pub fn dropout(xs: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return xs.shallow_clone();
    }
    if xs.device() != Device::Cpu || p >= 1.0 {
        return xs.dropout(p, train);
    }
    // Like tch's own tensor operations, a libtorch failure here (out of memory) is a panic.
    xs * dropout_mask(xs, p).expect("dropout")
}

/// Additive attention bias (L, L) that lets position t attend only to positions ≤ t.
pub fn causal_bias(l: i64, kind: Kind, device: Device) -> Tensor {
    Tensor::full([l, l], f64::NEG_INFINITY, (kind, device)).triu(1) // (L, L)
}

/// Replaces the input vectors `hs` (B, L, d) at the positions of `mask` (B, L) bool by `token`
/// (d): the learned mask vector of masked self-pretraining.
pub fn mask_inputs(hs: &Tensor, mask: &Tensor, token: &Tensor) -> Tensor {
    hs.where_self(&mask.logical_not().unsqueeze(-1), &token.to_kind(hs.kind())) // (B, L, d)
}

/// Softmax attention over (B, h, L, Dh) heads, scaled by 1/√Dh, with an optional additive bias
/// broadcast to (B, h, L, L) and dropout `p` on the weights in training. libtorch's fused
/// `scaled_dot_product_attention`, except for dropout on the CPU: there libtorch runs its math
/// path with a `bernoulli_` mask of (B, h, L, L), and the same math runs here with [`dropout`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, p: f64, train: bool) -> Tensor {
    let p = if train { p } else { 0.0 };
    if p == 0.0 || q.device() != Device::Cpu {
        return Tensor::scaled_dot_product_attention(q, k, v, bias, p, false, None, false);
    }
    let scale = 1.0 / (*q.size().last().unwrap() as f64).sqrt();
    let mut scores = (q * scale).matmul(&k.transpose(-2, -1)); // (B, h, L, L)
    if let Some(bias) = bias {
        scores += bias; // in place: one (B, h, L, L) tensor fewer (the product's backward keeps q, k)
    }
    dropout(&scores.softmax(-1, scores.kind()), p, true).matmul(v) // (B, h, L, Dh)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values 0 or 1/(1 − p), the dropped fraction p within four standard deviations, odd sizes
    /// and half-precision dtypes included.
    #[test]
    fn dropout_mask_drops_a_fraction_p() {
        for (n, p, kind) in [
            (1_000_001, 0.1, Kind::Float),
            (400_000, 0.5, Kind::Float),
            (99_999, 0.3, Kind::BFloat16),
        ] {
            let mask = dropout_mask(&Tensor::zeros([n], (kind, Device::Cpu)), p).unwrap();
            assert_eq!((mask.size(), mask.kind()), (vec![n], kind));
            let mask = mask.to_kind(Kind::Double);
            let keep = (1.0 / (1.0 - p) as f32) as f64; // as stored in float32 (bf16 below)
            let keep = Tensor::from(keep).to_kind(kind).double_value(&[]);
            let dropped = mask.eq(0.0).sum(Kind::Int64).int64_value(&[]);
            let kept = mask.eq(keep).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(dropped + kept, n, "values other than 0 and {keep}");
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (dropped as f64 - n as f64 * p).abs() < 4.0 * sd,
                "{dropped} of {n} dropped at p = {p}"
            );
        }
        let none = dropout_mask(&Tensor::zeros([1000], (Kind::Float, Device::Cpu)), 0.0).unwrap();
        assert!(none.eq(1.0).all().int64_value(&[]) == 1);
        assert!(dropout_mask(&Tensor::zeros([3], (Kind::Float, Device::Cpu)), 1.0).is_err());
        let err = dropout_mask(&Tensor::zeros([3], (Kind::Int64, Device::Cpu)), 0.5).unwrap_err();
        assert!(err.to_string().contains("floating-point"), "{err}");
    }

    /// Masks follow `manual_seed`, change from call to call, do not depend on the number of
    /// threads, and neighbouring elements are uncorrelated.
    #[test]
    fn dropout_masks_are_reproducible_and_independent() {
        let like = Tensor::zeros([1001, 129], (Kind::Float, Device::Cpu)); // several chunks of work
        let threads = tch::get_num_threads();
        let masks = |threads: i32| {
            tch::set_num_threads(threads);
            tch::manual_seed(7);
            (dropout_mask(&like, 0.5).unwrap(), dropout_mask(&like, 0.5).unwrap())
        };
        let (c, _) = masks(1);
        let (a, b) = masks(threads.max(2));
        tch::set_num_threads(threads);
        assert!(a.equal(&c), "the mask depends on the number of threads");
        assert!(!a.equal(&b), "two calls gave the same mask");
        let x = a.view([-1]) - 1.0; // ±1
        let n = x.size()[0];
        let lag1 = (x.narrow(0, 0, n - 1) * x.narrow(0, 1, n - 1)).mean(Kind::Double).double_value(&[]);
        assert!(lag1.abs() < 4.0 / (n as f64).sqrt(), "correlation {lag1} between neighbours");
    }

    /// Training: x · mask, and the gradient is the mask; evaluation: the identity.
    #[test]
    fn dropout_scales_kept_values_and_their_gradient() {
        let x = (Tensor::rand([64, 33], (Kind::Float, Device::Cpu)) + 1.0).set_requires_grad(true);
        let y = dropout(&x, 0.25, true);
        y.sum(Kind::Float).backward();
        let ratio = &y / &x;
        let kept = ratio.ne(0.0);
        assert!(ratio.masked_select(&kept).allclose(&Tensor::from(1.0f32 / 0.75), 1e-6, 1e-6, false));
        assert!(x.grad().allclose(&ratio.detach(), 1e-6, 1e-6, false));
        assert!(dropout(&x, 0.25, false).equal(&x));
    }

    /// The CPU dropout path computes the fused kernel's attention: with a drop probability too
    /// small to drop anything it matches `scaled_dot_product_attention`, and with dropout it is
    /// softmax(q·kᵀ/√Dh + bias) · mask · v for the mask that the same seed draws.
    #[test]
    fn attention_with_dropout_is_the_fused_kernels_math() {
        let q = Tensor::randn([2, 3, 17, 8], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([2, 3, 17, 8], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([2, 3, 17, 8], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([2, 1, 1, 17], (Kind::Float, Device::Cpu));
        let fused = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&bias), 0.0, false, None, false);
        let tiny = attention(&q, &k, &v, Some(&bias), 1e-12, true);
        assert!(tiny.allclose(&fused, 1e-5, 1e-5, false));
        tch::manual_seed(3);
        let ours = attention(&q, &k, &v, Some(&bias), 0.4, true);
        tch::manual_seed(3);
        let scores = (q.matmul(&k.transpose(-2, -1)) / 8f64.sqrt() + &bias).softmax(-1, Kind::Float);
        let expected = (scores * dropout_mask(&Tensor::zeros([2, 3, 17, 17], (Kind::Float, Device::Cpu)), 0.4).unwrap()).matmul(&v);
        assert!(ours.allclose(&expected, 1e-5, 1e-5, false));
        assert!(!ours.allclose(&fused, 1e-2, 1e-2, false));
        assert!(attention(&q, &k, &v, Some(&bias), 0.4, false).allclose(&fused, 1e-6, 1e-6, false));
    }
}
