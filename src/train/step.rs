//! One training step, the same for `pixelseq train` and `pixelseq bench`: forward under autocast,
//! cross-entropy (label smoothing; mixup/CutMix targets), backward (scaled for fp16), unscaling
//! and clipping, one AdamW update.
//!
//! A batch larger than the micro-batch is taken in parts (gradient accumulation): each part's
//! mean loss is weighted by its share of the batch before its backward pass, so the summed
//! gradients are those of the whole batch's mean loss, and one optimizer step follows. Per-image
//! terms (label smoothing, the mixup partner's label, accuracy) are exact; what depends on the
//! whole batch is not: BatchNorm normalises each part with its own statistics (as PyTorch's
//! data-parallel training without SyncBatchNorm does per device), and dropout masks are drawn
//! part by part from the step's generator.
//!
//! In a data-parallel run ([`train_step_synced`]) each rank runs this on its share of the batch,
//! and between the backward passes and the clipping the gradients are averaged across the ranks
//! ([`GradReducer`]): with equal shares, the average of the ranks' mean-loss gradients is the
//! gradient of the whole batch's mean loss, so clipping and AdamW see what one process would.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::optim::AdamW;
use crate::amp::Precision;
use crate::dist::GradReducer;
use crate::objective::Learner;
use crate::run::checkpoint::State;

/// What one step trains on.
pub struct Batch {
    /// Model input, raw pixels (B, L, C) uint8.
    pub xs: Tensor,
    /// Classes (B) int64.
    pub labels: Tensor,
    /// Mixup/CutMix: the labels of the images mixed in (B) and the weight λ of `labels`.
    pub mix: Option<(Tensor, f64)>,
}

impl Batch {
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a step runs (from the run's config and the schedule).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub precision: Precision,
    pub label_smoothing: f64,
    /// Gradient clipping by global norm; 0 turns it off.
    pub clip_norm: f64,
    /// The schedule's multiplier of every group's learning rate.
    pub lr_factor: f64,
    /// Images per forward/backward pass (the whole batch when it is at least the batch size).
    pub micro_batch: i64,
}

/// What a step reports, as device scalars (reading them synchronises with the device).
pub struct Outcome {
    /// Mean training loss of the batch, float32 ().
    pub loss: Tensor,
    /// Images whose argmax is their (first) label, float32 ().
    pub correct: Tensor,
}

impl Outcome {
    /// A copy that the next step cannot overwrite (a CUDA graph's outcome is its static tensors).
    pub fn copy(&self) -> Outcome {
        Outcome {
            loss: self.loss.copy(),
            correct: self.correct.copy(),
        }
    }
}

/// PyTorch's `torch.amp.GradScaler` defaults: the initial scale 2^16, ×2 after 2,000 steps in a
/// row without an inf/NaN gradient, ×0.5 and the step skipped when one appears.
pub const INIT_SCALE: f64 = 65536.0;
pub const GROWTH_FACTOR: f64 = 2.0;
pub const BACKOFF_FACTOR: f64 = 0.5;
pub const GROWTH_INTERVAL: u64 = 2000;

/// Dynamic loss scaling for fp16 (GradScaler's rule); with any other precision it does nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    pub enabled: bool,
    pub scale: f64,
    /// Steps in a row without an inf/NaN gradient since the scale last changed.
    pub growth_tracker: u64,
}

impl LossScaler {
    /// A fresh scaler, enabled for fp16.
    pub fn new(precision: Precision) -> LossScaler {
        LossScaler {
            enabled: precision == Precision::Fp16,
            scale: INIT_SCALE,
            growth_tracker: 0,
        }
    }

    /// Records the scaler's state in a checkpoint's.
    pub fn save_to(&self, state: &mut State) {
        state.loss_scale = self.scale;
        state.loss_scale_growth = self.growth_tracker;
    }

    /// Puts the scaler's state recorded in a checkpoint's back.
    pub fn restore_from(&mut self, state: &State) {
        self.scale = state.loss_scale;
        self.growth_tracker = state.loss_scale_growth;
    }

    /// After a step: back off and restart counting on an inf/NaN gradient, else grow every
    /// [`GROWTH_INTERVAL`] good steps.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        }
    }
}

/// One optimizer step of `model` on `batch`. With fp16 loss scaling a step whose gradients are
/// not finite is skipped (the optimizer's count does not advance) and the scale backs off.
pub fn train_step(learner: &Learner, opt: &mut AdamW, batch: &Batch, s: &Settings, scaler: &mut LossScaler) -> Result<Outcome> {
    train_step_synced(learner, opt, batch, s, scaler, None)
}

/// [`train_step`] of one rank of a data-parallel run: `grads` averages the gradients across the
/// ranks before clipping and the update (the last micro-batch's backward pass overlaps the
/// all-reduce). The outcome is this rank's.
pub fn train_step_synced(
    learner: &Learner,
    opt: &mut AdamW,
    batch: &Batch,
    s: &Settings,
    scaler: &mut LossScaler,
    grads: Option<&mut GradReducer>,
) -> Result<Outcome> {
    opt.zero_grad()?;
    let out = accumulate(learner, batch, s, scaler.enabled.then_some(scaler.scale), grads)?;
    if scaler.enabled {
        opt.scale_grads(1.0 / scaler.scale)?;
        let max_norm = if s.clip_norm > 0.0 { s.clip_norm } else { f64::MAX };
        let finite = opt.clip_grad_norm(max_norm)?.double_value(&[]).is_finite();
        if finite {
            opt.step(s.lr_factor)?;
        }
        scaler.update(!finite);
    } else {
        if s.clip_norm > 0.0 {
            let _ = opt.clip_grad_norm(s.clip_norm)?;
        }
        opt.step(s.lr_factor)?;
    }
    Ok(out)
}

/// The forward and backward passes of a step, part by part (`s.micro_batch` images each), into
/// gradients that were set to none: each part's mean loss weighted by its share of the batch, and
/// multiplied by `loss_scale` (fp16) before its backward pass. `grads` all-reduces the gradients
/// of a data-parallel run after the last part. What a CUDA graph captures of a step
/// (`train::graph`), with the clipping and the update.
pub(crate) fn accumulate(
    learner: &Learner,
    batch: &Batch,
    s: &Settings,
    loss_scale: Option<f64>,
    mut grads: Option<&mut GradReducer>,
) -> Result<Outcome> {
    let n = batch.len();
    let part = s.micro_batch.clamp(1, n);
    let (mut loss, mut correct) = (
        Tensor::zeros([], (Kind::Float, batch.xs.device())),
        Tensor::zeros([], (Kind::Float, batch.xs.device())),
    );
    for start in (0..n).step_by(part as usize) {
        let len = part.min(n - start);
        let labels = batch.labels.narrow(0, start, len); // (b)
        let other = batch.mix.as_ref().map(|(other, lam)| (other.narrow(0, start, len), *lam)); // (b)
        let out = learner.part(
            &batch.xs.narrow(0, start, len),
            &labels,
            other.as_ref().map(|(o, lam)| (o, *lam)),
            s.label_smoothing,
            s.precision,
            true,
        );
        let part_loss = out.loss * (len as f64 / n as f64);
        if let Some(g) = grads.as_deref_mut().filter(|_| start + len == n) {
            g.arm()?;
        }
        match loss_scale {
            Some(scale) => (&part_loss * scale).backward(),
            None => part_loss.backward(),
        }
        tch::no_grad(|| {
            loss += part_loss.detach();
            if let Some(c) = &out.correct {
                correct += c;
            }
        });
    }
    if let Some(g) = grads {
        g.finish()?;
    }
    Ok(Outcome { loss, correct })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Optim;
    use tch::{nn, Device};

    #[test]
    fn loss_scaler_follows_grad_scaler() {
        let mut s = LossScaler::new(Precision::Fp16);
        assert!(s.enabled && s.scale == 65536.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale, 65536.0);
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (131072.0, 0));
        for _ in 0..10 {
            s.update(false);
        }
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0), "an inf backs off and restarts the count");
        assert!(!LossScaler::new(Precision::Bf16).enabled);
    }

    /// With loss scaling on, an inf gradient skips the update: weights and the optimizer's count
    /// stay; a finite one is unscaled before the update, which then equals the unscaled step.
    #[test]
    fn scaled_steps_skip_infs_and_equal_unscaled_ones() {
        let run = |scaled: bool, poison: bool| {
            tch::manual_seed(0);
            let vs = nn::VarStore::new(Device::Cpu);
            let lin = nn::linear(vs.root() / "l", 4, 10, Default::default());
            let model = nn::func_t(move |xs, _| {
                let xs = xs.to_kind(Kind::Float) / 255.0;
                let out = xs.sum_dim_intlist([1].as_slice(), false, Kind::Float).apply(&lin);
                if poison {
                    out * f64::INFINITY
                } else {
                    out
                }
            });
            let initial: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
            let mut opt = AdamW::new(&vs, &Optim::default()).unwrap();
            let batch = Batch {
                xs: Tensor::randint(256, [6, 3, 4], (Kind::Uint8, Device::Cpu)),
                labels: Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]),
                mix: None,
            };
            let mut scaler = LossScaler {
                enabled: scaled,
                ..LossScaler::new(Precision::Fp16)
            };
            let s = Settings {
                precision: Precision::Fp32,
                label_smoothing: 0.1,
                clip_norm: 1.0,
                lr_factor: 1.0,
                micro_batch: 6,
            };
            train_step(&Learner::Classifier(Box::new(model)), &mut opt, &batch, &s, &mut scaler).unwrap();
            (initial, vs.variables(), opt.t, scaler)
        };
        let (_, plain, t_plain, _) = run(false, false);
        let (_, scaled, t_scaled, scaler) = run(true, false);
        assert_eq!((t_plain, t_scaled, scaler.growth_tracker), (1, 1, 1));
        for (name, w) in &plain {
            let diff = (w - &scaled[name]).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name}: {diff}");
        }
        let (initial, after, t_inf, scaler) = run(true, true);
        assert_eq!((t_inf, scaler.scale), (0, 32768.0));
        for (name, w) in &initial {
            assert!(w.equal(&after[name]), "{name} changed in a skipped step");
        }
    }

    /// k micro-batches give the update of one batch (dropout off, LayerNorm only): label
    /// smoothing, mixup targets and clipping included.
    #[test]
    fn micro_batches_give_the_update_of_the_whole_batch() {
        let cfg: crate::models::ModelConfig = toml::from_str(
            "name = \"transformer\"\nd_model = 16\nn_heads = 2\nqkv_dim = 16\nmlp_dim = 16\ndropout = 0.0\nattn_dropout = 0.0",
        )
        .unwrap();
        let input = crate::data::InputSpec { channels: 1, seq_len: 64 };
        tch::manual_seed(1);
        let labels = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
        let batch = Batch {
            xs: Tensor::randint(256, [8, 64, 1], (Kind::Uint8, Device::Cpu)),
            mix: Some((labels.flip([0]), 0.7)),
            labels,
        };
        // Both runs start from these weights, copied: the global seed is shared with the tests
        // running beside this one, so seeding it again would not give the same initialisation.
        let initial = nn::VarStore::new(Device::Cpu);
        cfg.build(&initial.root(), &input).unwrap();
        let train = |micro_batch: i64| {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let learner = Learner::Classifier(cfg.build(&vs.root(), &input).unwrap());
            vs.copy(&initial).unwrap();
            // Adam's first step is about lr·sign(g): with the default ε = 1e-8, the rounding
            // differences of summing in another order flip the update of gradients near zero.
            // A larger ε keeps the update a smooth function of the gradient.
            let optim = Optim {
                eps: 1e-4,
                ..Optim::default()
            };
            let mut opt = AdamW::new(&vs, &optim).unwrap();
            let mut scaler = LossScaler::new(Precision::Fp32);
            let s = Settings {
                precision: Precision::Fp32,
                label_smoothing: 0.1,
                clip_norm: 0.5,
                lr_factor: 1.0,
                micro_batch,
            };
            let mut outcomes = Vec::new();
            for _ in 0..2 {
                let out = train_step(&learner, &mut opt, &batch, &s, &mut scaler).unwrap();
                outcomes.push((out.loss.double_value(&[]), out.correct.double_value(&[])));
            }
            (vs.variables(), outcomes)
        };
        let (whole, whole_out) = train(8);
        let (parts, parts_out) = train(3);
        for ((l1, c1), (l2, c2)) in whole_out.iter().zip(&parts_out) {
            assert!((l1 - l2).abs() < 1e-5 * l1.abs(), "loss {l1} vs {l2}");
            assert_eq!(c1, c2);
        }
        for (name, w) in &whole {
            let diff = (w - &parts[name]).abs().max().double_value(&[]);
            // Float tolerance, 1,000 times below the size of one update (lr = 1e-3).
            let tolerance = 1e-5 * w.abs().max().double_value(&[]) + 1e-6;
            assert!(diff <= tolerance, "{name}: {diff}");
        }
    }
}
