//! The TensorBoard curves of a run (`train.tensorboard`, on by default): an events file in the
//! run folder (see [`crate::tensorboard`]) with
//!
//! - `train/loss`, `train/acc` (mean over the steps since the last point), `lr/<group>` (each
//!   optimizer group's learning rate: `lr/decay`, `lr/no-decay`, `lr/ssm`) and `img_per_s`
//!   (training images per second over those steps: the time between steps, evaluations
//!   excluded), every [`LOG_EVERY`] steps and at each evaluation;
//! - `val/loss`, `val/acc` at each evaluation, `test/acc` (the best checkpoint's) at the end;
//! - the resolved config as text (`config`) at step 0.
//!
//! An evaluation's points are written before its checkpoint (as its `metrics.jsonl` line). A
//! resumed run continues in a new events file from its checkpoint's step, after removing from
//! the earlier files every point past that step (and a finished run's test point): the steps it
//! redoes are written once, and TensorBoard shows one curve.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use tch::Device;

use super::optim::AdamW;
use super::progress::Tally;
use super::step::Outcome;
use crate::config::RunConfig;
use crate::tensorboard::{self, EventWriter};

/// Steps between two points of the training curves.
pub const LOG_EVERY: u64 = 50;

/// The tag of the test accuracy.
const TEST: &str = "test/acc";

/// Writes a run's TensorBoard points; does nothing when `train.tensorboard` is off.
pub struct Board {
    writer: Option<EventWriter>,
    /// The learning rate of each non-empty optimizer group at the last step, by label.
    lrs: Vec<(&'static str, f64)>,
    tally: Tally,
    device: Device,
    /// Images and seconds of training since the last training point.
    images: i64,
    seconds: f64,
    last_step_end: Instant,
}

impl Board {
    /// Opens the run's events for training from `step`: a new run starts afresh (removing any
    /// events file an unfinished run left) with the config; a resumed one drops the points
    /// after `step`.
    /// `dir`: the run folder (`None` on a rank of a data-parallel run that does not write it);
    /// `classifies`: whether the steps classify (a pretrainer's have no accuracy to log).
    pub fn open(dir: Option<&Path>, cfg: &RunConfig, step: u64, resumed: bool, device: Device, classifies: bool) -> Result<Board> {
        let writer = if let (true, Some(dir)) = (cfg.train.tensorboard, dir) {
            if resumed {
                // The test point of a finished run is written again when it is resumed.
                tensorboard::retain(dir, |s, tags| s <= step && !tags.iter().any(|t| t == TEST))?;
            } else {
                tensorboard::remove_all(dir)?;
            }
            let mut writer = EventWriter::create(dir)?;
            if !resumed {
                let text: String = cfg.to_toml().lines().map(|l| format!("    {l}\n")).collect();
                writer.text(0, "config", &text)?;
            }
            Some(writer)
        } else {
            None
        };
        Ok(Board {
            writer,
            lrs: Vec::new(),
            tally: Tally::new(device, classifies),
            device,
            images: 0,
            seconds: 0.0,
            last_step_end: Instant::now(),
        })
    }

    /// After optimizer step `step` (1-based) of `opt` over `images` images: writes the training
    /// point, with the learning rates the step took, every [`LOG_EVERY`] steps.
    pub fn step(&mut self, step: u64, out: &Outcome, images: i64, opt: &AdamW) -> Result<()> {
        if self.writer.is_none() {
            return Ok(());
        }
        self.tally.add(out, images);
        self.images += images;
        self.seconds += self.last_step_end.elapsed().as_secs_f64();
        self.last_step_end = Instant::now();
        self.lrs = opt.applied().to_vec();
        if step.is_multiple_of(LOG_EVERY) {
            self.train_point(step)?;
        }
        Ok(())
    }

    /// After the evaluation at `step`: the training point (if steps are pending) and the
    /// validation point. The evaluation's time does not count as training time.
    pub fn evaluation(&mut self, step: u64, val_loss: f64, val_acc: Option<f64>) -> Result<()> {
        if self.images > 0 {
            self.train_point(step)?;
        }
        self.last_step_end = Instant::now();
        let mut values = vec![("val/loss", val_loss)];
        values.extend(val_acc.map(|a| ("val/acc", a)));
        match &mut self.writer {
            Some(w) => w.scalars(step, &values),
            None => Ok(()),
        }
    }

    /// The test accuracy of the best checkpoint, at the run's last step.
    pub fn test(&mut self, step: u64, test_acc: f64) -> Result<()> {
        match &mut self.writer {
            Some(w) => w.scalars(step, &[(TEST, test_acc)]),
            None => Ok(()),
        }
    }

    fn train_point(&mut self, step: u64) -> Result<()> {
        let Some(w) = &mut self.writer else { return Ok(()) };
        let (loss, acc) = self.tally.means();
        let lrs: Vec<(String, f64)> = self.lrs.iter().map(|(label, lr)| (format!("lr/{label}"), *lr)).collect();
        let mut values = vec![("train/loss", loss)];
        values.extend(acc.map(|a| ("train/acc", a)));
        values.push(("img_per_s", self.images as f64 / self.seconds.max(1e-9)));
        values.extend(lrs.iter().map(|(tag, lr)| (tag.as_str(), *lr)));
        w.scalars(step, &values)?;
        self.tally = Tally::new(self.device, self.tally.classifies());
        (self.images, self.seconds) = (0, 0.0);
        Ok(())
    }
}
