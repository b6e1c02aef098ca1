//! `pixelseq bench`: training and inference throughput and peak memory of presets at several
//! sequence lengths, side by side with the same models written in PyTorch (`bench/reference/`).
//!
//! # What is measured
//! For every (preset, sequence length L) the model is built for input (B, L, C), C from the
//! preset's task, B the preset's batch size (or `--batch`), on random `Uint8` pixels and random
//! labels held on the device. Then:
//! - **training**: the trainer's own step, [`crate::train::step::train_step`] —
//!   `forward_t(train = true)` under autocast, cross-entropy (with the preset's label smoothing),
//!   `zero_grad`, backward, clipping when `optim.clip_norm > 0`, the AdamW update at the
//!   schedule's full learning rate. The loop's bookkeeping (sampling and per-step reseeding,
//!   running loss and accuracy, the progress bar) is left out;
//! - **training as a CUDA graph** (on CUDA, where a run could capture the preset's step, see
//!   [`crate::train::graph::obstacle`]; `--set train.cuda_graphs=false` leaves it out): the same step captured once and
//!   replayed ([`crate::train::graph`]), reported beside the eager step (`graph_train_img_per_s`,
//!   and in the table's note with its ratio to PyTorch's eager step);
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
//! # Layout
//! `mod.rs` runs the cells (preset × length, `--repeat` rounds); `child.rs` is the protocol with
//! the child processes (this executable's `bench --one`, and the PyTorch reference);
//! `measure.rs` times a model in the child (peak memory from [`crate::device`]); `table.rs` prints
//! the results; `record.rs` holds the JSON record that `report` reads too.
//!
//! # Output
//! A table on stdout (throughputs, pixelseq/PyTorch ratios, peak memory, parameters), for each
//! preset measured at two or more lengths the growth of the training cost per image with L, and
//! with `--json FILE` a JSON array of [`Record`]s, rewritten after every measurement.

mod child;
pub mod ddp;
pub mod fit;
mod measure;
mod record;
mod table;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::Device;

pub use child::run_one;
pub use measure::{measure, Timing};
pub use record::{Measurement, Record};
pub use table::table;

use crate::amp::{self, Precision};
use crate::config::RunConfig;
use crate::data::InputSpec;
use crate::{device, files};
use child::Reference;

/// What to measure and how (`pixelseq bench`'s options, validated).
pub struct Options {
    /// The presets and config files, in order.
    pub sources: Vec<Source>,
    /// `--set` overrides applied to every source.
    pub overrides: Vec<String>,
    pub seq_lens: Vec<i64>,
    /// Batch size (`None`: each preset's `train.batch_size`).
    pub batch: Option<i64>,
    pub steps: usize,
    pub warmup: usize,
    pub repeat: usize,
    pub device: Device,
    /// CPU threads given to the children (`None`: libtorch's choice).
    pub threads: Option<i32>,
    /// `None`: each preset's `train.precision`.
    pub precision: Option<Precision>,
    pub json: Option<PathBuf>,
    /// Measure the PyTorch reference beside pixelseq.
    pub reference: bool,
    pub python: Option<PathBuf>,
    pub profile: Option<PathBuf>,
}

/// A preset or a config file, as given on the command line.
#[derive(Debug, Clone)]
pub enum Source {
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
}

/// Measures every source at every length (each in child processes), prints the table and writes
/// the JSON records.
pub fn run(o: &Options) -> Result<()> {
    if let Some(dir) = &o.profile {
        std::fs::create_dir_all(dir).with_context(|| format!("--profile: cannot create `{}`", dir.display()))?;
    }
    if let Some(path) = &o.json {
        files::check_writable(path, "--json")?;
    }
    let reference = if o.reference {
        Some(Reference::find(o.python.as_deref())?)
    } else {
        None
    };
    let configs = o
        .sources
        .iter()
        .map(|s| s.load(&o.overrides).map(|c| (s, c)))
        .collect::<Result<Vec<_>>>()?;

    let run = Run {
        opts: o,
        reference,
        device_label: device::name(o.device),
        memory: if o.device.is_cuda() {
            "peak device memory in use (cudaMemGetInfo total - free) above the value before the model, MiB"
        } else {
            "peak resident set size of the process (VmHWM), MiB"
        },
    };
    let mut records: Vec<Record> = Vec::new();
    let total = configs.len() * o.seq_lens.len();
    for (i, (source, cfg, l)) in configs
        .iter()
        .flat_map(|(s, c)| o.seq_lens.iter().map(move |&l| (*s, c, l)))
        .enumerate()
    {
        let cell = Cell {
            source,
            cfg,
            input: InputSpec {
                channels: cfg.task.name.channels(),
                seq_len: l,
            },
            batch: o.batch.unwrap_or(cfg.train.batch_size),
            precision: resolve_precision(o.precision.unwrap_or(cfg.train.precision), o.device)?,
        };
        let progress = format!("[{}/{total}] {} L={l} batch {}", i + 1, source.label(), cell.batch);
        records.extend(run.cell(&cell, &progress));
        save(o.json.as_deref(), &records)?;
    }
    print!("{}", table(&records, run.memory));
    if let Some(path) = &o.json {
        eprintln!("wrote {} records to {}", records.len(), path.display());
    }
    // A length a model rejects (n/a) is a result; a run where every other cell failed is not.
    let ours = || records.iter().filter(|r| r.implementation == "pixelseq");
    let failed = ours().find(|r| r.train_img_per_s.is_none() && !r.note.starts_with("n/a"));
    if let Some(first) = failed.filter(|_| ours().all(|r| r.train_img_per_s.is_none())) {
        bail!("no configuration could be measured; the first: {}", first.note);
    }
    Ok(())
}

/// What every cell of a run shares.
struct Run<'a> {
    opts: &'a Options,
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
        let o = self.opts;
        let (mut ours, mut theirs) = (None, None);
        for round in 1..=o.repeat {
            let progress = if o.repeat > 1 {
                format!("{progress} round {round}/{}", o.repeat)
            } else {
                progress.to_string()
            };
            eprintln!("{progress}: pixelseq …");
            let m = child::pixelseq(cell, o);
            eprintln!("{progress}: pixelseq {}", summary(&m));
            ours = Some(fastest(ours, m));
            if let Some(r) = &self.reference {
                eprintln!("{progress}: pytorch …");
                let m = r.measure(cell, o);
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
        let (m, note) = measured(m, note);
        Record {
            model: cell.cfg.model.name().to_string(),
            preset: cell.source.label(),
            seq_len: cell.input.seq_len,
            batch: cell.batch,
            train_img_per_s: m.map(|m| m.train_img_per_s),
            graph_train_img_per_s: m.and_then(|m| m.graph_train_img_per_s),
            infer_img_per_s: m.map(|m| m.infer_img_per_s),
            peak_mem_mb: m.map(|m| m.peak_mem_mb),
            max_allocated_mb: m.and_then(|m| m.max_allocated_mb),
            params: m.map(|m| m.params),
            device: self.device_label.clone(),
            precision: cell.precision.to_string(),
            implementation: implementation.to_string(),
            memory: self.memory.to_string(),
            note,
            formulation: m.map(|m| m.formulation.clone()).unwrap_or_default(),
            micro_batch: m.and_then(|m| m.micro_batch),
        }
    }
}

/// A measurement, if there is one, and the record's note: `note`, with why the step could not be
/// timed as a CUDA graph if it could not, or why nothing was measured.
fn measured(m: &Result<Measurement, String>, note: String) -> (Option<&Measurement>, String) {
    match m {
        Ok(m) => match &m.graph_error {
            Some(e) if note.is_empty() => (Some(m), format!("CUDA graph failed: {e}")),
            Some(e) => (Some(m), format!("{note}; CUDA graph failed: {e}")),
            None => (Some(m), note),
        },
        Err(e) => (None, e.clone()),
    }
}

/// Of two rounds of the same measurement, the higher throughputs and the higher peak memory
/// (other work on the machine only ever slows a round down); an error only if both failed.
fn fastest(best: Option<Result<Measurement, String>>, m: Result<Measurement, String>) -> Result<Measurement, String> {
    match (best, m) {
        (Some(Ok(b)), Ok(m)) => Ok(Measurement {
            train_img_per_s: b.train_img_per_s.max(m.train_img_per_s),
            graph_train_img_per_s: b.graph_train_img_per_s.into_iter().chain(m.graph_train_img_per_s).reduce(f64::max),
            infer_img_per_s: b.infer_img_per_s.max(m.infer_img_per_s),
            peak_mem_mb: b.peak_mem_mb.max(m.peak_mem_mb),
            max_allocated_mb: b.max_allocated_mb.into_iter().chain(m.max_allocated_mb).reduce(f64::max),
            micro_batch: m.micro_batch.or(b.micro_batch),
            ..m
        }),
        (Some(Ok(b)), Err(_)) => Ok(b),
        (_, m) => m,
    }
}

/// Rewrites the JSON output, if asked for, with every record so far.
fn save(path: Option<&Path>, records: &[Record]) -> Result<()> {
    match path {
        Some(path) => files::write_bytes(path, serde_json::to_string_pretty(records)?.as_bytes()),
        None => Ok(()),
    }
}

fn summary(m: &Result<Measurement, String>) -> String {
    match m {
        Ok(m) => format!(
            "train {:.1} img/s{}, inference {:.1} img/s, {:.0} MiB, {} parameters",
            m.train_img_per_s,
            m.graph_train_img_per_s
                .map_or(String::new(), |g| format!(" ({g:.1} as a CUDA graph)")),
            m.infer_img_per_s,
            m.peak_mem_mb,
            m.params
        ),
        Err(e) => e.clone(),
    }
}

/// The precision actually used; fp16 (loss scaling) is not benchmarked.
fn resolve_precision(p: Precision, device: Device) -> Result<Precision> {
    match amp::resolve(p, device) {
        Precision::Fp16 => anyhow::bail!("--precision fp16 is not benchmarked (the trainer's loss scaling syncs with the host); use bf16"),
        p => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_rounds_keep_the_fastest() {
        let m = |train: f64, infer: f64| Measurement {
            params: 7,
            train_img_per_s: train,
            graph_train_img_per_s: Some(10.0 / train),
            graph_error: None,
            infer_img_per_s: infer,
            peak_mem_mb: train,
            max_allocated_mb: None,
            formulation: String::new(),
            micro_batch: None,
        };
        let best = fastest(Some(Ok(m(2.0, 9.0))), Ok(m(3.0, 5.0))).unwrap();
        assert_eq!((best.train_img_per_s, best.infer_img_per_s, best.peak_mem_mb), (3.0, 9.0, 3.0));
        assert_eq!(best.graph_train_img_per_s, Some(5.0), "each figure keeps its own fastest round");
        assert!(fastest(Some(Ok(m(2.0, 9.0))), Err("killed".into())).is_ok());
        assert!(fastest(None, Err("killed".into())).is_err());
    }

    /// A step that failed as a CUDA graph keeps its eager figures and says why in the note.
    #[test]
    fn a_failed_graph_is_noted_beside_the_eager_figures() {
        let m = Measurement {
            params: 7,
            train_img_per_s: 2.0,
            graph_train_img_per_s: None,
            graph_error: Some("capture failed".into()),
            infer_img_per_s: 4.0,
            peak_mem_mb: 1.0,
            max_allocated_mb: None,
            formulation: String::new(),
            micro_batch: None,
        };
        let ok = Ok(m);
        let (m, note) = measured(&ok, String::new());
        assert_eq!(
            (m.map(|m| m.train_img_per_s), note.as_str()),
            (Some(2.0), "CUDA graph failed: capture failed")
        );
        let (_, note) = measured(&ok, "PARAMETER COUNTS DIFFER".into());
        assert_eq!(note, "PARAMETER COUNTS DIFFER; CUDA graph failed: capture failed");
        let killed = Err("killed".into());
        let (m, note) = measured(&killed, String::new());
        assert!(m.is_none() && note == "killed");
    }
}
