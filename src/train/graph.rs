//! The training step as one CUDA graph (`train.cuda_graphs`), so that a small model's step costs
//! one launch instead of one per kernel. This is PyTorch's "whole-network capture"
//! (`torch.cuda.graphs`): [`WARMUP_STEPS`] eager steps on a side stream, then one step captured
//! (forward, loss and backward of every micro-batch, clipping, the fused AdamW update) with the
//! step's batch copied into static input tensors; every later step copies its batch into them and
//! replays the graph (`csrc/cuda_graph.cpp`).
//!
//! What capture needs, and how each is met:
//! - static shapes: every batch of a run is full (the sampler drops the epoch's remainder, on both
//!   sides of a resume alike), so one graph serves every step;
//! - gradients written, not accumulated: they are set to none before the capture, the captured
//!   backward passes allocate them in the graph's pool, and each replay overwrites them (the
//!   second micro-batch's backward adds into the first's, as eagerly);
//! - AdamW reads its learning rates and step count from device scalars
//!   ([`AdamW::update_captured`], the fused kernel's capturable form), which
//!   [`AdamW::schedule`] sets before each replay;
//! - dropout: libtorch registers its CUDA generator with the graph, and the sampler's per-step
//!   `manual_seed` before each replay gives the replay the seed and offset an eager step has;
//! - bf16 autocast runs inside the capture with its cast cache off;
//! - micro-batches: the graph holds every part of the step, replayed as one;
//! - BatchNorm's running statistics are updated in place inside the graph.
//!
//! `"auto"` leaves graphs off until the GPU checks have passed ([`AUTO_CAPTURES`]); `true` turns
//! them on. What capture cannot meet is refused for `true` and turned off with the reason for `"auto"`
//! ([`obstacle`]): the CPU; fp16, whose loss scaler reads on the host whether each step's
//! gradients are finite; data-parallel runs, whose bucketed all-reduce runs between the backward
//! pass and the update outside libtorch's graph; mixup and CutMix, whose weight λ changes every
//! step; and pretraining, whose loss gathers the masked positions with `nonzero` (a count the
//! host reads).
//!
//! Evaluation passes replay an inference graph per batch shape ([`InferenceGraphs`]).
//!
//! Memory: each graph keeps its own pool for as long as the run lasts (PyTorch's graphs may share
//! one only when replayed in the order they were captured, and training and evaluation
//! interleave), so a run with graphs holds the training step's pool and each evaluation shape's
//! at once, where an eager run reuses one cache for both; the caching allocator returns its free
//! blocks to the device before each capture. `train::memory` plans the eager footprint.
//!
//! Checkpoints are unchanged: the graph holds no state of its own (weights, moments and the step
//! count live where eager steps keep them), so a run with graphs saves and resumes as one without,
//! and a resumed run warms up and captures again.

use anyhow::{anyhow, Context, Result};
use tch::{Device, Tensor};

use super::optim::AdamW;
use super::step::{accumulate, Batch, Outcome, Settings};
use crate::amp::Precision;
use crate::config::{CudaGraphs, RunConfig};
use crate::ffi::{
    call, pixelseq_graph_built, pixelseq_graph_capture_begin, pixelseq_graph_capture_end, pixelseq_graph_free, pixelseq_graph_new,
    pixelseq_graph_replay, pixelseq_graph_side, PixelseqGraph,
};
use crate::objective::Learner;

/// Eager steps on the side stream before the capture (PyTorch's examples take 3; they let
/// libtorch's lazy initialisations, cuBLAS workspaces and autograd's streams among them, happen
/// outside the capture).
pub const WARMUP_STEPS: u64 = 3;

/// Why a run cannot capture its training step, if it cannot: `device` is the run's, `precision`
/// the resolved one, `world` the number of data-parallel ranks.
pub fn obstacle(cfg: &RunConfig, device: Device, precision: Precision, world: usize, pretrain: bool) -> Option<&'static str> {
    let t = &cfg.train;
    if !device.is_cuda() {
        Some("the run is not on a CUDA device")
    } else if !built() {
        Some("this pixelseq was built without CUDA graphs (no CUDA runtime headers at build time)")
    } else if precision == Precision::Fp16 {
        Some("fp16's loss scaler reads on the host whether each step's gradients are finite")
    } else if world > 1 {
        Some("a data-parallel run all-reduces its gradients between the backward pass and the update, outside the graph")
    } else if t.mixup > 0.0 || t.cutmix > 0.0 {
        Some("mixup and CutMix weigh each step's loss with a new λ")
    } else if pretrain {
        Some("the pretraining loss gathers the masked positions (`nonzero`), whose count the host reads every step")
    } else {
        None
    }
}

/// Whether `"auto"` captures where no [`obstacle`] stands in the way. Not until the GPU checks
/// (`.gpu/run check`: graph and eager runs end with the same weights, with dropout, micro-batches
/// and a resume) have passed on a GPU: a replay that ran but computed something else (the same
/// dropout masks every step, say) would cost a scarce GPU window's runs without an error.
/// Until then `true` asks for graphs.
const AUTO_CAPTURES: bool = false;

/// Whether a run captures its step, from `train.cuda_graphs` and [`obstacle`], with the line the
/// log gives it; `true` where graphs cannot work is refused, naming the key and the reason.
pub fn decide(cfg: &RunConfig, device: Device, precision: Precision, world: usize, pretrain: bool) -> Result<(bool, String)> {
    let why = obstacle(cfg, device, precision, world, pretrain);
    match (cfg.train.cuda_graphs, why) {
        (CudaGraphs::Off, _) => Ok((false, "CUDA graphs off (train.cuda_graphs = false)".into())),
        (CudaGraphs::On, Some(why)) => Err(anyhow!("key `train.cuda_graphs` = true: {why}; set it to \"auto\" or false")),
        (CudaGraphs::Auto, Some(why)) => Ok((false, format!("CUDA graphs off: {why}"))),
        (CudaGraphs::Auto, None) if !AUTO_CAPTURES => Ok((
            false,
            "CUDA graphs off: not yet verified on a GPU (.gpu/run check); train.cuda_graphs = true captures the step".into(),
        )),
        (_, None) => Ok((
            true,
            format!("CUDA graphs on: the training step is captured after {WARMUP_STEPS} eager steps and replayed"),
        )),
    }
}

/// Whether `bench` times the step as a graph too: wherever a run could capture it (no
/// [`obstacle`]) and `train.cuda_graphs` is not `false`; `true` where it cannot is refused, as a
/// run refuses it.
pub fn measurable(cfg: &RunConfig, device: Device, precision: Precision) -> Result<bool> {
    match cfg.train.cuda_graphs {
        CudaGraphs::Off => Ok(false),
        CudaGraphs::On => decide(cfg, device, precision, 1, false).map(|(on, _)| on),
        CudaGraphs::Auto => Ok(obstacle(cfg, device, precision, 1, false).is_none()),
    }
}

/// Whether this binary was built with CUDA graphs (`csrc/cuda_graph.cpp`).
fn built() -> bool {
    // SAFETY: no arguments; reads a constant.
    unsafe { pixelseq_graph_built() }
}

/// A CUDA graph with its side stream (libtorch's `at::cuda::CUDAGraph`).
struct CudaGraph(*mut PixelseqGraph);

impl CudaGraph {
    fn new(device: Device) -> Result<CudaGraph> {
        let Device::Cuda(index) = device else {
            return Err(anyhow!("CUDA graphs need a CUDA device, not {device:?}"));
        };
        let mut ptr = std::ptr::null_mut();
        // SAFETY: an out pointer, written on success.
        call("creating a CUDA graph", |err, len| unsafe {
            pixelseq_graph_new(index as i32, &mut ptr, err, len)
        })?;
        Ok(CudaGraph(ptr))
    }

    /// Makes the side stream current (`true`) or the stream that was current before (`false`).
    fn side(&self, side: bool) -> Result<()> {
        // SAFETY: the graph is live.
        call("switching CUDA streams", |err, len| unsafe {
            pixelseq_graph_side(self.0, side, err, len)
        })
    }

    /// Captures what `f` queues on the device (it runs on the side stream; its kernels are
    /// recorded, not run), and instantiates the graph. The capture ends even when `f` fails.
    fn capture<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        // SAFETY: the graph is live.
        call("beginning a CUDA graph capture", |err, len| unsafe {
            pixelseq_graph_capture_begin(self.0, err, len)
        })?;
        let out = f();
        // SAFETY: the graph is live and capturing.
        let end = call("ending a CUDA graph capture", |err, len| unsafe {
            pixelseq_graph_capture_end(self.0, err, len)
        });
        let out = out?;
        end?;
        Ok(out)
    }

    fn replay(&self) -> Result<()> {
        // SAFETY: the graph is live and captured.
        call("replaying a CUDA graph", |err, len| unsafe {
            pixelseq_graph_replay(self.0, err, len)
        })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: the graph was made by `pixelseq_graph_new` and is freed once.
        unsafe { pixelseq_graph_free(self.0) }
    }
}

/// A run's training step on CUDA: eager for the first [`WARMUP_STEPS`] steps it takes, captured
/// at the next and replayed from then on.
pub struct StepGraph {
    graph: CudaGraph,
    warmups_left: u64,
    captured: Option<Captured>,
}

/// The captured step's static tensors: the inputs each step's batch is copied into, and the
/// outcome each replay overwrites.
struct Captured {
    xs: Tensor,
    labels: Tensor,
    out: Outcome,
}

impl StepGraph {
    /// A step graph on CUDA device `device` for the updates of `opt`, to capture once warmed up.
    /// From here on `opt` takes the capturable form of its update, in the warm-up steps too, so
    /// that every step of a run with graphs computes the same way.
    pub fn new(device: Device, opt: &mut AdamW) -> Result<StepGraph> {
        let graph = CudaGraph::new(device)?;
        opt.capturable();
        Ok(StepGraph {
            graph,
            warmups_left: WARMUP_STEPS,
            captured: None,
        })
    }

    /// One optimizer step of `learner` on `batch`, as `train::step::train_step` takes it without
    /// loss scaling (fp16 has no graphs). The outcome is the step's own (copied out of the graph's
    /// static tensors).
    pub fn step(&mut self, learner: &Learner, opt: &mut AdamW, batch: &Batch, s: &Settings) -> Result<Outcome> {
        assert!(
            batch.mix.is_none(),
            "a run with mixup or CutMix has no CUDA graph (graph::obstacle)"
        );
        if let Some(c) = &mut self.captured {
            let (xs, labels) = (batch.xs.size(), batch.labels.size());
            if xs != c.xs.size() || labels != c.labels.size() {
                return Err(anyhow!(
                    "a batch of shape {xs:?} reached the CUDA graph captured for {:?}",
                    c.xs.size()
                ));
            }
            c.xs.copy_(&batch.xs);
            c.labels.copy_(&batch.labels);
            opt.schedule(s.lr_factor);
            self.graph.replay()?;
            return Ok(c.out.copy());
        }
        opt.zero_grad()?;
        opt.schedule(s.lr_factor);
        if self.warmups_left > 0 {
            self.warmups_left -= 1;
            self.graph.side(true)?;
            let out = device_step(learner, opt, batch, s);
            self.graph.side(false)?;
            return out;
        }
        let input = Batch {
            xs: batch.xs.copy(),
            labels: batch.labels.copy(),
            mix: None,
        };
        let out = self.graph.capture(|| device_step(learner, opt, &input, s)).context(
            "capturing the training step as a CUDA graph; `--resume RUN --set train.cuda_graphs=false` continues the run without graphs",
        )?;
        self.graph.replay()?;
        let c = self.captured.insert(Captured {
            xs: input.xs,
            labels: input.labels,
            out,
        });
        Ok(c.out.copy())
    }
}

/// The device's half of a step with graphs, after the gradients were set to none and the
/// learning rates scheduled ([`AdamW::schedule`]): the passes of every micro-batch, clipping and
/// the capturable update. What the graph captures, and what the warm-up steps run eagerly.
fn device_step(learner: &Learner, opt: &mut AdamW, batch: &Batch, s: &Settings) -> Result<Outcome> {
    let out = accumulate(learner, batch, s, None, None)?;
    if s.clip_norm > 0.0 {
        let _ = opt.clip_grad_norm(s.clip_norm)?;
    }
    opt.update_captured()?;
    Ok(out)
}

/// The evaluation passes of a run with graphs: one inference graph per batch shape (the full
/// evaluation batch, and a split's last, smaller one), captured at the shape's first batch after
/// one eager forward pass on the side stream, and replayed for every later batch of that shape,
/// in every later evaluation. The graphs read the weights where they live, so the best
/// checkpoint loaded for the test pass is what they score.
pub struct InferenceGraphs {
    device: Device,
    shapes: Vec<Inference>,
}

/// One batch shape's graph: the static input and the logits each replay overwrites.
struct Inference {
    graph: CudaGraph,
    xs: Tensor,
    logits: Tensor,
}

impl InferenceGraphs {
    pub fn new(device: Device) -> InferenceGraphs {
        InferenceGraphs {
            device,
            shapes: Vec::new(),
        }
    }

    /// `forward(xs)`, the logits of the batch `xs` as an evaluation pass computes them (called
    /// without gradients), from the graph of `xs`'s shape.
    pub fn logits(&mut self, xs: &Tensor, forward: impl Fn(&Tensor) -> Tensor) -> Result<Tensor> {
        if let Some(g) = self.shapes.iter_mut().find(|g| g.xs.size() == xs.size()) {
            g.xs.copy_(xs);
            g.graph.replay()?;
            return Ok(g.logits.copy());
        }
        let graph = CudaGraph::new(self.device)?;
        graph.side(true)?;
        let _ = forward(xs);
        graph.side(false)?;
        let input = xs.copy();
        let logits = graph.capture(|| Ok(forward(&input)))?;
        graph.replay()?;
        let out = logits.copy();
        self.shapes.push(Inference { graph, xs: input, logits });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sets: &[&str]) -> RunConfig {
        let overrides: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        RunConfig::load(Some("s4d-small"), None, &overrides).unwrap()
    }

    /// `auto` captures on CUDA where nothing stands in the way, and names what does; `true`
    /// refuses the same cases naming the key; `false` never captures. (The decision needs no
    /// device: a CUDA run is decided here without one.)
    #[test]
    fn graphs_are_on_where_they_work_and_refused_or_off_with_the_reason_elsewhere() {
        assert!(built(), "the build found the CUDA runtime headers (scripts/env.sh installs them)");
        let cuda = Device::Cuda(0);
        let (on, line) = decide(&config(&[]), cuda, Precision::Bf16, 1, false).unwrap();
        assert_eq!(on, AUTO_CAPTURES, "{line}");
        assert!(
            line.contains(if on { "captured after 3 eager steps" } else { "not yet verified" }),
            "{line}"
        );
        let (on, line) = decide(&config(&["train.cuda_graphs=true"]), cuda, Precision::Fp32, 1, false).unwrap();
        assert!(on && line.contains("captured after 3 eager steps"), "{line}");
        assert!(measurable(&config(&[]), cuda, Precision::Bf16).unwrap());
        assert!(!measurable(&config(&["train.cuda_graphs=false"]), cuda, Precision::Bf16).unwrap());
        assert!(!measurable(&config(&[]), Device::Cpu, Precision::Fp32).unwrap());
        let err = measurable(&config(&["train.cuda_graphs=true"]), Device::Cpu, Precision::Fp32).unwrap_err();
        assert!(err.to_string().contains("not on a CUDA device"), "{err}");
        let (on, line) = decide(&config(&["train.cuda_graphs=false"]), cuda, Precision::Bf16, 1, false).unwrap();
        assert!(!on && line.contains("train.cuda_graphs = false"), "{line}");
        // (overrides, device, precision, ranks, pretrain, the reason)
        type Case<'a> = (&'a [&'a str], Device, Precision, usize, bool, &'a str);
        let cases: [Case; 6] = [
            (&[], Device::Cpu, Precision::Fp32, 1, false, "not on a CUDA device"),
            (&[], cuda, Precision::Fp16, 1, false, "fp16's loss scaler"),
            (&[], cuda, Precision::Bf16, 2, false, "data-parallel"),
            (&["train.mixup=0.2"], cuda, Precision::Bf16, 1, false, "mixup and CutMix"),
            (&["train.cutmix=1.0"], cuda, Precision::Bf16, 1, false, "mixup and CutMix"),
            (&[], cuda, Precision::Bf16, 1, true, "`nonzero`"),
        ];
        for (sets, device, precision, world, pretrain, why) in cases {
            let (on, line) = decide(&config(sets), device, precision, world, pretrain).unwrap();
            assert!(!on && line.starts_with("CUDA graphs off: ") && line.contains(why), "{line}");
            let on: Vec<&str> = sets.iter().copied().chain(["train.cuda_graphs=true"]).collect();
            let err = decide(&config(&on), device, precision, world, pretrain).unwrap_err().to_string();
            assert!(err.starts_with("key `train.cuda_graphs` = true: ") && err.contains(why), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    /// The setting reads `"auto"`, `true` or `false`, is left out of a config that keeps the
    /// default (the configs of runs recorded before it existed read the same), and anything else
    /// is refused naming the key.
    #[test]
    fn the_setting_reads_auto_true_or_false() {
        assert_eq!(config(&[]).train.cuda_graphs, CudaGraphs::Auto);
        assert!(!config(&[]).to_toml().contains("cuda_graphs"));
        for (set, value) in [("true", CudaGraphs::On), ("false", CudaGraphs::Off), ("\"auto\"", CudaGraphs::Auto)] {
            let cfg = config(&[&format!("train.cuda_graphs={set}")]);
            assert_eq!(cfg.train.cuda_graphs, value);
            let again = RunConfig::from_toml_str(&cfg.to_toml(), "written").unwrap();
            assert_eq!(again.train.cuda_graphs, value);
        }
        for bad in ["\"yes\"", "1"] {
            let overrides = [format!("train.cuda_graphs={bad}")];
            let err = format!("{:#}", RunConfig::load(Some("s4d-small"), None, &overrides).unwrap_err());
            assert!(err.contains("cuda_graphs") && err.contains("\"auto\", true or false"), "{err}");
        }
    }

    /// Without a CUDA device a step graph is an error, not a crash.
    #[test]
    fn a_graph_on_the_cpu_is_an_error() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let _ = tch::nn::linear(vs.root(), 2, 2, Default::default());
        let mut opt = AdamW::new(&vs, &Default::default()).unwrap();
        let err = StepGraph::new(Device::Cpu, &mut opt)
            .err()
            .expect("no graph on the CPU")
            .to_string();
        assert!(err.contains("CUDA graphs need a CUDA device"), "{err}");
    }

    /// What a run with graphs computes at each step (gradients to none, the schedule, then
    /// [`device_step`]: what is captured and what the warm-up runs), run eagerly on the CPU,
    /// is the trainer's eager step within 1e-6 of each weight's scale: dropout from the step's
    /// seed, label smoothing, clipping, micro-batches and a schedule that changes every step.
    #[test]
    fn the_graphed_step_is_the_trainers_step() {
        use crate::train::step::{train_step, LossScaler};
        use tch::{nn, Kind};
        let cfg: crate::models::ModelConfig = toml::from_str(
            "name = \"transformer\"\nd_model = 16\nn_heads = 2\nqkv_dim = 16\nmlp_dim = 16\ndropout = 0.1\nattn_dropout = 0.1",
        )
        .unwrap();
        let input = crate::data::InputSpec { channels: 1, seq_len: 64 };
        let optim = crate::config::Optim {
            lr: 3e-3,
            weight_decay: 0.1,
            clip_norm: 0.5,
            ..Default::default()
        };
        let build = || {
            tch::manual_seed(11);
            let vs = nn::VarStore::new(Device::Cpu);
            let learner = Learner::Classifier(cfg.build(&vs.root(), &input).unwrap());
            let opt = AdamW::new(&vs, &optim).unwrap();
            (vs, learner, opt)
        };
        let (vs_eager, eager, mut opt_eager) = build();
        let (vs_graph, graphed, mut opt_graph) = build();
        opt_graph.capturable();
        let mut scaler = LossScaler::new(Precision::Fp32);
        for step in 0..8 {
            tch::manual_seed(1000 + step);
            let batch = Batch {
                xs: Tensor::randint(256, [8, 64, 1], (Kind::Uint8, Device::Cpu)),
                labels: Tensor::randint(10, [8], (Kind::Int64, Device::Cpu)),
                mix: None,
            };
            let s = Settings {
                precision: Precision::Fp32,
                label_smoothing: 0.1,
                clip_norm: optim.clip_norm,
                lr_factor: 1.0 - step as f64 / 10.0,
                micro_batch: 4,
            };
            tch::manual_seed(step);
            let a = train_step(&eager, &mut opt_eager, &batch, &s, &mut scaler).unwrap();
            tch::manual_seed(step);
            opt_graph.zero_grad().unwrap();
            opt_graph.schedule(s.lr_factor);
            let b = device_step(&graphed, &mut opt_graph, &batch, &s).unwrap();
            assert!((a.loss.double_value(&[]) - b.loss.double_value(&[])).abs() < 1e-6, "step {step}");
            assert_eq!(a.correct.double_value(&[]), b.correct.double_value(&[]));
        }
        let eager = vs_eager.variables();
        for (name, w) in vs_graph.variables() {
            let scale = eager[&name].abs().max().double_value(&[]).max(1e-3);
            let diff = (&eager[&name] - &w).abs().max().double_value(&[]);
            assert!(diff <= 1e-6 * scale, "{name}: {diff} (scale {scale})");
        }
    }
}
