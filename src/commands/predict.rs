//! `pixelseq predict`: classify image files with a run's best checkpoint (see [`crate::predict`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::DeviceArgs;
use crate::data::cifar::CLASSES;
use crate::files;
use crate::predict::{csv, list_images, load_image, pixels, probabilities, top_k, Prediction, TOP};
use crate::train::{open_run, Which, EVAL_BATCH};

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
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn exec(a: PredictArgs) -> Result<()> {
    let device = a.device.resolve()?;
    let run = open_run(&a.run, Which::Best, device)?;
    let files = list_images(&a.images)?;
    let images = files.iter().map(|f| load_image(f)).collect::<Result<Vec<_>>>()?;
    let (cfg, state) = (&run.config, &run.state);
    eprintln!(
        "{} from {}: best checkpoint (step {}, validation accuracy {:.2}%), {} image(s)",
        cfg.model.name(),
        a.run.display(),
        state.step,
        100.0 * state.best_val_acc,
        files.len()
    );
    let channels = cfg.task.input_spec().channels;
    let mut predictions = Vec::with_capacity(files.len());
    let batch_size = EVAL_BATCH as usize;
    for (paths, batch) in files.chunks(batch_size).zip(images.chunks(batch_size)) {
        let probs = probabilities(run.model.as_ref(), &pixels(batch, channels), &cfg.task, device, run.precision);
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
        return Ok(());
    }
    let text = csv(&predictions);
    match &a.csv {
        Some(path) => {
            files::write_bytes(path, text.as_bytes())?;
            eprintln!("wrote {} prediction(s) to {}", predictions.len(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
