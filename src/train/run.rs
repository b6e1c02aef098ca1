//! The training loop: one visible loop over optimizer steps, evaluation at an interval,
//! checkpoints, metrics, and the test score of the best validation checkpoint at the end.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Device, Kind, Reduction, Tensor};

use super::{checkpoint, optim::AdamW, rng::SplitMix64, schedule};
use crate::amp;
use crate::config::{Precision, RunConfig};
use crate::data::{batch_input, Dataset, Split, TaskConfig};
use crate::models::param_count;

/// How a run is carried out (not part of the recorded config).
pub struct Options {
    pub device: Device,
    pub dir: PathBuf,
    /// Continue from the run directory's last checkpoint.
    pub resume: bool,
    /// Preset name, for the record.
    pub preset: Option<String>,
}

/// One line of `metrics.jsonl`, written at every evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub step: u64,
    pub epoch: f64,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub img_per_s: f64,
    pub wall_s: f64,
}

/// `result.json`: what a finished run achieved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub preset: Option<String>,
    pub model: String,
    pub task: String,
    pub paper_figure: Option<f64>,
    pub paper_setting: Option<String>,
    pub best_val_acc: f64,
    pub best_step: u64,
    pub test_acc: f64,
    pub test_loss: f64,
    pub params: i64,
    pub steps: u64,
    pub epochs: f64,
    pub img_per_s: f64,
    pub device: String,
    pub precision: Precision,
    pub wall_s: f64,
    pub seed: u64,
    pub commit: String,
    pub date: String,
}

/// Seed of torch's generator at `step`: dropout and augmentation depend only on (seed, step),
/// so a resumed run draws exactly what an uninterrupted one would.
fn step_seed(seed: u64, step: u64) -> i64 {
    (SplitMix64::derive(seed, 2, step).next_u64() >> 1) as i64
}

/// Loss and accuracy of `model` on the first `limit` images of a split (`None`: every image,
/// no dropped remainder).
pub fn evaluate(model: &dyn ModuleT, split: &Split, task: &TaskConfig, batch: i64, limit: Option<i64>, precision: Precision) -> (f64, f64) {
    let n = limit.map_or(split.len(), |l| l.min(split.len()));
    let (mut loss, mut correct) = (
        Tensor::zeros([], (Kind::Float, split.labels.device())),
        Tensor::zeros([], (Kind::Int64, split.labels.device())),
    );
    tch::no_grad(|| {
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let xs = batch_input(&split.images.narrow(0, start, len), task, false);
            let ys = split.labels.narrow(0, start, len);
            let logits = amp::autocast(precision, || model.forward_t(&xs, false)).to_kind(Kind::Float);
            loss += logits.cross_entropy_loss::<Tensor>(&ys, None, Reduction::Sum, -100, 0.0);
            correct += logits.argmax(-1, false).eq_tensor(&ys).sum(Kind::Int64);
            start += len;
        }
    });
    (loss.double_value(&[]) / n as f64, correct.double_value(&[]) / n as f64)
}

/// Mixup or CutMix of a batch of images (B, C, 32, 32) with the batch reversed; returns the
/// mixed images and the weight λ of the original labels. Mixup blends the 8-bit pixels and
/// rounds them back to 8 bits, since every model reads raw pixels.
fn mix(images: &Tensor, mixup: f64, cutmix: f64, g: &mut SplitMix64) -> (Tensor, f64) {
    let use_cutmix = cutmix > 0.0 && (mixup == 0.0 || g.uniform() < 0.5);
    let other = images.flip([0]);
    if use_cutmix {
        let lam = g.beta(cutmix);
        let (h, w) = (images.size()[2], images.size()[3]);
        let ch = ((h as f64) * (1.0 - lam).sqrt()) as i64;
        let cw = ((w as f64) * (1.0 - lam).sqrt()) as i64;
        let (cy, cx) = (g.below(h as u64) as i64, g.below(w as u64) as i64);
        let (y0, y1) = ((cy - ch / 2).max(0), (cy + ch / 2).min(h));
        let (x0, x1) = ((cx - cw / 2).max(0), (cx + cw / 2).min(w));
        let out = images.copy();
        if y1 > y0 && x1 > x0 {
            out.narrow(2, y0, y1 - y0)
                .narrow(3, x0, x1 - x0)
                .copy_(&other.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0));
        }
        let area = ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
        (out, 1.0 - area)
    } else {
        let lam = g.beta(mixup);
        let blended = images.to_kind(Kind::Float) * lam + other.to_kind(Kind::Float) * (1.0 - lam);
        (blended.round().to_kind(Kind::Uint8), lam)
    }
}

/// Trains `cfg` on `data` in `opts.dir`, then scores the best checkpoint on the test split.
pub fn run(cfg: &RunConfig, data: &Dataset, opts: &Options) -> Result<RunRecord> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create run directory `{}`", dir.display()))?;
    let config_path = dir.join("config.toml");
    if !opts.resume {
        if dir.join("checkpoints").exists() {
            bail!(
                "run directory `{}` already holds a run; pass --resume {} to continue it, or choose another --out",
                dir.display(),
                dir.display()
            );
        }
        write_atomic(&config_path, cfg.to_toml().as_bytes())?;
    }
    let device = opts.device;
    let precision = amp::resolve(cfg.train.precision, device);
    let t = &cfg.train;
    let input = cfg.task.input_spec();

    tch::manual_seed(t.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let model = cfg.model.build(&vs.root(), &input)?;
    let mut opt = AdamW::new(&vs, &cfg.optim);
    let params = param_count(&vs);

    let n_train = data.train.len();
    let bs = t.batch_size.min(n_train);
    let steps_per_epoch = (n_train / bs) as u64;
    let total = t.max_steps.unwrap_or(t.epochs * steps_per_epoch);
    let eval_every = if t.eval_every == 0 { steps_per_epoch } else { t.eval_every };
    let eval_bs = if t.eval_batch_size > 0 { t.eval_batch_size } else { bs.max(256) };
    let val_limit = (t.eval_batches > 0).then(|| t.eval_batches * eval_bs);

    let last_dir = dir.join("checkpoints").join("last");
    let best_dir = dir.join("checkpoints").join("best");
    let metrics_path = dir.join("metrics.jsonl");
    let mut state = checkpoint::State {
        step: 0,
        t: 0,
        best_val_acc: -1.0,
        best_step: 0,
        elapsed_s: 0.0,
        train_s: 0.0,
        loss_scale: 65536.0,
    };
    if opts.resume {
        state = checkpoint::load(&last_dir, &mut vs, Some(&mut opt)).with_context(|| format!("cannot resume `{}`", dir.display()))?;
        truncate_metrics(&metrics_path, state.step)?;
        eprintln!(
            "resuming at step {} of {total} (best val {:.2}% at step {})",
            state.step,
            100.0 * state.best_val_acc,
            state.best_step
        );
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path)?;
    }

    eprintln!(
        "{} on {} | {} parameters | {} train / {} val / {} test images | batch {bs}, {total} steps ({steps_per_epoch} per epoch) | {device:?}, {precision:?}",
        cfg.model.name(),
        serde_json::to_string(&cfg.task.name)?.trim_matches('"'),
        params,
        n_train,
        data.val.len(),
        data.test.len()
    );
    for line in opt.describe() {
        eprintln!("  {line}");
    }

    let started = Instant::now() - std::time::Duration::from_secs_f64(state.elapsed_s);
    let deadline = t.max_minutes.map(|m| m * 60.0);
    let show_bar = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut order: Option<(u64, Tensor)> = None;
    let zero_f = || Tensor::zeros([], (Kind::Float, device));
    let (mut loss_sum, mut correct_sum, mut seen) = (zero_f(), zero_f(), 0i64);
    let mut step = state.step;
    let mut stopped_early = false;
    let mut segment = Instant::now();
    let mut last_line = Instant::now();

    while step < total {
        let epoch = step / steps_per_epoch;
        if order.as_ref().map(|o| o.0) != Some(epoch) {
            let perm = SplitMix64::derive(t.seed, 1, epoch).permutation(n_train as usize);
            order = Some((epoch, Tensor::from_slice(&perm).to_device(device)));
        }
        if show_bar && bar.is_none() {
            bar = Some(epoch_bar(epoch, steps_per_epoch, step % steps_per_epoch));
        }
        let idx = order.as_ref().unwrap().1.narrow(0, ((step % steps_per_epoch) as i64) * bs, bs);
        let mut images = data.train.images.index_select(0, &idx);
        let labels = data.train.labels.index_select(0, &idx);
        tch::manual_seed(step_seed(t.seed, step));
        let mut lam = 1.0;
        if t.mixup > 0.0 || t.cutmix > 0.0 {
            let mut g = SplitMix64::derive(t.seed, 3, step);
            (images, lam) = mix(&images, t.mixup, t.cutmix, &mut g);
        }
        let xs = batch_input(&images, &cfg.task, true);
        let logits = amp::autocast(precision, || model.forward_t(&xs, true)).to_kind(Kind::Float);
        let ce = |ys: &Tensor| logits.cross_entropy_loss::<Tensor>(ys, None, Reduction::Mean, -100, cfg.optim.label_smoothing);
        let loss = if lam < 1.0 {
            ce(&labels) * lam + ce(&labels.flip([0])) * (1.0 - lam)
        } else {
            ce(&labels)
        };

        opt.zero_grad()?;
        let fp16 = precision == Precision::Fp16;
        if fp16 {
            (&loss * state.loss_scale).backward();
        } else {
            loss.backward();
        }
        let factor = schedule::factor(&cfg.schedule, step, total, steps_per_epoch);
        let lr_now = cfg.optim.lr * factor;
        if fp16 {
            opt.scale_grads(1.0 / state.loss_scale)?;
            let norm = opt.clip_grad_norm(if cfg.optim.clip_norm > 0.0 { cfg.optim.clip_norm } else { f64::MAX })?;
            if norm.double_value(&[]).is_finite() {
                opt.step(factor)?;
                if opt.t.is_multiple_of(2000) {
                    state.loss_scale *= 2.0;
                }
            } else {
                state.loss_scale /= 2.0;
            }
        } else {
            if cfg.optim.clip_norm > 0.0 {
                let _ = opt.clip_grad_norm(cfg.optim.clip_norm)?;
            }
            opt.step(factor)?;
        }
        tch::no_grad(|| {
            loss_sum += loss.detach() * bs as f64;
            correct_sum += logits.argmax(-1, false).eq_tensor(&labels).sum(Kind::Float);
        });
        seen += bs;
        step += 1;
        let check_now = !device.is_cuda() || step.is_multiple_of(50);
        if check_now && !loss.double_value(&[]).is_finite() {
            bail!(
                "loss became {} at step {step}; stopped. The last good checkpoint (step {}) is kept in `{}`",
                loss.double_value(&[]),
                state.step,
                last_dir.display()
            );
        }
        let progress = || {
            let n = seen as f64;
            format!(
                "loss {:.3} acc {:.1}% lr {lr_now:.2e} {:.0} img/s",
                loss_sum.double_value(&[]) / n,
                100.0 * correct_sum.double_value(&[]) / n,
                n / segment.elapsed().as_secs_f64().max(1e-9)
            )
        };
        if let Some(b) = &bar {
            b.inc(1);
            if step.is_multiple_of(10) {
                b.set_message(progress());
            }
        } else if last_line.elapsed().as_secs() >= 30 {
            // Without a terminal, a plain line every 30 s between evaluations.
            eprintln!(
                "step {step}/{total} epoch {:.2} | {} | {}",
                step as f64 / steps_per_epoch as f64,
                progress(),
                clock(started.elapsed().as_secs_f64())
            );
            last_line = Instant::now();
        }
        let out_of_time = deadline.is_some_and(|d| started.elapsed().as_secs_f64() >= d);
        if step.is_multiple_of(eval_every) || step == total || out_of_time {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            let n = seen.max(1) as f64;
            let (train_loss, train_acc) = (loss_sum.double_value(&[]) / n, correct_sum.double_value(&[]) / n);
            state.train_s += segment.elapsed().as_secs_f64();
            if !train_loss.is_finite() {
                bail!(
                    "loss became {train_loss} before step {step}; stopped. The last good checkpoint (step {}) is kept in `{}`",
                    state.step,
                    last_dir.display()
                );
            }
            let (val_loss, val_acc) = evaluate(model.as_ref(), &data.val, &cfg.task, eval_bs, val_limit, precision);
            state.step = step;
            state.t = opt.t;
            state.elapsed_s = started.elapsed().as_secs_f64();
            let improved = val_acc > state.best_val_acc;
            if improved {
                state.best_val_acc = val_acc;
                state.best_step = step;
            }
            let m = Metrics {
                step,
                epoch: step as f64 / steps_per_epoch as f64,
                lr: lr_now,
                train_loss,
                train_acc,
                val_loss,
                val_acc,
                img_per_s: throughput(&state, step * bs as u64),
                wall_s: state.elapsed_s,
            };
            // `last` is written last: a run killed before it resumes from the previous `last`,
            // drops this metrics line (truncate_metrics) and redoes the steps, rewriting `best`
            // alike; written first, it would leave a step without its line or its best weights.
            append_line(&metrics_path, &serde_json::to_string(&m)?)?;
            if improved {
                checkpoint::save(&best_dir, &vs, None, &state)?;
            }
            checkpoint::save(&last_dir, &vs, Some(&opt), &state)?;
            eprintln!(
                "step {step}/{total} epoch {:.2} lr {lr_now:.2e} | train loss {train_loss:.4} acc {:.2}% | val loss {val_loss:.4} acc {:.2}%{} | {:.0} img/s | {}",
                m.epoch,
                100.0 * train_acc,
                100.0 * val_acc,
                if improved { " *" } else { "" },
                m.img_per_s,
                clock(state.elapsed_s)
            );
            (loss_sum, correct_sum, seen) = (zero_f(), zero_f(), 0);
            segment = Instant::now();
            if out_of_time && step < total {
                eprintln!(
                    "time budget of {} minutes spent; stopping at step {step}",
                    t.max_minutes.unwrap_or_default()
                );
                stopped_early = true;
                break;
            }
        }
    }
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }

    let best = checkpoint::load(&best_dir, &mut vs, None).context("no best checkpoint to test")?;
    let (test_loss, test_acc) = evaluate(model.as_ref(), &data.test, &cfg.task, eval_bs, None, precision);
    eprintln!(
        "test accuracy {:.2}% (best val {:.2}% at step {}){}",
        100.0 * test_acc,
        100.0 * best.best_val_acc,
        best.best_step,
        if stopped_early { ", stopped early by the time budget" } else { "" }
    );
    let record = RunRecord {
        preset: opts.preset.clone(),
        model: cfg.model.name().to_string(),
        task: serde_json::to_string(&cfg.task.name)?.trim_matches('"').to_string(),
        paper_figure: cfg.paper.as_ref().and_then(|p| p.figure),
        paper_setting: cfg.paper.as_ref().map(|p| p.setting.clone()),
        best_val_acc: state.best_val_acc,
        best_step: state.best_step,
        test_acc,
        test_loss,
        params,
        steps: state.step,
        epochs: state.step as f64 / steps_per_epoch as f64,
        img_per_s: throughput(&state, state.step * bs as u64),
        device: device_name(device),
        precision,
        wall_s: started.elapsed().as_secs_f64(),
        seed: t.seed,
        commit: env!("PIXELSEQ_COMMIT").to_string(),
        date: today(),
    };
    write_atomic(&dir.join("result.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
    Ok(record)
}

fn throughput(state: &checkpoint::State, images: u64) -> f64 {
    images as f64 / state.train_s.max(1e-9)
}

fn epoch_bar(epoch: u64, steps: u64, done: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(indicatif::ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg} ETA {eta}").expect("valid template"));
    bar.set_prefix((epoch + 1).to_string());
    bar.set_position(done);
    bar
}

/// A readable device name for records.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}

fn clock(s: f64) -> String {
    let s = s as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Writes a file through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("failed to write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("failed to write `{}`", path.display()))?;
    Ok(())
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("failed to open `{}`", path.display()))?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// Drops metric lines written after the checkpoint a run resumes from.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<Metrics>(l).is_ok_and(|m| m.step <= step))
        .collect();
    write_atomic(path, (kept.join("\n") + if kept.is_empty() { "" } else { "\n" }).as_bytes())
}

/// Today's date (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
