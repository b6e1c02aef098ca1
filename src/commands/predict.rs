//! `pixelseq predict`: classify image files with a run's best checkpoint (see [`crate::predict`]).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::DeviceArgs;
use crate::data::cifar::CLASSES;
use crate::files;
use crate::predict::{csv, list_images, load_image, pixels, probabilities, top_k, Prediction, TOP};
use crate::run::{open_run, Which};
use crate::train::{memory, EVAL_BATCH};

#[derive(Args)]
pub struct PredictArgs {
    /// Run directory written by `pixelseq train` (its config.toml and checkpoints/best are used), or a
    /// folder written by `pixelseq export --format hf`.
    #[arg(long)]
    pub run: PathBuf,
    /// PNG or JPEG files of any size, or folders searched recursively for them.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Write CSV (path,top1,p1,top2,p2,top3,p3) to this file instead of printing.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Use the last checkpoint instead of the best one (when `best` is damaged, say).
    #[arg(long)]
    pub last: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Predicts every image that can be read; one that cannot is reported and skipped, and makes the
/// command fail once the others are written.
pub fn exec(a: PredictArgs) -> Result<()> {
    if let Some(path) = &a.csv {
        files::check_writable(path, "--csv")?;
    }
    let device = a.device.resolve()?;
    let which = if a.last { Which::Last } else { Which::Best };
    let run = open_run(&a.run, which, device)?;
    let listed = list_images(&a.images)?;
    let (mut files, mut images, mut unreadable) = (Vec::new(), Vec::new(), Vec::new());
    for f in listed {
        match load_image(&f) {
            Ok(img) => {
                files.push(f);
                images.push(img);
            }
            Err(e) => {
                eprintln!("skipping {}: {e:#}", f.display());
                unreadable.push(f);
            }
        }
    }
    let (cfg, state) = (&run.config, &run.state);
    eprintln!(
        "{} from {}: {which} checkpoint (step {}, validation accuracy {:.2}%), {} image(s)",
        cfg.model.name(),
        a.run.display(),
        state.step,
        100.0 * state.best_val_acc,
        files.len()
    );
    let channels = cfg.task.input_spec().channels;
    let mut predictions = Vec::with_capacity(files.len());
    let batch_size = memory::eval_batch(&run.model, &run.vs, cfg.task.input_spec(), EVAL_BATCH, device, run.precision)? as usize;
    let model = run.model.classifier().expect("open_run builds a classifier");
    for (paths, batch) in files.chunks(batch_size).zip(images.chunks(batch_size)) {
        let probs = probabilities(model, &pixels(batch, channels, cfg.task.gray), &cfg.task, device, run.precision);
        for (path, row) in paths.iter().zip(probs.chunks(CLASSES.len())) {
            predictions.push(Prediction {
                path: path.clone(),
                top: top_k(row, TOP),
            });
        }
    }

    let as_csv = a.csv.is_some() || a.images.iter().any(|p| p.is_dir());
    if !as_csv {
        for p in &predictions {
            println!("{}", p.line());
        }
    } else {
        let text = csv(&predictions);
        match &a.csv {
            Some(path) => {
                files::write_bytes(path, text.as_bytes())?;
                eprintln!("wrote {} prediction(s) to {}", predictions.len(), path.display());
            }
            None => print!("{text}"),
        }
    }
    if let Some(first) = unreadable.first() {
        bail!(
            "{} of {} image(s) could not be read (the first: `{}`); the others were predicted",
            unreadable.len(),
            unreadable.len() + predictions.len(),
            first.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn predict(args: &[&Path]) -> anyhow::Result<()> {
        use clap::Parser;
        let head = ["pixelseq", "predict", "--device", "cpu"].map(Path::new);
        let args = head.iter().chain(args).map(|p| p.as_os_str().to_owned());
        let crate::commands::Command::Predict(a) = crate::commands::Cli::try_parse_from(args).unwrap().command else {
            panic!("not the predict command")
        };
        super::exec(a)
    }

    /// One unreadable image is reported and the rest predicted (the command fails at the end); the
    /// CSV goes through `files` (a user's `X.tmp` is left alone, a symlink stays a link); a
    /// missing output folder is refused before any work; a damaged `best` points to `--last`.
    #[test]
    fn predictions_survive_bad_inputs_and_keep_outputs_safe() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = crate::testing::tiny_run(&d.join("run"));
        let good = d.join("good.png");
        image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 90]))
            .save(&good)
            .unwrap();
        let bad = d.join("bad.png");
        std::fs::write(&bad, "not an image").unwrap();
        std::fs::write(d.join("X.tmp"), "mine").unwrap();
        let csv = d.join("X.csv");
        let run_flag = Path::new("--run");
        let csv_flag = Path::new("--csv");

        let err = format!("{:#}", predict(&[run_flag, &run, &good, &bad, csv_flag, &csv]).unwrap_err());
        assert!(err.contains("1 of 2 image(s)") && err.contains("bad.png"), "{err}");
        let text = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().nth(1).unwrap().starts_with(good.to_str().unwrap()), "{text}");
        assert_eq!(std::fs::read_to_string(d.join("X.tmp")).unwrap(), "mine");

        let (real, link) = (d.join("real.csv"), d.join("link.csv"));
        std::fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink("real.csv", &link).unwrap();
        predict(&[run_flag, &run, &good, csv_flag, &link]).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::read_to_string(&real).unwrap().starts_with(crate::predict::CSV_HEADER));

        let missing = d.join("missing/dir/out.csv");
        let err = format!(
            "{:#}",
            predict(&[run_flag, &d.join("no-run"), &good, csv_flag, &missing]).unwrap_err()
        );
        assert!(err.contains("missing/dir") && err.contains("does not exist"), "{err}");

        let weights = run.join("checkpoints/best/model.safetensors");
        let mut bytes = std::fs::read(&weights).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&weights, bytes).unwrap();
        let err = format!("{:#}", predict(&[run_flag, &run, &good]).unwrap_err());
        assert!(err.contains("is corrupt") && err.contains("predict --last"), "{err}");
        predict(&[run_flag, &run, &good, Path::new("--last")]).unwrap();
    }

    #[test]
    fn predict_subcommand_parses() {
        use clap::Parser;
        let cli =
            crate::commands::Cli::try_parse_from(["pixelseq", "predict", "--run", "runs/x", "a.png", "dir", "--csv", "out.csv"]).unwrap();
        let crate::commands::Command::Predict(a) = cli.command else {
            panic!("not the predict command")
        };
        assert_eq!(a.run, PathBuf::from("runs/x"));
        assert_eq!(a.images, [PathBuf::from("a.png"), PathBuf::from("dir")]);
        assert_eq!(a.csv, Some(PathBuf::from("out.csv")));
        assert!(
            crate::commands::Cli::try_parse_from(["pixelseq", "predict", "--run", "runs/x"]).is_err(),
            "an image is required"
        );
    }
}
