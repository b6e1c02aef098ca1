//! A run directory: where `train` keeps a run's files, and how `eval` and `predict` open one.
//!
//! ```text
//! RUN_DIR/config.toml           the resolved config
//! RUN_DIR/preset                the preset's name, when started from one
//! RUN_DIR/metrics.jsonl         one line per evaluation
//! RUN_DIR/checkpoints/{best,last}
//! RUN_DIR/result.json           written when the run ends
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::{nn, nn::ModuleT, Device};

use super::checkpoint::{self, State};
use crate::amp::{self, Precision};
use crate::config::RunConfig;

/// The paths of one run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn preset(&self) -> PathBuf {
        self.root.join("preset")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn best(&self) -> PathBuf {
        self.checkpoints().join("best")
    }

    pub fn last(&self) -> PathBuf {
        self.checkpoints().join("last")
    }

    pub fn result(&self) -> PathBuf {
        self.root.join("result.json")
    }

    /// The run's resolved config.
    pub fn load_config(&self) -> Result<RunConfig> {
        RunConfig::load(None, Some(&self.config()), &[]).with_context(|| format!("`{}` is not a run directory", self.root.display()))
    }

    /// The preset the run was started from, if any.
    pub fn preset_name(&self) -> Option<String> {
        std::fs::read_to_string(self.preset()).ok().map(|s| s.trim().to_string())
    }
}

/// Which checkpoint of a run to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Best,
    Last,
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Which::Best => "best",
            Which::Last => "last",
        })
    }
}

/// A trained model, ready to score: the run's config, the model with a checkpoint's weights, that
/// checkpoint's state and the precision the run computes in on `device`.
pub struct OpenRun {
    pub config: RunConfig,
    pub vs: nn::VarStore,
    pub model: Box<dyn ModuleT>,
    pub state: State,
    pub precision: Precision,
}

/// Builds the model of the run in `dir` on `device` and loads its `which` checkpoint; `dir` may
/// also be an exported model folder (`train::exported`).
pub fn open_run(dir: &Path, which: Which, device: Device) -> Result<OpenRun> {
    if super::exported::is_exported(dir) {
        return super::exported::open(dir, which, device);
    }
    let run = RunDir::new(dir);
    let config = run.load_config()?;
    let mut vs = nn::VarStore::new(device);
    let model = config.model.build(&vs.root(), &config.task.input_spec())?;
    let path = match which {
        Which::Best => run.best(),
        Which::Last => run.last(),
    };
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
