//! CIFAR-10 read pixel by pixel: files, checksums, tasks and batches.
//!
//! # Where the data comes from
//! [`load`] takes the first of: `--data PATH`, `$PIXELSEQ_DATA`, the default folder
//! `$XDG_CACHE_HOME/pixelseq/data` (or `~/.cache/pixelseq/data`). A file there is either the
//! official `cifar-10-binary.tar.gz` (recognised by its gzip header) or a prepared cache (by its
//! magic). In a folder the first match wins: the task's prepared cache `pixelseq-<task>.zst`,
//! the six official `.bin` files in the folder itself, a `cifar-10-batches-bin/` subfolder, a
//! `cifar-10-binary.tar.gz`. An archive is extracted once to `cifar-10-batches-bin/` beside it:
//! into a temporary folder, refusing entries with absolute paths, `..`, links or special files,
//! then verified and renamed into place. `pixelseq data download` fetches the archive from
//! [`source::ARCHIVE_URL`] into a temporary file, checks its sha256, renames it and extracts it.
//!
//! Every `.bin` file is checked for its size (30,730,000 bytes) and the sha256 of the official
//! release ([`cifar::FILES`]) each time it is read (about a second for all six); an error is one
//! line naming the file and what is wrong.
//!
//! # Tasks and splits
//! - `lra-image`: grayscale, one channel (the LRA "Image" task);
//! - `scifar`: RGB, three channels (sequential CIFAR).
//!
//! As in LRA, train is the first 45,000 training images in official order (`data_batch_1` …
//! `data_batch_5`), val the last 5,000, and test the 10,000 images of `test_batch`.
//!
//! # Grayscale, exactly as `tf.image.rgb_to_grayscale`
//! [`gray_pixel`] repeats TensorFlow's float32 operations in TensorFlow's order:
//! `s = f32(1/255)`; `y = (r·s)·0.2989 + (g·s)·0.5870`, then `y = y + (b·s)·0.1140`, each
//! product and sum rounded to float32 (no fused multiply-add); the result is `y·255.5` truncated
//! toward zero. Because of the truncation (0, 255, 0) gives 149, and because of the float32
//! rounding 237 colours whose exact value lies just below an integer give that integer, as
//! TensorFlow does; the tests pin all 16,777,216 colours against TensorFlow 2.21.
//!
//! # Model input
//! [`batch_input`] turns images (B, C, 32, 32) into (B, 1024, C): when training and asked for,
//! a random 32×32 crop of the image zero-padded by 4 pixels and a random horizontal flip (torch
//! RNG on the images' device, so seeding torch makes them reproducible); then raster order, step
//! `32·row + column` holding the C values of that pixel; then, with `permute = seed`, the fixed
//! permutation [`permutation`]`(seed)`: splitmix64 started at the seed drives a Fisher–Yates
//! shuffle of 0..1024 (for i = 1023 down to 1, swap i with `(next · (i+1)) >> 64`); step k of
//! the result is raster step `p[k]`.
//!
//! # Prepared cache (`pixelseq data prepare`)
//! All 60,000 images of one task (training images in official order, then test images) and
//! their labels. Little-endian header of 56 bytes, then one zstd frame:
//!
//! | offset | bytes | field |
//! |-------:|------:|-------|
//! | 0  | 8  | magic `PXSQDATA` |
//! | 8  | 4  | format version, u32 = 1 |
//! | 12 | 1  | task: 0 = lra-image (1 channel), 1 = scifar (3 channels) |
//! | 13 | 3  | zero |
//! | 16 | 4  | training images, u32 = 50,000 |
//! | 20 | 4  | test images, u32 = 10,000 |
//! | 24 | 32 | sha256 of the payload (labels then pixels, before filtering) |
//! | 56 | …  | zstd frame (level 3) of the filtered payload |
//!
//! The payload is the 60,000 label bytes, then each image's C planes of 32×32 row-major bytes.
//! Before compression every plane is replaced by its residuals `x − MED(a, b, c)` mod 256, where
//! a, b, c are the left, upper and upper-left neighbours (0 outside the plane) and MED is the
//! LOCO-I median edge predictor: `min(a, b)` if `c ≥ max(a, b)`, `max(a, b)` if `c ≤ min(a, b)`,
//! else `a + b − c`. This shrinks the grayscale cache from 53 MB (zstd alone, level 19) to 44 MB.
//!
//! # Export (`pixelseq data export --task lra-image`)
//! 60,000 records of 1,025 bytes (label, then 1,024 grayscale bytes in raster order): the 50,000
//! training images in official order, then the 10,000 test images.

pub mod batch;
pub mod cifar;
pub mod gray;
pub mod prepared;
pub mod source;

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use batch::{batch_input, permutation};
pub use gray::{gray_pixel, Gray};

use cifar::{Images, ALL_IMAGES, TRAIN_IMAGES};
use source::Source;

/// Images kept for training; the remaining training images are the validation split (as LRA).
pub const TRAIN_SPLIT: i64 = 45_000;

/// The two tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TaskName {
    /// LRA Image: grayscale, 1 channel.
    LraImage,
    /// Sequential CIFAR: RGB, 3 channels.
    Scifar,
}

impl std::fmt::Display for TaskName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TaskName {
    /// The name used in presets and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskName::LraImage => "lra-image",
            TaskName::Scifar => "scifar",
        }
    }

    /// Values per pixel.
    pub fn channels(self) -> i64 {
        match self {
            TaskName::LraImage => 1,
            TaskName::Scifar => 3,
        }
    }
}

/// The shape of what the data pipeline feeds a model: (B, seq_len, channels) raw pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSpec {
    /// Values per step: 1 for grayscale (LRA Image), 3 for RGB (sCIFAR).
    pub channels: i64,
    /// Number of steps (1,024 for a 32×32 image).
    pub seq_len: i64,
}

/// The `[task]` table of a preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub name: TaskName,
    /// Seed of one fixed pixel permutation applied to every image (`None`: raster order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permute: Option<u64>,
    /// Random crop after 4-pixel zero padding, training only.
    #[serde(default)]
    pub crop: bool,
    /// Random horizontal flip, training only.
    #[serde(default)]
    pub flip: bool,
    /// The RGB → grey conversion of `lra-image`: `"tf"` (TensorFlow's, LRA's; the default) or
    /// `"pil"` (PIL's, as torchvision's `Grayscale()`; see [`gray`]).
    #[serde(default, skip_serializing_if = "Gray::is_tf")]
    pub gray: Gray,
}

impl TaskConfig {
    /// Refuses a grey conversion for a task that has no grey images.
    pub fn validate(&self) -> Result<()> {
        if self.gray != Gray::Tf && self.name.channels() != 1 {
            bail!(
                "key `task.gray` = \"pil\": task `{}` is RGB; only lra-image converts to grey",
                self.name
            );
        }
        Ok(())
    }

    /// What the models receive: (B, 1024, channels).
    pub fn input_spec(&self) -> InputSpec {
        InputSpec {
            channels: self.name.channels(),
            seq_len: 1024,
        }
    }
}

/// Images and labels of one split.
#[derive(Debug)]
pub struct Split {
    /// Uint8 (N, C, 32, 32).
    pub images: Tensor,
    /// Int64 (N).
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_device(&self, d: Device) -> Split {
        Split {
            images: self.images.to_device(d),
            labels: self.labels.to_device(d),
        }
    }
}

/// The three splits of a task.
#[derive(Debug)]
pub struct Dataset {
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

impl Dataset {
    pub fn to_device(&self, d: Device) -> Dataset {
        Dataset {
            train: self.train.to_device(d),
            val: self.val.to_device(d),
            test: self.test.to_device(d),
        }
    }

    /// Splits 60,000 images (training images in official order, then test) as LRA does.
    pub fn from_images(images: &Images) -> Dataset {
        assert_eq!(images.labels.len(), ALL_IMAGES, "a dataset needs all 60,000 images");
        let c = images.channels as i64;
        let all = Tensor::from_slice(&images.pixels).view([ALL_IMAGES as i64, c, 32, 32]); // (N, C, 32, 32)
        let labels = Tensor::from_slice(&images.labels).to_kind(Kind::Int64); // (N)
        let split = |start: i64, len: i64| Split {
            images: all.narrow(0, start, len),
            labels: labels.narrow(0, start, len),
        };
        let train_images = TRAIN_IMAGES as i64;
        Dataset {
            train: split(0, TRAIN_SPLIT),
            val: split(TRAIN_SPLIT, train_images - TRAIN_SPLIT),
            test: split(train_images, ALL_IMAGES as i64 - train_images),
        }
    }
}

/// The task's 60,000 images as bytes, from wherever the data is (see the module docs).
pub fn load_images(data: Option<&Path>, task: TaskName) -> Result<Images> {
    match source::locate(data, Some(task))? {
        Source::Prepared(path) => prepared::read(&path, task),
        src => {
            let rgb = cifar::read_dir(&source::raw_folder(&src)?)?;
            Ok(match task {
                TaskName::LraImage => rgb.to_gray(),
                TaskName::Scifar => rgb,
            })
        }
    }
}

/// Locate (folder / archive / prepared cache / default dir), verify and load the task's splits.
pub fn load(data: Option<&Path>, task: TaskName) -> Result<Dataset> {
    Ok(Dataset::from_images(&load_images(data, task)?))
}

/// [`load`] for a run's `[task]`: with `gray = "pil"` the RGB images (official files or the
/// `scifar` prepared cache) are converted by PIL's formula, since the `lra-image` cache holds
/// TensorFlow's grey values.
pub fn load_task(data: Option<&Path>, task: &TaskConfig) -> Result<Dataset> {
    task.validate()?;
    match task.gray {
        Gray::Tf => load(data, task.name),
        Gray::Pil => {
            let rgb = load_images(data, TaskName::Scifar).context("task.gray = \"pil\" converts the RGB images itself")?;
            Ok(Dataset::from_images(&rgb.to_gray_by(Gray::Pil)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::shared_cifar_dir;

    #[test]
    fn splits_follow_lra() {
        let ds = load(Some(&shared_cifar_dir()), TaskName::Scifar).unwrap();
        assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (45_000, 5_000, 10_000));
        assert_eq!(ds.train.images.size(), [45_000, 3, 32, 32]);
        assert_eq!(ds.train.images.kind(), Kind::Uint8);
        assert_eq!(ds.test.labels.kind(), Kind::Int64);
        let first = |s: &Split| Vec::<i64>::try_from(s.labels.narrow(0, 0, 5)).unwrap();
        assert_eq!(first(&ds.train), [6, 9, 9, 4, 1]); // frog, truck, truck, deer, automobile
        assert_eq!(first(&ds.test), [3, 8, 8, 0, 6]); // cat, ship, ship, airplane, frog
                                                      // val starts at record 5,000 of data_batch_5.
        let raw = &cifar::tests::shared_rgb();
        assert_eq!(ds.val.labels.int64_value(&[0]), i64::from(raw.labels[45_000]));
        assert_eq!(
            ds.val.images.get(0).view([-1]),
            Tensor::from_slice(&raw.pixels[45_000 * 3072..45_001 * 3072])
        );
        let per_class = ds.test.labels.bincount(None::<Tensor>, 10);
        assert_eq!(Vec::<i64>::try_from(per_class).unwrap(), [1_000; 10]);
        let on = ds.to_device(Device::Cpu);
        assert!(on.train.images.equal(&ds.train.images));
    }

    #[test]
    fn gray_task_loads_one_channel() {
        let ds = load(Some(&shared_cifar_dir()), TaskName::LraImage).unwrap();
        assert_eq!(ds.train.images.size(), [45_000, 1, 32, 32]);
        let raw = &cifar::tests::shared_rgb().pixels;
        let (r, g, b) = (raw[7], raw[1024 + 7], raw[2048 + 7]);
        assert_eq!(ds.train.images.int64_value(&[0, 0, 0, 7]), i64::from(gray_pixel(r, g, b)));
    }

    /// `task.gray = "pil"` loads the RGB images and converts them with PIL's formula, also where
    /// the folder holds the `lra-image` cache of TensorFlow's grey values; an RGB task refuses it.
    #[test]
    fn pil_gray_task_converts_the_rgb_images() {
        let task = pil_task();
        // The official files, beside an `lra-image` cache that would fail to read if it were read.
        let dir = tempfile::tempdir().unwrap();
        for (name, _) in cifar::FILES {
            std::os::unix::fs::symlink(shared_cifar_dir().join(name), dir.path().join(name)).unwrap();
        }
        std::fs::write(dir.path().join(source::prepared_name(TaskName::LraImage)), prepared::MAGIC).unwrap();
        let rgb = cifar::tests::shared_rgb();
        let ds = load_task(Some(dir.path()), &task).unwrap();
        assert_eq!(ds.train.images.size(), [45_000, 1, 32, 32]);
        let ours = Vec::<u8>::try_from(ds.test.images.get(3).view([-1])).unwrap();
        let image = 50_003 * 3072;
        let (r, g, b) = (
            &rgb.pixels[image..image + 1024],
            &rgb.pixels[image + 1024..image + 2048],
            &rgb.pixels[image + 2048..image + 3072],
        );
        let expected: Vec<u8> = (0..1024).map(|k| gray::pil_gray_pixel(r[k], g[k], b[k])).collect();
        assert_eq!(ours, expected);
        let tf = Dataset::from_images(&rgb.to_gray());
        let differ = tf
            .test
            .images
            .ne_tensor(&ds.test.images)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(
            (0.2..0.3).contains(&differ),
            "{differ} of the test pixels differ between PIL and TensorFlow"
        );
        let rgb_task = TaskConfig {
            name: TaskName::Scifar,
            ..task
        };
        let err = load_task(Some(dir.path()), &rgb_task).unwrap_err().to_string();
        assert!(err.contains("task.gray") && err.contains("scifar"), "{err}");
        // A folder with only the TensorFlow-grey cache cannot give PIL's grey: the error says so.
        let only_cache = tempfile::tempdir().unwrap();
        std::fs::write(only_cache.path().join(source::prepared_name(TaskName::LraImage)), prepared::MAGIC).unwrap();
        let err = format!("{:#}", load_task(Some(only_cache.path()), &pil_task()).unwrap_err());
        assert!(
            err.contains("task.gray = \"pil\" converts the RGB images") && err.contains("only the prepared cache of `lra-image`"),
            "{err}"
        );
    }

    fn pil_task() -> TaskConfig {
        toml::from_str("name = \"lra-image\"\ngray = \"pil\"").unwrap()
    }

    #[test]
    fn prepared_cache_loads_like_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = cifar::tests::shared_rgb();
        prepared::write(&dir.path().join(source::prepared_name(TaskName::Scifar)), TaskName::Scifar, rgb).unwrap();
        // Found in the folder as well as named directly.
        let from_dir = load(Some(dir.path()), TaskName::Scifar).unwrap();
        let from_files = Dataset::from_images(rgb);
        for (a, b) in [
            (&from_dir.train, &from_files.train),
            (&from_dir.val, &from_files.val),
            (&from_dir.test, &from_files.test),
        ] {
            assert!(a.images.equal(&b.images) && a.labels.equal(&b.labels));
        }
        let err = format!("{:#}", load(Some(dir.path()), TaskName::LraImage).unwrap_err());
        assert!(err.contains("only the prepared cache of `scifar`"), "{err}");
    }

    #[test]
    fn task_config_reads_presets() {
        let t: TaskConfig = serde_json::from_str(r#"{"name": "lra-image"}"#).unwrap();
        assert_eq!(
            t,
            TaskConfig {
                name: TaskName::LraImage,
                permute: None,
                crop: false,
                flip: false,
                gray: Gray::Tf,
            }
        );
        assert_eq!(
            t.input_spec(),
            InputSpec {
                channels: 1,
                seq_len: 1024
            }
        );
        let t: TaskConfig = serde_json::from_str(r#"{"name": "scifar", "permute": 3, "crop": true, "flip": true}"#).unwrap();
        assert_eq!(t.input_spec().channels, 3);
        assert_eq!(t.permute, Some(3));
        assert!(serde_json::from_str::<TaskConfig>(r#"{"name": "scifar", "crop_pad": 4}"#).is_err());
        assert!(serde_json::from_str::<TaskConfig>(r#"{"name": "cifar"}"#).is_err());
    }
}
