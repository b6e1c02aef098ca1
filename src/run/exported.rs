//! Exported model folders (`pixelseq export --format hf`), which `eval` and `predict` open like a
//! run folder (see [`super::open_run`]):
//!
//! ```text
//! FOLDER/model.safetensors   the best checkpoint's weights, named as in the run
//! FOLDER/config.json         the run's resolved config (its TOML tables as JSON objects) and
//!                            the keys of [`Extras`]
//! FOLDER/README.md           the model card
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use sha2::{Digest, Sha256};

use super::checkpoint::{self, State};
use super::dir::{OpenRun, Which};
use crate::amp;
use crate::config::RunConfig;
use crate::data::cifar::CLASSES;
use crate::data::{Gray, TaskConfig};
use crate::files::{self, hex};
use crate::objective::Learner;

pub const WEIGHTS: &str = "model.safetensors";
pub const CONFIG: &str = "config.json";
pub const CARD: &str = "README.md";

/// What `config.json` holds beside the run config's tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extras {
    /// The pixelseq version and commit that exported the folder.
    pub pixelseq_version: String,
    pub commit: String,
    /// What the model takes.
    pub input: Input,
    /// Class names by logit index, and the Hugging Face spelling of the same.
    pub class_names: Vec<String>,
    pub id2label: std::collections::BTreeMap<String, String>,
    pub label2id: std::collections::BTreeMap<String, usize>,
    /// The state of the checkpoint the weights come from (step, best validation accuracy, …).
    pub checkpoint: State,
    /// sha256 of the folder's `model.safetensors`, checked on every load (folders exported before
    /// pixelseq recorded it load with a warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
}

/// The pixels an exported model takes, in the TorchScript export as in `config.json`: uint8
/// (B, 1024) for one channel (LRA Image), (B, 1024, C) otherwise; images flattened in raster order.
pub fn input_shape(task: &TaskConfig, batch: i64) -> Vec<i64> {
    let spec = task.input_spec();
    match spec.channels {
        1 => vec![batch, spec.seq_len],
        c => vec![batch, spec.seq_len, c],
    }
}

/// The input layout of a task's models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub dtype: String,
    /// [`input_shape`], the batch size written "batch".
    pub shape: Vec<serde_json::Value>,
    /// In words: values, channels and the order of the steps.
    pub layout: String,
}

impl Extras {
    pub fn new(task: &TaskConfig, checkpoint: State) -> Extras {
        let values = match (task.input_spec().channels, task.gray) {
            (1, Gray::Tf) => "grayscale 0..255 (TensorFlow's tf.image.rgb_to_grayscale of the RGB image, truncated)",
            (1, Gray::Pil) => "grayscale 0..255 (PIL's Image.convert(\"L\") of the RGB image, rounded)",
            _ => "R, G, B values 0..255",
        };
        let order = match task.permute {
            Some(seed) => {
                format!("step k is pixel 32·row + column in raster order; the model applies the fixed permutation of seed {seed} itself")
            }
            None => "step k is pixel 32·row + column (raster order)".to_string(),
        };
        Extras {
            pixelseq_version: env!("CARGO_PKG_VERSION").to_string(),
            commit: env!("PIXELSEQ_COMMIT").to_string(),
            input: Input {
                dtype: "uint8".into(),
                shape: std::iter::once("batch".into())
                    .chain(input_shape(task, 1).into_iter().skip(1).map(Into::into))
                    .collect(),
                layout: format!("{values}; {order}"),
            },
            class_names: CLASSES.iter().map(|c| c.to_string()).collect(),
            id2label: CLASSES.iter().enumerate().map(|(i, c)| (i.to_string(), c.to_string())).collect(),
            label2id: CLASSES.iter().enumerate().map(|(i, c)| (c.to_string(), i)).collect(),
            checkpoint,
            weights_sha256: None,
        }
    }
}

/// Whether `dir` is an exported folder (config.json and weights, no run config).
pub fn is_exported(dir: &Path) -> bool {
    dir.join(CONFIG).is_file() && dir.join(WEIGHTS).is_file() && !dir.join("config.toml").exists()
}

/// `config.json`: the run config's tables and the extras, as one JSON object.
pub fn config_json(cfg: &RunConfig, extras: &Extras) -> Result<String> {
    let mut object = serde_json::to_value(cfg)?;
    let (serde_json::Value::Object(map), serde_json::Value::Object(more)) = (&mut object, serde_json::to_value(extras)?) else {
        bail!("the run config and the extras serialise to JSON objects");
    };
    map.extend(more);
    Ok(serde_json::to_string_pretty(&object)? + "\n")
}

/// Reads `config.json` of an exported folder: the run config (validated) and the extras.
pub fn read_config(dir: &Path) -> Result<(RunConfig, Extras)> {
    let path = dir.join(CONFIG);
    let origin = format!("config `{}`", path.display());
    let text = files::read_regular_to_string(&path)?;
    let serde_json::Value::Object(mut map) = serde_json::from_str(&text).with_context(|| format!("{origin} is not JSON"))? else {
        bail!("{origin}: expected a JSON object");
    };
    let mut extras = serde_json::Map::new();
    for key in [
        "pixelseq_version",
        "commit",
        "input",
        "class_names",
        "id2label",
        "label2id",
        "checkpoint",
    ] {
        let value = map.remove(key).with_context(|| format!("{origin}: key `{key}` is missing"))?;
        extras.insert(key.to_string(), value);
    }
    if let Some(value) = map.remove("weights_sha256") {
        extras.insert("weights_sha256".to_string(), value);
    }
    let extras: Extras = serde_path_to_error::deserialize(serde_json::Value::Object(extras))
        .map_err(|e| anyhow::anyhow!("{origin}: key `{}`: {}", e.path(), e.inner()))?;
    let table =
        toml::Table::try_from(serde_json::Value::Object(map)).with_context(|| format!("{origin}: the run config is not TOML-shaped"))?;
    Ok((RunConfig::from_table(table, &origin)?, extras))
}

/// Builds the model of an exported folder on `device` with its weights.
pub fn open(dir: &Path, which: Which, device: Device) -> Result<OpenRun> {
    if which == Which::Last {
        bail!(
            "`{}` is an exported model folder, which holds the best checkpoint only; drop --last",
            dir.display()
        );
    }
    let (config, extras) = read_config(dir)?;
    let vs = nn::VarStore::new(device);
    let model = Learner::Classifier(config.model.build(&vs.root(), &config.task.input_spec())?);
    let weights: PathBuf = dir.join(WEIGHTS);
    let bytes = files::read_regular(&weights)?;
    match &extras.weights_sha256 {
        Some(recorded) => {
            let got = hex(&Sha256::digest(&bytes));
            if &got != recorded {
                bail!(
                    "`{}` is corrupt: its sha256 is {got}, `{CONFIG}` records {recorded}; export the run again",
                    weights.display()
                );
            }
        }
        None => eprintln!(
            "warning: `{}` was exported before pixelseq recorded the weights' sha256; they are not verified",
            dir.display()
        ),
    }
    let tensors = checkpoint::tensors_of(&bytes, &weights)?;
    checkpoint::copy_into(&vs, tensors, &weights, &format!("its {CONFIG}"))?;
    let precision = amp::resolve(config.train.precision, device);
    Ok(OpenRun {
        config,
        vs,
        model,
        state: extras.checkpoint,
        precision,
    })
}
