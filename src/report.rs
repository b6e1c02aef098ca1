//! `pixelseq report`: a results table and plots from finished runs.
//!
//! ```text
//! pixelseq report [RUN_DIR_OR_FOLDER...] [--out results/report] [--bench bench.json] [--readme README.md]
//! ```
//!
//! Each argument is a run directory written by `pixelseq train` (it holds `result.json`,
//! `metrics.jsonl` and `config.toml`) or a folder searched recursively for them (default:
//! `results/`; unfinished runs found by the search, those without `result.json`, are skipped with
//! a note). The report goes to `--out`:
//! - `results.md`: one row per run (model, preset, task, the paper's figure and setting, our best
//!   validation and test accuracy, parameters, training img/s, device, wall time, date, commit);
//! - `curves.png`/`.svg`: validation accuracy against epoch and against wall time, a line per run;
//! - `accuracy_vs_throughput.png`/`.svg`: test accuracy against training img/s (log scale);
//! - `throughput.png`/`.svg` (with `--bench FILE`): training and inference img/s against sequence
//!   length, a line per model and implementation, from a benchmark JSON array of objects
//!   `{model, preset, seq_len, batch, train_img_per_s, infer_img_per_s, peak_mem_mb, device, impl}`.
//!
//! `--readme FILE` replaces the text between `<!-- results:start -->` and `<!-- results:end -->`
//! in FILE with the table and links to the PNG plots (relative to FILE), written atomically.
//! Every number shown comes from a run's `result.json` (or the bench file); nothing is typed in.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Component, Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Paper;
use crate::train::run::{write_atomic, Metrics, RunRecord};

/// The line after which the generated block starts in a README.
pub const START_MARKER: &str = "<!-- results:start -->";
/// The line before which the generated block ends in a README.
pub const END_MARKER: &str = "<!-- results:end -->";

#[derive(Args)]
pub struct ReportArgs {
    /// Run directories, or folders searched recursively for them [default: results].
    pub runs: Vec<PathBuf>,
    /// Folder for results.md and the plots.
    #[arg(long, default_value = "results/report")]
    pub out: PathBuf,
    /// Benchmark JSON (an array of {model, preset, seq_len, batch, train_img_per_s,
    /// infer_img_per_s, peak_mem_mb, device, impl}) for the speed table and the
    /// throughput-vs-length plot (repeatable: one file per device).
    #[arg(long)]
    pub bench: Vec<PathBuf>,
    /// Replace the text between `<!-- results:start -->` and `<!-- results:end -->` in this file
    /// with the table and plot links.
    #[arg(long)]
    pub readme: Option<PathBuf>,
}

/// One finished run, read from its directory.
pub struct Run {
    pub dir: PathBuf,
    pub record: RunRecord,
    /// The lines of `metrics.jsonl`, in order.
    pub metrics: Vec<Metrics>,
    /// The `[paper]` table of `config.toml`.
    pub paper: Option<Paper>,
    /// `task.permute` of `config.toml`: the seed of the fixed pixel permutation, if any.
    pub permute: Option<u64>,
    /// Name in plot legends: the preset (else the model), with the directory name where two
    /// runs would share it.
    pub label: String,
}

/// The parts of `config.toml` a report reads. The rest (model, optimizer) is left alone, so runs
/// stay readable when a model's config gains or loses a field.
#[derive(Deserialize)]
struct ConfigView {
    paper: Option<Paper>,
    task: TaskView,
}

#[derive(Deserialize)]
struct TaskView {
    permute: Option<u64>,
}

/// One measurement of `pixelseq bench` (one element of the bench JSON array).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchEntry {
    pub model: String,
    #[serde(default)]
    pub preset: Option<String>,
    pub seq_len: i64,
    pub batch: i64,
    /// `null` where the configuration did not run (e.g. out of memory).
    #[serde(default)]
    pub train_img_per_s: Option<f64>,
    #[serde(default)]
    pub infer_img_per_s: Option<f64>,
    #[serde(default)]
    pub peak_mem_mb: Option<f64>,
    pub device: String,
    /// "pixelseq" or "pytorch".
    #[serde(rename = "impl")]
    pub implementation: String,
}

/// A plot written as `<stem>.png` and `<stem>.svg`.
pub struct Plot {
    pub stem: &'static str,
    pub title: &'static str,
}

/// What `generate` wrote.
pub struct Report {
    pub runs: Vec<Run>,
    pub plots: Vec<Plot>,
    /// pixelseq beside PyTorch, one row per device, preset, length and batch of the bench files.
    pub speed: Vec<SpeedRow>,
}

/// Runs the `report` subcommand.
pub fn run_cli(a: ReportArgs) -> Result<()> {
    let inputs = if a.runs.is_empty() {
        vec![PathBuf::from("results")]
    } else {
        a.runs
    };
    let report = generate(&inputs, &a.out, &a.bench)?;
    eprintln!(
        "{} runs → {}",
        report.runs.len(),
        std::iter::once("results.md".to_string())
            .chain(report.plots.iter().map(|p| format!("{}.png/.svg", p.stem)))
            .map(|f| a.out.join(f).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(readme) = &a.readme {
        update_readme(readme, &report, &a.out)?;
        eprintln!("updated the results section of {}", readme.display());
    }
    Ok(())
}

/// Reads the runs found under `inputs`, then writes `results.md` and the plots into `out`.
pub fn generate(inputs: &[PathBuf], out: &Path, bench: &[PathBuf]) -> Result<Report> {
    let mut runs = find_runs(inputs)?.iter().map(|d| read_run(d)).collect::<Result<Vec<_>>>()?;
    let bench: Vec<BenchEntry> = bench.iter().map(|p| read_bench(p)).collect::<Result<Vec<_>>>()?.concat();
    runs.sort_by(|a, b| {
        (&a.record.task, &a.record.model, &a.record.preset, &a.record.date, &a.dir).cmp(&(
            &b.record.task,
            &b.record.model,
            &b.record.preset,
            &b.record.date,
            &b.dir,
        ))
    });
    assign_labels(&mut runs);

    std::fs::create_dir_all(out).with_context(|| format!("failed to create `{}`", out.display()))?;
    let mut plots = vec![
        Plot {
            stem: "curves",
            title: "Validation accuracy by epoch and by wall time",
        },
        Plot {
            stem: "accuracy_vs_throughput",
            title: "Test accuracy against training throughput",
        },
    ];
    save(&Curves(&runs), out, plots[0].stem)?;
    save(&AccuracyVsThroughput(&runs), out, plots[1].stem)?;
    let curves = lengths_curves(&bench);
    if !curves.is_empty() {
        plots.push(Plot {
            stem: "throughput",
            title: "Throughput against sequence length",
        });
        save(&ThroughputVsLength(&curves), out, "throughput")?;
    }
    let report = Report {
        runs,
        plots,
        speed: speed_rows(&bench),
    };
    let page = format!(
        "# pixelseq results\n\nGenerated by `pixelseq report` from {} run(s).\n\n{}",
        report.runs.len(),
        report.markdown("")
    );
    write_atomic(&out.join("results.md"), page.as_bytes())?;
    Ok(report)
}

/// Run directories named by `inputs`: each is a run directory itself (it holds `result.json`,
/// `config.toml` or `metrics.jsonl`) or a folder searched recursively; the search skips
/// unfinished runs (no `result.json`) with a note.
pub fn find_runs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn is_run(dir: &Path) -> bool {
        ["result.json", "config.toml", "metrics.jsonl"]
            .iter()
            .any(|f| dir.join(f).is_file())
    }
    fn search(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("failed to read folder `{}`", dir.display()))?
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("failed to read folder `{}`", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if !e.file_type()?.is_dir() {
                continue;
            }
            let sub = e.path();
            if !is_run(&sub) {
                search(&sub, found)?;
            } else if sub.join("result.json").is_file() {
                found.push(sub);
            } else {
                eprintln!("skipping unfinished run {} (no result.json)", sub.display());
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    for input in inputs {
        if !input.exists() {
            bail!("`{}` not found", input.display());
        }
        if !input.is_dir() {
            bail!(
                "`{}` is not a folder; pass run directories or folders holding them",
                input.display()
            );
        }
        if is_run(input) {
            found.push(input.clone());
        } else {
            let before = found.len();
            search(input, &mut found)?;
            if found.len() == before {
                bail!("no finished runs (folders with result.json) under `{}`", input.display());
            }
        }
    }
    found.dedup();
    Ok(found)
}

/// Reads `result.json`, `metrics.jsonl` and `config.toml` of one run directory.
pub fn read_run(dir: &Path) -> Result<Run> {
    let record: RunRecord = read_json(&dir.join("result.json"))?;
    let metrics_path = dir.join("metrics.jsonl");
    let text = read_text(&metrics_path)?;
    let metrics = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| json_error(&metrics_path, i + 1, &e)))
        .collect::<Result<Vec<Metrics>>>()?;
    let config_path = dir.join("config.toml");
    let text = read_text(&config_path)?;
    let config: ConfigView = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| text[..s.start].matches('\n').count() + 1);
        anyhow!(
            "malformed TOML in `{}` at line {line}: {}",
            config_path.display(),
            e.message().trim()
        )
    })?;
    Ok(Run {
        dir: dir.to_path_buf(),
        label: record.preset.clone().unwrap_or_else(|| record.model.clone()),
        record,
        metrics,
        paper: config.paper,
        permute: config.task.permute,
    })
}

/// Reads a benchmark JSON file.
pub fn read_bench(path: &Path) -> Result<Vec<BenchEntry>> {
    let entries: Vec<BenchEntry> = read_json(path)?;
    if entries.is_empty() {
        bail!("bench file `{}` holds no measurements", path.display());
    }
    Ok(entries)
}

fn read_text(path: &Path) -> Result<String> {
    if !path.is_file() {
        bail!("`{}` not found (is the run finished?)", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("failed to read `{}`", path.display()))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| json_error(path, e.line(), &e))
}

/// "malformed JSON in `path` at line N: message", with serde_json's own position suffix dropped
/// (for JSON Lines, `line` is the file's line, not the line within one record).
fn json_error(path: &Path, line: usize, e: &serde_json::Error) -> anyhow::Error {
    let text = e.to_string();
    let message = text
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&text);
    anyhow!("malformed JSON in `{}` at line {line}: {message}", path.display())
}

/// Labels are presets (else models); a label two runs share gets the directory name added.
fn assign_labels(runs: &mut [Run]) {
    let mut counts = BTreeMap::<String, usize>::new();
    for r in runs.iter() {
        *counts.entry(r.label.clone()).or_default() += 1;
    }
    for r in runs.iter_mut() {
        if counts[&r.label] > 1 {
            let name = r.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            r.label = format!("{} ({name})", r.label);
        }
    }
}

impl Run {
    /// The paper's model name where the config has one, else the zoo name.
    fn model_name(&self) -> &str {
        self.paper.as_ref().map_or(&self.record.model, |p| &p.model)
    }

    fn task_name(&self) -> String {
        match self.permute {
            Some(seed) => format!("{}, permuted (seed {seed})", self.record.task),
            None => self.record.task.clone(),
        }
    }
}

impl Report {
    /// The results table, a note on what the numbers are, and the plots as images whose paths
    /// start with `prefix` (empty, or a relative folder ending in `/`).
    pub fn markdown(&self, prefix: &str) -> String {
        let mut s = String::from(
            "| Model | Preset | Task | Paper | Paper setting | Best val | Test | Test − paper | Parameters | Train img/s | Device | Wall time | Date | Commit |\n\
             |---|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|---|---|\n",
        );
        for r in &self.runs {
            let rec = &r.record;
            let pct = |v: f64| format!("{v:.2}%");
            let cells = [
                cell(r.model_name()),
                cell(rec.preset.as_deref().unwrap_or("—")),
                cell(&r.task_name()),
                rec.paper_figure.map_or("—".into(), pct),
                cell(rec.paper_setting.as_deref().unwrap_or("—")),
                pct(100.0 * rec.best_val_acc),
                pct(100.0 * rec.test_acc),
                rec.paper_figure.map_or("—".into(), |f| format!("{:+.2}", 100.0 * rec.test_acc - f)),
                thousands(rec.params),
                thousands(rec.img_per_s.round() as i64),
                cell(&rec.device),
                duration(rec.wall_s),
                cell(&rec.date),
                format!("`{}`", cell(&rec.commit)),
            ];
            s += &format!("| {} |\n", cells.join(" | "));
        }
        s += "\nBest val: the best validation accuracy during training. Test: the CIFAR-10 test split scored with the \
              checkpoint of best validation accuracy. Paper: the accuracy the paper reports for the setting. Train \
              img/s: training images per second of training steps (evaluation excluded), over the whole run.\n\n";
        if !self.speed.is_empty() {
            s += &self.speed_markdown();
        }
        for p in &self.plots {
            s += &format!("![{}]({prefix}{}.png)\n\n", p.title, p.stem);
        }
        s.trim_end().to_string() + "\n"
    }

    /// The bench table: throughput of both implementations, their ratio, peak memory.
    fn speed_markdown(&self) -> String {
        let mut s = String::from(
            "| Device | Preset | L | Batch | Train img/s | PyTorch | Ratio | Inference img/s | PyTorch | Ratio | Peak MiB | PyTorch |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let num = |v: Option<f64>| match v {
            Some(v) if v >= 100.0 => thousands(v.round() as i64),
            Some(v) => format!("{v:.1}"),
            None => "n/a".into(),
        };
        let ratio = |r: Option<f64>| r.map_or("—".into(), |r| format!("{r:.2}"));
        for r in &self.speed {
            let cells = [
                cell(&r.device),
                cell(&r.label),
                r.seq_len.to_string(),
                r.batch.to_string(),
                num(r.ours[0]),
                num(r.theirs[0]),
                ratio(r.ratio(0)),
                num(r.ours[1]),
                num(r.theirs[1]),
                ratio(r.ratio(1)),
                num(r.ours[2]),
                num(r.theirs[2]),
            ];
            s += &format!("| {} |\n", cells.join(" | "));
        }
        s + "\nSpeed: `pixelseq bench` beside the same model in PyTorch (`bench/reference/`) in the same run; \
             Ratio = pixelseq / PyTorch images per second (above 1: pixelseq is faster). n/a: the configuration \
             did not run (the reason is in the bench file's note).\n\n"
    }
}

/// A table cell: pipes escaped, line breaks folded.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// 1234567 → "1,234,567".
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Seconds as "1h 05m", "12m 30s" or "45s".
fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// Replaces the block between the results markers of `readme` with the report, linking the
/// plots relative to the README's folder; the file is rewritten atomically.
pub fn update_readme(readme: &Path, report: &Report, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(readme).with_context(|| format!("failed to read `{}`", readme.display()))?;
    let base = readme.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut prefix = relative_path(base, out)?;
    if !prefix.is_empty() {
        prefix.push('/');
    }
    let updated = replace_block(&text, &report.markdown(&prefix)).with_context(|| format!("cannot update `{}`", readme.display()))?;
    write_atomic(readme, updated.as_bytes())
}

/// `text` with everything between the two markers replaced by `block`.
pub fn replace_block(text: &str, block: &str) -> Result<String> {
    let start = text
        .find(START_MARKER)
        .ok_or_else(|| anyhow!("no `{START_MARKER}` marker; add `{START_MARKER}` and `{END_MARKER}` where the results go"))?
        + START_MARKER.len();
    let end = start
        + text[start..]
            .find(END_MARKER)
            .ok_or_else(|| anyhow!("no `{END_MARKER}` marker after `{START_MARKER}`"))?;
    Ok(format!("{}\n{}\n{}", &text[..start], block.trim_end(), &text[end..]))
}

/// The path of `to` relative to the folder `from`, with `/` separators ("" when they are the same).
fn relative_path(from: &Path, to: &Path) -> Result<String> {
    let canon = |p: &Path| p.canonicalize().with_context(|| format!("failed to resolve `{}`", p.display()));
    let (from, to) = (canon(from)?, canon(to)?);
    let (a, b): (Vec<Component>, Vec<Component>) = (from.components().collect(), to.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let parts: Vec<String> = std::iter::repeat_n("..".to_string(), a.len() - common)
        .chain(b[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()))
        .collect();
    Ok(parts.join("/"))
}

// ---------------------------------------------------------------------------------------------
// Plots

/// Line colours, cycled: matplotlib's tab20, its ten strong colours first, then their light pairs.
const COLORS: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Something drawn onto one canvas of a fixed size, as PNG and SVG alike.
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// Text is drawn with DejaVu Sans embedded in the binary: no system font lookup.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ok = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok();
        assert!(ok, "the embedded DejaVu Sans is a valid font");
    });
}

/// Writes `<stem>.svg` and `<stem>.png` into `out`, each atomically.
fn save(fig: &impl Figure, out: &Path, stem: &str) -> Result<()> {
    register_font();
    let (w, h) = fig.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        fig.draw(&root).map_err(|e| anyhow!("failed to draw {stem}.svg: {e}"))?;
        root.present().map_err(|e| anyhow!("failed to draw {stem}.svg: {e}"))?;
    }
    write_atomic(&out.join(format!("{stem}.svg")), svg.as_bytes())?;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        fig.draw(&root).map_err(|e| anyhow!("failed to draw {stem}.png: {e}"))?;
        root.present().map_err(|e| anyhow!("failed to draw {stem}.png: {e}"))?;
    }
    let image = image::RgbImage::from_raw(w, h, rgb).expect("the buffer holds w × h RGB pixels");
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .with_context(|| format!("failed to encode {stem}.png"))?;
    write_atomic(&out.join(format!("{stem}.png")), &png)
}

/// `lo..hi` widened by `pad` of its span on each side, never empty.
fn padded(lo: f64, hi: f64, pad: f64) -> std::ops::Range<f64> {
    let span = (hi - lo).max(1e-9);
    (lo - pad * span)..(hi + pad * span)
}

/// The range of accuracies in percent, padded and kept inside 0..100.
fn accuracy_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.0..100.0;
    }
    let r = padded(lo, hi.max(lo + 1.0), 0.08);
    r.start.max(0.0)..r.end.min(100.0)
}

/// The range of positive values on a log axis: a factor 1.5 of room on both sides.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 1.0..10.0;
    }
    (lo / 1.5)..(hi * 1.5)
}

/// Ticks of a log axis over `range`: 1, 2 and 5 times powers of ten (every integer multiple
/// where that gives fewer than three).
fn log_ticks(range: &std::ops::Range<f64>) -> Vec<f64> {
    let decades = range.start.log10().floor() as i32..=range.end.log10().ceil() as i32;
    let ticks = |multiples: &[f64]| -> Vec<f64> {
        decades
            .clone()
            .flat_map(|e| multiples.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| range.contains(v))
            .collect()
    };
    let coarse = ticks(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        coarse
    } else {
        ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

/// 250 → "250", 2500 → "2.5k", 40000 → "40k", 1.2e6 → "1.2M".
fn compact(v: f64) -> String {
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{scaled:.1}");
    format!("{}{suffix}", text.strip_suffix(".0").unwrap_or(&text))
}

/// Formats accuracy ticks with as many decimals as the span of the axis needs.
fn percent_label(range: &std::ops::Range<f64>) -> impl Fn(&f64) -> String {
    let span = range.end - range.start;
    let decimals = if span >= 8.0 {
        0
    } else if span >= 0.8 {
        1
    } else {
        2
    };
    move |v| format!("{v:.decimals$}")
}

/// Validation accuracy by epoch (left) and by wall time (right), a line per run.
struct Curves<'a>(&'a [Run]);

impl Figure for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        (1400, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let runs = self.0;
        let points = || runs.iter().flat_map(|r| r.metrics.iter());
        let y = accuracy_range(points().map(|m| 100.0 * m.val_acc));
        let max_wall = points().map(|m| m.wall_s).fold(0.0, f64::max);
        let (unit, scale) = if max_wall >= 7200.0 { ("hours", 3600.0) } else { ("minutes", 60.0) };
        let max_epoch = points().map(|m| m.epoch).fold(0.0, f64::max);
        let y_label = percent_label(&y);
        let (left, right) = root.split_horizontally(self.size().0 / 2);
        let panels = [
            (&left, "Validation accuracy by epoch", "epoch".to_string(), max_epoch, 1.0, true),
            (
                &right,
                "Validation accuracy by wall time",
                format!("wall time ({unit})"),
                max_wall / scale,
                scale,
                false,
            ),
        ];
        for (area, caption, x_desc, x_max, x_scale, by_epoch) in panels {
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(0.0..padded(0.0, x_max.max(1e-3), 0.03).end, y.clone())?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc("validation accuracy (%)")
                .x_label_formatter(&|v| compact(*v))
                .y_label_formatter(&y_label)
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 15))
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for (i, r) in runs.iter().enumerate() {
                let c = color(i);
                let series = r
                    .metrics
                    .iter()
                    .map(|m| (if by_epoch { m.epoch } else { m.wall_s / x_scale }, 100.0 * m.val_acc));
                let marker = if r.metrics.len() <= 60 { 3 } else { 0 };
                chart
                    .draw_series(LineSeries::new(series, c.stroke_width(2)).point_size(marker))?
                    .label(r.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            }
            if by_epoch && !runs.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .label_font(("sans-serif", 13))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.4))
                    .draw()?;
            }
        }
        Ok(())
    }
}

/// Test accuracy against training throughput (log scale), a labelled point per run.
struct AccuracyVsThroughput<'a>(&'a [Run]);

impl Figure for AccuracyVsThroughput<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let runs: Vec<&Run> = self.0.iter().filter(|r| r.record.img_per_s > 0.0).collect();
        let x = log_range(runs.iter().map(|r| r.record.img_per_s));
        let y = accuracy_range(runs.iter().map(|r| 100.0 * r.record.test_acc));
        let mut chart = ChartBuilder::on(root)
            .caption("Test accuracy against training throughput", ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x.clone().log_scale().with_key_points(log_ticks(&x)), y.clone())?;
        chart
            .configure_mesh()
            .x_desc("training throughput (images/s, log scale)")
            .y_desc("test accuracy (%)")
            .x_label_formatter(&|v| compact(*v))
            .y_label_formatter(&percent_label(&y))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, r) in self.0.iter().enumerate() {
            if r.record.img_per_s <= 0.0 {
                continue;
            }
            let c = color(i);
            let point = (r.record.img_per_s, 100.0 * r.record.test_acc);
            chart.draw_series(std::iter::once(
                EmptyElement::at(point)
                    + Circle::new((0, 0), 6, c.filled())
                    + Text::new(r.label.clone(), (9, -16), ("sans-serif", 13).into_font()),
            ))?;
        }
        Ok(())
    }
}

impl BenchEntry {
    /// What a line stands for: the preset (two presets of one model are two lines), else the model.
    fn label(&self) -> &str {
        self.preset.as_deref().unwrap_or(&self.model)
    }
}

/// One configuration of a bench file with both implementations' figures (`None`: did not run).
pub struct SpeedRow {
    pub device: String,
    pub label: String,
    pub seq_len: i64,
    pub batch: i64,
    pub ours: [Option<f64>; 3],
    pub theirs: [Option<f64>; 3],
}

impl SpeedRow {
    /// pixelseq / PyTorch throughput, training (0) or inference (1).
    fn ratio(&self, i: usize) -> Option<f64> {
        Some(self.ours[i]? / self.theirs[i]?)
    }
}

/// Pairs each pixelseq measurement with the PyTorch one of the same device, preset, length and
/// batch, in the order of the files.
fn speed_rows(entries: &[BenchEntry]) -> Vec<SpeedRow> {
    let figures = |e: &BenchEntry| [e.train_img_per_s, e.infer_img_per_s, e.peak_mem_mb];
    entries
        .iter()
        .filter(|e| e.implementation == "pixelseq")
        .map(|e| {
            let theirs = entries.iter().find(|t| {
                t.implementation == "pytorch" && (&t.device, t.label(), t.seq_len, t.batch) == (&e.device, e.label(), e.seq_len, e.batch)
            });
            SpeedRow {
                device: e.device.clone(),
                label: e.label().to_string(),
                seq_len: e.seq_len,
                batch: e.batch,
                ours: figures(e),
                theirs: theirs.map_or([None; 3], figures),
            }
        })
        .collect()
}

/// The measurements of devices benchmarked at two or more sequence lengths: the others make
/// points, not curves.
fn lengths_curves(entries: &[BenchEntry]) -> Vec<BenchEntry> {
    let mut lengths = BTreeMap::<&str, BTreeSet<i64>>::new();
    for e in entries {
        lengths.entry(&e.device).or_default().insert(e.seq_len);
    }
    entries.iter().filter(|e| lengths[e.device.as_str()].len() >= 2).cloned().collect()
}

/// Training (left) and inference (right) throughput against sequence length, log-log, a line per
/// preset × implementation: one colour per preset, solid for pixelseq, dashed for PyTorch.
struct ThroughputVsLength<'a>(&'a [BenchEntry]);

impl Figure for ThroughputVsLength<'_> {
    fn size(&self) -> (u32, u32) {
        (1400, 600)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let entries = self.0;
        let models: Vec<&str> = {
            let mut m: Vec<&str> = entries.iter().map(BenchEntry::label).collect();
            m.sort();
            m.dedup();
            m
        };
        let mut lines = BTreeMap::<(&str, &str), Vec<&BenchEntry>>::new();
        for e in entries {
            lines.entry((e.label(), e.implementation.as_str())).or_default().push(e);
        }
        for line in lines.values_mut() {
            line.sort_by_key(|e| e.seq_len);
        }
        let mut devices: Vec<&str> = entries.iter().map(|e| e.device.as_str()).collect();
        devices.sort();
        devices.dedup();
        let x = log_range(entries.iter().map(|e| e.seq_len as f64));
        let mut seq_lens: Vec<f64> = entries.iter().map(|e| e.seq_len as f64).collect();
        seq_lens.sort_by(f64::total_cmp);
        seq_lens.dedup();
        let (left, right) = root.split_horizontally(self.size().0 / 2);
        type Pick = fn(&BenchEntry) -> Option<f64>;
        let panels: [(&DrawingArea<DB, Shift>, &str, Pick); 2] = [
            (&left, "Training", |e| e.train_img_per_s),
            (&right, "Inference", |e| e.infer_img_per_s),
        ];
        for (area, what, pick) in panels {
            let y = log_range(entries.iter().filter_map(pick));
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{what} throughput ({})", devices.join(", ")), ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(
                    x.clone().log_scale().with_key_points(seq_lens.clone()),
                    y.clone().log_scale().with_key_points(log_ticks(&y)),
                )?;
            chart
                .configure_mesh()
                .x_desc("sequence length (log scale)")
                .y_desc("images/s (log scale)")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| compact(*v))
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 15))
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for ((model, implementation), line) in &lines {
                let c = color(models.iter().position(|m| m == model).unwrap_or(0));
                let points: Vec<(f64, f64)> = line.iter().filter_map(|e| pick(e).map(|v| (e.seq_len as f64, v))).collect();
                if points.is_empty() {
                    continue;
                }
                let style = c.stroke_width(2);
                let dashed = *implementation == "pytorch";
                let drawn = if dashed {
                    chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))?
                } else {
                    chart.draw_series(LineSeries::new(points.clone(), style))?
                };
                drawn.label(format!("{model} ({implementation})")).legend(move |(x, y)| {
                    let (gap_start, gap_end) = if dashed { (8, 13) } else { (10, 10) };
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (gap_start, 0)], style)
                        + PathElement::new(vec![(gap_end, 0), (21, 0)], style)
                });
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Precision;
    use crate::data::TaskConfig;

    /// A task table as a preset writes it, through the real `TaskConfig`.
    fn task(toml_text: &str) -> TaskConfig {
        toml::from_str(toml_text).expect("a valid [task] table")
    }

    fn record(preset: &str, task: &str, paper_figure: Option<f64>, test_acc: f64, img_per_s: f64) -> RunRecord {
        RunRecord {
            preset: Some(preset.into()),
            model: "s4d".into(),
            task: task.into(),
            paper_figure,
            paper_setting: paper_figure.map(|_| "LRA Image: grayscale | 1,024 pixels".into()),
            best_val_acc: test_acc + 0.01,
            best_step: 300,
            test_acc,
            test_loss: 0.5,
            params: 1_234_567,
            steps: 400,
            epochs: 4.0,
            img_per_s,
            device: "cuda:0".into(),
            precision: Precision::Bf16,
            wall_s: 3725.0,
            seed: 0,
            commit: "abc123def456".into(),
            date: "2025-11-26".into(),
        }
    }

    fn metrics(n: u64, final_acc: f64) -> Vec<Metrics> {
        (1..=n)
            .map(|i| Metrics {
                step: 100 * i,
                epoch: i as f64,
                lr: 1e-3,
                train_loss: 2.0 / i as f64,
                train_acc: 0.2 * i as f64 / n as f64,
                val_loss: 2.1 / i as f64,
                val_acc: final_acc * i as f64 / n as f64,
                img_per_s: 5000.0,
                wall_s: 900.0 * i as f64,
            })
            .collect()
    }

    /// Writes a run directory from the real structs; `record: None` leaves an unfinished run.
    fn write_run(dir: &Path, record: Option<&RunRecord>, metrics: &[Metrics], paper: Option<Paper>, task: TaskConfig) {
        #[derive(Serialize)]
        struct ConfigFile {
            #[serde(skip_serializing_if = "Option::is_none")]
            paper: Option<Paper>,
            task: TaskConfig,
            model: BTreeMap<String, String>,
        }
        std::fs::create_dir_all(dir).unwrap();
        let config = ConfigFile {
            paper,
            task,
            model: [("name".to_string(), "s4d".to_string())].into(),
        };
        std::fs::write(dir.join("config.toml"), toml::to_string(&config).unwrap()).unwrap();
        let lines: Vec<String> = metrics.iter().map(|m| serde_json::to_string(m).unwrap() + "\n").collect();
        std::fs::write(dir.join("metrics.jsonl"), lines.concat()).unwrap();
        if let Some(r) = record {
            std::fs::write(dir.join("result.json"), serde_json::to_string_pretty(r).unwrap()).unwrap();
        }
    }

    fn paper() -> Paper {
        Paper {
            model: "S4D (Gu et al. 2022)".into(),
            figure: Some(88.0),
            setting: "LRA Image: grayscale | 1,024 pixels".into(),
            source: "arXiv 2206.11893 Table 5".into(),
        }
    }

    /// Two finished runs (one permuted, one without a paper table) and one unfinished run under
    /// `root/results`, nested at different depths.
    fn fake_results(root: &Path) -> PathBuf {
        let results = root.join("results");
        write_run(
            &results.join("lra").join("run-a"),
            Some(&record("s4d-lra", "lra-image", Some(88.0), 0.8677, 5200.0)),
            &metrics(4, 0.87),
            Some(paper()),
            task("name = \"lra-image\""),
        );
        write_run(
            &results.join("run-b"),
            Some(&record("s4d-pscifar", "scifar", None, 0.6512, 900.0)),
            &metrics(3, 0.66),
            None,
            task("name = \"scifar\"\npermute = 7"),
        );
        write_run(
            &results.join("run-c"),
            None,
            &metrics(1, 0.3),
            Some(paper()),
            task("name = \"scifar\""),
        );
        results
    }

    fn bench_file(dir: &Path) -> PathBuf {
        let mut entries = Vec::new();
        for (model, speed) in [("s4d", 40_000.0), ("transformer", 9_000.0)] {
            for implementation in ["pixelseq", "pytorch"] {
                for seq_len in [256, 1024, 4096] {
                    let scale = 1024.0 / seq_len as f64 * if implementation == "pytorch" { 0.7 } else { 1.0 };
                    entries.push(BenchEntry {
                        model: model.into(),
                        preset: Some(format!("{model}-lra")),
                        seq_len,
                        batch: 64,
                        train_img_per_s: Some(speed * scale),
                        infer_img_per_s: (seq_len < 4096).then_some(3.0 * speed * scale),
                        peak_mem_mb: Some(1000.0),
                        device: "NVIDIA H100".into(),
                        implementation: implementation.into(),
                    });
                }
            }
        }
        let path = dir.join("bench.json");
        std::fs::write(&path, serde_json::to_string_pretty(&entries).unwrap()).unwrap();
        path
    }

    fn assert_png(path: &Path, size: (u32, u32)) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", path.display());
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), size);
        // Something besides the white background was drawn.
        assert!(img.to_rgb8().pixels().any(|p| p.0 != [255, 255, 255]));
    }

    fn assert_svg(path: &Path) {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.contains("<svg"), "{} is not an SVG", path.display());
        assert!(text.contains("<text"), "{} has no text", path.display());
    }

    #[test]
    fn report_writes_a_row_per_finished_run_and_every_plot() {
        let tmp = tempfile::tempdir().unwrap();
        let results = fake_results(tmp.path());
        let out = tmp.path().join("report");
        let report = generate(&[results], &out, &[bench_file(tmp.path())]).unwrap();
        assert_eq!(report.runs.len(), 2, "the unfinished run is skipped");

        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        let table = |header: &str| -> Vec<&str> {
            md.lines()
                .skip_while(|l| !l.starts_with(header))
                .skip(2)
                .take_while(|l| l.starts_with("| "))
                .collect()
        };
        let rows = table("| Model");
        assert_eq!(rows.len(), 2, "{md}");
        let speed = table("| Device");
        assert_eq!(speed.len(), 6, "{md}");
        assert_eq!(
            speed[0],
            "| NVIDIA H100 | s4d-lra | 256 | 64 | 160,000 | 112,000 | 1.43 | 480,000 | 336,000 | 1.43 | 1,000 | 1,000 |"
        );
        assert_eq!(
            speed[5],
            "| NVIDIA H100 | transformer-lra | 4096 | 64 | 2,250 | 1,575 | 1.43 | n/a | n/a | — | 1,000 | 1,000 |"
        );
        assert_eq!(
            rows[0],
            "| S4D (Gu et al. 2022) | s4d-lra | lra-image | 88.00% | LRA Image: grayscale \\| 1,024 pixels | 87.77% | 86.77% \
             | -1.23 | 1,234,567 | 5,200 | cuda:0 | 1h 02m | 2025-11-26 | `abc123def456` |"
        );
        assert_eq!(
            rows[1],
            "| s4d | s4d-pscifar | scifar, permuted (seed 7) | — | — | 66.12% | 65.12% | — | 1,234,567 | 900 | cuda:0 \
             | 1h 02m | 2025-11-26 | `abc123def456` |"
        );
        assert!(!md.contains("run-c"));
        for stem in ["curves", "accuracy_vs_throughput", "throughput"] {
            assert!(md.contains(&format!("]({stem}.png)")), "{md}");
            assert_svg(&out.join(format!("{stem}.svg")));
        }
        assert_png(&out.join("curves.png"), (1400, 560));
        assert_png(&out.join("accuracy_vs_throughput.png"), (900, 620));
        assert_png(&out.join("throughput.png"), (1400, 600));
        let curves = std::fs::read_to_string(out.join("curves.svg")).unwrap();
        assert!(
            curves.contains("s4d-lra") && curves.contains("s4d-pscifar"),
            "legend names each run"
        );
    }

    #[test]
    fn without_a_bench_file_there_is_no_throughput_plot() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        write_run(
            &run,
            Some(&record("s4d-lra", "lra-image", Some(88.0), 0.8, 100.0)),
            &metrics(2, 0.8),
            Some(paper()),
            task("name = \"lra-image\""),
        );
        let out = tmp.path().join("out");
        let report = generate(&[run], &out, &[]).unwrap();
        assert_eq!(report.plots.len(), 2);
        assert!(out.join("curves.png").is_file());
        assert!(!out.join("throughput.png").exists() && !out.join("throughput.svg").exists());
        assert!(!std::fs::read_to_string(out.join("results.md"))
            .unwrap()
            .contains("](throughput.png)"));
    }

    /// A device measured at one length gives table rows but no curve; a configuration PyTorch
    /// did not measure has no ratio.
    #[test]
    fn one_length_makes_rows_not_curves() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = |implementation: &str, preset: &str| BenchEntry {
            model: "fnet".into(),
            preset: Some(preset.into()),
            seq_len: 1024,
            batch: 8,
            train_img_per_s: Some(50.0),
            infer_img_per_s: Some(200.0),
            peak_mem_mb: Some(300.0),
            device: "cpu".into(),
            implementation: implementation.into(),
        };
        let entries = [
            entry("pixelseq", "fnet-lra"),
            entry("pytorch", "fnet-lra"),
            entry("pixelseq", "fnet-big"),
        ];
        let bench = tmp.path().join("bench.json");
        std::fs::write(&bench, serde_json::to_string(&entries).unwrap()).unwrap();
        let out = tmp.path().join("out");
        let report = generate(&[], &out, &[bench]).unwrap();
        assert!(!out.join("throughput.png").exists());
        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        assert!(
            md.contains("| cpu | fnet-lra | 1024 | 8 | 50.0 | 50.0 | 1.00 | 200 | 200 | 1.00 | 300 | 300 |"),
            "{md}"
        );
        assert!(
            md.contains("| cpu | fnet-big | 1024 | 8 | 50.0 | n/a | — | 200 | n/a | — | 300 | n/a |"),
            "{md}"
        );
        assert_eq!(report.speed.len(), 2);
    }

    #[test]
    fn readme_block_between_the_markers_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let results = fake_results(tmp.path());
        let out = results.join("report");
        let readme = tmp.path().join("README.md");
        let before = "# pixelseq\n\nIntro.\n\n<!-- results:start -->\nold table | 99.99%\n<!-- results:end -->\n\n## Usage\n";
        std::fs::write(&readme, before).unwrap();
        let report = generate(std::slice::from_ref(&results), &out, &[]).unwrap();
        update_readme(&readme, &report, &out).unwrap();
        let after = std::fs::read_to_string(&readme).unwrap();
        assert!(
            after.starts_with("# pixelseq\n\nIntro.\n\n<!-- results:start -->\n| Model |"),
            "{after}"
        );
        assert!(after.ends_with("\n<!-- results:end -->\n\n## Usage\n"), "{after}");
        assert!(!after.contains("old table") && !after.contains("99.99%"));
        assert!(
            after.contains("](results/report/curves.png)"),
            "links are relative to the README: {after}"
        );
        assert!(after.contains("| s4d-lra |") && after.contains("| s4d-pscifar |"));

        // The output folder is not a run, so a second report over the same folder is the same.
        let again = generate(&[results], &out, &[]).unwrap();
        update_readme(&readme, &again, &out).unwrap();
        assert_eq!(std::fs::read_to_string(&readme).unwrap(), after);
        assert!(!tmp.path().join("README.tmp").exists());
    }

    #[test]
    fn readme_without_markers_is_an_error() {
        assert!(replace_block("a\n<!-- results:end -->\n", "x")
            .unwrap_err()
            .to_string()
            .contains(START_MARKER));
        assert!(replace_block("<!-- results:start -->\n", "x")
            .unwrap_err()
            .to_string()
            .contains(END_MARKER));
        assert_eq!(
            replace_block("a <!-- results:start -->old<!-- results:end --> b", "new\n").unwrap(),
            "a <!-- results:start -->\nnew\n<!-- results:end --> b"
        );
    }

    #[test]
    fn missing_result_json_is_a_one_line_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("unfinished");
        write_run(&run, None, &metrics(1, 0.2), None, task("name = \"scifar\""));
        let err = format!(
            "{:#}",
            generate(std::slice::from_ref(&run), &tmp.path().join("out"), &[]).err().unwrap()
        );
        assert!(err.contains(&run.join("result.json").display().to_string()), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn malformed_json_errors_name_the_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        write_run(
            &run,
            Some(&record("s4d-lra", "lra-image", None, 0.8, 100.0)),
            &metrics(3, 0.8),
            None,
            task("name = \"lra-image\""),
        );
        std::fs::write(run.join("config.toml"), "[task]\nname = \"scifar\"\npermute = 7 7\n").unwrap();
        let err = format!("{:#}", read_run(&run).err().unwrap());
        let path = run.join("config.toml").display().to_string();
        assert!(err.starts_with(&format!("malformed TOML in `{path}` at line 3: ")), "{err}");

        let lines: Vec<String> = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        std::fs::write(
            run.join("metrics.jsonl"),
            format!("{}\n{{\"step\": oops}}\n{}\n", lines[0], lines[2]),
        )
        .unwrap();
        let err = format!("{:#}", read_run(&run).err().unwrap());
        let path = run.join("metrics.jsonl").display().to_string();
        assert!(err.starts_with(&format!("malformed JSON in `{path}` at line 2: ")), "{err}");

        std::fs::write(run.join("result.json"), "{\n  \"preset\": null,\n  \"model\": 3\n}").unwrap();
        let err = format!("{:#}", read_run(&run).err().unwrap());
        let path = run.join("result.json").display().to_string();
        assert!(err.starts_with(&format!("malformed JSON in `{path}` at line 3: ")), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn numbers_are_formatted_for_reading() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1_234_567), "-1,234,567");
        assert_eq!(duration(45.2), "45s");
        assert_eq!(duration(750.0), "12m 30s");
        assert_eq!(duration(3725.0), "1h 02m");
        assert_eq!(compact(250.0), "250");
        assert_eq!(compact(2500.0), "2.5k");
        assert_eq!(compact(40_000.0), "40k");
        assert_eq!(compact(1.2e6), "1.2M");
        assert_eq!(log_ticks(&(700.0..12_000.0)), [1000.0, 2000.0, 5000.0, 10_000.0]);
        assert_eq!(log_ticks(&(250.0..450.0)), [300.0, 400.0]);
    }

    #[test]
    fn report_subcommand_parses() {
        use clap::Parser;
        let cli =
            crate::cli::Cli::try_parse_from(["pixelseq", "report", "a", "b", "--bench", "bench.json", "--readme", "README.md"]).unwrap();
        let crate::cli::Command::Report(a) = cli.command else {
            panic!("not the report command")
        };
        assert_eq!(a.runs, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(a.out, PathBuf::from("results/report"));
        assert_eq!(a.bench, [PathBuf::from("bench.json")]);
        assert_eq!(a.readme, Some(PathBuf::from("README.md")));
    }
}
