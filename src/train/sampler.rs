//! Which images each step trains on, and every random draw of the step: the epoch's order of the
//! training images, the seed of torch's generator (dropout, crop, flip) and mixup/CutMix. Each
//! depends only on (seed, epoch) or (seed, step), so a resumed run draws exactly what an
//! uninterrupted one would.
//!
//! In a data-parallel run ([`Sampler::shard`]) every rank makes the step's whole batch as a single
//! process would (same order, crops, flips and mixup partners) and keeps its contiguous share:
//! rank r of W trains on images [r·B/W, (r+1)·B/W) of the batch. It then reseeds torch's generator
//! for its own dropout masks, from the step's stream and its rank, so masks differ across ranks
//! and stay reproducible.

use tch::{Kind, Tensor};

use super::step::Batch;
use crate::data::{batch_input, Split, TaskConfig};
use crate::rng::{stream, SplitMix64};

/// Hands out the batch of every step of a run.
pub struct Sampler {
    seed: u64,
    batch_size: i64,
    steps_per_epoch: u64,
    mixup: f64,
    cutmix: f64,
    /// The current epoch and its order of the training images, on the data's device.
    order: Option<(u64, Tensor)>,
    /// This process's rank and the number of ranks sharing each batch.
    rank: u64,
    world: u64,
}

impl Sampler {
    pub fn new(seed: u64, batch_size: i64, steps_per_epoch: u64, mixup: f64, cutmix: f64) -> Sampler {
        Sampler {
            seed,
            batch_size,
            steps_per_epoch,
            mixup,
            cutmix,
            order: None,
            rank: 0,
            world: 1,
        }
    }

    /// The sampler of rank `rank` among `world` data-parallel ranks (`batch_size` stays the
    /// global batch, which `world` divides).
    pub fn shard(self, rank: usize, world: usize) -> Sampler {
        assert!(
            rank < world && self.batch_size % world as i64 == 0,
            "rank {rank} of {world} cannot take an equal share of a batch of {}",
            self.batch_size
        );
        Sampler {
            rank: rank as u64,
            world: world as u64,
            ..self
        }
    }

    /// The batch of optimizer step `step` (0-based). Seeds torch's generator for the step, so the
    /// step's crops, flips and dropout masks are fixed too.
    pub fn batch(&mut self, step: u64, train: &Split, task: &TaskConfig) -> Batch {
        let epoch = step / self.steps_per_epoch;
        if self.order.as_ref().map(|o| o.0) != Some(epoch) {
            let perm = SplitMix64::derive(self.seed, stream::EPOCH_ORDER, epoch).permutation(train.len() as usize);
            self.order = Some((epoch, Tensor::from_slice(&perm).to_device(train.labels.device())));
        }
        let order = &self.order.as_ref().expect("set above").1;
        let idx = order.narrow(0, ((step % self.steps_per_epoch) as i64) * self.batch_size, self.batch_size);
        let mut images = train.images.index_select(0, &idx); // (B, C, 32, 32)
        let labels = train.labels.index_select(0, &idx); // (B)
        tch::manual_seed(step_seed(self.seed, step));
        let mut mix = None;
        if self.mixup > 0.0 || self.cutmix > 0.0 {
            let mut g = SplitMix64::derive(self.seed, stream::MIX, step);
            let lam;
            (images, lam) = mix_images(&images, self.mixup, self.cutmix, &mut g);
            mix = Some((labels.flip([0]), lam));
        }
        let batch = Batch {
            xs: batch_input(&images, task, true),
            labels,
            mix,
        };
        if self.world == 1 {
            return batch;
        }
        let share = self.batch_size / self.world as i64;
        let start = self.rank as i64 * share;
        tch::manual_seed(rank_seed(self.seed, step, self.rank));
        Batch {
            xs: batch.xs.narrow(0, start, share),
            labels: batch.labels.narrow(0, start, share),
            mix: batch.mix.map(|(other, lam)| (other.narrow(0, start, share), lam)),
        }
    }
}

/// Seed of torch's generator at `step`.
fn step_seed(seed: u64, step: u64) -> i64 {
    (SplitMix64::derive(seed, stream::STEP_SEED, step).next_u64() >> 1) as i64
}

/// Seed of torch's generator for rank `rank`'s forward and backward passes at `step` in a
/// data-parallel run: the (rank + 2)-th draw of the step's stream (the first seeds the batch).
fn rank_seed(seed: u64, step: u64, rank: u64) -> i64 {
    let mut g = SplitMix64::derive(seed, stream::STEP_SEED, step);
    for _ in 0..=rank {
        let _ = g.next_u64();
    }
    (g.next_u64() >> 1) as i64
}

/// Mixup or CutMix of a batch of images (B, C, 32, 32) with the batch reversed; returns the
/// mixed images and the weight λ of the original labels. Mixup blends the 8-bit pixels and
/// rounds them back to 8 bits, since every model reads raw pixels.
fn mix_images(images: &Tensor, mixup: f64, cutmix: f64, g: &mut SplitMix64) -> (Tensor, f64) {
    let use_cutmix = cutmix > 0.0 && (mixup == 0.0 || g.uniform() < 0.5);
    let other = images.flip([0]);
    if use_cutmix {
        let lam = g.beta(cutmix);
        let (h, w) = (images.size()[2], images.size()[3]);
        let ch = ((h as f64) * (1.0 - lam).sqrt()) as i64;
        let cw = ((w as f64) * (1.0 - lam).sqrt()) as i64;
        let (cy, cx) = (g.below(h as u64) as i64, g.below(w as u64) as i64);
        let (y0, y1) = ((cy - ch / 2).max(0), (cy + ch / 2).min(h));
        let (x0, x1) = ((cx - cw / 2).max(0), (cx + cw / 2).min(w));
        let out = images.copy();
        if y1 > y0 && x1 > x0 {
            out.narrow(2, y0, y1 - y0)
                .narrow(3, x0, x1 - x0)
                .copy_(&other.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0));
        }
        let area = ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
        (out, 1.0 - area)
    } else {
        let lam = g.beta(mixup);
        let blended = images.to_kind(Kind::Float) * lam + other.to_kind(Kind::Float) * (1.0 - lam);
        (blended.round().to_kind(Kind::Uint8), lam)
    }
}
