//! What the trainer shows while it runs: the running training loss and accuracy since the last
//! evaluation ([`Tally`]), on a progress bar per epoch when stderr is a terminal, else as a plain
//! line every 30 seconds ([`Progress`]), both with the time left; and the same for an evaluation
//! pass ([`EvalProgress`]).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::step::Outcome;

/// Seconds between plain progress lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(30);

/// Set in the ranks of a data-parallel run other than rank 0, which alone shows progress.
static SILENT: AtomicBool = AtomicBool::new(false);

/// Hides every progress bar and line of this process from now on.
pub fn silence() {
    SILENT.store(true, Ordering::Relaxed);
}

/// Whether this process shows progress (see [`silence`]).
pub fn shown() -> bool {
    !SILENT.load(Ordering::Relaxed)
}

/// Training loss and accuracy summed on the device since the last evaluation (no host sync per step).
pub struct Tally {
    loss_sum: Tensor,
    correct_sum: Tensor,
    seen: i64,
    since: Instant,
    /// Whether the steps classify (a pretrainer's have no accuracy).
    classifies: bool,
}

impl Tally {
    pub fn new(device: Device, classifies: bool) -> Tally {
        Tally {
            loss_sum: Tensor::zeros([], (Kind::Float, device)),
            correct_sum: Tensor::zeros([], (Kind::Float, device)),
            seen: 0,
            since: Instant::now(),
            classifies,
        }
    }

    /// Adds one step's outcome over `n` images.
    pub fn add(&mut self, out: &Outcome, n: i64) {
        tch::no_grad(|| {
            self.loss_sum += &out.loss * n as f64;
            self.correct_sum += &out.correct;
        });
        self.seen += n;
    }

    /// Summed loss, correct images and images seen (reads the device).
    pub fn sums(&self) -> (f64, f64, i64) {
        (self.loss_sum.double_value(&[]), self.correct_sum.double_value(&[]), self.seen)
    }

    /// Mean loss and accuracy (`None` for a pretrainer) of the images seen (reads the device).
    pub fn means(&self) -> (f64, Option<f64>) {
        let n = self.seen.max(1) as f64;
        let acc = self.classifies.then(|| self.correct_sum.double_value(&[]) / n);
        (self.loss_sum.double_value(&[]) / n, acc)
    }

    /// Whether the steps tallied classify.
    pub fn classifies(&self) -> bool {
        self.classifies
    }

    /// Training images per second since the tally started (`None` before the first step).
    pub fn img_per_s(&self) -> Option<f64> {
        (self.seen > 0).then(|| self.seen as f64 / self.seconds().max(1e-9))
    }

    /// Seconds of training since the tally started.
    pub fn seconds(&self) -> f64 {
        self.since.elapsed().as_secs_f64()
    }

    /// "loss … acc …% lr … … img/s" (no accuracy for a pretrainer).
    pub fn line(&self, lr: f64) -> String {
        let (loss, acc) = self.means();
        format!(
            "loss {loss:.3}{} lr {lr:.2e} {:.0} img/s",
            acc.map_or(String::new(), |a| format!(" acc {:.1}%", 100.0 * a)),
            self.seen as f64 / self.seconds().max(1e-9)
        )
    }
}

/// The progress display of a run.
pub struct Progress {
    terminal: bool,
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
    steps_per_epoch: u64,
    total: u64,
}

impl Progress {
    pub fn new(steps_per_epoch: u64, total: u64) -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            last_line: Instant::now(),
            steps_per_epoch,
            total,
        }
    }

    /// After optimizer step `step` (1-based count of steps done): advance the bar, or print a
    /// plain line when 30 s have passed; `wall_s` is the run's wall time so far and `left_s` the
    /// estimated time to its end.
    pub fn step(&mut self, step: u64, tally: &Tally, lr: f64, wall_s: f64, left_s: f64) {
        if !shown() {
            return;
        }
        if self.terminal {
            let spe = self.steps_per_epoch;
            let bar = self.bar.get_or_insert_with(|| epoch_bar((step - 1) / spe, spe, (step - 1) % spe));
            bar.inc(1);
            if step.is_multiple_of(10) {
                bar.set_message(format!("{} | run ends in {}", tally.line(lr), clock(left_s)));
            }
        } else if self.last_line.elapsed() >= LINE_EVERY {
            eprintln!(
                "step {step}/{} epoch {:.2} | {} | {} | ends in {}",
                self.total,
                step as f64 / self.steps_per_epoch as f64,
                tally.line(lr),
                clock(wall_s),
                clock(left_s)
            );
            self.last_line = Instant::now();
        }
    }

    /// Clears the bar before a line of its own is printed (an evaluation, the end).
    pub fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// The progress display of one evaluation pass over `total` images.
pub struct EvalProgress {
    what: String,
    total: i64,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl EvalProgress {
    /// `what` names the pass in messages ("validation", "test").
    pub fn new(what: &str, total: i64) -> EvalProgress {
        let bar = (shown() && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} images ETA {eta}").expect("valid template"),
            );
            bar.set_prefix(what.to_string());
            bar
        });
        EvalProgress {
            what: what.to_string(),
            total,
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// After `done` of the images are scored.
    pub fn update(&mut self, done: i64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
        } else if shown() && self.last_line.elapsed() >= LINE_EVERY {
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "{} {done}/{} images | {rate:.0} img/s | ends in {}",
                self.what,
                self.total,
                clock((self.total - done) as f64 / rate.max(1e-9))
            );
            self.last_line = Instant::now();
        }
    }

    /// Images scored per second.
    pub fn rate(&self) -> f64 {
        self.total as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

impl Drop for EvalProgress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn epoch_bar(epoch: u64, steps: u64, done: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(indicatif::ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg} ETA {eta}").expect("valid template"));
    bar.set_prefix((epoch + 1).to_string());
    bar.set_position(done);
    bar
}

/// Seconds as H:MM:SS.
pub fn clock(s: f64) -> String {
    let s = s as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
