//! The training loop: one visible loop over optimizer steps, evaluation at an interval,
//! checkpoints, metrics, and the test score of the best validation checkpoint at the end. The
//! same loop self-pretrains (`pixelseq pretrain`): then the learner reconstructs pixels and the
//! best checkpoint is the one of lowest validation reconstruction loss.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use super::board::Board;
use super::ddp::{evaluate_across, Peers};
use super::eval::evaluate;
use super::graph::{self, InferenceGraphs, StepGraph};
use super::memory;
use super::optim::AdamW;
use super::plan::{fitted_total, Plan, Speeds};
use super::progress::{self, clock, Progress, Tally};
use super::sampler::Sampler;
use super::schedule;
use super::step::{train_step_synced, LossScaler, Settings};
use crate::amp::{self, Precision};
use crate::config::{InitCheckpoint, RunConfig};
use crate::data::Dataset;
use crate::dist::{Dist, Member};
use crate::models::pretrain::Pretrainer;
use crate::models::{param_count, ModelConfig};
use crate::objective::Learner;
use crate::run::checkpoint::{self, State};
use crate::run::dir::{RunDir, RunLock};
use crate::run::records::{today, truncate_metrics, Metrics, PretrainResult, RunRecord};
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
    /// Continue from the run directory's last checkpoint; `cfg` is written over its config.toml
    /// (the caller refuses changes of the model or the task).
    pub resume: bool,
    /// Preset name, for the record.
    pub preset: Option<String>,
    /// Self-pretrain the model's backbone (`cfg.pretrain`) instead of training the classifier.
    pub pretrain: bool,
}

/// An evaluation pass's speed and the training speed measured just before it: the final passes'
/// time is re-estimated at every step as the evaluation speed scaled by how the training speed
/// has changed since, so a machine whose load changes keeps its budget.
#[derive(Debug, Clone, Copy)]
struct EvalSpeed {
    img_per_s: f64,
    /// `None`: no training speed was known yet (the batch timed before the first step).
    train_img_per_s: Option<f64>,
}

/// Seconds of training a speed must be measured over before the budget is re-estimated from it:
/// one slow step (a busy moment) must not end a run.
const SPEED_WINDOW_S: f64 = 2.0;

/// Everything the loop carries from step to step.
struct Trainer<'a> {
    cfg: &'a RunConfig,
    data: &'a Dataset,
    dir: RunDir,
    plan: Plan,
    precision: Precision,
    vs: nn::VarStore,
    learner: Learner,
    opt: AdamW,
    scaler: LossScaler,
    state: State,
    /// The step of the newest checkpoint in `last` (`None`: none yet).
    saved: Option<u64>,
    started: Instant,
    /// The speed of the last evaluation pass (or of the one batch timed at the start of a run
    /// with a time budget), against which the final passes are re-estimated at every step.
    eval_speed: Option<EvalSpeed>,
    deadline: Option<Duration>,
    /// Held for the whole run by the process that writes the run folder: one writer per run.
    _lock: Option<RunLock>,
    board: Board,
    peers: Peers<'a>,
    /// The training step captured as a CUDA graph (`train.cuda_graphs`); `None`: eager steps.
    graph: Option<StepGraph>,
    /// The evaluation passes' graphs, with `graph`.
    eval_graphs: Option<InferenceGraphs>,
}

/// Trains `cfg` on `data` in `opts.dir`, then scores the best checkpoint on the test split.
pub fn run(cfg: &RunConfig, data: &Dataset, opts: &Options) -> Result<RunRecord> {
    run_with(cfg, data, opts, None)
}

/// What rank 0 of a data-parallel run tells the other ranks before it starts: the config it
/// resolved (preset, file, overrides, `--fit-minutes`) and the run's options.
#[derive(Serialize, Deserialize)]
struct Start {
    config: String,
    dir: PathBuf,
    preset: Option<String>,
    resume: bool,
    pretrain: bool,
}

/// Where rank 0 publishes [`Start`].
const START_KEY: &str = "pixelseq/start";

/// Rank 0 of a data-parallel run: tells the other ranks ([`follow`]) the run it resolved, then
/// makes the process groups.
pub fn lead(member: Member, cfg: &RunConfig, opts: &Options) -> Result<Dist> {
    let start = Start {
        config: cfg.to_toml(),
        dir: opts.dir.clone(),
        preset: opts.preset.clone(),
        resume: opts.resume,
        pretrain: opts.pretrain,
    };
    member.store.set(START_KEY, &serde_json::to_vec(&start)?)?;
    member.group(cfg.train.backend, opts.device)
}

/// A rank other than 0 (of `pixelseq train`, or `pretrain` when `pretrain`): takes the run rank
/// 0 resolved (config, folder, resume), loads the data from `data` (its `--data`) and trains its
/// share. It reads nothing of the run folder, so that need not be shared between machines.
pub fn follow(member: Member, device: Device, data: Option<&Path>, pretrain: bool) -> Result<()> {
    let start = member
        .store
        .get(START_KEY, crate::dist::COLLECTIVE_TIMEOUT)
        .context("rank 0 stopped before the run began (its error is above)")?;
    let start: Start = serde_json::from_slice(&start).context("rank 0 sent an unreadable run description")?;
    let cfg = RunConfig::from_toml_str(&start.config, "rank 0's config")?;
    let dataset = crate::data::load_task(data, &cfg.task)?.to_device(device);
    let dist = member.group(cfg.train.backend, device)?;
    if start.pretrain != pretrain {
        bail!(
            "rank 0 runs `pixelseq {}`; every rank must run the same subcommand",
            if start.pretrain { "pretrain" } else { "train" }
        );
    }
    let opts = Options {
        pretrain,
        device,
        dir: start.dir,
        resume: start.resume,
        preset: start.preset,
    };
    run_with(&cfg, &dataset, &opts, Some(&dist))?;
    Ok(())
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
    let mut tally = Tally::new(opts.device, tr.learner.classifies());
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
        let out = match &mut tr.graph {
            Some(g) => g.step(&tr.learner, &mut tr.opt, &batch, &settings)?,
            None => train_step_synced(&tr.learner, &mut tr.opt, &batch, &settings, &mut tr.scaler, tr.peers.grads())?,
        };
        tally.add(&out, batch.len());
        step += 1;
        tr.board.step(step, &out, batch.len(), &tr.opt)?;
        // A CPU step waits for its result anyway; on CUDA, reading the loss every step would stall the queue.
        if !opts.device.is_cuda() || step.is_multiple_of(50) {
            tr.check_finite(out.loss.double_value(&[]), step)?;
        }
        let lr = tr.lr();
        progress.step(step, &tally, lr, tr.started.elapsed().as_secs_f64(), tr.time_left(step, &tally));
        // Every rank stops at the same step: the ranks vote when a time budget is set.
        let out_of_time = tr.deadline.is_some() && tr.peers.any(tr.out_of_time(&tally))?;
        if step.is_multiple_of(tr.plan.eval_every) || step == tr.plan.total || out_of_time {
            progress.clear();
            let recent = tr.train_ips(&tally);
            tr.evaluate_and_save(step, &tally, recent)?;
            tally = Tally::new(opts.device, tr.learner.classifies());
            if out_of_time && step < tr.plan.total {
                say!(
                    "time budget of {} minutes spent; stopping at step {step}",
                    t.max_minutes.unwrap_or_default()
                );
                stopped_early = true;
                break;
            }
            if let Some(ips) = recent {
                tr.replan(step, ips)?;
            }
        }
    }
    progress.clear();
    tr.finish(opts, stopped_early)
}

/// The model a run trains, built under the run's seed once its weights, their gradients and
/// AdamW's two moments are known to fit: the classifier, or for `pretrain` the backbone with its
/// mask vector and reconstruction head.
fn build(cfg: &RunConfig, opts: &Options) -> Result<(nn::VarStore, Learner)> {
    let input = cfg.task.input_spec();
    cfg.model.admit(&input, opts.device, 4.0)?;
    tch::manual_seed(cfg.train.seed as i64);
    let vs = nn::VarStore::new(opts.device);
    let learner = if opts.pretrain {
        let method = cfg.pretrain.clone().unwrap_or_default().method;
        Learner::Pretrainer(Pretrainer::new(&vs.root(), &cfg.model, &method, &input)?)
    } else {
        Learner::Classifier(cfg.model.build(&vs.root(), &input)?)
    };
    Ok((vs, learner))
}

/// Where the run starts: the last checkpoint (`--resume`, read by rank 0 and given to the other
/// ranks), else step 0 from the weights every rank takes from rank 0, with the backbone of the
/// pretraining run `train.init` when given. Returns the state and the step of the checkpoint
/// resumed from.
#[allow(clippy::too_many_arguments)]
fn restore(
    cfg: &RunConfig,
    dir: &RunDir,
    opts: &Options,
    plan: &Plan,
    peers: &Peers,
    vs: &mut nn::VarStore,
    opt: &mut AdamW,
    scaler: &LossScaler,
) -> Result<(State, Option<u64>)> {
    let main = peers.main();
    let none_yet = peers.any(main && opts.resume && checkpoint::existing(&dir.last()).is_none())?;
    // Rank 0 reads the pretraining run; the others receive its weights below. A resumed run
    // without a checkpoint yet starts from it too.
    let from_init = !opts.resume || none_yet;
    if let (Some(init), true, false, true) = (&cfg.train.init, from_init, opts.pretrain, main) {
        init_backbone(vs, Path::new(init), cfg.train.init_checkpoint, &cfg.model)?;
    }
    if !opts.resume || none_yet {
        if opts.resume {
            say!("no checkpoint in `{}` yet; starting from step 0", dir.last().display());
        }
        peers.sync(vs, Some(opt))?;
        let mut state = State::default();
        scaler.save_to(&mut state);
        state.world_size = peers.world();
        return Ok((state, None));
    }
    let state = peers
        .load(&dir.last(), vs, Some(opt))
        .with_context(|| format!("cannot resume `{}`", dir.root.display()))?;
    if state.step > plan.total {
        bail!(
            "cannot resume `{}`: its last checkpoint is at step {}, beyond the run's {} steps; raise the budget (--max-steps, --epochs) to continue",
            dir.root.display(),
            state.step,
            plan.total
        );
    }
    let best = match state.best_val_loss {
        Some(loss) => format!("best val loss {loss:.4}"),
        None => format!("best val {:.2}%", 100.0 * state.best_val_acc),
    };
    say!(
        "resuming at step {} of {} ({best} at step {})",
        state.step,
        plan.total,
        state.best_step
    );
    let step = state.step;
    Ok((state, Some(step)))
}

/// Chooses the micro-batch and the evaluation batch of `plan` from the memory plan (a resumed
/// run keeps the micro-batch it started with, recorded in `state`: dropout masks are drawn part by
/// part); returns the memory plan's note for the log.
fn size(
    cfg: &RunConfig,
    plan: &mut Plan,
    state: &mut State,
    learner: &Learner,
    vs: &nn::VarStore,
    peers: &Peers,
    precision: Precision,
) -> Result<String> {
    let device = vs.device();
    let memory = memory::plan(
        learner,
        vs,
        cfg.task.input_spec(),
        peers.share(plan.batch_size)?,
        plan.eval_batch,
        cfg.train.micro_batch,
        device,
        precision,
    )?;
    plan.micro_batch = match state.micro_batch {
        0 => peers.min(memory.micro_batch)?,
        kept => kept,
    };
    state.micro_batch = plan.micro_batch;
    plan.eval_batch = memory.eval_batch;
    if !device.is_cuda() && cfg.train.eval_batch_size == 0 {
        // On a CPU a larger batch is not faster, and evaluation passes no larger than the
        // training micro-batch reuse the caching allocator's blocks instead of faulting in new ones.
        plan.eval_batch = plan.eval_batch.min(plan.micro_batch);
    }
    Ok(memory.note)
}

/// Prints what the run will do.
#[allow(clippy::too_many_arguments)]
fn announce(
    cfg: &RunConfig,
    data: &Dataset,
    plan: &Plan,
    vs: &nn::VarStore,
    opt: &AdamW,
    peers: &Peers,
    precision: Precision,
    memory_note: &str,
) {
    say!(
        "{} on {} | {} parameters | {} train / {} val / {} test images | batch {}, {} steps ({} per epoch) | {:?}, {precision}",
        cfg.model.name(),
        cfg.task.name,
        param_count(vs),
        data.train.len(),
        data.val.len(),
        data.test.len(),
        plan.batch_size,
        plan.total,
        plan.steps_per_epoch,
        vs.device()
    );
    for line in opt.describe().into_iter().chain(peers.describe()) {
        say!("  {line}");
    }
    say!("  {memory_note}, evaluation batch {}", plan.eval_batch);
}

/// The evaluation speed now: the last measured one scaled by the training speed's change since
/// (`recent`, when measured), else as measured, else twice the training speed (`recent`, or the
/// run's `average`).
fn eval_ips_now(speed: Option<EvalSpeed>, recent: Option<f64>, average: f64) -> f64 {
    let ips = match (speed, recent) {
        (
            Some(EvalSpeed {
                img_per_s,
                train_img_per_s: Some(then),
            }),
            Some(now),
        ) => img_per_s * now / then.max(1e-9),
        (Some(e), _) => e.img_per_s,
        (None, now) => 2.0 * now.unwrap_or(average),
    };
    ips.max(1e-9)
}

impl<'a> Trainer<'a> {
    /// Takes the run directory's lock, writes the config (a new run, or the one `--resume`
    /// continues with), loads the last checkpoint (`--resume`), builds the model and the
    /// optimizer, and prints what the run will do. As a rank of `dist` other than 0 it touches
    /// no file of the run folder.
    fn start(cfg: &'a RunConfig, data: &'a Dataset, opts: &Options, dist: Option<&'a Dist>) -> Result<Trainer<'a>> {
        let dir = RunDir::new(&opts.dir);
        let main = dist.is_none_or(Dist::is_main);
        // Everything is checked (the pretraining run of `init`, the checkpoint, the memory plan)
        // before the first write: a refused run changes nothing in its folder. `claim_dir` writes.
        let lock = if main { check_dir(&dir, opts)? } else { None };
        let precision = amp::resolve(cfg.train.precision, opts.device);
        let world = dist.map_or(1, |d| d.world.size);
        let (graphs, graph_note) = graph::decide(cfg, opts.device, precision, world, opts.pretrain)?;
        let mut plan = Plan::new(cfg, data.train.len());
        let (mut vs, learner) = build(cfg, opts)?;
        let mut opt = AdamW::new(&vs, &cfg.optim)?;
        let mut scaler = LossScaler::new(precision);
        let peers = Peers::new(dist, &vs)?;
        let (mut state, saved) = restore(cfg, &dir, opts, &plan, &peers, &mut vs, &mut opt, &scaler)?;
        scaler.restore_from(&state);
        let note = size(cfg, &mut plan, &mut state, &learner, &vs, &peers, precision)?;
        announce(cfg, data, &plan, &vs, &opt, &peers, precision, &note);
        say!("  {graph_note}");
        let graph = graphs.then(|| StepGraph::new(opts.device, &mut opt)).transpose()?;
        let lock = match main {
            true => Some(claim_dir(&dir, cfg, opts, lock, state.step)?),
            false => None,
        };
        let board = Board::open(
            main.then_some(&dir.root),
            cfg,
            state.step,
            opts.resume,
            opts.device,
            learner.classifies(),
        )?;
        let mut trainer = Trainer {
            eval_speed: None,
            deadline: cfg.train.max_minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
            started: Instant::now() - Duration::from_secs_f64(state.elapsed_s),
            cfg,
            data,
            dir,
            plan,
            precision,
            vs,
            learner,
            opt,
            scaler,
            state,
            saved,
            _lock: lock,
            board,
            peers,
            eval_graphs: graph.is_some().then(|| InferenceGraphs::new(opts.device)),
            graph,
        };
        if trainer.deadline.is_some() {
            trainer.time_an_evaluation()?;
        }
        Ok(trainer)
    }

    /// The last step's learning rate, as the update took it: `optim.lr` times the schedule's
    /// factor (the decay group's, or the no-decay group's in a model without matrices).
    fn lr(&self) -> f64 {
        self.opt.lr_of("decay").or_else(|| self.opt.lr_of("no-decay")).unwrap_or(f64::NAN)
    }

    /// Seconds the validation pass at a stop and the final test pass take, re-estimated at every
    /// step: at the speed of the last evaluation scaled by how the training speed has changed
    /// since (once it has been measured over [`SPEED_WINDOW_S`]), or, before any evaluation was
    /// timed, at twice the training speed (an evaluation pass has no backward pass and larger
    /// batches).
    fn final_passes_s(&self, tally: &Tally) -> f64 {
        (self.val_images() + self.data.test.len()) as f64 / self.eval_ips(tally)
    }

    /// The evaluation speed now, images per second (see [`Trainer::final_passes_s`]).
    fn eval_ips(&self, tally: &Tally) -> f64 {
        let recent = self.train_ips(tally).filter(|_| tally.seconds() >= SPEED_WINDOW_S);
        eval_ips_now(self.eval_speed, recent, self.state.throughput(self.plan.batch_size))
    }

    /// Times one evaluation batch before the first step of a run with a time budget, so that the
    /// final passes are not estimated from the training speed alone (a busy first step once ended
    /// a 10-minute run at step 1).
    fn time_an_evaluation(&mut self) -> Result<()> {
        let images = self.plan.eval_batch.min(self.data.val.len());
        let score = evaluate(
            &self.learner,
            &self.data.val,
            &self.cfg.task,
            self.plan.eval_batch,
            Some(images),
            self.precision,
            "timing",
            self.eval_graphs.as_mut(),
        )?;
        self.eval_speed = Some(EvalSpeed {
            img_per_s: score.img_per_s,
            train_img_per_s: None,
        });
        Ok(())
    }

    /// `--fit-minutes` (`train.fit`): after an evaluation, sizes the run's remaining steps again
    /// from the speeds just measured (`train_ips`, and the evaluation's), so that it ends within
    /// its budget and no more than a few percent short of it, never beyond the recipe's steps.
    /// A change of more than 2% is taken (every rank takes the smallest), printed and recorded in
    /// config.toml's `train.max_steps`, so that `--resume` continues the same plan; the schedule
    /// follows the new length from here.
    fn replan(&mut self, step: u64, train_ips: f64) -> Result<()> {
        let (Some(fit), Some(eval)) = (&self.cfg.train.fit, self.eval_speed) else {
            return Ok(());
        };
        if step >= self.plan.total {
            return Ok(());
        }
        let plan = &self.plan;
        let usable_s = 0.97 * (fit.minutes * 60.0 - self.started.elapsed().as_secs_f64());
        let speeds = Speeds {
            step_s: plan.batch_size as f64 / train_ips.max(1e-9),
            eval_s: self.val_images() as f64 / eval.img_per_s.max(1e-9),
            final_s: (self.val_images() + self.data.test.len()) as f64 / eval.img_per_s.max(1e-9),
        };
        let total = self
            .peers
            .min(fitted_total(step, usable_s, plan.eval_every, fit.recipe_steps, &speeds) as i64)? as u64;
        if (total as f64 - plan.total as f64).abs() <= 0.02 * plan.total as f64 {
            return Ok(());
        }
        say!(
            "re-planned for the {} minutes of --fit-minutes at {:.0} img/s training and {:.0} img/s evaluation (measured): {} steps instead of {}",
            fit.minutes,
            train_ips,
            eval.img_per_s,
            total,
            plan.total
        );
        self.plan.total = total;
        if self.peers.main() {
            let mut cfg = self.cfg.clone();
            cfg.train.max_steps = Some(total);
            files::write_bytes(&self.dir.config(), cfg.to_toml().as_bytes())?;
        }
        Ok(())
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
        let eval_ips = self.eval_ips(tally);
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
        Err(self.diverged(format!("loss became {loss} at step {step}")))
    }

    /// The error that stops a diverged run: what went wrong, and the checkpoint that is kept, if
    /// one was written.
    fn diverged(&self, what: String) -> anyhow::Error {
        match self.saved {
            Some(step) => anyhow!(
                "{what}; stopped. The last good checkpoint (step {step}) is kept in `{}`",
                self.dir.last().display()
            ),
            None => anyhow!("{what}; stopped before any checkpoint was written (is optim.lr too high?)"),
        }
    }

    /// Scores the validation split, appends a metrics line, saves `best` (when improved) and
    /// `last`, and prints the evaluation line. A non-finite validation loss, weight or optimizer
    /// moment stops the run instead: nothing of such a step is written.
    fn evaluate_and_save(&mut self, step: u64, tally: &Tally, train_ips: Option<f64>) -> Result<()> {
        let lr = self.lr();
        let (train_loss, train_acc) = self.peers.tally(tally)?;
        self.state.train_s += tally.seconds();
        self.check_finite(train_loss, step)?;
        self.peers.sync(&self.vs, None)?;
        let (val_loss, val_acc) = self.validate(train_ips)?;
        if !val_loss.is_finite() {
            return Err(self.diverged(format!("validation loss became {val_loss} at step {step}")));
        }
        if let Some(what) = checkpoint::non_finite(&self.vs, Some(&self.opt)) {
            return Err(self.diverged(format!("{what} became non-finite at step {step}")));
        }
        let plan = &self.plan;
        let state = &mut self.state;
        state.step = step;
        state.t = self.opt.t;
        self.scaler.save_to(state);
        state.elapsed_s = self.started.elapsed().as_secs_f64();
        let improved = match val_acc {
            Some(acc) => acc > state.best_val_acc,
            None => val_loss < state.best_val_loss.unwrap_or(f64::INFINITY),
        };
        if improved {
            match val_acc {
                Some(acc) => state.best_val_acc = acc,
                None => state.best_val_loss = Some(val_loss),
            }
            state.best_step = step;
        }
        let m = Metrics {
            step,
            epoch: plan.epoch(step),
            lr,
            ssm_lr: self.opt.lr_of("ssm"),
            train_loss,
            train_acc: train_acc.unwrap_or(f64::NAN),
            val_loss,
            val_acc: val_acc.unwrap_or(f64::NAN),
            img_per_s: state.throughput(plan.batch_size),
            wall_s: state.elapsed_s,
        };
        // `last` is written last: a run killed before it resumes from the previous `last`,
        // drops this metrics line (truncate_metrics) and redoes the steps, rewriting `best`
        // alike; written first, it would leave a step without its line or its best weights.
        if !self.peers.main() {
            self.saved = Some(step);
            return Ok(());
        }
        files::append_line(&self.dir.metrics(), &serde_json::to_string(&m)?)?;
        self.board.evaluation(step, val_loss, val_acc)?;
        if improved {
            checkpoint::save(&self.dir.best(), &self.vs, None, state)?;
        }
        checkpoint::save(&self.dir.last(), &self.vs, Some(&self.opt), state)?;
        self.saved = Some(step);
        let acc = |a: Option<f64>| a.map_or(String::new(), |a| format!(" acc {:.2}%", 100.0 * a));
        eprintln!(
            "step {step}/{} epoch {:.2} lr {lr:.2e} | train loss {train_loss:.4}{} | val loss {val_loss:.4}{}{} | {:.0} img/s | {}",
            plan.total,
            m.epoch,
            acc(train_acc),
            acc(val_acc),
            if improved { " *" } else { "" },
            m.img_per_s,
            clock(state.elapsed_s)
        );
        Ok(())
    }

    /// Scores the validation split (its first `val_limit` images) as every rank's share, and
    /// records the pass's speed beside the training speed `train_ips`: (loss, accuracy).
    fn validate(&mut self, train_ips: Option<f64>) -> Result<(f64, Option<f64>)> {
        let val = evaluate_across(
            self.peers.dist(),
            &self.learner,
            &self.data.val,
            &self.cfg.task,
            self.plan.eval_batch,
            self.plan.val_limit,
            self.precision,
            "validation",
            self.eval_graphs.as_mut(),
        )?;
        self.eval_speed = Some(EvalSpeed {
            img_per_s: val.img_per_s,
            train_img_per_s: train_ips,
        });
        Ok((val.loss, val.acc))
    }

    /// Scores the best checkpoint on the test split and writes `result.json`.
    fn finish(mut self, opts: &Options, stopped_early: bool) -> Result<RunRecord> {
        let best = self
            .peers
            .load(&self.dir.best(), &mut self.vs, None)
            .context("no best checkpoint to test")?;
        let test = evaluate_across(
            self.peers.dist(),
            &self.learner,
            &self.data.test,
            &self.cfg.task,
            self.plan.eval_batch,
            None,
            self.precision,
            "test",
            self.eval_graphs.as_mut(),
        )?;
        let test_loss = test.loss;
        let early = if stopped_early { ", stopped early by the time budget" } else { "" };
        match (test.acc, best.best_val_loss) {
            (Some(acc), _) => say!(
                "test accuracy {:.2}% (best val {:.2}% at step {}){early}",
                100.0 * acc,
                100.0 * best.best_val_acc,
                best.best_step
            ),
            (None, val) => say!(
                "test reconstruction loss {test_loss:.4} (best val {:.4} at step {}){early}",
                val.unwrap_or(f64::NAN),
                best.best_step
            ),
        }
        if let Some(acc) = test.acc {
            self.board.test(self.state.step, acc)?;
        }
        let (cfg, state) = (self.cfg, &self.state);
        let pretrain = match (&self.learner, &cfg.pretrain) {
            (Learner::Pretrainer(_), Some(p)) => Some(PretrainResult {
                method: p.method.clone(),
                best_val_loss: state.best_val_loss.unwrap_or(f64::NAN),
            }),
            _ => None,
        };
        let record = RunRecord {
            preset: opts.preset.clone(),
            model: cfg.model.name().to_string(),
            task: cfg.task.name.to_string(),
            paper_figure: cfg.paper.as_ref().and_then(|p| p.figure),
            paper_setting: cfg.paper.as_ref().map(|p| p.setting.clone()),
            best_val_acc: if pretrain.is_some() { f64::NAN } else { state.best_val_acc },
            best_step: state.best_step,
            test_acc: test.acc.unwrap_or(f64::NAN),
            test_loss,
            params: param_count(&self.vs),
            steps: state.step,
            planned_steps: self.plan.total,
            epochs: self.plan.epoch(state.step),
            img_per_s: state.throughput(self.plan.batch_size),
            device: device::name(opts.device),
            precision: self.precision,
            wall_s: self.started.elapsed().as_secs_f64(),
            seed: cfg.train.seed,
            micro_batch: self.plan.micro_batch,
            init: cfg.train.init.clone(),
            pretrain,
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

/// Checks the run folder `dir` for the process that writes it, writing nothing: a new run must
/// find it free; a resumed one is locked (a second writer is refused) and recovered from a save
/// a crash interrupted (pixelseq's own files only).
fn check_dir(dir: &RunDir, opts: &Options) -> Result<Option<RunLock>> {
    if !opts.resume {
        dir.check_new_run()?;
        return Ok(None);
    }
    if !dir.config().is_file() {
        bail!("`{}` is not a run directory (it has no config.toml)", dir.root.display());
    }
    let lock = dir.lock()?;
    // A crash between the renames of a checkpoint save left the previous one aside.
    checkpoint::recover(&dir.best())?;
    checkpoint::recover(&dir.last())?;
    files::remove_stale_temps(&dir.checkpoints());
    Ok(Some(lock))
}

/// The first writes of a run, once everything is checked: takes the lock of a new run's folder
/// (checking it is still free), writes the preset name and the config (a resumed run's, when
/// `--set` changed it), and drops the metrics lines past the checkpoint a resumed run continues
/// from (`step`).
fn claim_dir(dir: &RunDir, cfg: &RunConfig, opts: &Options, lock: Option<RunLock>, step: u64) -> Result<RunLock> {
    let lock = match lock {
        Some(lock) => {
            truncate_metrics(&dir.metrics(), step)?;
            lock
        }
        None => {
            let lock = dir.lock()?;
            // Another command may have started a run here before this one held the lock.
            dir.check_new_run()?;
            if let Some(p) = &opts.preset {
                files::write_bytes(&dir.preset(), p.as_bytes())?;
            }
            lock
        }
    };
    eprintln!("run directory: {}", dir.root.display());
    let toml = cfg.to_toml();
    if std::fs::read_to_string(dir.config()).ok().as_deref() != Some(toml.as_str()) {
        files::write_bytes(&dir.config(), toml.as_bytes())?;
    }
    Ok(lock)
}

/// Loads the backbone of the pretraining run in `dir` (its best or last checkpoint, `which`,
/// verified) into the classifier's variables `vs`: every tensor whose name and shape match; the classifier
/// (`model.classifier()`) and what only pretraining has (`pretrain.*`) are left out, and a tensor
/// of the model whose shape differs is an error naming it. The log lists what was loaded.
fn init_backbone(vs: &mut nn::VarStore, dir: &Path, which: InitCheckpoint, model: &ModelConfig) -> Result<()> {
    let run = RunDir::new(dir);
    // A path without checkpoints: say what it is (a file, an exported folder, …).
    if let Some(why) = run.not_a_run().filter(|_| !run.root.join("checkpoints").is_dir()) {
        bail!("--init: {why}");
    }
    let folder = match which {
        InitCheckpoint::Best => run.best(),
        InitCheckpoint::Last => run.last(),
    };
    let (state, tensors) = checkpoint::weights(&folder).with_context(|| format!("--init `{}`", dir.display()))?;
    if state.best_val_loss.is_none() {
        bail!(
            "--init `{}` is not a self-pretraining run (`pixelseq pretrain`); its checkpoints hold a trained classifier",
            dir.display()
        );
    }
    let vars = vs.variables();
    let classifier = |name: &str| model.classifier().iter().any(|p| name.starts_with(p));
    let mut tensors = tensors;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut wanted, mut not_loaded) = (Vec::new(), Vec::new());
    for (name, t) in tensors {
        match vars.get(&name) {
            Some(_) if classifier(&name) => not_loaded.push(name),
            Some(v) if v.size() != t.size() => bail!(
                "--init `{}`: tensor `{name}` has shape {:?} there and {:?} in this model; the model's config must match the pretraining run's",
                dir.display(),
                t.size(),
                v.size()
            ),
            Some(v) => wanted.push((name, v, t)),
            None => not_loaded.push(name),
        }
    }
    let mut scalars = 0;
    let mut loaded = Vec::new();
    for (name, v, t) in wanted {
        tch::no_grad(|| v.shallow_clone().copy_(&t));
        scalars += t.numel();
        loaded.push(name);
    }
    if loaded.is_empty() {
        bail!(
            "--init `{}`: none of its {} tensors is a backbone tensor of this model ({}); fine-tune from a pretraining run of the same model",
            dir.display(),
            not_loaded.len(),
            model.name()
        );
    }
    let mut fresh: Vec<&String> = vars.keys().filter(|n| !loaded.contains(n)).collect();
    fresh.sort();
    not_loaded.sort();
    eprintln!(
        "initialised from `{}` ({} checkpoint, step {}): {} tensors loaded ({scalars} scalars); not loaded: {}; initialised fresh: {}",
        dir.display(),
        which.as_str(),
        state.step,
        loaded.len(),
        not_loaded.join(", "),
        fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
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

    fn tiny_data() -> Dataset {
        tch::manual_seed(0);
        Dataset {
            train: split(12),
            val: split(4),
            test: split(4),
        }
    }

    fn tiny(sets: &[&str]) -> RunConfig {
        let mut table: toml::Table = TINY.parse().unwrap();
        for set in sets {
            crate::config::apply_override(&mut table, set).unwrap();
        }
        RunConfig::from_table(table, "test").unwrap()
    }

    fn options(dir: &std::path::Path, resume: bool) -> Options {
        Options {
            pretrain: false,
            device: Device::Cpu,
            dir: dir.to_path_buf(),
            resume,
            preset: None,
        }
    }

    /// A new self-pretraining run into `dir`.
    fn pretraining(dir: &std::path::Path) -> Options {
        Options {
            pretrain: true,
            ..options(dir, false)
        }
    }

    /// A run that diverges before its first evaluation writes no checkpoint and claims none.
    #[test]
    fn a_diverged_run_writes_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run");
        let cfg = tiny(&["optim.lr=1e30", "train.eval_every=1"]);
        let err = format!("{:#}", run(&cfg, &tiny_data(), &options(&run_dir, false)).unwrap_err());
        assert!(
            err.contains("before any checkpoint was written") && !err.contains("step 0"),
            "{err}"
        );
        let run = RunDir::new(&run_dir);
        assert!(checkpoint::existing(&run.last()).is_none() && checkpoint::existing(&run.best()).is_none());
        assert_eq!(
            std::fs::read_to_string(run.metrics()).unwrap_or_default(),
            "",
            "a metrics line of the bad step"
        );
    }

    /// Diverging after a good checkpoint keeps it, names its step, and never makes the bad step
    /// `best`; a budget below the checkpoint's step is refused.
    #[test]
    fn divergence_keeps_the_last_good_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run");
        let data = tiny_data();
        run(&tiny(&[]), &data, &options(&run_dir, false)).unwrap();
        let run_files = RunDir::new(&run_dir);
        let best_before = std::fs::read(run_files.best().join(checkpoint::WEIGHTS)).unwrap();
        let cfg = tiny(&["optim.lr=1e30", "train.max_steps=10", "train.eval_every=1"]);
        let err = format!("{:#}", run(&cfg, &data, &options(&run_dir, true)).unwrap_err());
        assert!(err.contains("last good checkpoint (step 5)"), "{err}");
        assert_eq!(
            run_files.load_config().unwrap().optim.lr,
            1e30,
            "the resumed run's config is not recorded"
        );
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _model = cfg.model.build(&vs.root(), &cfg.task.input_spec()).unwrap();
        let mut opt = AdamW::new(&vs, &cfg.optim).unwrap();
        assert_eq!(checkpoint::load(&run_files.last(), &mut vs, Some(&mut opt)).unwrap().step, 5);
        assert_eq!(checkpoint::non_finite(&vs, Some(&opt)), None);
        assert_eq!(std::fs::read(run_files.best().join(checkpoint::WEIGHTS)).unwrap(), best_before);

        let err = format!(
            "{:#}",
            run(&tiny(&["train.max_steps=3"]), &data, &options(&run_dir, true)).unwrap_err()
        );
        assert!(err.contains("at step 5, beyond the run's 3 steps"), "{err}");
    }

    /// A refused run changes nothing: a refused `--init` (a missing folder, a classifier run, a
    /// pretraining run of other sizes) makes no folder, lock, preset or config, so the same
    /// command succeeds once corrected; a `--resume` refused for its budget keeps its config.toml.
    #[test]
    fn a_refused_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = tiny_data();
        let classifier = dir.path().join("cls");
        run(&tiny(&[]), &data, &options(&classifier, false)).unwrap();
        let stage = tiny(&["train.mixup=0.0"]).for_pretraining().unwrap();
        let pre = dir.path().join("pre");
        run(&stage, &data, &pretraining(&pre)).unwrap();
        let tuned = dir.path().join("tuned");
        let init = |p: &std::path::Path| format!("train.init={:?}", p.display().to_string());
        for (sets, needle) in [
            (vec![init(&dir.path().join("missing"))], "missing"),
            (vec![init(&classifier)], "not a self-pretraining run"),
            (vec![init(&pre), "model.d_model=32".into(), "model.qkv_dim=32".into()], "has shape"),
            (
                vec!["train.cuda_graphs=true".into()],
                "key `train.cuda_graphs` = true: the run is not on a CUDA device",
            ),
        ] {
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            let opts = Options {
                preset: Some("tiny".into()),
                ..options(&tuned, false)
            };
            let err = format!("{:#}", run(&tiny(&sets), &data, &opts).unwrap_err());
            assert!(err.contains(needle), "{err}");
            assert!(
                !tuned.exists(),
                "a refused --init left {:?}",
                std::fs::read_dir(&tuned).map(|d| d.count())
            );
        }
        run(&tiny(&[&init(&pre)]), &data, &options(&tuned, false)).unwrap();

        let config = std::fs::read_to_string(RunDir::new(&classifier).config()).unwrap();
        let err = format!(
            "{:#}",
            run(&tiny(&["train.max_steps=3"]), &data, &options(&classifier, true)).unwrap_err()
        );
        assert!(err.contains("beyond the run's 3 steps"), "{err}");
        assert_eq!(std::fs::read_to_string(RunDir::new(&classifier).config()).unwrap(), config);
    }

    /// `--init` from another model's pretraining run loads no backbone tensor: an error, not a
    /// from-scratch run recorded as fine-tuned.
    #[test]
    fn an_init_that_loads_nothing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = tiny_data();
        let model = "[model]\nname = \"s4d\"\nd_model = 8\nn_layers = 1\nd_state = 4\n\n[optim]";
        let s4d_toml = TINY.replace(&TINY[TINY.find("[model]").unwrap()..TINY.find("[optim]").unwrap() + 7], model);
        let s4d = RunConfig::from_toml_str(&s4d_toml.replace("mixup = 0.4", "mixup = 0.0"), "test").unwrap();
        let pre = dir.path().join("pre");
        run(&s4d.for_pretraining().unwrap(), &data, &pretraining(&pre)).unwrap();
        let tuned = dir.path().join("tuned");
        let init = format!("train.init={:?}", pre.display().to_string());
        let err = format!("{:#}", run(&tiny(&[&init]), &data, &options(&tuned, false)).unwrap_err());
        assert!(err.contains("none of its") && err.contains("transformer"), "{err}");
        assert!(!tuned.exists());
    }

    /// A FIFO in place of a file a run reads back (a checkpoint's tensor file or state, the
    /// config, an events file) is refused by its type before it is opened, instead of waiting
    /// forever for a writer.
    #[test]
    fn a_fifo_in_place_of_a_run_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run");
        let data = tiny_data();
        run(&tiny(&[]), &data, &options(&run_dir, false)).unwrap();
        let files = RunDir::new(&run_dir);
        let fifo_in_place = |path: &std::path::Path| {
            let saved = path.with_extension("saved");
            std::fs::rename(path, &saved).unwrap();
            assert!(std::process::Command::new("mkfifo").arg(path).status().unwrap().success());
            move |path: &std::path::Path| {
                std::fs::remove_file(path).unwrap();
                std::fs::rename(&saved, path).unwrap();
            }
        };
        for path in [files.last().join(checkpoint::WEIGHTS), files.last().join(checkpoint::STATE)] {
            let restore = fifo_in_place(&path);
            let err = format!(
                "{:#}",
                run(&tiny(&["train.max_steps=6"]), &data, &options(&run_dir, true)).unwrap_err()
            );
            assert!(err.contains("is a FIFO, not a regular file"), "{}: {err}", path.display());
            restore(&path);
        }
        let events = crate::tensorboard::event_files(&run_dir).unwrap().remove(0);
        let restore = fifo_in_place(&events);
        let err = format!(
            "{:#}",
            run(&tiny(&["train.max_steps=6"]), &data, &options(&run_dir, true)).unwrap_err()
        );
        assert!(err.contains("is a FIFO, not a regular file"), "{err}");
        restore(&events);
        let restore = fifo_in_place(&files.config());
        let err = format!("{:#}", files.load_config().unwrap_err());
        assert!(err.contains("is a FIFO, not a regular file"), "{err}");
        restore(&files.config());
    }

    /// The final passes are re-estimated from the latest speeds: an evaluation measured while the
    /// machine trained at 10 img/s runs twice as fast when training now runs at 20; a batch timed
    /// before any step stands as measured; with nothing measured, twice the training speed.
    #[test]
    fn the_final_passes_follow_the_latest_speed() {
        let measured = |then| {
            Some(EvalSpeed {
                img_per_s: 100.0,
                train_img_per_s: then,
            })
        };
        assert_eq!(eval_ips_now(measured(Some(10.0)), Some(20.0), 5.0), 200.0);
        assert_eq!(eval_ips_now(measured(Some(10.0)), Some(2.5), 5.0), 25.0);
        assert_eq!(eval_ips_now(measured(Some(10.0)), None, 5.0), 100.0);
        assert_eq!(eval_ips_now(measured(None), Some(1.0), 5.0), 100.0);
        assert_eq!(eval_ips_now(None, Some(9.0), 5.0), 18.0);
        assert_eq!(eval_ips_now(None, None, 5.0), 10.0);
    }

    /// `--fit-minutes` re-plans from measured speeds: as many steps as fill 97% of the time left
    /// after the final passes (evaluations included), never past the recipe, always one more.
    #[test]
    fn a_fitted_run_is_re_planned_to_its_budget() {
        let speeds = Speeds {
            step_s: 0.5,
            eval_s: 10.0,
            final_s: 20.0,
        };
        // 600 s left: 0.97 · 600 − 20 = 562 s at 0.5 + 10/100 = 0.6 s a step: 936 more steps.
        assert_eq!(fitted_total(100, 0.97 * 600.0, 100, 10_000, &speeds), 1_036);
        let used = 936.0 * 0.6 + 20.0;
        assert!((0.95 * 600.0..=600.0).contains(&used), "{used}");
        assert_eq!(fitted_total(100, 0.97 * 600.0, 100, 500, &speeds), 500, "never past the recipe");
        assert_eq!(fitted_total(100, 0.97 * 10.0, 100, 10_000, &speeds), 101, "always one more step");
    }

    /// A fitted run whose machine is faster than its fit assumed takes more steps at its first
    /// evaluation, prints why and records them in config.toml for `--resume`.
    #[test]
    fn a_fitted_run_takes_the_steps_its_budget_allows() {
        let data = Dataset {
            train: split(12),
            val: split(4),
            test: split(4),
        };
        let mut cfg = tiny(&["train.max_steps=2", "train.eval_every=1", "train.max_minutes=0.1"]);
        cfg.train.fit = Some(crate::config::Fit {
            minutes: 0.1,
            recipe_steps: 40,
        });
        let dir = tempfile::tempdir().unwrap();
        let record = run(&cfg, &data, &options(&dir.path().join("run"), false)).unwrap();
        assert!(record.planned_steps > 2 && record.planned_steps <= 40, "{}", record.planned_steps);
        let recorded = RunDir::new(dir.path().join("run")).load_config().unwrap();
        assert_eq!(recorded.train.max_steps, Some(record.planned_steps));
    }

    /// The loop's update is exactly `step::train_step` (the step `bench` times) on the sampler's
    /// batches at the schedule's learning rates: driving the step by hand from the same seed ends
    /// with the weights the trainer saved.
    #[test]
    fn the_loop_is_the_shared_step() {
        let name = format!("{}::the_loop_is_the_shared_step", module_path!().trim_start_matches("pixelseq::"));
        if !crate::testing::alone_in_a_process(&name) {
            return;
        }
        tch::manual_seed(0);
        let data = Dataset {
            train: split(12),
            val: split(4),
            test: split(4),
        };
        let cfg = RunConfig::from_toml_str(TINY, "test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            pretrain: false,
            device: Device::Cpu,
            dir: dir.path().join("run"),
            resume: false,
            preset: None,
        };
        run(&cfg, &data, &opts).unwrap();

        tch::manual_seed(cfg.train.seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let learner = Learner::Classifier(cfg.model.build(&vs.root(), &cfg.task.input_spec()).unwrap());
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
            train_step(&learner, &mut opt, &batch, &settings, &mut scaler).unwrap();
        }
        let saved = Tensor::read_safetensors(dir.path().join("run/checkpoints/last/model.safetensors")).unwrap();
        let ours = vs.variables();
        assert_eq!(saved.len(), ours.len());
        for (name, t) in saved {
            assert!(t.equal(&ours[&name]), "{name} differs from the hand-driven steps");
        }
    }

    /// A tiny pretrain run, then fine-tuning from it: `--init` loads every backbone tensor of the
    /// pretraining run's best checkpoint and nothing else (the classifier starts fresh, the
    /// reconstruction head and mask vector stay behind), and the records say so.
    #[test]
    fn fine_tuning_starts_from_the_pretrained_backbone() {
        let dir = tempfile::tempdir().unwrap();
        let data = tiny_data();
        let stage = tiny(&["train.mixup=0.0", "pretrain.objective=\"masked\"", "pretrain.loss=\"l2\""])
            .for_pretraining()
            .unwrap();
        let record = run(&stage, &data, &pretraining(&dir.path().join("pre"))).unwrap();
        let p = record.pretrain.expect("a pretraining record");
        assert!(p.best_val_loss.is_finite() && record.test_loss.is_finite() && record.test_acc.is_nan());
        let (_, pretrained) = checkpoint::weights(&dir.path().join("pre/checkpoints/best")).unwrap();
        let pretrained: std::collections::HashMap<String, Tensor> = pretrained.into_iter().collect();
        assert!(pretrained.contains_key("pretrain.mask_token") && pretrained.contains_key("head.out.weight"));

        let mut vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(123);
        let cfg = tiny(&[]);
        let _model = cfg.model.build(&vs.root(), &cfg.task.input_spec()).unwrap();
        let before: std::collections::HashMap<String, Tensor> = vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
        init_backbone(&mut vs, &dir.path().join("pre"), InitCheckpoint::Best, &cfg.model).unwrap();
        for (name, t) in vs.variables() {
            if name.starts_with("head.") {
                assert!(t.equal(&before[&name]), "{name}: the classifier must start fresh");
            } else {
                assert!(t.equal(&pretrained[&name]), "{name} was not loaded");
            }
        }
        // A model whose shapes differ is refused, naming the tensor.
        let wider = tiny(&["model.d_model=32", "model.qkv_dim=32"]);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _model = wider.model.build(&vs.root(), &wider.task.input_spec()).unwrap();
        let err = init_backbone(&mut vs, &dir.path().join("pre"), InitCheckpoint::Best, &wider.model)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor `blocks.") && err.contains("has shape [") && err.contains("in this model"),
            "{err}"
        );

        // A classifier run is no pretraining run; and the fine-tuned run records where it started.
        let classifier = dir.path().join("cls");
        run(&tiny(&[]), &data, &options(&classifier, false)).unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _model = cfg.model.build(&vs.root(), &cfg.task.input_spec()).unwrap();
        let err = init_backbone(&mut vs, &classifier, InitCheckpoint::Best, &cfg.model)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a self-pretraining run"), "{err}");
        let init = dir.path().join("pre").display().to_string();
        let tuned = tiny(&[&format!("train.init={init:?}")]);
        let record = run(&tuned, &data, &options(&dir.path().join("tuned"), false)).unwrap();
        assert_eq!(record.init.as_deref(), Some(init.as_str()));
        assert!(std::fs::read_to_string(dir.path().join("tuned/config.toml"))
            .unwrap()
            .contains("init = "));
    }

    /// `train.init_checkpoint = "last"` (`train --init RUN --last`) loads the pretraining run's
    /// last checkpoint and the default its best, here two checkpoints of different weights; the
    /// choice is refused without `train.init` and written to the fine-tuned run's config.
    #[test]
    fn init_last_loads_the_last_checkpoint_not_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let pre = RunDir::new(dir.path().join("pre"));
        let cfg = tiny(&["train.mixup=0.0"]);
        let stage = cfg.for_pretraining().unwrap();
        let method = stage.pretrain.clone().unwrap().method;
        let input = cfg.task.input_spec();
        let state = State {
            best_val_loss: Some(0.5),
            ..State::default()
        };
        let mut saved = Vec::new();
        for (seed, folder) in [(1, pre.best()), (2, pre.last())] {
            tch::manual_seed(seed);
            let vs = nn::VarStore::new(Device::Cpu);
            let _p = Pretrainer::new(&vs.root(), &cfg.model, &method, &input).unwrap();
            checkpoint::save(&folder, &vs, None, &state).unwrap();
            saved.push(vs.variables()["blocks.0.attn.q.weight"].copy());
        }
        assert!(!saved[0].equal(&saved[1]));
        for (which, expected) in [(InitCheckpoint::Best, &saved[0]), (InitCheckpoint::Last, &saved[1])] {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let _model = cfg.model.build(&vs.root(), &input).unwrap();
            init_backbone(&mut vs, &pre.root, which, &cfg.model).unwrap();
            assert!(
                vs.variables()["blocks.0.attn.q.weight"].equal(expected),
                "{which:?} loaded the other checkpoint"
            );
        }

        let mut table: toml::Table = TINY.parse().unwrap();
        crate::config::apply_override(&mut table, "train.init_checkpoint=\"last\"").unwrap();
        let err = RunConfig::from_table(table, "test").unwrap_err().to_string();
        assert!(err.contains("train.init_checkpoint") && err.contains("train.init"), "{err}");
        let init = pre.root.display().to_string();
        let tuned = tiny(&[&format!("train.init={init:?}"), "train.init_checkpoint=\"last\""]);
        let record = run(&tuned, &tiny_data(), &options(&dir.path().join("tuned"), false)).unwrap();
        assert_eq!(record.init.as_deref(), Some(init.as_str()));
        let written = std::fs::read_to_string(dir.path().join("tuned/config.toml")).unwrap();
        assert!(written.contains("init_checkpoint = \"last\""), "{written}");
        // The default (best) leaves the config as it was before the choice existed.
        assert!(!tiny(&[&format!("train.init={init:?}")]).to_toml().contains("init_checkpoint"));
    }
}
