//! The self-pretraining objective's loss (`pixelseq pretrain`; the method and its settings are in
//! [`crate::models::pretrain`]): the pretrainer's predictions at the positions its objective
//! scores, against those pixels. `l1` and `l2` compare with the pixel values normalised as the
//! models normalise their inputs (per-channel mean and standard deviation; the SPT code's L1),
//! `ce` classifies each channel's grey level among 256.

use tch::{Kind, Reduction, Tensor};

use crate::models::common::normalise;
use crate::models::pretrain::{Loss, Pretrainer, LEVELS};

/// Mean reconstruction loss of raw pixels `xs` (B, L, C): at the masked positions (`mask`, drawn
/// if `None`), or at every next pixel (causal).
pub fn loss(p: &Pretrainer, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
    let r = p.reconstruct(xs, mask, train);
    score(p.settings().loss, &r.predicted, &r.pixels)
}

/// Loss of predictions (M, out) for raw pixels (M, C).
fn score(loss: Loss, predicted: &Tensor, pixels: &Tensor) -> Tensor {
    let predicted = predicted.to_kind(Kind::Float);
    match loss {
        Loss::L1 | Loss::L2 => {
            let target = normalise(&pixels.unsqueeze(0)).squeeze_dim(0); // (M, C)
            let diff = predicted - target; // (M, C)
            match loss {
                Loss::L1 => diff.abs().mean(Kind::Float),
                _ => diff.square().mean(Kind::Float),
            }
        }
        Loss::Ce => {
            let (m, c) = pixels.size2().expect("pixels are (M, C)");
            let logits = predicted.view([m * c, LEVELS]); // (M·C, 256)
            let target = pixels.to_kind(Kind::Int64).view([m * c]); // (M·C)
            logits.cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::InputSpec;
    use crate::models::pretrain::Config;
    use crate::models::ModelConfig;
    use crate::testing::random_pixels;
    use tch::{nn, Device};

    const INPUT: InputSpec = InputSpec { channels: 1, seq_len: 64 };

    /// Changing a masked pixel changes the loss; changing one that is not masked changes only the
    /// inputs. The loss is the mean over the masked positions of the L1 or L2 distance to the
    /// normalised pixel, and `ce` the mean cross-entropy of each masked grey level.
    #[test]
    fn the_loss_scores_the_masked_pixels_only() {
        tch::manual_seed(0);
        let model: ModelConfig = toml::from_str(
            "name = \"transformer\"\nd_model = 16\nn_heads = 2\nqkv_dim = 16\nmlp_dim = 16\ndropout = 0.0\nattn_dropout = 0.0",
        )
        .unwrap();
        for kind in [Loss::L1, Loss::L2, Loss::Ce] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = Config {
                loss: kind,
                ..Config::default()
            };
            let p = Pretrainer::new(&vs.root(), &model, &cfg, &INPUT).unwrap();
            let xs = random_pixels(2, &INPUT);
            let mask = p.draw_mask(2, 64, Device::Cpu);
            let at = |xs: &Tensor| tch::no_grad(|| loss(&p, xs, Some(&mask), false).double_value(&[]));
            let base = at(&xs);
            let masked_at = Vec::<i64>::try_from(mask.get(0).nonzero().squeeze_dim(1)).unwrap()[0];
            let changed = xs.copy();
            let _ = changed.get(0).get(masked_at).fill_(255 - xs.int64_value(&[0, masked_at, 0]));
            assert_ne!(at(&changed), base, "{kind}: a masked pixel's target");
            let r = tch::no_grad(|| p.reconstruct(&xs, Some(&mask), false));
            let by_hand = match kind {
                Loss::L1 | Loss::L2 => {
                    let diff = &r.predicted - normalise(&xs).masked_select(&mask.unsqueeze(-1)).view([-1, 1]);
                    let d = if kind == Loss::L1 { diff.abs() } else { diff.square() };
                    d.mean(Kind::Float).double_value(&[])
                }
                Loss::Ce => {
                    let logp = r.predicted.log_softmax(-1, Kind::Float); // (M, 256)
                    let picked = logp.gather(1, &r.pixels.to_kind(Kind::Int64), false); // (M, 1)
                    -picked.mean(Kind::Float).double_value(&[])
                }
            };
            assert!((base - by_hand).abs() < 1e-5, "{kind}: {base} vs {by_hand}");
        }
    }
}
