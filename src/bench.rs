//! `pixelseq bench`: training and inference throughput and peak memory of presets at several
//! sequence lengths, side by side with the same models written in PyTorch (`bench/reference/`).
//!
//! # What is measured
//! For every (preset, sequence length L) the model is built for input (B, L, C), C from the
//! preset's task, B the preset's batch size (or `--batch`), on random `Uint8` pixels and random
//! labels held on the device. Then:
//! - **training**: the trainer's step — `forward_t(train = true)` under [`amp::autocast`],
//!   cross-entropy (with the preset's label smoothing), `zero_grad`, backward, clipping when
//!   `optim.clip_norm > 0`, the trainer's [`AdamW`] step. The loop's bookkeeping (per-step
//!   reseeding, running loss and accuracy, the progress bar) is left out;
//! - **inference**: `forward_t(train = false)` under `no_grad` and autocast;
//!
//! each `--warmup` times untimed, then `--steps` times timed one by one, the device synchronised
//! before and after each step; the figure is batch / median step time, in images per second.
//! With `--repeat N` every configuration is measured N times, pixelseq and PyTorch alternating,
//! and each side keeps its fastest round: on a machine shared with other work, interference only
//! ever slows a round down. There, also keep `--threads` at or below the idle cores: with more,
//! every small operation's OpenMP barrier waits for a preempted thread, and the figures measure
//! the scheduler (recurrent models with thousands of small steps suffer most).
//!
//! The training step is the trainer's: AdamW, gradient clipping and `zero_grad` go through
//! libtorch's fused multi-tensor kernels (`AdamW(fused=True)`, `clip_grad_norm_(foreach=True)`,
//! `set_to_none`), while the PyTorch side uses PyTorch's defaults (foreach AdamW on CUDA, the
//! per-tensor loop on CPU); that difference is part of what the ratio measures.
//!
//! # Profiles
//! `--profile DIR` runs `--steps` more training steps of each configuration under libtorch's
//! Kineto profiler (`torch.profiler` on the PyTorch side; the last round's with `--repeat`) and
//! writes `DIR/<preset>-L<len>-<impl>.txt`, operators by self time (and kernels by device time
//! on CUDA), and `.json`, a Chrome trace: to find where one side loses time.
//!
//! # Peak memory (`peak_mem_mb`, MiB)
//! Each (preset, L) runs in a child process (`pixelseq bench --one …`, hidden), so that numbers do
//! not carry over from one configuration to the next.
//! - CPU: the process's peak resident set (`VmHWM` in `/proc/self/status`), libtorch's code and,
//!   for PyTorch, the Python interpreter included.
//! - CUDA: device memory in use, total − free from `cudaMemGetInfo` (looked up in the already
//!   loaded libcudart; libtorch exposes no allocator statistics to Rust), sampled after every step
//!   and reported as its highest value minus the value before the model was built. That is what
//!   the caching allocator reserved at its peak plus library workspaces (cuBLAS, cuFFT), at least
//!   the peak of allocated tensors. The PyTorch side reports the same quantity, so the two columns
//!   compare like with like; its `torch.cuda.max_memory_allocated` goes to `max_allocated_mb`.
//!
//! # The PyTorch side
//! `bench/reference/run.py` (with the project's `.venv` python, or `--python`) receives the
//! resolved model config as JSON, builds the same model from `bench/reference/<family>.py`, and
//! times the same two steps with `torch.optim.AdamW` (PyTorch's default implementation), the same
//! thread count, precision and batch. Parameter counts must match exactly; a mismatch is flagged
//! in the table and in the record's note.
//!
//! # Output
//! A table on stdout (throughputs, pixelseq/PyTorch ratios, peak memory, parameters), for each
//! preset measured at two or more lengths the growth of the training cost per image with L, and
//! with `--json FILE` a JSON array of [`Record`]s, rewritten after every measurement.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Device, Kind, Reduction, Tensor};

use crate::amp;
use crate::cli::DeviceArgs;
use crate::config::{preset_names, Optim, Precision, RunConfig};
use crate::models::{param_count, InputSpec, NUM_CLASSES};
use crate::train::{optim::AdamW, run::device_name, run::write_atomic};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// A shipped preset to measure (repeatable; default: every preset, unless --config is given).
    #[arg(long = "preset", value_name = "NAME")]
    pub presets: Vec<String>,
    /// A TOML config file to measure (repeatable).
    #[arg(long = "config", value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Override one config key for every preset, e.g. --set model.d_model=256 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Sequence lengths to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [256, 1024, 4096])]
    pub seq_len: Vec<i64>,
    /// Batch size (default: each preset's train.batch_size).
    #[arg(long)]
    pub batch: Option<i64>,
    /// Timed steps; the figure is the median.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Measure each configuration this many times, alternating pixelseq and PyTorch, and keep
    /// each side's fastest round (for machines shared with other work).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// fp32, bf16 or auto (bf16 on CUDA, fp32 on CPU); default: each preset's train.precision.
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Write the results as a JSON array to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Measure pixelseq only, without the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Python with torch for the reference (default: the checkout's .venv/bin/python).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// After timing, profile `--steps` training steps of each configuration, both implementations,
    /// with libtorch's profiler (torch.profiler on the PyTorch side): DIR/<preset>-L<len>-<impl>.txt
    /// (operators by self time; kernels by device time on CUDA) and .json (Chrome trace)
    #[arg(long, value_name = "DIR")]
    pub profile: Option<PathBuf>,
    /// Internal: measure one preset at one length in this process and print one JSON line.
    #[arg(long, hide = true)]
    pub one: bool,
}

/// What one process measured for one (preset, L).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub params: i64,
    pub train_img_per_s: f64,
    pub infer_img_per_s: f64,
    pub peak_mem_mb: f64,
    /// PyTorch on CUDA: `torch.cuda.max_memory_allocated`, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_allocated_mb: Option<f64>,
    /// How the PyTorch reference computes the model, when worth saying.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub formulation: String,
}

/// One line of the JSON output: one implementation of one preset at one length. Numbers are
/// `null` when the cell was not measured (`note` says why).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub model: String,
    pub preset: String,
    pub seq_len: i64,
    pub batch: i64,
    pub train_img_per_s: Option<f64>,
    pub infer_img_per_s: Option<f64>,
    /// MiB; see `memory` for what it measures.
    pub peak_mem_mb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_allocated_mb: Option<f64>,
    pub params: Option<i64>,
    pub device: String,
    pub precision: String,
    /// "pixelseq" or "pytorch".
    #[serde(rename = "impl")]
    pub implementation: String,
    /// What `peak_mem_mb` measures.
    pub memory: String,
    /// Why a cell is empty (n/a, error) or a parameter-count mismatch; empty when all is well.
    pub note: String,
    /// How the PyTorch reference computes the model (the formulation compared).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub formulation: String,
}

/// A preset or a config file, as given on the command line.
enum Source {
    Preset(String),
    File(PathBuf),
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::Preset(name) => name.clone(),
            Source::File(path) => path.file_stem().unwrap_or_default().to_string_lossy().into_owned(),
        }
    }

    fn load(&self, overrides: &[String]) -> Result<RunConfig> {
        match self {
            Source::Preset(name) => RunConfig::load(Some(name), None, overrides),
            Source::File(path) => RunConfig::load(None, Some(path), overrides),
        }
    }

    fn args(&self) -> [String; 2] {
        match self {
            Source::Preset(name) => ["--preset".into(), name.clone()],
            Source::File(path) => ["--config".into(), path.display().to_string()],
        }
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps 0: need at least one timed step");
    }
    if a.repeat == 0 {
        bail!("--repeat 0: need at least one round");
    }
    if let Some(&l) = a.seq_len.iter().find(|&&l| l < 1) {
        bail!("--seq-len {l}: lengths must be >= 1");
    }
    if let Some(b) = a.batch.filter(|&b| b < 1) {
        bail!("--batch {b}: must be >= 1");
    }
    if a.one {
        return run_one(&a);
    }
    if let Some(dir) = &a.profile {
        std::fs::create_dir_all(dir).with_context(|| format!("--profile: cannot create `{}`", dir.display()))?;
    }
    let device = a.device.resolve()?;
    let mut sources: Vec<Source> = a.presets.iter().cloned().map(Source::Preset).collect();
    sources.extend(a.configs.iter().cloned().map(Source::File));
    if sources.is_empty() {
        sources = preset_names()?.into_iter().map(Source::Preset).collect();
    }
    let reference = if a.no_reference {
        None
    } else {
        Some(Reference::find(a.python.as_deref())?)
    };
    let configs = sources
        .iter()
        .map(|s| s.load(&a.overrides).map(|c| (s, c)))
        .collect::<Result<Vec<_>>>()?;

    let run = Run {
        args: &a,
        device,
        reference,
        device_label: device_name(device),
        memory: if device.is_cuda() {
            "peak device memory in use (cudaMemGetInfo total - free) above the value before the model, MiB"
        } else {
            "peak resident set size of the process (VmHWM), MiB"
        },
    };
    let mut records: Vec<Record> = Vec::new();
    let total = configs.len() * a.seq_len.len();
    for (i, (source, cfg, l)) in configs
        .iter()
        .flat_map(|(s, c)| a.seq_len.iter().map(move |&l| (*s, c, l)))
        .enumerate()
    {
        let cell = Cell {
            source,
            cfg,
            input: InputSpec {
                channels: cfg.task.name.channels(),
                seq_len: l,
            },
            batch: a.batch.unwrap_or(cfg.train.batch_size),
            precision: resolve_precision(a.precision.unwrap_or(cfg.train.precision), device)?,
        };
        let progress = format!("[{}/{total}] {} L={l} batch {}", i + 1, source.label(), cell.batch);
        records.extend(run.cell(&cell, &progress));
        save(a.json.as_deref(), &records)?;
    }
    print!("{}", table(&records, run.memory));
    if let Some(path) = &a.json {
        eprintln!("wrote {} records to {}", records.len(), path.display());
    }
    Ok(())
}

/// What every cell of a run shares.
struct Run<'a> {
    args: &'a BenchArgs,
    device: Device,
    reference: Option<Reference>,
    device_label: String,
    /// What the peak memory column measures on this device.
    memory: &'static str,
}

/// One (preset, L) of a run.
struct Cell<'a> {
    source: &'a Source,
    cfg: &'a RunConfig,
    input: InputSpec,
    batch: i64,
    precision: Precision,
}

impl Run<'_> {
    /// Measures a cell with both implementations (`--repeat` rounds, alternating), or marks it
    /// n/a when the model rejects the length; one record per implementation.
    fn cell(&self, cell: &Cell, progress: &str) -> Vec<Record> {
        if let Err(e) = cell.cfg.model.validate(&cell.input) {
            let why = Err(format!("n/a: {e:#}"));
            eprintln!("{progress}: {}", summary(&why));
            let mut records = vec![self.record(cell, "pixelseq", &why, String::new())];
            if self.reference.is_some() {
                records.push(self.record(cell, "pytorch", &why, String::new()));
            }
            return records;
        }
        let a = self.args;
        let (mut ours, mut theirs) = (None, None);
        for round in 1..=a.repeat {
            let progress = if a.repeat > 1 {
                format!("{progress} round {round}/{}", a.repeat)
            } else {
                progress.to_string()
            };
            eprintln!("{progress}: pixelseq …");
            let m = run_child(cell, a, self.device);
            eprintln!("{progress}: pixelseq {}", summary(&m));
            ours = Some(fastest(ours, m));
            if let Some(r) = &self.reference {
                eprintln!("{progress}: pytorch …");
                let m = r.measure(cell, a, self.device);
                eprintln!("{progress}: pytorch {}", summary(&m));
                theirs = Some(fastest(theirs, m));
            }
        }
        let ours = ours.expect("at least one round");
        let mut records = vec![self.record(cell, "pixelseq", &ours, String::new())];
        if let Some(theirs) = theirs {
            let mismatch = match (&ours, &theirs) {
                (Ok(o), Ok(t)) if o.params != t.params => {
                    format!("PARAMETER COUNTS DIFFER: pixelseq {}, pytorch {}", o.params, t.params)
                }
                _ => String::new(),
            };
            records.push(self.record(cell, "pytorch", &theirs, mismatch));
        }
        records
    }

    /// The record of one implementation: its measurement and `note`, or why there is none.
    fn record(&self, cell: &Cell, implementation: &str, m: &Result<Measurement, String>, note: String) -> Record {
        let (m, note) = match m {
            Ok(m) => (Some(m), note),
            Err(e) => (None, e.clone()),
        };
        Record {
            model: cell.cfg.model.name().to_string(),
            preset: cell.source.label(),
            seq_len: cell.input.seq_len,
            batch: cell.batch,
            train_img_per_s: m.map(|m| m.train_img_per_s),
            infer_img_per_s: m.map(|m| m.infer_img_per_s),
            peak_mem_mb: m.map(|m| m.peak_mem_mb),
            max_allocated_mb: m.and_then(|m| m.max_allocated_mb),
            params: m.map(|m| m.params),
            device: self.device_label.clone(),
            precision: precision_name(cell.precision).to_string(),
            implementation: implementation.to_string(),
            memory: self.memory.to_string(),
            note,
            formulation: m.map(|m| m.formulation.clone()).unwrap_or_default(),
        }
    }
}

/// Of two rounds of the same measurement, the higher throughputs and the higher peak memory
/// (other work on the machine only ever slows a round down); an error only if both failed.
fn fastest(best: Option<Result<Measurement, String>>, m: Result<Measurement, String>) -> Result<Measurement, String> {
    match (best, m) {
        (Some(Ok(b)), Ok(m)) => Ok(Measurement {
            train_img_per_s: b.train_img_per_s.max(m.train_img_per_s),
            infer_img_per_s: b.infer_img_per_s.max(m.infer_img_per_s),
            peak_mem_mb: b.peak_mem_mb.max(m.peak_mem_mb),
            max_allocated_mb: b.max_allocated_mb.into_iter().chain(m.max_allocated_mb).reduce(f64::max),
            ..m
        }),
        (Some(Ok(b)), Err(_)) => Ok(b),
        (_, m) => m,
    }
}

/// Rewrites the JSON output, if asked for, with every record so far.
fn save(path: Option<&Path>, records: &[Record]) -> Result<()> {
    match path {
        Some(path) => write_atomic(path, serde_json::to_string_pretty(records)?.as_bytes()),
        None => Ok(()),
    }
}

fn summary(m: &Result<Measurement, String>) -> String {
    match m {
        Ok(m) => format!(
            "train {:.1} img/s, inference {:.1} img/s, {:.0} MiB, {} parameters",
            m.train_img_per_s, m.infer_img_per_s, m.peak_mem_mb, m.params
        ),
        Err(e) => e.clone(),
    }
}

/// The precision actually used; fp16 (loss scaling) is not benchmarked.
fn resolve_precision(p: Precision, device: Device) -> Result<Precision> {
    match amp::resolve(p, device) {
        Precision::Fp16 => bail!("--precision fp16 is not benchmarked (the trainer's loss scaling syncs with the host); use bf16"),
        p => Ok(p),
    }
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::Bf16 => "bf16",
        Precision::Fp16 => "fp16",
        Precision::Auto | Precision::Fp32 => "fp32",
    }
}

/// `cpu` or `cuda:N`, as both children take it.
fn device_arg(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// Measures one (preset, L) in a child process of this executable.
fn run_child(cell: &Cell, a: &BenchArgs, device: Device) -> Result<Measurement, String> {
    let exe = std::env::current_exe().map_err(|e| format!("error: cannot find the pixelseq executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--one"]).args(cell.source.args());
    for o in &a.overrides {
        cmd.args(["--set", o]);
    }
    cmd.args(["--seq-len", &cell.input.seq_len.to_string(), "--batch", &cell.batch.to_string()])
        .args(["--steps", &a.steps.to_string(), "--warmup", &a.warmup.to_string()])
        .args(["--device", &device_arg(device), "--precision", precision_name(cell.precision)]);
    if let Some(t) = a.device.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    if let Some(dir) = &a.profile {
        cmd.arg("--profile").arg(dir);
    }
    json_line_of(cmd)
}

/// Where `--profile DIR` puts the files of one configuration and implementation, without extension.
fn profile_prefix(dir: &Path, label: &str, seq_len: i64, implementation: &str) -> PathBuf {
    dir.join(format!("{label}-L{seq_len}-{implementation}"))
}

/// Runs a child and parses the last line of its stdout as a [`Measurement`]; a failure becomes a
/// one-line note from its stderr.
fn json_line_of(mut cmd: Command) -> Result<Measurement, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("error: cannot start {:?}: {e}", cmd.get_program()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(match out.status.code() {
            Some(c) => {
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                format!("error (exit code {c}): {last}")
            }
            None => "error: killed by a signal (out of memory?)".into(),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(line).map_err(|e| format!("error: unreadable result `{line}`: {e}"))
}

/// The PyTorch reference: a python with torch and `bench/reference/run.py`.
struct Reference {
    python: PathBuf,
    script: PathBuf,
}

impl Reference {
    /// `--python`, else the checkout's `.venv/bin/python`; the script beside the checkout's sources.
    fn find(python: Option<&Path>) -> Result<Reference> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = match python {
            Some(p) => p.to_path_buf(),
            None => [root.join(".venv/bin/python"), PathBuf::from(".venv/bin/python")]
                .into_iter()
                .find(|p| p.exists())
                .ok_or_else(|| anyhow!("no .venv/bin/python for the PyTorch reference; pass --python PATH or --no-reference"))?,
        };
        let script = [root.join("bench/reference/run.py"), PathBuf::from("bench/reference/run.py")]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("bench/reference/run.py not found; run from the pixelseq checkout or pass --no-reference"))?;
        Ok(Reference { python, script })
    }

    fn measure(&self, cell: &Cell, a: &BenchArgs, device: Device) -> Result<Measurement, String> {
        let model = serde_json::to_string(&cell.cfg.model).map_err(|e| e.to_string())?;
        let optim = serde_json::to_string(&cell.cfg.optim).map_err(|e| e.to_string())?;
        let (input, batch) = (cell.input, cell.batch);
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .args(["--model", &model, "--optim", &optim])
            .args(["--channels", &input.channels.to_string(), "--seq-len", &input.seq_len.to_string()])
            .args([
                "--batch",
                &batch.to_string(),
                "--steps",
                &a.steps.to_string(),
                "--warmup",
                &a.warmup.to_string(),
            ])
            .args(["--device", &device_arg(device), "--precision", precision_name(cell.precision)]);
        if let Some(t) = a.device.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        if let Some(dir) = &a.profile {
            cmd.arg("--profile")
                .arg(profile_prefix(dir, &cell.source.label(), input.seq_len, "pytorch"));
        }
        json_line_of(cmd)
    }
}

/// `--one`: build, time and print one JSON [`Measurement`] line.
fn run_one(a: &BenchArgs) -> Result<()> {
    let source = match (a.presets.as_slice(), a.configs.as_slice()) {
        ([p], []) => Source::Preset(p.clone()),
        ([], [f]) => Source::File(f.clone()),
        _ => bail!("--one takes exactly one --preset or --config"),
    };
    let &[l] = a.seq_len.as_slice() else {
        bail!("--one takes exactly one --seq-len")
    };
    let device = a.device.resolve()?;
    let cfg = source.load(&a.overrides)?;
    let precision = resolve_precision(a.precision.unwrap_or(cfg.train.precision), device)?;
    let input = InputSpec {
        channels: cfg.task.name.channels(),
        seq_len: l,
    };
    let batch = a.batch.unwrap_or(cfg.train.batch_size);
    let timing = Timing {
        steps: a.steps,
        warmup: a.warmup,
        profile: a.profile.as_ref().map(|dir| profile_prefix(dir, &source.label(), l, "pixelseq")),
    };
    let m = measure(&cfg, input, batch, &timing, device, precision)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// The trainer's step (see the module doc): forward, loss, backward, clipping, AdamW.
fn train_step(model: &dyn ModuleT, opt: &mut AdamW, xs: &Tensor, ys: &Tensor, o: &Optim, precision: Precision) -> Result<()> {
    let logits = amp::autocast(precision, || model.forward_t(xs, true)).to_kind(Kind::Float); // (B, 10)
    let loss = logits.cross_entropy_loss::<Tensor>(ys, None, Reduction::Mean, -100, o.label_smoothing);
    opt.zero_grad()?;
    loss.backward();
    if o.clip_norm > 0.0 {
        let _ = opt.clip_grad_norm(o.clip_norm)?;
    }
    opt.step(1.0)
}

/// How [`measure`] times: `warmup` untimed steps, the median of `steps` timed ones, then
/// optionally `steps` training steps under the profiler, written to `<profile>.txt` and `.json`.
pub struct Timing {
    pub steps: usize,
    pub warmup: usize,
    pub profile: Option<PathBuf>,
}

/// Times `cfg`'s model on random pixels (B, L, C): training, then inference.
pub fn measure(cfg: &RunConfig, input: InputSpec, batch: i64, t: &Timing, device: Device, precision: Precision) -> Result<Measurement> {
    let (steps, warmup) = (t.steps, t.warmup);
    let gpu = match device {
        Device::Cuda(i) => Some(cuda::Memory::new(i)?),
        _ => None,
    };
    let mut peak = 0u64;
    let mut sample = || {
        if let Some(g) = &gpu {
            peak = peak.max(g.used().unwrap_or(0));
        }
    };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = cfg.model.build(&vs.root(), &input)?;
    let mut opt = AdamW::new(&vs, &cfg.optim);
    let xs = Tensor::randint(256, [batch, input.seq_len, input.channels], (Kind::Uint8, device)); // (B, L, C)
    let ys = Tensor::randint(NUM_CLASSES, [batch], (Kind::Int64, device)); // (B)

    let train = median_seconds(warmup, steps, device, || {
        train_step(model.as_ref(), &mut opt, &xs, &ys, &cfg.optim, precision)?;
        sample();
        Ok(())
    })?;
    let infer = median_seconds(warmup, steps, device, || {
        let _ = tch::no_grad(|| amp::autocast(precision, || model.forward_t(&xs, false)));
        sample();
        Ok(())
    })?;
    let peak_mem_mb = match &gpu {
        Some(g) => peak.saturating_sub(g.baseline) as f64 / MIB,
        None => peak_rss_mib().context("cannot read VmHWM from /proc/self/status")?,
    };
    if let Some(prefix) = &t.profile {
        let trace = PathBuf::from(format!("{}.json", prefix.display()));
        let ((), summary) = crate::profile::profile(device.is_cuda(), &trace, || {
            for _ in 0..steps {
                train_step(model.as_ref(), &mut opt, &xs, &ys, &cfg.optim, precision)?;
            }
            sync(device);
            Ok(())
        })?;
        let text = format!(
            "{} training steps of batch {batch} at L = {}, {device:?}\n\n{summary}",
            steps, input.seq_len
        );
        let path = format!("{}.txt", prefix.display());
        std::fs::write(&path, text).with_context(|| format!("failed to write `{path}`"))?;
    }
    Ok(Measurement {
        params: param_count(&vs),
        train_img_per_s: batch as f64 / train,
        infer_img_per_s: batch as f64 / infer,
        peak_mem_mb,
        max_allocated_mb: None,
        formulation: String::new(),
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// Runs `f` `warmup` times, then `steps` times timed, each between device synchronisations;
/// returns the median seconds.
fn median_seconds(warmup: usize, steps: usize, device: Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        sync(device);
        let start = Instant::now();
        f()?;
        sync(device);
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(median(&mut times))
}

/// Waits for the device's queued work (nothing to wait for on CPU).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Peak resident set of this process (`VmHWM`), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Device memory in use through the CUDA runtime that libtorch already loaded.
mod cuda {
    use std::ffi::{c_char, c_int, c_void};

    use anyhow::{bail, Result};
    use tch::{Device, Kind, Tensor};

    extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }

    type MemGetInfo = unsafe extern "C" fn(free: *mut usize, total: *mut usize) -> c_int;
    type SetDevice = unsafe extern "C" fn(device: c_int) -> c_int;

    /// A symbol of the libraries already loaded (`RTLD_DEFAULT`, the null handle on glibc).
    fn symbol(name: &std::ffi::CStr) -> Result<*mut c_void> {
        // SAFETY: dlsym only reads the loaded libraries' symbol tables.
        let f = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
        if f.is_null() {
            bail!("{name:?} not found: libcudart is not loaded, so CUDA memory cannot be measured");
        }
        Ok(f)
    }

    pub struct Memory {
        mem_get_info: MemGetInfo,
        /// Bytes in use before the model existed (the CUDA context, libtorch's first block).
        pub baseline: u64,
    }

    impl Memory {
        /// Initialises CUDA on device `index`, makes it current for the runtime, and takes the baseline.
        pub fn new(index: usize) -> Result<Memory> {
            let _ = Tensor::zeros([1], (Kind::Float, Device::Cuda(index)));
            tch::Cuda::synchronize(index as i64);
            // SAFETY: both symbols are the CUDA runtime's functions with exactly these signatures.
            let (mem_get_info, set_device) = unsafe {
                (
                    std::mem::transmute::<*mut c_void, MemGetInfo>(symbol(c"cudaMemGetInfo")?),
                    std::mem::transmute::<*mut c_void, SetDevice>(symbol(c"cudaSetDevice")?),
                )
            };
            // SAFETY: a valid device index (the tensor above was created on it).
            let rc = unsafe { set_device(index as c_int) };
            if rc != 0 {
                bail!("cudaSetDevice({index}) failed with error {rc}");
            }
            let mut m = Memory { mem_get_info, baseline: 0 };
            m.baseline = m.used()?;
            Ok(m)
        }

        /// Bytes in use on the current device: total − free.
        pub fn used(&self) -> Result<u64> {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: two valid out-pointers.
            let rc = unsafe { (self.mem_get_info)(&mut free, &mut total) };
            if rc != 0 {
                bail!("cudaMemGetInfo failed with error {rc}");
            }
            Ok((total - free) as u64)
        }
    }
}

/// The results as a terminal table, one line per (preset, L), then what each PyTorch reference
/// computes and the growth of the training cost with L.
pub fn table(records: &[Record], memory: &str) -> String {
    let num = |v: Option<f64>, digits: usize| v.map_or("—".to_string(), |v| format!("{v:.digits$}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    };
    let row = |c: [&str; 14]| {
        format!(
            "{:<20} {:<14} {:>5} {:>5} | {:>9} {:>9} {:>5} | {:>9} {:>9} {:>5} | {:>8} {:>8} | {:>9}  {}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13]
        )
    };
    let mut out = format!(
        "{:48}| {:^25} | {:^25} | {:^17} |\n",
        "", "train img/s", "inference img/s", "peak MiB"
    );
    out += &row([
        "preset", "model", "L", "batch", "pixelseq", "pytorch", "ratio", "pixelseq", "pytorch", "ratio", "pixelseq", "pytorch", "params",
        "note",
    ]);
    let mut i = 0;
    while i < records.len() {
        let ours = &records[i];
        let theirs = records
            .get(i + 1)
            .filter(|r| r.implementation == "pytorch" && r.preset == ours.preset && r.seq_len == ours.seq_len);
        i += 1 + usize::from(theirs.is_some());
        let pt = |f: fn(&Record) -> Option<f64>| theirs.and_then(f);
        let params = match (ours.params, theirs.and_then(|t| t.params)) {
            (Some(a), Some(b)) if a != b => format!("{a}≠{b}"),
            (Some(a), _) | (None, Some(a)) => a.to_string(),
            (None, None) => "—".into(),
        };
        let mut notes = vec![ours.note.clone()];
        if let Some(t) = theirs.filter(|t| t.note != ours.note) {
            notes.push(format!("pytorch: {}", t.note));
        }
        notes.retain(|n| !n.is_empty() && n != "pytorch: ");
        out += &row([
            &ours.preset,
            &ours.model,
            &ours.seq_len.to_string(),
            &ours.batch.to_string(),
            &num(ours.train_img_per_s, 1),
            &num(pt(|r| r.train_img_per_s), 1),
            &ratio(ours.train_img_per_s, pt(|r| r.train_img_per_s)),
            &num(ours.infer_img_per_s, 1),
            &num(pt(|r| r.infer_img_per_s), 1),
            &ratio(ours.infer_img_per_s, pt(|r| r.infer_img_per_s)),
            &num(ours.peak_mem_mb, 0),
            &num(pt(|r| r.peak_mem_mb), 0),
            &params,
            &notes.join("; "),
        ]);
    }
    out += &format!("ratio = pixelseq / pytorch throughput; peak memory: {memory}\n");
    let mut seen = Vec::new();
    for r in records.iter().filter(|r| !r.formulation.is_empty()) {
        if !seen.contains(&&r.model) {
            seen.push(&r.model);
            out += &format!("pytorch {}: {}\n", r.model, r.formulation);
        }
    }
    for line in growth(records) {
        out += &line;
        out.push('\n');
    }
    out
}

/// For each preset and implementation measured at two or more lengths: how the training time per
/// image grows from the shortest to the longest, as the exponent k of time ∝ L^k (1 for a
/// linear-cost model, 2 for full attention once it dominates).
fn growth(records: &[Record]) -> Vec<String> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in records {
        if !keys.contains(&(r.preset.as_str(), r.implementation.as_str())) {
            keys.push((&r.preset, &r.implementation));
        }
    }
    let mut lines = Vec::new();
    for (preset, implementation) in keys {
        let mut points: Vec<(i64, f64)> = records
            .iter()
            .filter(|r| r.preset == preset && r.implementation == implementation)
            .filter_map(|r| r.train_img_per_s.map(|t| (r.seq_len, 1.0 / t)))
            .collect();
        points.sort_by_key(|p| p.0);
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            if last.0 > first.0 {
                let k = (last.1 / first.1).ln() / (last.0 as f64 / first.0 as f64).ln();
                lines.push(format!(
                    "{preset} ({implementation}): training time per image ×{:.1} from L={} to L={}: ∝ L^{k:.2}",
                    last.1 / first.1,
                    first.0,
                    last.0
                ));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(implementation: &str, seq_len: i64, train: Option<f64>) -> Record {
        Record {
            model: "s4d".into(),
            preset: "p".into(),
            seq_len,
            batch: 2,
            train_img_per_s: train,
            infer_img_per_s: train.map(|t| 3.0 * t),
            peak_mem_mb: Some(10.0),
            max_allocated_mb: None,
            params: Some(100),
            device: "cpu".into(),
            precision: "fp32".into(),
            implementation: implementation.into(),
            memory: "rss".into(),
            note: String::new(),
            formulation: String::new(),
        }
    }

    #[test]
    fn repeated_rounds_keep_the_fastest() {
        let m = |train: f64, infer: f64| Measurement {
            params: 7,
            train_img_per_s: train,
            infer_img_per_s: infer,
            peak_mem_mb: train,
            max_allocated_mb: None,
            formulation: String::new(),
        };
        let best = fastest(Some(Ok(m(2.0, 9.0))), Ok(m(3.0, 5.0))).unwrap();
        assert_eq!((best.train_img_per_s, best.infer_img_per_s, best.peak_mem_mb), (3.0, 9.0, 3.0));
        assert!(fastest(Some(Ok(m(2.0, 9.0))), Err("killed".into())).is_ok());
        assert!(fastest(None, Err("killed".into())).is_err());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn table_shows_ratios_and_growth_exponent() {
        let records = [
            rec("pixelseq", 256, Some(160.0)),
            rec("pytorch", 256, Some(80.0)),
            rec("pixelseq", 4096, Some(10.0)),
            rec("pytorch", 4096, None),
        ];
        let text = table(&records, "rss");
        assert!(text.contains("2.00"), "{text}");
        assert!(text.contains("L^1.00"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("p    ")).count(), 2, "{text}");
    }
}
