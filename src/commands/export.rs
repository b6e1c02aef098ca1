//! `pixelseq export`: a run's best checkpoint as a TorchScript module or a Hugging Face-style
//! folder (see [`crate::export`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::export::{hf, torchscript};

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A TorchScript module (FILE.pt) for `torch.jit.load`: uint8 pixels in raster order, (B, 1024)
    /// for lra-image or (B, 1024, 3) for scifar → (B, 10) logits, computed on the CPU in float32;
    /// another dtype, shape or range raises an error naming what it takes.
    Torchscript,
    /// A folder with model.safetensors, config.json and a README.md model card, which `eval` and
    /// `predict` take as --run (the run must have finished).
    Hf,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Run directory written by `pixelseq train` (or, for torchscript, an exported folder).
    #[arg(long)]
    pub run: PathBuf,
    /// What to write: `torchscript` (a FILE.pt module) or `hf` (a model folder).
    #[arg(long, value_enum)]
    pub format: Format,
    /// The file (torchscript) or the new folder (hf) to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn exec(a: ExportArgs) -> Result<()> {
    match a.format {
        Format::Torchscript => crate::files::check_writable(&a.out, "--out")?,
        Format::Hf => crate::files::check_not_a_run_file(&a.out, "--out")?,
    }
    match a.format {
        Format::Torchscript => torchscript::export(&a.run, &a.out)?,
        Format::Hf => hf::export(&a.run, &a.out)?,
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
