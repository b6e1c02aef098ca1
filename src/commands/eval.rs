//! `pixelseq eval`: score a run's best (or last) checkpoint on a split.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::DeviceArgs;
use crate::data;
use crate::dist::{self, Part};
use crate::run::{open_run, Which};
use crate::train::ddp::evaluate_across;
use crate::train::{memory, progress, EVAL_BATCH};

#[derive(Args)]
pub struct EvalArgs {
    /// Run directory written by `pixelseq train`, or a folder written by `pixelseq export --format hf`.
    #[arg(long)]
    pub run: PathBuf,
    /// Which split to score: test, val or train.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Score only the first N images of the split.
    #[arg(long, value_name = "N")]
    pub limit: Option<i64>,
    /// Score the last checkpoint instead of the best one.
    #[arg(long)]
    pub last: bool,
    /// CIFAR-10 folder, official archive or prepared cache (default: $PIXELSEQ_DATA, then the cache dir).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Score in N worker processes on this machine (one per GPU, or N CPU workers), each a share
    /// of the split; every rank reads the run folder.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
}

pub fn exec(a: EvalArgs) -> Result<()> {
    if let Some(n) = a.limit.filter(|&n| n < 1) {
        bail!("--limit {n}: must be at least 1");
    }
    let Part::Worker { device, member } = dist::join(a.nproc, &a.device.device, a.device.threads)? else {
        return Ok(());
    };
    if member.as_ref().is_some_and(|m| !m.world.is_main()) {
        progress::silence();
    }
    let which = if a.last { Which::Last } else { Which::Best };
    let run = open_run(&a.run, which, device)?;
    let dist = member.map(|m| m.group(run.config.train.backend, device)).transpose()?;
    let dataset = data::load_task(a.data.as_deref(), &run.config.task)?;
    let split = match a.split.as_str() {
        "test" => &dataset.test,
        "val" => &dataset.val,
        "train" => &dataset.train,
        s => bail!("--split {s}: expected test, val or train"),
    }
    .to_device(device);
    let batch = memory::eval_batch(&run.model, &run.vs, run.config.task.input_spec(), EVAL_BATCH, device, run.precision)?;
    let score = evaluate_across(
        dist.as_ref(),
        &run.model,
        &split,
        &run.config.task,
        batch,
        a.limit,
        run.precision,
        &a.split,
        None,
    )?;
    let (loss, acc) = (score.loss, score.acc.expect("open_run builds a classifier"));
    if dist.as_ref().is_some_and(|d| !d.is_main()) {
        return Ok(());
    }
    println!(
        "{}: {which} checkpoint (step {}), {} split: accuracy {:.2}% ({} of {} images), loss {loss:.4}",
        a.run.display(),
        run.state.step,
        a.split,
        100.0 * acc,
        score.correct,
        score.images,
    );
    Ok(())
}
