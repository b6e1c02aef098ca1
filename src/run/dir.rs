//! A run directory: where `train` keeps a run's files, and what `eval` and `predict` get when
//! they open one ([`super::open`]).
//!
//! ```text
//! RUN_DIR/config.toml           the resolved config
//! RUN_DIR/preset                the preset's name, when started from one
//! RUN_DIR/metrics.jsonl         one line per evaluation
//! RUN_DIR/checkpoints/{best,last}
//! RUN_DIR/result.json           written when the run ends
//! RUN_DIR/.lock                 held (flock) by the one process writing the run
//! ```
//!
//! One writer per run: `train` and `train --resume` hold the run's lock for as long as they run,
//! and a second writer is refused. A new run starts only in a missing or empty folder, so
//! nothing of anyone else's is overwritten; `eval` and `predict` only read.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tch::nn;

use super::checkpoint::{self, State};
use crate::amp::Precision;
use crate::config::RunConfig;
use crate::objective::Learner;

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

    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }

    /// Refuses a folder a new run cannot start in: one holding a run, or anyone's files. A
    /// missing or empty folder is fine (its lock file and pixelseq's temporaries aside).
    pub fn check_new_run(&self) -> Result<()> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot use `{}` as a run directory", self.root.display())),
        };
        let lock = self.lock_file();
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path() != lock)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !crate::files::is_temp_name(n))
            .collect();
        names.sort();
        let d = self.root.display();
        if [self.config(), self.checkpoints(), self.metrics()].iter().any(|p| p.exists()) {
            bail!("run directory `{d}` already holds a run; pass --resume {d} to continue it, or choose another --out");
        }
        if let Some(first) = names.first() {
            bail!("`{d}` is not empty (it holds `{first}`) and is not a pixelseq run; choose another --out (a run never writes among other files)");
        }
        Ok(())
    }

    /// Takes the run's lock (creating the folder if needed) for as long as the returned guard
    /// lives; refused while another process holds it.
    pub fn lock(&self) -> Result<RunLock> {
        let d = self.root.display();
        std::fs::create_dir_all(&self.root).with_context(|| format!("failed to create run directory `{d}`"))?;
        let path = self.lock_file();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("failed to open the lock file `{}`", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (process {pid})"),
                };
                bail!("run directory `{d}` is in use by another pixelseq command{holder}; wait for it to end, or choose another --out");
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("failed to lock `{}`", path.display())),
        }
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .with_context(|| format!("failed to write the lock file `{}`", path.display()))?;
        Ok(RunLock { _file: file })
    }

    /// The run's resolved config.
    pub fn load_config(&self) -> Result<RunConfig> {
        if let Some(why) = self.not_a_run() {
            bail!("{why}");
        }
        crate::files::check_regular(&self.config())?;
        RunConfig::load(None, Some(&self.config()), &[]).with_context(|| format!("`{}` is not a run directory", self.root.display()))
    }

    /// Why this path is no run directory, in one line naming what it is and what it lacks; `None`
    /// when it has a config.toml (or something in its place, which the reader then refuses).
    pub fn not_a_run(&self) -> Option<String> {
        use super::exported::{CONFIG, WEIGHTS};
        let root = self.root.display();
        let has = |name: &str| self.root.join(name).symlink_metadata().is_ok();
        if self.config().symlink_metadata().is_ok() {
            return None;
        }
        Some(if self.root.symlink_metadata().is_err() {
            format!("`{root}` does not exist")
        } else if !self.root.is_dir() {
            format!("`{root}` is a file, not a run directory (a folder written by `pixelseq train` or `pixelseq pretrain`)")
        } else {
            match (has(CONFIG), has(WEIGHTS)) {
                (true, false) => format!("`{root}` is an exported model folder without its {WEIGHTS}; export the run again"),
                (false, true) => format!("`{root}` has {WEIGHTS} but neither the {CONFIG} of an exported folder nor the config.toml of a run"),
                (true, true) => match [CONFIG, WEIGHTS].iter().find_map(|f| crate::files::check_regular(&self.root.join(f)).err()) {
                    Some(e) => format!("{e:#}"),
                    None => format!("`{root}` is an exported model folder, not a run directory: `eval`, `predict` and `export` take it, a run cannot continue or start from it"),
                },
                (false, false) => format!("`{root}` is not a run directory: it has no config.toml (a folder written by `pixelseq train` or `pixelseq pretrain`, or {CONFIG} and {WEIGHTS} written by `pixelseq export --format hf`)"),
            }
        })
    }

    /// The preset the run was started from, if any.
    pub fn preset_name(&self) -> Option<String> {
        crate::files::read_regular_to_string(&self.preset())
            .ok()
            .map(|s| s.trim().to_string())
    }
}

/// A run's lock, held until dropped (the lock file stays; the lock goes with its handle, also
/// when the process dies).
pub struct RunLock {
    _file: std::fs::File,
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

impl RunDir {
    /// The config that `--resume` continues this run with: its config.toml with `overrides`
    /// (budget flags and `--set`) applied, and for `pixelseq pretrain` (`pretrain`) its
    /// pretraining stage. Refused: a change of the model, the task or the start, and a run of the
    /// other subcommand.
    pub fn resume_config(&self, overrides: &[String], pretrain: bool) -> Result<RunConfig> {
        let recorded = self.load_config()?;
        let cfg = RunConfig::load(None, Some(&self.config()), overrides)
            .with_context(|| format!("`{}` is not a run directory", self.root.display()))?;
        self.check_resume_changes(&recorded, &cfg)?;
        self.check_resume_kind(pretrain)?;
        if !pretrain {
            return Ok(cfg);
        }
        let stage = cfg.for_pretraining()?;
        stage.check_pretraining_stage()?;
        Ok(stage)
    }

    /// A run resumes with the command that started it: a pretraining run's checkpoints hold a
    /// backbone and its reconstruction head, a training run's a classifier.
    fn check_resume_kind(&self, pretrain: bool) -> Result<()> {
        let run = self;
        let Ok(state) = checkpoint::verify(&run.last()) else {
            return Ok(());
        };
        match (state.best_val_loss.is_some(), pretrain) {
            (true, false) => bail!(
                "`{}` is a self-pretraining run; continue it with `pixelseq pretrain --resume {}`",
                run.root.display(),
                run.root.display()
            ),
            (false, true) => bail!(
                "`{}` is a training run; continue it with `pixelseq train --resume {}`",
                run.root.display(),
                run.root.display()
            ),
            _ => Ok(()),
        }
    }

    /// `--set` (and budget flags) given with `--resume`: a change of the model or the task would not
    /// fit the run's checkpoints and is refused, naming the keys; any other change (budget, optimizer,
    /// schedule) is printed and recorded in the run's config.toml when the run starts.
    fn check_resume_changes(&self, recorded: &RunConfig, cfg: &RunConfig) -> Result<()> {
        let run = self;
        let changes = recorded.differences(cfg);
        let describe = |c: &[&(String, String, String)]| {
            c.iter()
                .map(|(k, old, new)| format!("{k} {old} → {new}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let fixed: Vec<_> = changes
            .iter()
            .filter(|(k, _, _)| k.starts_with("model.") || k.starts_with("task.") || k == "train.init")
            .collect();
        if !fixed.is_empty() {
            bail!(
                "--resume cannot change the model, the task or the start (train.init) of a run; these differ from `{}`: {}",
                run.config().display(),
                describe(&fixed)
            );
        }
        if !changes.is_empty() {
            eprintln!(
                "resuming with changes, recorded in {}: {}",
                run.config().display(),
                describe(&changes.iter().collect::<Vec<_>>())
            );
        }
        Ok(())
    }

    /// `base`, or `base-2`, `base-3`, … if it exists.
    pub fn unique(base: PathBuf) -> PathBuf {
        if !base.exists() {
            return base;
        }
        (2..)
            .map(|i| PathBuf::from(format!("{}-{i}", base.display())))
            .find(|p| !p.exists())
            .expect("a free name exists")
    }
}

/// A trained model, ready to score: the run's config, the model with a checkpoint's weights, that
/// checkpoint's state and the precision the run computes in on `device`.
pub struct OpenRun {
    pub config: RunConfig,
    pub vs: nn::VarStore,
    /// The classifier.
    pub model: Learner,
    pub state: State,
    pub precision: Precision,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two writers of one run: the second is refused while the first holds the lock.
    #[test]
    fn one_writer_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("run"));
        let held = run.lock().unwrap();
        let err = format!("{:#}", run.lock().err().expect("a second lock is refused"));
        assert!(
            err.contains("in use by another pixelseq command") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        run.lock().unwrap();
        run.check_new_run().unwrap();
    }

    #[test]
    fn a_new_run_needs_a_missing_or_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        run.check_new_run().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let err = run.check_new_run().unwrap_err().to_string();
        assert!(
            err.contains("not empty (it holds `notes.txt`)") && err.contains("not a pixelseq run"),
            "{err}"
        );
        std::fs::write(run.config(), b"").unwrap();
        let err = run.check_new_run().unwrap_err().to_string();
        assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");
    }
}
