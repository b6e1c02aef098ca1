//! The official CIFAR-10 binary files: names, sizes, checksums, reading and the published facts.

use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::Gray;

/// Bytes of one record: a label byte, then the 1,024 red, 1,024 green and 1,024 blue bytes.
pub const RECORD_BYTES: usize = 1 + 3 * PIXELS;
/// Pixels of one 32×32 image.
pub const PIXELS: usize = 1024;
/// Records in each of the six files.
pub const RECORDS_PER_FILE: usize = 10_000;
/// Size of each of the six files.
pub const FILE_BYTES: u64 = (RECORD_BYTES * RECORDS_PER_FILE) as u64;
/// Training images (the five `data_batch_*.bin` files in official order).
pub const TRAIN_IMAGES: usize = 50_000;
/// Test images (`test_batch.bin`).
pub const TEST_IMAGES: usize = 10_000;
/// All images: the training images in official order, then the test images.
pub const ALL_IMAGES: usize = TRAIN_IMAGES + TEST_IMAGES;

/// The six files in load order with the sha256 of the official `cifar-10-binary.tar.gz` contents.
pub const FILES: [(&str, &str); 6] = [
    (
        "data_batch_1.bin",
        "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    ),
    (
        "data_batch_2.bin",
        "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    ),
    (
        "data_batch_3.bin",
        "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    ),
    (
        "data_batch_4.bin",
        "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    ),
    (
        "data_batch_5.bin",
        "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    ),
    ("test_batch.bin", "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b"),
];

/// Class names in label order (`batches.meta.txt`).
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Labelled images held as bytes: all 60,000 CIFAR-10 images, training images first (official
/// order), then the test images. Each image is `channels` planes of 1,024 row-major bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// 1 (grayscale) or 3 (red, green, blue planes).
    pub channels: usize,
    /// One label 0..=9 per image.
    pub labels: Vec<u8>,
    /// `labels.len() × channels × 1024` bytes.
    pub pixels: Vec<u8>,
}

impl Images {
    /// The grayscale version (`channels == 1`) of RGB images, pixel by pixel with
    /// [`super::gray_pixel`] (TensorFlow's conversion, LRA's); images are spread over threads.
    pub fn to_gray(&self) -> Images {
        self.to_gray_by(Gray::Tf)
    }

    /// The grayscale version of RGB images by the conversion `gray`.
    pub fn to_gray_by(&self, gray: Gray) -> Images {
        assert_eq!(self.channels, 3, "to_gray needs RGB images");
        let n = self.labels.len();
        let mut pixels = vec![0u8; n * PIXELS];
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let per_thread = n.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (src, dst) in self
                .pixels
                .chunks(per_thread * 3 * PIXELS)
                .zip(pixels.chunks_mut(per_thread * PIXELS))
            {
                s.spawn(move || {
                    for (img, out) in src.chunks_exact(3 * PIXELS).zip(dst.chunks_exact_mut(PIXELS)) {
                        let (r, rest) = img.split_at(PIXELS);
                        let (g, b) = rest.split_at(PIXELS);
                        for (k, y) in out.iter_mut().enumerate() {
                            *y = gray.pixel(r[k], g[k], b[k]);
                        }
                    }
                });
            }
        });
        Images {
            channels: 1,
            labels: self.labels.clone(),
            pixels,
        }
    }
}

/// Reads one file, checking size and checksum; errors name the file and what is wrong.
fn read_verified(path: &Path, sha256: &str) -> Result<Vec<u8>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("CIFAR-10 file `{}` is missing", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("failed to read CIFAR-10 file `{}`", path.display())),
    };
    if !meta.is_file() {
        let what = if meta.is_dir() { "a folder" } else { "not a regular file" };
        bail!(
            "CIFAR-10 file `{}` is {what}; expected the official {FILE_BYTES}-byte file",
            path.display()
        );
    }
    if meta.len() != FILE_BYTES {
        bail!(
            "CIFAR-10 file `{}` has {} bytes, expected {FILE_BYTES} (truncated or not the official file)",
            path.display(),
            meta.len()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("failed to read CIFAR-10 file `{}`", path.display()))?;
    if bytes.len() as u64 != FILE_BYTES {
        bail!("CIFAR-10 file `{}` changed size while being read", path.display());
    }
    let got = crate::files::hex(&Sha256::digest(&bytes));
    if got != sha256 {
        bail!(
            "CIFAR-10 file `{}` fails its checksum: sha256 {got}, expected {sha256} (corrupted or not the official file)",
            path.display()
        );
    }
    Ok(bytes)
}

/// Checks size and sha256 of the six files in `dir` without keeping their contents.
pub fn verify_dir(dir: &Path) -> Result<()> {
    read_dir(dir).map(drop)
}

/// Reads and verifies the six files of a `cifar-10-batches-bin` folder (in parallel, one thread
/// per file) into RGB [`Images`].
pub fn read_dir(dir: &Path) -> Result<Images> {
    let files: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = FILES
            .iter()
            .map(|&(name, sha)| s.spawn(move || read_verified(&dir.join(name), sha)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("reader thread panicked")).collect()
    });
    let mut labels = Vec::with_capacity(ALL_IMAGES);
    let mut pixels = Vec::with_capacity(ALL_IMAGES * 3 * PIXELS);
    for file in files {
        for rec in file?.chunks_exact(RECORD_BYTES) {
            labels.push(rec[0]);
            pixels.extend_from_slice(&rec[1..]);
        }
    }
    Ok(Images {
        channels: 3,
        labels,
        pixels,
    })
}

/// One checked fact about the loaded data.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    /// What was checked, with the value found.
    pub what: String,
    pub ok: bool,
}

/// The published facts about CIFAR-10 checked on RGB images in official order: per-class counts,
/// the first labels of `data_batch_1` and `test_batch`, and the training-set channel means.
pub fn facts(images: &Images) -> Vec<Fact> {
    assert_eq!(images.channels, 3, "facts need RGB images");
    let (train, test) = images.labels.split_at(TRAIN_IMAGES);
    let mut out = Vec::new();
    for (split, labels, per_class) in [("train", train, 5_000), ("test", test, 1_000)] {
        let mut counts = [0usize; 10];
        for &l in labels {
            counts[usize::from(l.min(9))] += 1;
        }
        let ok = labels.iter().all(|&l| l < 10) && counts.iter().all(|&c| c == per_class);
        out.push(Fact {
            what: format!("{split}: {} images, per class {counts:?} (expected {per_class} each)", labels.len()),
            ok,
        });
    }
    let first = |labels: &[u8]| {
        labels
            .iter()
            .take(5)
            .map(|&l| CLASSES.get(usize::from(l)).copied().unwrap_or("?"))
            .collect::<Vec<_>>()
    };
    for (file, labels, expected) in [
        ("data_batch_1", train, ["frog", "truck", "truck", "deer", "automobile"]),
        ("test_batch", test, ["cat", "ship", "ship", "airplane", "frog"]),
    ] {
        let got = first(labels);
        out.push(Fact {
            what: format!("{file} starts {} (expected {})", got.join(", "), expected.join(", ")),
            ok: got == expected,
        });
    }
    let means = channel_means(&images.pixels[..TRAIN_IMAGES * 3 * PIXELS]);
    let expected = [125.307, 122.950, 113.865];
    let ok = means.iter().zip(expected).all(|(m, e)| (m - e).abs() <= 0.001);
    out.push(Fact {
        what: format!(
            "training channel means ({:.4}, {:.4}, {:.4}) (expected ({:.3}, {:.3}, {:.3}) within 0.001)",
            means[0], means[1], means[2], expected[0], expected[1], expected[2]
        ),
        ok,
    });
    out
}

/// Mean of each of the three planes over RGB images, on the 0–255 scale.
fn channel_means(pixels: &[u8]) -> [f64; 3] {
    let mut sums = [0u64; 3];
    for img in pixels.chunks_exact(3 * PIXELS) {
        for (c, plane) in img.chunks_exact(PIXELS).enumerate() {
            sums[c] += plane.iter().map(|&v| u64::from(v)).sum::<u64>();
        }
    }
    let n = (pixels.len() / 3) as f64;
    sums.map(|s| s as f64 / n)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::testing::shared_cifar_dir;
    use std::sync::OnceLock;

    /// The shared CIFAR-10 files, read and verified once per test binary.
    pub fn shared_rgb() -> &'static Images {
        static RGB: OnceLock<Images> = OnceLock::new();
        RGB.get_or_init(|| read_dir(&shared_cifar_dir()).expect("shared CIFAR-10 files"))
    }

    #[test]
    fn shared_files_pass_every_fact() {
        let images = shared_rgb();
        assert_eq!(images.labels.len(), ALL_IMAGES);
        assert_eq!(images.pixels.len(), ALL_IMAGES * 3 * PIXELS);
        for fact in facts(images) {
            assert!(fact.ok, "{}", fact.what);
        }
    }

    #[test]
    fn facts_catch_wrong_labels() {
        let mut images = shared_rgb().clone();
        images.labels[0] = 0;
        let failed: Vec<_> = facts(&images).into_iter().filter(|f| !f.ok).map(|f| f.what).collect();
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(failed[0].starts_with("train"));
        assert!(failed[1].starts_with("data_batch_1 starts airplane, truck"));
    }

    #[test]
    fn class_names_match_batches_meta() {
        let meta = std::fs::read_to_string(shared_cifar_dir().join("batches.meta.txt")).unwrap();
        let names: Vec<&str> = meta.split_whitespace().collect();
        assert_eq!(names, CLASSES);
    }

    /// A temporary folder holding copies of the shared files (optionally only some of them).
    fn copy_of_shared(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            std::fs::copy(shared_cifar_dir().join(name), dir.path().join(name)).unwrap();
        }
        dir
    }

    fn all_names() -> Vec<&'static str> {
        FILES.iter().map(|f| f.0).collect()
    }

    #[test]
    fn flipped_byte_fails_the_checksum() {
        let dir = copy_of_shared(&all_names());
        let path = dir.path().join("data_batch_3.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12_345] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = format!("{:#}", read_dir(dir.path()).unwrap_err());
        assert!(err.contains("data_batch_3.bin") && err.contains("fails its checksum"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn truncated_file_is_named() {
        let dir = copy_of_shared(&all_names());
        let path = dir.path().join("test_batch.bin");
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(FILE_BYTES - 3073).unwrap();
        let err = format!("{:#}", read_dir(dir.path()).unwrap_err());
        assert!(
            err.contains("test_batch.bin") && err.contains("30726927 bytes") && err.contains("truncated"),
            "{err}"
        );
    }

    #[test]
    fn a_folder_in_place_of_a_file_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data_batch_4.bin")).unwrap();
        let err = format!("{:#}", read_verified(&dir.path().join("data_batch_4.bin"), FILES[3].1).unwrap_err());
        assert!(
            err.contains("data_batch_4.bin` is a folder") && !err.contains("bytes, expected"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let names: Vec<_> = all_names().into_iter().filter(|&n| n != "data_batch_4.bin").collect();
        let dir = copy_of_shared(&names);
        let err = format!("{:#}", read_dir(dir.path()).unwrap_err());
        assert!(err.contains("data_batch_4.bin") && err.contains("is missing"), "{err}");
    }

    #[test]
    fn gray_planes_follow_gray_pixel() {
        let rgb = Images {
            channels: 3,
            labels: vec![7],
            pixels: (0..3 * PIXELS).map(|i| (i * 7 % 256) as u8).collect(),
        };
        let gray = rgb.to_gray();
        assert_eq!(gray.pixels.len(), PIXELS);
        for k in [0, 1, 500, 1023] {
            let (r, g, b) = (rgb.pixels[k], rgb.pixels[PIXELS + k], rgb.pixels[2 * PIXELS + k]);
            assert_eq!(gray.pixels[k], super::super::gray_pixel(r, g, b));
        }
        assert_eq!(gray.labels, vec![7]);
    }
}
