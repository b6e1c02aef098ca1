//! `pixelseq report`: a results table and plots from finished runs.
//!
//! ```text
//! pixelseq report [RUN_DIR_OR_FOLDER...] [--out results/report] [--bench bench.json] [--readme README.md]
//! ```
//!
//! Each argument is a run directory written by `pixelseq train` (it holds `result.json`,
//! `metrics.jsonl` and `config.toml`) or a folder searched recursively for them (default:
//! `results/`; unfinished runs found by the search, those without `result.json`, are skipped with
//! a note, and so is any run whose numbers are absurd: an accuracy outside [0, 1], a negative or
//! non-finite throughput or duration; `null` numbers, as serde_json writes NaN, read as NaN). The
//! report goes to `--out`:
//! - `results.md`: one row per run (model, preset, task, the paper's figure and setting, our best
//!   validation and test accuracy, parameters, training img/s, device, wall time, date, commit);
//!   then, where runs were fine-tuned from a self-pretraining run (`train --init`), a row per
//!   fine-tuned run beside its pretraining run and the from-scratch run of the same preset (see
//!   `spt.rs`; pretraining runs, which have no accuracy, appear only there);
//! - `curves.png`/`.svg`: validation accuracy against epoch and against wall time, a line per run;
//! - `accuracy_vs_throughput.png`/`.svg`: test accuracy against training img/s (log scale);
//! - `throughput.png`/`.svg` (with `--bench FILE`): training and inference img/s against sequence
//!   length, a line per model and implementation, from a benchmark JSON array of objects
//!   `{model, preset, seq_len, batch, train_img_per_s, infer_img_per_s, peak_mem_mb, device, impl}`.
//!
//! The files: `runs.rs` finds and reads run directories, `table.rs` writes the markdown tables
//! (`spt.rs` the self-pretraining one, `format.rs` the cells),
//! `readme.rs` replaces the README block, `plots.rs` draws the figures; the bench records are
//! `bench`'s own [`Record`] type.
//!
//! `--readme FILE` replaces the text between `<!-- results:start -->` and `<!-- results:end -->`
//! in FILE with the table and links to the PNG plots (relative to FILE), written atomically.
//! Every number shown comes from a run's `result.json` (or the bench file); nothing is typed in.

mod format;
pub mod headline;
mod plots;
mod readme;
mod runs;
mod spt;
mod table;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use readme::{replace_block, update_readme, END_MARKER, START_MARKER};
pub use runs::{find_runs, read_bench, read_run, Run};
pub use table::SpeedRow;

use crate::bench::Record;
use crate::files;
use plots::{lengths_curves, save, AccuracyVsThroughput, Curves, ThroughputVsLength};

/// A plot written as `<stem>.png` and `<stem>.svg`.
pub struct Plot {
    pub stem: &'static str,
    pub title: &'static str,
}

/// What `generate` wrote.
pub struct Report {
    /// One row per model: its best run on the paper's setting (see `headline.rs`).
    pub headline: Vec<headline::Row>,
    /// Classifier runs (`train`), fine-tuned ones included.
    pub runs: Vec<Run>,
    /// Self-pretraining runs (`pretrain`): shown only beside the runs fine-tuned from them.
    pub pretraining: Vec<Run>,
    pub plots: Vec<Plot>,
    /// pixelseq beside PyTorch, one row per device, preset, length and batch of the bench files.
    pub speed: Vec<SpeedRow>,
}

/// Reads the runs found under `inputs`, then writes `results.md` and the plots into `out`.
pub fn generate(inputs: &[PathBuf], out: &Path, bench: &[PathBuf]) -> Result<Report> {
    if let Some(run) = out.ancestors().find(|a| runs::is_run(a)) {
        bail!(
            "--out `{}` is inside the run directory `{}`; a report never writes among a run's files, choose another folder",
            out.display(),
            run.display()
        );
    }
    let (mut runs, mut pretraining) = (Vec::new(), Vec::new());
    let (finished, unfinished) = find_runs(inputs)?;
    for dir in finished {
        // A run named on the command line must be readable; one found by a search is skipped
        // with a note, so that one damaged folder does not hide every other result.
        let run = match read_run(&dir) {
            Ok(run) => run,
            Err(e) if inputs.contains(&dir) => return Err(e),
            Err(e) => {
                eprintln!("skipping run {}: {e:#}", dir.display());
                continue;
            }
        };
        match run.implausible() {
            Some(why) => eprintln!("skipping run {}: {why}", dir.display()),
            None if run.record.pretrain.is_some() => pretraining.push(run),
            None => runs.push(run),
        }
    }

    let bench: Vec<Record> = bench.iter().map(|p| read_bench(p)).collect::<Result<Vec<_>>>()?.concat();
    runs.sort_by(|a, b| {
        (&a.record.task, &a.record.model, &a.record.preset, &a.record.date, &a.dir).cmp(&(
            &b.record.task,
            &b.record.model,
            &b.record.preset,
            &b.record.date,
            &b.dir,
        ))
    });
    runs::assign_labels(&mut runs);
    let headline = headline::rows(headline::PaperPreset::shipped()?, &runs, &unfinished);

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
        headline,
        runs,
        pretraining,
        plots,
        speed: table::speed_rows(&bench),
    };
    let page = format!(
        "# pixelseq results\n\nGenerated by `pixelseq report` from {} run(s).\n\n{}",
        report.runs.len(),
        report.markdown("")
    );
    files::write_bytes(&out.join("results.md"), page.as_bytes())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;
    use crate::amp::Precision;
    use crate::config::Paper;
    use crate::data::TaskConfig;
    use crate::run::records::{Metrics, RunRecord};

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
            planned_steps: 400,
            epochs: 4.0,
            img_per_s,
            device: "cuda:0".into(),
            precision: Precision::Bf16,
            wall_s: 3725.0,
            seed: 0,
            micro_batch: 64,
            init: None,
            pretrain: None,
            world_size: 1,
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
                ssm_lr: None,
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
            ..Paper::default()
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

    /// A bench record as `pixelseq bench` writes it, 1,000 MiB peak memory, no throughput yet.
    fn bench_record(model: &str, implementation: &str, seq_len: i64, batch: i64) -> Record {
        Record {
            model: model.into(),
            preset: String::new(),
            seq_len,
            batch,
            train_img_per_s: None,
            graph_train_img_per_s: None,
            infer_img_per_s: None,
            peak_mem_mb: Some(1000.0),
            max_allocated_mb: None,
            params: Some(1000),
            device: "cpu".into(),
            precision: "fp32".into(),
            implementation: implementation.into(),
            memory: "rss".into(),
            note: String::new(),
            formulation: String::new(),
            micro_batch: None,
        }
    }

    fn bench_file(dir: &Path) -> PathBuf {
        let mut entries = Vec::new();
        for (model, speed) in [("s4d", 40_000.0), ("transformer", 9_000.0)] {
            for implementation in ["pixelseq", "pytorch"] {
                for seq_len in [256, 1024, 4096] {
                    let scale = 1024.0 / seq_len as f64 * if implementation == "pytorch" { 0.7 } else { 1.0 };
                    entries.push(Record {
                        preset: format!("{model}-lra"),
                        train_img_per_s: Some(speed * scale),
                        infer_img_per_s: (seq_len < 4096).then_some(3.0 * speed * scale),
                        device: "NVIDIA H100".into(),
                        ..bench_record(model, implementation, seq_len, 64)
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
        let rows = table("| Model | Preset | Task");
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
        let entry = |implementation: &str, preset: &str| Record {
            preset: preset.into(),
            train_img_per_s: Some(50.0),
            infer_img_per_s: Some(200.0),
            peak_mem_mb: Some(300.0),
            device: "cpu".into(),
            ..bench_record("fnet", implementation, 1024, 8)
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

    /// A pretraining run (no accuracies: `null` in its records) is not skipped as absurd; it shows
    /// only in the self-pretraining table, beside the run fine-tuned from it (found by its folder
    /// name after a move) and the newest from-scratch run of the same preset, task, steps,
    /// parameters and device; a from-scratch run of other steps is not its match.
    #[test]
    fn fine_tuned_runs_sit_beside_their_pretraining_and_from_scratch_runs() {
        use crate::run::records::PretrainResult;
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results");
        let lra = || task("name = \"lra-image\"");
        let mut pre_metrics = metrics(2, f64::NAN);
        for m in &mut pre_metrics {
            m.train_acc = f64::NAN;
        }
        let pre = RunRecord {
            best_val_acc: f64::NAN,
            test_acc: f64::NAN,
            steps: 2500,
            wall_s: 1800.0,
            pretrain: Some(PretrainResult {
                method: Default::default(),
                best_val_loss: 0.4321,
            }),
            ..record("transformer-spt", "lra-image", None, 0.0, 50.0)
        };
        write_run(&results.join("spt/pretrain"), Some(&pre), &pre_metrics, None, lra());
        let tuned = RunRecord {
            init: Some("/elsewhere/runs/pretrain".into()),
            steps: 1000,
            wall_s: 900.0,
            ..record("transformer-spt", "lra-image", None, 0.3512, 50.0)
        };
        write_run(&results.join("spt/finetune"), Some(&tuned), &metrics(2, 0.35), None, lra());
        let scratch = |acc: f64, steps: u64, date: &str| RunRecord {
            steps,
            date: date.into(),
            ..record("transformer-spt", "lra-image", None, acc, 50.0)
        };
        write_run(
            &results.join("spt/scratch"),
            Some(&scratch(0.3001, 1000, "2025-11-27")),
            &metrics(2, 0.3),
            None,
            lra(),
        );
        write_run(
            &results.join("spt/scratch-old"),
            Some(&scratch(0.2, 1000, "2025-11-20")),
            &metrics(2, 0.2),
            None,
            lra(),
        );
        write_run(
            &results.join("spt/scratch-long"),
            Some(&scratch(0.5, 4000, "2025-11-28")),
            &metrics(2, 0.5),
            None,
            lra(),
        );

        let out = tmp.path().join("out");
        let report = generate(&[results], &out, &[]).unwrap();
        assert_eq!((report.runs.len(), report.pretraining.len()), (4, 1));
        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        let rows: Vec<&str> = md
            .lines()
            .skip_while(|l| !l.starts_with("| Preset | Task | Pretraining"))
            .skip(2)
            .take_while(|l| l.starts_with("| "))
            .collect();
        assert_eq!(
            rows,
            ["| transformer-spt | lra-image | masked 50%, l1 loss | 2,500 | 0.4321 | 1,000 | 35.12% | 30.01% | +5.11 | cuda:0 | 30m 00s + 15m 00s |"],
            "{md}"
        );
        assert!(md.contains("| transformer-spt, fine-tuned after SPT |"), "{md}");
        assert!(!md.contains("NaN") && !md.contains("spt/pretrain"), "{md}");
    }

    /// The trainer's own `null` losses read back; a run with absurd numbers is skipped with a
    /// note and the rest reported, and so is an absurd bench record.
    #[test]
    fn bad_runs_are_skipped_and_the_rest_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results");
        let mut with_null = metrics(3, 0.7);
        with_null[1].val_loss = f64::NAN;
        write_run(
            &results.join("good"),
            Some(&record("s4d-lra", "lra-image", None, 0.7, 100.0)),
            &with_null,
            None,
            task("name = \"lra-image\""),
        );
        assert!(std::fs::read_to_string(results.join("good/metrics.jsonl"))
            .unwrap()
            .contains("\"val_loss\":null"));
        let absurd = RunRecord {
            best_val_acc: f64::INFINITY,
            ..record("s4d-lra", "lra-image", None, 0.7, -5.0)
        };
        write_run(
            &results.join("absurd"),
            Some(&absurd),
            &metrics(2, 0.5),
            None,
            task("name = \"lra-image\""),
        );
        let bench = tmp.path().join("bench.json");
        let entries = vec![
            Record {
                train_img_per_s: Some(-3.0),
                infer_img_per_s: Some(f64::INFINITY),
                ..bench_record("s4d", "pixelseq", 1024, 8)
            },
            Record {
                train_img_per_s: Some(50.0),
                infer_img_per_s: Some(150.0),
                ..bench_record("s4d", "pixelseq", 256, 8)
            },
        ];
        std::fs::write(&bench, serde_json::to_string(&entries).unwrap()).unwrap();
        let out = tmp.path().join("out");
        let report = generate(&[results], &out, &[bench]).unwrap();
        assert_eq!(report.runs.len(), 1);
        assert!(report.runs[0].metrics[1].val_loss.is_nan());
        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        assert!(!md.contains("inf") && !md.contains("| -"), "{md}");
    }

    /// The first table: one row per model with a paper preset; a model's row takes its best run
    /// that claims the paper's figure and covered a quarter of the recipe, not a better short run
    /// or a run on another task, and names the published weights; models without such a run keep
    /// a row that says so.
    #[test]
    fn the_first_table_has_one_row_per_model_for_its_best_paper_run() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results");
        // fnet-lra's recipe is 35,000 steps of 256 images: 199.1 epochs of 45,000.
        let fnet = |test_acc: f64, steps: u64, figure: Option<f64>| RunRecord {
            model: "fnet".into(),
            steps,
            epochs: steps as f64 * 256.0 / 45_000.0,
            device: "cpu (1 thread)".into(),
            ..record("fnet-lra", "lra-image", figure, test_acc, 150.0)
        };
        let lra = || task("name = \"lra-image\"");
        write_run(
            &results.join("long"),
            Some(&fnet(0.41, 17_500, Some(38.67))),
            &metrics(2, 0.4),
            None,
            lra(),
        );
        std::fs::create_dir_all(results.join("long/checkpoints/best")).unwrap();
        std::fs::write(results.join("long/checkpoints/best/model.safetensors"), b"weights").unwrap();
        write_run(
            &results.join("short"),
            Some(&fnet(0.45, 8_000, Some(38.67))),
            &metrics(2, 0.4),
            None,
            lra(),
        );
        write_run(
            &results.join("other-task"),
            Some(&fnet(0.5, 35_000, None)),
            &metrics(2, 0.4),
            None,
            lra(),
        );
        // transformer-lra (35,000 steps of 256) in progress, one evaluation at step 175.
        let going = results.join("going");
        write_run(&going, None, &metrics(1, 0.3), None, lra());
        std::fs::write(going.join("preset"), "transformer-lra\n").unwrap();
        let line = serde_json::to_string(&Metrics {
            step: 175,
            epoch: 175.0 * 256.0 / 45_000.0,
            ..metrics(1, 0.3)[0].clone()
        })
        .unwrap();
        std::fs::write(going.join("metrics.jsonl"), line + "\n").unwrap();
        let report = generate(std::slice::from_ref(&results), &tmp.path().join("out"), &[]).unwrap();

        let models: Vec<&str> = report.headline.iter().map(|r| r.preset.model.as_str()).collect();
        let mut expected = models.clone();
        expected.dedup();
        assert_eq!(models, expected, "one row per model");
        for model in [
            "fnet",
            "lipschitz-rnn",
            "lru",
            "nystromformer",
            "pit",
            "s4d",
            "transformer",
            "trellisnet",
        ] {
            assert!(models.contains(&model), "{model} has a row: {models:?}");
        }
        let md = std::fs::read_to_string(tmp.path().join("out/results.md")).unwrap();
        let row = |name: &str| md.lines().find(|l| l.contains(&format!("| {name} |"))).unwrap().to_string();
        let fnet_row = row("fnet-lra");
        assert!(
            fnet_row.contains("| 38.67% | 46.02% | 41.00% | 99.6 of 199.1 epochs |"),
            "{fnet_row}"
        );
        let weights = results.join("long/checkpoints/best").display().to_string();
        assert!(fnet_row.ends_with(&format!("| `{weights}` |")), "{fnet_row}");
        assert!(row("lru-scifar").contains("| 89.00% | — | no run yet |"), "{md}");
        assert!(
            row("transformer-lra").contains("| 42.44% | — | in progress | 1 of 199.1 epochs so far |"),
            "{md}"
        );
        assert!(row("pit-paper").contains("| 85.10% (on CIFAR-100) | 42.16% |"), "{md}");
        let all_runs = md.split("Every recorded run").nth(1).unwrap();
        assert_eq!(all_runs.matches("| fnet-lra |").count(), 3, "every run stays in the second table");
    }

    /// A folder found by the search whose records cannot be read is skipped with a note; a run
    /// named on the command line is not; a report never writes into a run folder.
    #[test]
    fn an_unreadable_run_is_skipped_and_a_run_folder_is_no_output() {
        let tmp = tempfile::tempdir().unwrap();
        let results = fake_results(tmp.path());
        std::fs::write(results.join("run-b/result.json"), "{ not json").unwrap();
        let report = generate(std::slice::from_ref(&results), &tmp.path().join("out"), &[]).unwrap();
        assert_eq!(report.runs.len(), 1);
        let named = results.join("run-b");
        let err = format!("{:#}", generate(&[named], &tmp.path().join("out"), &[]).err().unwrap());
        assert!(err.starts_with("malformed JSON in "), "{err}");

        let inside = results.join("lra/run-a/plots");
        let err = format!("{:#}", generate(std::slice::from_ref(&results), &inside, &[]).err().unwrap());
        assert!(err.contains("is inside the run directory") && !err.contains('\n'), "{err}");
        assert!(!inside.exists());
    }

    /// Numbers no run could have are skipped as absurd, not printed with hundreds of digits: not
    /// in the report, nor in the note that skips the run.
    #[test]
    fn huge_numbers_are_absurd() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("results");
        let huge = RunRecord {
            wall_s: 1e308,
            ..record("s4d-lra", "lra-image", None, 0.7, 100.0)
        };
        write_run(
            &results.join("huge"),
            Some(&huge),
            &metrics(2, 0.5),
            None,
            task("name = \"lra-image\""),
        );
        write_run(
            &results.join("fine"),
            Some(&record("s4d-lra", "lra-image", None, 0.7, 100.0)),
            &metrics(2, 0.5),
            None,
            task("name = \"lra-image\""),
        );
        let note = runs::read_run(&results.join("huge")).unwrap().implausible();
        assert_eq!(note.as_deref(), Some("result.json has wall_s = 1e308"));
        let report = generate(&[results], &tmp.path().join("out"), &[]).unwrap();
        assert_eq!(report.runs.len(), 1);
        let md = std::fs::read_to_string(tmp.path().join("out/results.md")).unwrap();
        assert!(md.lines().all(|l| l.len() < 2000), "{md}");
    }

    #[test]
    fn numbers_are_formatted_for_reading() {
        use format::{duration, thousands};
        use plots::{compact, log_ticks};
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
}
