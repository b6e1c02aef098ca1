//! Hugging Face-style folder of a finished run: `model.safetensors` (the best checkpoint's
//! weights), `config.json` and the model card `README.md` (layout in [`crate::train::exported`]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Device;

use super::card::card;
use crate::files;
use crate::train::exported::{self, config_json, Extras, CARD, CONFIG, WEIGHTS};
use crate::train::records::RunRecord;
use crate::train::{open_run, RunDir, Which};

/// Writes the folder `out` for the run in `run`. The folder is filled under a temporary name
/// beside `out` and renamed into place, so `out` is complete or absent.
pub fn export(run: &Path, out: &Path) -> Result<()> {
    if exported::is_exported(run) {
        bail!("`{}` is already an exported model folder; copy it instead", run.display());
    }
    if out.exists() {
        bail!("`{}` already exists; choose another --out or remove it", out.display());
    }
    let dir = RunDir::new(run);
    let result = dir.result();
    let text = std::fs::read_to_string(&result).with_context(|| {
        format!(
            "run `{}` has not finished (no `{}`), and the model card reports its test accuracy; finish it with `pixelseq train --resume {}`",
            run.display(),
            result.display(),
            run.display()
        )
    })?;
    let record: RunRecord = serde_json::from_str(&text).with_context(|| format!("`{}` is not a run record", result.display()))?;
    let opened = open_run(run, Which::Best, Device::Cpu)?;
    let extras = Extras::new(&opened.config.task, opened.state.clone());

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("failed to create folder `{}`", parent.display()))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(parent)
        .with_context(|| format!("failed to create a temporary folder beside `{}`", out.display()))?;
    let weights = tmp.path().join(WEIGHTS);
    opened
        .vs
        .save(&weights)
        .with_context(|| format!("failed to write weights `{}`", weights.display()))?;
    files::write_bytes(&tmp.path().join(CONFIG), config_json(&opened.config, &extras)?.as_bytes())?;
    let card = card(&opened.config, &record, &opened.state, dir.preset_name().as_deref());
    files::write_bytes(&tmp.path().join(CARD), card.as_bytes())?;
    std::fs::rename(tmp.path(), out).with_context(|| format!("failed to move the exported folder into `{}`", out.display()))?;
    Ok(())
}
