//! The training loop: one visible loop over optimizer steps, evaluation at an interval,
//! checkpoints, metrics, and the test score of the best validation checkpoint at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tch::{nn, nn::ModuleT, Device};

use super::checkpoint::{self, State};
use super::ddp::Peers;
use super::eval::EVAL_BATCH;
use super::memory;
use super::optim::AdamW;
use super::progress::{self, clock, Progress, Tally};
use super::records::{today, truncate_metrics, Metrics, RunRecord};
use super::run_dir::RunDir;
use super::sampler::Sampler;
use super::schedule;
use super::step::{train_step_synced, LossScaler, Settings};
use crate::amp::{self, Precision};
use crate::config::RunConfig;
use crate::data::Dataset;
use crate::dist::Dist;
use crate::models::param_count;
use crate::{device, files};

/// `eprintln!` in the process that prints: the only one, or rank 0 of a data-parallel run.
macro_rules! say {
    ($($arg:tt)*) => {
        if progress::shown() {
            eprintln!($($arg)*);
        }
    };
}

/// How a run is carried out (not part of the recorded config).
pub struct Options {
    pub device: Device,
    pub dir: PathBuf,
    /// Continue from the run directory's last checkpoint.
    pub resume: bool,
    /// Preset name, for the record.
    pub preset: Option<String>,
}

/// The sizes of a run, derived from its config and the training split.
struct Plan {
    batch_size: i64,
    /// Images per forward/backward pass (see `train::memory`).
    micro_batch: i64,
    steps_per_epoch: u64,
    total: u64,
    eval_every: u64,
    eval_batch: i64,
    /// Validation images per evaluation during training (`None`: all).
    val_limit: Option<i64>,
}

impl Plan {
    fn new(cfg: &RunConfig, n_train: i64) -> Plan {
        let t = &cfg.train;
        let batch_size = t.batch_size.min(n_train);
        let steps_per_epoch = (n_train / batch_size) as u64;
        let eval_batch = if t.eval_batch_size > 0 {
            t.eval_batch_size
        } else {
            batch_size.max(EVAL_BATCH)
        };
        Plan {
            batch_size,
            micro_batch: batch_size,
            steps_per_epoch,
            total: t.max_steps.unwrap_or(t.epochs * steps_per_epoch),
            eval_every: if t.eval_every == 0 { steps_per_epoch } else { t.eval_every },
            eval_batch,
            val_limit: (t.eval_batches > 0).then(|| t.eval_batches * eval_batch),
        }
    }

    fn epoch(&self, step: u64) -> f64 {
        step as f64 / self.steps_per_epoch as f64
    }
}

/// Everything the loop carries from step to step.
struct Trainer<'a> {
    cfg: &'a RunConfig,
    data: &'a Dataset,
    dir: RunDir,
    plan: Plan,
    precision: Precision,
    vs: nn::VarStore,
    model: Box<dyn ModuleT>,
    opt: AdamW,
    scaler: LossScaler,
    state: State,
    started: Instant,
    /// Images per second of the last evaluation pass.
    eval_img_per_s: Option<f64>,
    deadline: Option<Duration>,
    peers: Peers<'a>,
}

/// Trains `cfg` on `data` in `opts.dir`, then scores the best checkpoint on the test split.
pub fn run(cfg: &RunConfig, data: &Dataset, opts: &Options) -> Result<RunRecord> {
    run_with(cfg, data, opts, None)
}

/// [`run`], as one rank of the data-parallel run `dist` when given (see `train::ddp`).
pub fn run_with(cfg: &RunConfig, data: &Dataset, opts: &Options, dist: Option<&Dist>) -> Result<RunRecord> {
    let mut tr = Trainer::start(cfg, data, opts, dist)?;
    let (plan, t) = (&tr.plan, &cfg.train);
    let mut sampler = Sampler::new(t.seed, plan.batch_size, plan.steps_per_epoch, t.mixup, t.cutmix);
    if let Some(d) = dist {
        sampler = sampler.shard(d.world.rank, d.world.size);
    }
    let mut progress = Progress::new(plan.steps_per_epoch, plan.total);
    let mut tally = Tally::new(opts.device);
    let mut step = tr.state.step;
    let mut stopped_early = false;
    while step < tr.plan.total {
        let batch = sampler.batch(step, &data.train, &cfg.task);
        let lr_factor = schedule::factor(&cfg.schedule, step, tr.plan.total, tr.plan.steps_per_epoch);
        let settings = Settings {
            precision: tr.precision,
            label_smoothing: cfg.optim.label_smoothing,
            clip_norm: cfg.optim.clip_norm,
            lr_factor,
            micro_batch: tr.plan.micro_batch,
        };
        let out = train_step_synced(tr.model.as_ref(), &mut tr.opt, &batch, &settings, &mut tr.scaler, tr.peers.grads())?;
        tally.add(&out, batch.len());
        step += 1;
        // A CPU step waits for its result anyway; on CUDA, reading the loss every step would stall the queue.
        if !opts.device.is_cuda() || step.is_multiple_of(50) {
            tr.check_finite(out.loss.double_value(&[]), step)?;
        }
        let lr = cfg.optim.lr * lr_factor;
        progress.step(step, &tally, lr, tr.started.elapsed().as_secs_f64(), tr.time_left(step, &tally));
        // Every rank stops at the same step: the ranks vote when a time budget is set.
        let out_of_time = tr.deadline.is_some() && tr.peers.any(tr.out_of_time(&tally))?;
        if step.is_multiple_of(tr.plan.eval_every) || step == tr.plan.total || out_of_time {
            progress.clear();
            tr.evaluate_and_save(step, lr, &tally)?;
            tally = Tally::new(opts.device);
            if out_of_time && step < tr.plan.total {
                say!(
                    "time budget of {} minutes spent; stopping at step {step}",
                    t.max_minutes.unwrap_or_default()
                );
                stopped_early = true;
                break;
            }
        }
    }
    progress.clear();
    tr.finish(opts, stopped_early)
}

impl<'a> Trainer<'a> {
    /// Writes the config (new run) or loads the last checkpoint (`--resume`), builds the model
    /// and the optimizer, and prints what the run will do.
    fn start(cfg: &'a RunConfig, data: &'a Dataset, opts: &Options, dist: Option<&'a Dist>) -> Result<Trainer<'a>> {
        let dir = RunDir::new(&opts.dir);
        let main = dist.is_none_or(Dist::is_main);
        if main {
            std::fs::create_dir_all(&dir.root).with_context(|| format!("failed to create run directory `{}`", dir.root.display()))?;
        }
        if main && !opts.resume {
            if dir.checkpoints().exists() {
                bail!(
                    "run directory `{}` already holds a run; pass --resume {} to continue it, or choose another --out",
                    dir.root.display(),
                    dir.root.display()
                );
            }
            files::write_bytes(&dir.config(), cfg.to_toml().as_bytes())?;
        }
        let precision = amp::resolve(cfg.train.precision, opts.device);
        let mut plan = Plan::new(cfg, data.train.len());

        tch::manual_seed(cfg.train.seed as i64);
        let mut vs = nn::VarStore::new(opts.device);
        let model = cfg.model.build(&vs.root(), &cfg.task.input_spec())?;
        let mut opt = AdamW::new(&vs, &cfg.optim)?;
        let mut scaler = LossScaler::new(precision);
        let mut state = State::new(&scaler);
        let peers = Peers::new(dist, &vs)?;
        state.world_size = peers.world();
        if opts.resume {
            state = peers
                .load(&dir.last(), &mut vs, Some(&mut opt))
                .with_context(|| format!("cannot resume `{}`", dir.root.display()))?;
            state.restore(&mut scaler);
            if main {
                truncate_metrics(&dir.metrics(), state.step)?;
            }
            say!(
                "resuming at step {} of {} (best val {:.2}% at step {})",
                state.step,
                plan.total,
                100.0 * state.best_val_acc,
                state.best_step
            );
        } else {
            peers.sync(&vs, Some(&opt))?;
            if main && dir.metrics().exists() {
                std::fs::remove_file(dir.metrics())?;
            }
        }
        let input = cfg.task.input_spec();
        let memory = memory::plan(
            model.as_ref(),
            &vs,
            input,
            peers.share(plan.batch_size)?,
            plan.eval_batch,
            cfg.train.micro_batch,
            opts.device,
            precision,
        )?;
        // A resumed run keeps the micro-batch it started with: dropout masks are drawn part by part.
        plan.micro_batch = if state.micro_batch > 0 {
            state.micro_batch
        } else {
            peers.min(memory.micro_batch)?
        };
        state.micro_batch = plan.micro_batch;
        plan.eval_batch = memory.eval_batch;
        if !opts.device.is_cuda() && cfg.train.eval_batch_size == 0 {
            // On a CPU a larger batch is not faster, and evaluation passes no larger than the
            // training micro-batch reuse the caching allocator's blocks instead of faulting in new ones.
            plan.eval_batch = plan.eval_batch.min(plan.micro_batch);
        }
        say!(
            "{} on {} | {} parameters | {} train / {} val / {} test images | batch {}, {} steps ({} per epoch) | {:?}, {precision}",
            cfg.model.name(),
            cfg.task.name,
            param_count(&vs),
            data.train.len(),
            data.val.len(),
            data.test.len(),
            plan.batch_size,
            plan.total,
            plan.steps_per_epoch,
            opts.device
        );
        for line in opt.describe().into_iter().chain(peers.describe()) {
            say!("  {line}");
        }
        say!("  {}", memory.note);
        let started = Instant::now() - Duration::from_secs_f64(state.elapsed_s);
        Ok(Trainer {
            eval_img_per_s: None,
            deadline: cfg.train.max_minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
            cfg,
            data,
            dir,
            plan,
            precision,
            vs,
            model,
            opt,
            scaler,
            state,
            started,
            peers,
        })
    }

    /// Seconds the validation pass at a stop and the final test pass take: at the speed of the
    /// last evaluation, or before the first at twice the training speed (an evaluation pass has
    /// no backward pass and larger batches).
    fn final_passes_s(&self, tally: &Tally) -> f64 {
        let train_ips = self.train_ips(tally).unwrap_or_else(|| self.state.throughput(self.plan.batch_size));
        let eval_ips = self.eval_img_per_s.unwrap_or(2.0 * train_ips).max(1e-9);
        (self.val_images() + self.data.test.len()) as f64 / eval_ips
    }

    fn val_images(&self) -> i64 {
        self.plan.val_limit.map_or(self.data.val.len(), |l| l.min(self.data.val.len()))
    }

    /// Whether the time budget (`train.max_minutes`, the whole run) leaves no room for another
    /// step before the final validation and test passes.
    fn out_of_time(&self, tally: &Tally) -> bool {
        self.deadline
            .is_some_and(|d| self.started.elapsed().as_secs_f64() + self.final_passes_s(tally) >= d.as_secs_f64())
    }

    /// Estimated seconds to the run's end after `step`: the steps left, the evaluations due and
    /// the test pass, or the time budget left if that ends it first.
    fn time_left(&self, step: u64, tally: &Tally) -> f64 {
        let plan = &self.plan;
        let Some(train_ips) = self.train_ips(tally) else { return 0.0 };
        let steps_left = plan.total.saturating_sub(step);
        let evals_left = plan.total / plan.eval_every - step / plan.eval_every;
        let eval_ips = self.eval_img_per_s.unwrap_or(2.0 * train_ips).max(1e-9);
        let left = (steps_left * plan.batch_size as u64) as f64 / train_ips
            + (evals_left as i64 * self.val_images() + self.data.test.len()) as f64 / eval_ips;
        match self.deadline {
            Some(d) => left.min((d.as_secs_f64() - self.started.elapsed().as_secs_f64()).max(0.0)),
            None => left,
        }
    }

    /// Training images per second of all ranks together since the tally started (each rank
    /// counts its share).
    fn train_ips(&self, tally: &Tally) -> Option<f64> {
        tally.img_per_s().map(|ips| ips * self.peers.world() as f64)
    }

    /// Stops the run on a non-finite training loss, naming the checkpoint it keeps.
    fn check_finite(&self, loss: f64, step: u64) -> Result<()> {
        if loss.is_finite() {
            return Ok(());
        }
        bail!(
            "loss became {loss} at step {step}; stopped. The last good checkpoint (step {}) is kept in `{}`",
            self.state.step,
            self.dir.last().display()
        )
    }

    /// Scores the validation split, appends a metrics line, saves `best` (when improved) and
    /// `last`, and prints the evaluation line.
    fn evaluate_and_save(&mut self, step: u64, lr: f64, tally: &Tally) -> Result<()> {
        let (train_loss, train_acc) = self.peers.tally(tally)?;
        self.state.train_s += tally.seconds();
        self.check_finite(train_loss, step)?;
        let plan = &self.plan;
        self.peers.sync(&self.vs, None)?;
        let val = self.peers.evaluate(
            self.model.as_ref(),
            &self.data.val,
            &self.cfg.task,
            plan.eval_batch,
            plan.val_limit,
            self.precision,
            "validation",
        )?;
        self.eval_img_per_s = Some(val.img_per_s);
        let (val_loss, val_acc) = (val.loss, val.acc);
        let state = &mut self.state;
        state.step = step;
        state.t = self.opt.t;
        state.save_scaler(&self.scaler);
        state.elapsed_s = self.started.elapsed().as_secs_f64();
        let improved = val_acc > state.best_val_acc;
        if improved {
            state.best_val_acc = val_acc;
            state.best_step = step;
        }
        let m = Metrics {
            step,
            epoch: plan.epoch(step),
            lr,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            img_per_s: state.throughput(plan.batch_size),
            wall_s: state.elapsed_s,
        };
        // `last` is written last: a run killed before it resumes from the previous `last`,
        // drops this metrics line (truncate_metrics) and redoes the steps, rewriting `best`
        // alike; written first, it would leave a step without its line or its best weights.
        if !self.peers.main() {
            return Ok(());
        }
        files::append_line(&self.dir.metrics(), &serde_json::to_string(&m)?)?;
        if improved {
            checkpoint::save(&self.dir.best(), &self.vs, None, state)?;
        }
        checkpoint::save(&self.dir.last(), &self.vs, Some(&self.opt), state)?;
        eprintln!(
            "step {step}/{} epoch {:.2} lr {lr:.2e} | train loss {train_loss:.4} acc {:.2}% | val loss {val_loss:.4} acc {:.2}%{} | {:.0} img/s | {}",
            plan.total,
            m.epoch,
            100.0 * train_acc,
            100.0 * val_acc,
            if improved { " *" } else { "" },
            m.img_per_s,
            clock(state.elapsed_s)
        );
        Ok(())
    }

    /// Scores the best checkpoint on the test split and writes `result.json`.
    fn finish(mut self, opts: &Options, stopped_early: bool) -> Result<RunRecord> {
        let best = self
            .peers
            .load(&self.dir.best(), &mut self.vs, None)
            .context("no best checkpoint to test")?;
        let test = self.peers.evaluate(
            self.model.as_ref(),
            &self.data.test,
            &self.cfg.task,
            self.plan.eval_batch,
            None,
            self.precision,
            "test",
        )?;
        let (test_loss, test_acc) = (test.loss, test.acc);
        say!(
            "test accuracy {:.2}% (best val {:.2}% at step {}){}",
            100.0 * test_acc,
            100.0 * best.best_val_acc,
            best.best_step,
            if stopped_early { ", stopped early by the time budget" } else { "" }
        );
        let (cfg, state) = (self.cfg, &self.state);
        let record = RunRecord {
            preset: opts.preset.clone(),
            model: cfg.model.name().to_string(),
            task: cfg.task.name.to_string(),
            paper_figure: cfg.paper.as_ref().and_then(|p| p.figure),
            paper_setting: cfg.paper.as_ref().map(|p| p.setting.clone()),
            best_val_acc: state.best_val_acc,
            best_step: state.best_step,
            test_acc,
            test_loss,
            params: param_count(&self.vs),
            steps: state.step,
            epochs: self.plan.epoch(state.step),
            img_per_s: state.throughput(self.plan.batch_size),
            device: device::name(opts.device),
            precision: self.precision,
            wall_s: self.started.elapsed().as_secs_f64(),
            seed: cfg.train.seed,
            micro_batch: self.plan.micro_batch,
            world_size: self.peers.world(),
            commit: env!("PIXELSEQ_COMMIT").to_string(),
            date: today(),
        };
        if self.peers.main() {
            files::write_bytes(&self.dir.result(), serde_json::to_string_pretty(&record)?.as_bytes())?;
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::train::step::train_step;
    use tch::{Kind, Tensor};

    const TINY: &str = r#"
[task]
name = "lra-image"
crop = true
flip = true

[model]
name = "transformer"
d_model = 16
n_heads = 2
qkv_dim = 16
mlp_dim = 16

[optim]
lr = 3e-3
weight_decay = 0.1
clip_norm = 1.0
label_smoothing = 0.1

[schedule]
kind = "cosine"
warmup_steps = 2

[train]
batch_size = 4
max_steps = 5
eval_every = 5
mixup = 0.4
seed = 7
"#;

    fn split(n: i64) -> Split {
        Split {
            images: Tensor::randint(256, [n, 1, 32, 32], (Kind::Uint8, Device::Cpu)),
            labels: Tensor::randint(10, [n], (Kind::Int64, Device::Cpu)),
        }
    }

    /// The loop's update is exactly `step::train_step` (the step `bench` times) on the sampler's
    /// batches at the schedule's learning rates: driving the step by hand from the same seed ends
    /// with the weights the trainer saved.
    #[test]
    fn the_loop_is_the_shared_step() {
        tch::manual_seed(0);
        let data = Dataset {
            train: split(12),
            val: split(4),
            test: split(4),
        };
        let cfg = RunConfig::from_toml_str(TINY, "test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            device: Device::Cpu,
            dir: dir.path().join("run"),
            resume: false,
            preset: None,
        };
        run(&cfg, &data, &opts).unwrap();

        tch::manual_seed(cfg.train.seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = cfg.model.build(&vs.root(), &cfg.task.input_spec()).unwrap();
        let mut opt = AdamW::new(&vs, &cfg.optim).unwrap();
        let mut scaler = LossScaler::new(Precision::Fp32);
        let plan = Plan::new(&cfg, data.train.len());
        let mut sampler = Sampler::new(cfg.train.seed, plan.batch_size, plan.steps_per_epoch, cfg.train.mixup, 0.0);
        for step in 0..plan.total {
            let batch = sampler.batch(step, &data.train, &cfg.task);
            let settings = Settings {
                precision: Precision::Fp32,
                label_smoothing: cfg.optim.label_smoothing,
                clip_norm: cfg.optim.clip_norm,
                lr_factor: schedule::factor(&cfg.schedule, step, plan.total, plan.steps_per_epoch),
                micro_batch: plan.micro_batch,
            };
            train_step(model.as_ref(), &mut opt, &batch, &settings, &mut scaler).unwrap();
        }
        let saved = Tensor::read_safetensors(dir.path().join("run/checkpoints/last/model.safetensors")).unwrap();
        let ours = vs.variables();
        assert_eq!(saved.len(), ours.len());
        for (name, t) in saved {
            assert!(t.equal(&ours[&name]), "{name} differs from the hand-driven steps");
        }
    }
}
