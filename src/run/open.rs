//! Opening a trained model to score it (`eval`, `predict`, `export`): a run directory's best or
//! last checkpoint, or an exported model folder.

use std::path::Path;

use anyhow::{bail, Result};
use tch::{nn, Device};

use super::checkpoint;
use super::dir::{OpenRun, RunDir, Which};
use super::exported;
use crate::amp;
use crate::objective::Learner;

/// Builds the model of the run in `dir` on `device` and loads its `which` checkpoint; `dir` may
/// also be an exported model folder ([`super::exported`]).
pub fn open_run(dir: &Path, which: Which, device: Device) -> Result<OpenRun> {
    if exported::is_exported(dir) {
        return exported::open(dir, which, device);
    }
    let run = RunDir::new(dir);
    let config = run.load_config()?;
    let path = match which {
        Which::Best => run.best(),
        Which::Last => run.last(),
    };
    if checkpoint::verify(&path)?.best_val_loss.is_some() {
        bail!(
            "`{}` is a self-pretraining run: it has no classifier to score; fine-tune it with `pixelseq train --init {}`",
            dir.display(),
            dir.display()
        );
    }
    let mut vs = nn::VarStore::new(device);
    let model = Learner::Classifier(config.model.build(&vs.root(), &config.task.input_spec())?);
    let state = checkpoint::load(&path, &mut vs, None)?;
    let precision = amp::resolve(config.train.precision, device);
    Ok(OpenRun {
        config,
        vs,
        model,
        state,
        precision,
    })
}
