//! Hugging Face-style folder of a finished run: `model.safetensors` (the best checkpoint's
//! weights), `config.json` and the model card `README.md` (layout in [`crate::run::exported`]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Device;

use super::card::card;
use crate::files;
use crate::run::exported::{self, config_json, Extras, CARD, CONFIG, WEIGHTS};
use crate::run::records::RunRecord;
use crate::run::{checkpoint, open_run, RunDir, Which};

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
    if let Some(why) = dir.not_a_run() {
        bail!("{why}");
    }
    let result = dir.result();
    let text = files::read_regular_to_string(&result).with_context(|| {
        format!(
            "run `{}` has not finished (no `{}`), and the model card reports its test accuracy; finish it with `pixelseq train --resume {}`",
            run.display(),
            result.display(),
            run.display()
        )
    })?;
    let record: RunRecord = serde_json::from_str(&text).with_context(|| format!("`{}` is not a run record", result.display()))?;
    let opened = open_run(run, Which::Best, Device::Cpu)?;
    let mut extras = Extras::new(&opened.config.task, opened.state.clone());

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("failed to create folder `{}`", parent.display()))?;
    let tmp = files::temp_dir_beside(out);
    let guard = files::TempGuard::new(tmp.clone());
    std::fs::create_dir(&tmp).with_context(|| format!("failed to create a temporary folder beside `{}`", out.display()))?;
    let weights = tmp.join(WEIGHTS);
    let tensors: Vec<(String, tch::Tensor)> = opened.vs.variables().into_iter().collect();
    extras.weights_sha256 = Some(checkpoint::write_tensors(&weights, &tensors)?);
    files::write_bytes(&tmp.join(CONFIG), config_json(&opened.config, &extras)?.as_bytes())?;
    let card = card(&opened.config, &record, &opened.state, dir.preset_name().as_deref());
    files::write_bytes(&tmp.join(CARD), card.as_bytes())?;
    std::fs::rename(&tmp, out).with_context(|| format!("failed to move the exported folder into `{}`", out.display()))?;
    guard.keep();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;
    use crate::data::{Dataset, Split};
    use crate::run::exported::open;
    use crate::train;
    use tch::{Kind, Tensor};

    const TINY: &str = "[task]\nname = \"lra-image\"\n[model]\nname = \"s4d\"\nd_model = 8\nn_layers = 1\nd_state = 4\n[train]\nbatch_size = 4\nmax_steps = 2\neval_every = 2\n";

    fn split(n: i64) -> Split {
        Split {
            images: Tensor::randint(256, [n, 1, 32, 32], (Kind::Uint8, Device::Cpu)),
            labels: Tensor::randint(10, [n], (Kind::Int64, Device::Cpu)),
        }
    }

    /// The folder's `model.safetensors` is checked against the sha256 its `config.json` records: a
    /// flipped bit is an error naming the file, not predictions from other weights; and a FIFO in
    /// place of `config.json` is refused, not waited on.
    #[test]
    fn a_damaged_exported_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let data = Dataset {
            train: split(8),
            val: split(4),
            test: split(4),
        };
        let opts = train::Options {
            pretrain: false,
            device: Device::Cpu,
            dir: run.clone(),
            resume: false,
            preset: None,
        };
        train::run(&RunConfig::from_toml_str(TINY, "test").unwrap(), &data, &opts).unwrap();
        let out = dir.path().join("hf");
        export(&run, &out).unwrap();
        open(&out, Which::Best, Device::Cpu).unwrap();
        let weights = out.join(WEIGHTS);
        let mut bytes = std::fs::read(&weights).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&weights, bytes).unwrap();
        let err = format!("{:#}", open(&out, Which::Best, Device::Cpu).err().unwrap());
        assert!(
            err.contains("model.safetensors` is corrupt") && err.contains("config.json"),
            "{err}"
        );

        let config = out.join(CONFIG);
        std::fs::remove_file(&config).unwrap();
        mkfifo(&config);
        let err = format!("{:#}", open(&out, Which::Best, Device::Cpu).err().unwrap());
        assert!(err.contains("is a FIFO, not a regular file"), "{err}");
    }

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    }
}
