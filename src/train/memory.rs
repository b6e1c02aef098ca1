//! How many images one forward/backward pass may take on a device (`train.micro_batch = "auto"`),
//! and how many one evaluation pass may take.
//!
//! The model is built and its optimizer state allocated first; then a probe measures what one
//! training pass (forward in training mode, loss, backward) costs beyond that, at 1 and at 4
//! images, by the peak of the memory in use: the caching CPU allocator's count of large blocks
//! ([`crate::device::caching_cpu_allocator`]), else the process's peak resident set, or on CUDA
//! the device memory in use. The difference gives the cost per image, the rest the fixed cost
//! (gradients, workspaces). The same is done for an evaluation pass (no gradients). The probe
//! takes no optimizer step and restores every buffer it touched (BatchNorm statistics), so the
//! run goes on exactly as without it.
//!
//! The auto micro-batch is the largest that keeps a training pass within 40% of the memory
//! available on a CPU (`MemAvailable`; other programs keep the rest) or 80% of the free memory of
//! a GPU, and splits the batch into equal parts: a batch of 256 that fits 100 at a time runs as
//! 86 + 86 + 84. A model whose pass does not fit even one image in the memory available is
//! refused before training starts, with the measured costs.

use anyhow::{bail, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::objective::Learner;

use crate::amp::Precision;
use crate::config::MicroBatch;
use crate::data::InputSpec;
use crate::device;

/// Share of the available memory an automatic micro-batch plans to use, CPU and GPU.
const CPU_SHARE: f64 = 0.4;
const GPU_SHARE: f64 = 0.8;

const GIB: f64 = (1u64 << 30) as f64;

/// What a pass costs beyond the model and optimizer state: `fixed + per_image × images` bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    pub fixed: f64,
    pub per_image: f64,
}

impl Footprint {
    /// The most images whose pass fits in `bytes` (0 if not even one).
    fn images_within(&self, bytes: f64) -> i64 {
        ((bytes - self.fixed) / self.per_image.max(1.0)).floor().max(0.0) as i64
    }

    fn at(&self, images: i64) -> f64 {
        self.fixed + self.per_image * images as f64
    }
}

/// The micro-batch of training passes and the batch of evaluation passes of a run.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub micro_batch: i64,
    pub eval_batch: i64,
    /// One line for the log: how the micro-batch was chosen.
    pub note: String,
}

/// Splits `batch` into the fewest equal parts of at most `most` images: the size of a part.
pub fn equal_parts(batch: i64, most: i64) -> i64 {
    let parts = (batch + most - 1) / most.max(1);
    (batch + parts - 1) / parts
}

/// The training micro-batch (`micro`: the config's choice) and evaluation batch (at most
/// `eval_batch`) for `learner`, already built on `device` with its optimizer state.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    learner: &Learner,
    vs: &nn::VarStore,
    input: InputSpec,
    batch: i64,
    eval_batch: i64,
    micro: MicroBatch,
    device: Device,
    precision: Precision,
) -> Result<MemoryPlan> {
    let available = available_bytes(device)?;
    let share = if device.is_cuda() { GPU_SHARE } else { CPU_SHARE };
    let budget = share * available;
    let train = probe(learner, vs, input, batch, device, precision, true, budget)?;
    let eval = probe(learner, vs, input, eval_batch, device, precision, false, budget)?;
    if train.at(1) > budget {
        let needs = match train.per_image.is_finite() {
            true => format!(
                "{:.2} GiB ({:.2} GiB fixed + {:.2} GiB per image)",
                train.at(1) / GIB,
                train.fixed / GIB,
                train.per_image / GIB
            ),
            false => format!("more than {:.2} GiB (the probe stopped there)", budget / GIB),
        };
        bail!(
            "the model does not fit: one image's training pass needs {needs} beyond the model and optimizer state, \
             and a pass may take {:.2} GiB ({:.0}% of the {:.2} GiB available on {}); reduce the model's size (model.*) \
             or use a larger device",
            budget / GIB,
            100.0 * share,
            available / GIB,
            device::name(device)
        );
    }
    let fits = train.images_within(budget).max(1);
    let micro_batch = match micro {
        MicroBatch::Size(n) => n.min(batch),
        MicroBatch::Auto => equal_parts(batch, fits.min(batch)),
    };
    let eval_batch = eval_bound(&train, &eval, budget, eval_batch);
    let note = format!(
        "micro-batch {micro_batch} of batch {batch}{}: a training pass needs {:.0} MiB + {:.1} MiB per image, {:.1} GiB available",
        if micro == MicroBatch::Auto { " (auto)" } else { "" },
        train.fixed / (1u64 << 20) as f64,
        train.per_image / (1u64 << 20) as f64,
        available / GIB
    );
    Ok(MemoryPlan {
        micro_batch,
        eval_batch,
        note,
    })
}

/// The evaluation batch (at most `requested`) within `budget`: what the evaluation probe allows,
/// and never more than a training pass of the same images would take. An evaluation pass keeps
/// less than a training pass, but a probe of a few images can miss what a pass of thousands
/// keeps (`train.eval_batch_size = 100000` was given 5,600 images and took 12 GB): the training
/// pass's bound holds it as it holds the micro-batch.
fn eval_bound(train: &Footprint, eval: &Footprint, budget: f64, requested: i64) -> i64 {
    let fits = |f: &Footprint| f.images_within(budget).max(1);
    requested.min(fits(eval)).min(fits(train))
}

/// The most images (at most `batch`) an evaluation pass of `learner` may take on `device`.
pub fn eval_batch(learner: &Learner, vs: &nn::VarStore, input: InputSpec, batch: i64, device: Device, precision: Precision) -> Result<i64> {
    let share = if device.is_cuda() { GPU_SHARE } else { CPU_SHARE };
    let budget = share * available_bytes(device)?;
    let eval = probe(learner, vs, input, batch, device, precision, false, budget)?;
    if eval.at(1) > budget {
        bail!(
            "the model does not fit: one image's evaluation pass needs more than {:.2} GiB, {:.0}% of the memory available on {}",
            budget / GIB,
            100.0 * share,
            device::name(device)
        );
    }
    Ok(batch.min(eval.images_within(budget).max(1)))
}

/// Memory a run may still take on `device`, bytes: `MemAvailable` on a CPU, free memory on a GPU.
/// CPU workers of a data-parallel run on this machine share its memory: each plans with its part.
pub fn available_bytes(device: Device) -> Result<f64> {
    let sharers = match device {
        Device::Cuda(_) => 1,
        _ => crate::dist::World::from_env()?.map_or(1, |w| w.local_size),
    };
    Ok(device::memory_available(device)? / sharers as f64)
}

/// Measures the footprint of a training (`train`) or evaluation pass from passes at 1 and at
/// `min(batch, 4)` images of random pixels. No pass may take more than `budget` bytes (on a CPU
/// the allocator refuses beyond it, on a GPU the device does): a pass of one image that does not
/// fit gives an infinite cost per image, one of several a cost that fits one image fewer.
#[allow(clippy::too_many_arguments)]
fn probe(
    learner: &Learner,
    vs: &nn::VarStore,
    input: InputSpec,
    batch: i64,
    device: Device,
    precision: Precision,
    train: bool,
    budget: f64,
) -> Result<Footprint> {
    let buffers: Vec<(Tensor, Tensor)> = vs
        .variables()
        .into_values()
        .filter(|t| !t.requires_grad())
        .map(|t| {
            let saved = t.copy();
            (t, saved)
        })
        .collect();
    let params: Vec<Tensor> = vs.trainable_variables();
    let meter = Meter::new(device)?;
    let large = batch.clamp(1, 4);
    let measure = |images: i64| {
        device::with_cpu_headroom(budget, || {
            meter.peak_of(|| pass(learner, input, images, device, precision, train), &params)
        })
    };
    let footprint = match measure(1)? {
        None => Footprint {
            fixed: 0.0,
            per_image: f64::INFINITY,
        },
        Some(one) if large > 1 => match measure(large)? {
            Some(many) => {
                let per_image = ((many - one) / (large - 1) as f64).max(many / large as f64 / 4.0);
                Footprint {
                    fixed: (one - per_image).max(0.0),
                    per_image,
                }
            }
            None => Footprint {
                fixed: 0.0,
                per_image: one.max(budget / (large as f64 - 0.5)),
            },
        },
        Some(one) => Footprint {
            fixed: 0.0,
            per_image: one,
        },
    };
    tch::no_grad(|| {
        for (t, saved) in &buffers {
            t.shallow_clone().copy_(saved);
        }
    });
    Ok(footprint)
}

/// One pass of `images` random images: forward, and in training mode the loss's backward.
fn pass(learner: &Learner, input: InputSpec, images: i64, device: Device, precision: Precision, train: bool) {
    let xs = Tensor::randint(256, [images, input.seq_len, input.channels], (Kind::Uint8, device)); // (B, L, C)
    let ys = Tensor::zeros([images], (Kind::Int64, device)); // (B)
    if train {
        learner.part(&xs, &ys, None, 0.0, precision, true).loss.backward();
    } else {
        let _ = tch::no_grad(|| learner.part(&xs, &ys, None, 0.0, precision, false));
    }
    device::sync(device);
}

/// Memory in use on a device, measured from a baseline.
struct Meter {
    device: Device,
    baseline: f64,
}

impl Meter {
    fn new(device: Device) -> Result<Meter> {
        let baseline = Meter::in_use(device)?;
        Ok(Meter { device, baseline })
    }

    /// Bytes in use now: the caching CPU allocator's large blocks, else the resident set; on
    /// CUDA the device memory in use.
    fn in_use(device: Device) -> Result<f64> {
        Ok(match device {
            Device::Cuda(i) => device::CudaMemory::new(i)?.used()? as f64,
            _ if device::caching_cpu_allocator() => device::cpu_allocator_stats().live as f64,
            _ => device::rss_bytes().unwrap_or(0) as f64,
        })
    }

    /// Bytes in use at the peak of `f` beyond the baseline, or `None` when `f` ran out of memory
    /// (libtorch's error); `f`'s gradients are dropped after it.
    fn peak_of(&self, f: impl FnOnce(), params: &[Tensor]) -> Result<Option<f64>> {
        let run = |f: Box<dyn FnOnce() + '_>| -> Result<bool> {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(()) => Ok(true),
                Err(payload) if device::is_out_of_memory_panic(&*payload) => Ok(false),
                Err(payload) => std::panic::resume_unwind(payload),
            }
        };
        let (fitted, peak) = match self.device {
            Device::Cuda(i) => {
                // The CUDA caching allocator keeps what a pass reserved: in use after is the peak.
                let fitted = run(Box::new(f))?;
                (fitted, device::CudaMemory::new(i)?.used()? as f64)
            }
            _ if device::caching_cpu_allocator() => {
                device::reset_cpu_peak();
                let fitted = run(Box::new(f))?;
                (fitted, device::cpu_allocator_stats().peak as f64)
            }
            _ => {
                device::reset_peak_rss();
                let fitted = run(Box::new(f))?;
                (fitted, device::peak_rss_bytes().unwrap_or(0) as f64)
            }
        };
        super::multi_tensor::clear_grads(params)?;
        Ok(fitted.then_some((peak - self.baseline).max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_into_equal_parts() {
        assert_eq!(equal_parts(256, 100), 86);
        assert_eq!(equal_parts(256, 256), 256);
        assert_eq!(equal_parts(256, 1), 1);
        assert_eq!(equal_parts(50, 7), 7);
        assert_eq!(equal_parts(64, 40), 32);
    }

    /// The evaluation batch is held to the training pass's bound, whatever its own probe says.
    #[test]
    fn evaluation_batches_are_bounded_as_training_is() {
        let train = Footprint {
            fixed: 0.0,
            per_image: 10.0,
        };
        let eval = Footprint {
            fixed: 0.0,
            per_image: 0.1,
        };
        assert_eq!(eval_bound(&train, &eval, 1000.0, 100_000), 100);
        assert_eq!(eval_bound(&train, &eval, 1000.0, 50), 50);
        let huge = Footprint {
            fixed: 0.0,
            per_image: f64::INFINITY,
        };
        assert_eq!(eval_bound(&huge, &huge, 1000.0, 256), 1);
    }

    #[test]
    fn footprints_count_images() {
        let f = Footprint {
            fixed: 100.0,
            per_image: 10.0,
        };
        assert_eq!(f.images_within(155.0), 5);
        assert_eq!(f.images_within(50.0), 0);
        assert_eq!(f.at(3), 130.0);
    }
}
