//! `pixelseq predict`: classify image files with a trained run.
//!
//! ```text
//! pixelseq predict --run RUN_DIR IMAGE_OR_FOLDER... [--csv FILE] [--device auto|cpu|cuda:N]
//! ```
//!
//! Builds the model of the run's `config.toml`, loads `checkpoints/best` into it, and prints the
//! three most probable CIFAR-10 classes of each image. Images are PNG or JPEG of any size: each is
//! cropped to its centred square and resized to 32×32 with a triangle (bilinear, area-aware when
//! shrinking) filter, then fed as the run's task reads CIFAR-10 — raw 8-bit pixels in raster
//! order, RGB for sCIFAR, TensorFlow-exact grayscale for LRA Image, and the task's fixed pixel
//! permutation where it has one. A folder (searched recursively for `.png`, `.jpg`, `.jpeg`)
//! or `--csv FILE` gives CSV (`path,top1,p1,top2,p2,top3,p3`, probabilities in 0..1) on stdout
//! or in FILE; otherwise one line per image.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::imageops::{self, FilterType};
use image::RgbImage;
use tch::{nn::ModuleT, Device, Kind, Tensor};

use crate::amp::{self, Precision};
use crate::data::{batch_input, cifar::CLASSES, Gray, TaskConfig};
use crate::files;

/// Side of a CIFAR-10 image.
pub const SIDE: u32 = 32;

/// How many classes each prediction lists.
pub const TOP: usize = 3;

/// Header of the CSV output.
pub const CSV_HEADER: &str = "path,top1,p1,top2,p2,top3,p3";

/// The top classes of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub path: PathBuf,
    /// (class index, probability), most probable first.
    pub top: Vec<(usize, f32)>,
}

/// The image files named by `inputs`: files as given, folders searched recursively for `.png`,
/// `.jpg` and `.jpeg` (any case) in sorted order.
pub fn list_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn search(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
        for e in files::sorted_entries(dir)? {
            let path = e.path();
            if path.is_dir() {
                search(&path, found)?;
            } else if path
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| ["png", "jpg", "jpeg"].contains(&x.to_ascii_lowercase().as_str()))
            {
                found.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let before = files.len();
            search(input, &mut files)?;
            if files.len() == before {
                bail!("no PNG or JPEG files in folder `{}`", input.display());
            }
        } else if input.exists() {
            files.push(input.clone());
        } else {
            bail!("image `{}` not found", input.display());
        }
    }
    Ok(files)
}

/// Decodes an image file (format from its content) and fits it to 32×32 RGB with [`fit`].
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let decoded = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("failed to read image `{}`", path.display()))?
        .decode()
        .map_err(|e| anyhow::anyhow!("cannot decode image `{}`: {e}", path.display()))?;
    Ok(fit(decoded.to_rgb8()))
}

/// The centred square of `img` resized to 32×32 with a triangle filter, which averages over
/// the whole footprint of each output pixel when shrinking. 32×32 pixels are kept exactly.
pub fn fit(img: RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (SIDE, SIDE) {
        return img;
    }
    let side = w.min(h);
    let square = imageops::crop_imm(&img, (w - side) / 2, (h - side) / 2, side, side).to_image();
    if side == SIDE {
        return square;
    }
    imageops::resize(&square, SIDE, SIDE, FilterType::Triangle)
}

/// A batch of 32×32 images as the data pipeline holds CIFAR-10: `Uint8` (B, C, 32, 32), with
/// C = 3 (RGB) or C = 1 (grayscale by the task's conversion `gray`: TensorFlow-exact as LRA Image,
/// or PIL's).
pub fn pixels(images: &[RgbImage], channels: i64, gray: Gray) -> Tensor {
    let n = (SIDE * SIDE) as usize;
    let mut data = vec![0u8; images.len() * channels as usize * n];
    for (img, out) in images.iter().zip(data.chunks_mut(channels as usize * n)) {
        assert_eq!(img.dimensions(), (SIDE, SIDE), "images are fitted to 32×32 first");
        for (i, p) in img.pixels().enumerate() {
            let [r, g, b] = p.0;
            if channels == 1 {
                out[i] = gray.pixel(r, g, b);
            } else {
                (out[i], out[n + i], out[2 * n + i]) = (r, g, b);
            }
        }
    }
    Tensor::from_slice(&data).view([images.len() as i64, channels, SIDE as i64, SIDE as i64])
    // (B, C, 32, 32)
}

/// Class probabilities (row-major, 10 per image) of `model` for images (B, C, 32, 32), fed
/// through the task's batch pipeline (raster order, permutation) in evaluation mode.
pub fn probabilities(model: &dyn ModuleT, images: &Tensor, task: &TaskConfig, device: Device, precision: Precision) -> Vec<f32> {
    let probs = tch::no_grad(|| {
        let xs = batch_input(&images.to_device(device), task, false); // (B, L, C)
        let logits = amp::autocast(precision, || model.forward_t(&xs, false)).to_kind(Kind::Float); // (B, 10)
        logits.softmax(-1, Kind::Float).to_device(Device::Cpu).flatten(0, -1) // (B * 10)
    });
    Vec::<f32>::try_from(&probs).expect("probabilities are float32")
}

/// The `k` largest entries of `probs` as (index, probability), largest first; ties keep index order.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    order.truncate(k);
    order
}

impl Prediction {
    /// "path: cat 91.20%, dog 5.10%, deer 1.00%".
    pub fn line(&self) -> String {
        let classes: Vec<String> = self.top.iter().map(|(c, p)| format!("{} {:.2}%", CLASSES[*c], 100.0 * p)).collect();
        format!("{}: {}", self.path.display(), classes.join(", "))
    }

    /// "path,cat,0.9120,dog,0.0510,deer,0.0100" (the path quoted where CSV needs it).
    pub fn csv_row(&self) -> String {
        let mut row = csv_field(&self.path.display().to_string());
        for (c, p) in &self.top {
            write!(row, ",{},{p:.4}", CLASSES[*c]).expect("writing to a String cannot fail");
        }
        row
    }
}

/// The header and one row per prediction, newline-terminated.
pub fn csv(predictions: &[Prediction]) -> String {
    let mut s = format!("{CSV_HEADER}\n");
    for p in predictions {
        s += &p.csv_row();
        s.push('\n');
    }
    s
}

/// A CSV field, quoted (with doubled quotes) when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn task(toml_text: &str) -> TaskConfig {
        toml::from_str(toml_text).expect("a valid [task] table")
    }

    /// A 32×32 image whose every pixel differs from its neighbours in each channel.
    fn gradient() -> RgbImage {
        RgbImage::from_fn(SIDE, SIDE, |x, y| {
            Rgb([(x * 8) as u8, (y * 8 + 3) as u8, ((x * 3 + y * 5) % 256) as u8])
        })
    }

    #[test]
    fn a_32x32_image_is_kept_exactly() {
        assert_eq!(fit(gradient()), gradient());
    }

    #[test]
    fn shrinking_averages_instead_of_sampling() {
        // One-pixel checkerboard: a sampling filter (nearest) would give pure black or white.
        let board = RgbImage::from_fn(128, 128, |x, y| if (x + y) % 2 == 0 { Rgb([255; 3]) } else { Rgb([0; 3]) });
        for p in fit(board).pixels() {
            assert!(p.0.iter().all(|v| (112..=143).contains(v)), "{p:?}");
        }
        // Large uniform areas keep their colour.
        let halves = RgbImage::from_fn(96, 96, |x, _| if x < 48 { Rgb([200, 0, 0]) } else { Rgb([0, 0, 200]) });
        let small = fit(halves);
        assert_eq!(small.dimensions(), (32, 32));
        assert_eq!(small.get_pixel(0, 5).0, [200, 0, 0]);
        assert_eq!(small.get_pixel(31, 5).0, [0, 0, 200]);
    }

    #[test]
    fn a_wide_image_is_cropped_to_its_centred_square() {
        let wide = RgbImage::from_fn(96, 32, |x, _| {
            if (32..64).contains(&x) {
                Rgb([0, 255, 0])
            } else {
                Rgb([255, 0, 0])
            }
        });
        assert!(fit(wide).pixels().all(|p| p.0 == [0, 255, 0]));
        let tall = RgbImage::from_fn(40, 80, |_, y| if (20..60).contains(&y) { Rgb([9, 9, 9]) } else { Rgb([250, 0, 0]) });
        assert!(fit(tall).pixels().all(|p| p.0 == [9, 9, 9]));
    }

    #[test]
    fn rgb_input_is_raw_pixels_in_raster_order() {
        let img = gradient();
        let images = pixels(std::slice::from_ref(&img), 3, Gray::Tf);
        assert_eq!(images.size(), [1, 3, 32, 32]);
        let xs = batch_input(&images, &task("name = \"scifar\""), false);
        assert_eq!((xs.size(), xs.kind()), (vec![1, 1024, 3], Kind::Uint8));
        let values = Vec::<u8>::try_from(&xs.flatten(0, -1)).unwrap();
        for (i, step) in values.chunks(3).enumerate() {
            let (x, y) = (i as u32 % SIDE, i as u32 / SIDE);
            assert_eq!(
                step,
                img.get_pixel(x, y).0,
                "step {i} holds the (r, g, b) of pixel (row {y}, column {x})"
            );
        }
    }

    #[test]
    fn grayscale_input_is_tensorflow_exact() {
        let img = gradient();
        let images = pixels(&[img.clone(), img.clone()], 1, Gray::Tf);
        assert_eq!(images.size(), [2, 1, 32, 32]);
        let xs = batch_input(&images, &task("name = \"lra-image\""), false);
        assert_eq!(xs.size(), [2, 1024, 1]);
        let values = Vec::<u8>::try_from(&xs.get(1).flatten(0, -1)).unwrap();
        let expected: Vec<u8> = img.pixels().map(|p| crate::data::gray_pixel(p.0[0], p.0[1], p.0[2])).collect();
        assert_eq!(values, expected);
        // A run of `task.gray = "pil"` reads image files with PIL's conversion, as it was trained.
        let pil = pixels(std::slice::from_ref(&img), 1, Gray::Pil);
        let expected: Vec<u8> = img
            .pixels()
            .map(|p| crate::data::gray::pil_gray_pixel(p.0[0], p.0[1], p.0[2]))
            .collect();
        assert_eq!(Vec::<u8>::try_from(&pil.flatten(0, -1)).unwrap(), expected);
        assert_ne!(
            Vec::<u8>::try_from(&images.get(0).flatten(0, -1)).unwrap(),
            expected,
            "the gradient has pixels where the two differ"
        );
    }

    #[test]
    fn top_k_sorts_by_probability() {
        let probs = [0.1, 0.5, 0.05, 0.3, 0.0, 0.02, 0.01, 0.01, 0.005, 0.005];
        assert_eq!(top_k(&probs, 3), [(1, 0.5), (3, 0.3), (0, 0.1)]);
        assert_eq!(
            top_k(&[0.25, 0.5, 0.25], 3),
            [(1, 0.5), (0, 0.25), (2, 0.25)],
            "ties keep class order"
        );
    }

    #[test]
    fn predictions_print_as_lines_and_csv() {
        let p = |path: &str| Prediction {
            path: PathBuf::from(path),
            top: vec![(3, 0.912), (5, 0.051), (4, 0.01)],
        };
        assert_eq!(p("cat.png").line(), "cat.png: cat 91.20%, dog 5.10%, deer 1.00%");
        assert_eq!(
            csv(&[p("a/cat.png"), p("odd, \"name\".jpg")]),
            "path,top1,p1,top2,p2,top3,p3\n\
             a/cat.png,cat,0.9120,dog,0.0510,deer,0.0100\n\
             \"odd, \"\"name\"\".jpg\",cat,0.9120,dog,0.0510,deer,0.0100\n"
        );
    }

    #[test]
    fn unreadable_or_undecodable_files_are_one_line_errors_naming_them() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = tmp.path().join("bad.png");
        std::fs::write(&bad, "not an image").unwrap();
        let missing = tmp.path().join("missing.jpg");
        for path in [&bad, &missing] {
            let err = format!("{:#}", load_image(path).unwrap_err());
            assert!(err.contains(&format!("`{}`", path.display())), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = list_images(std::slice::from_ref(&missing)).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn folders_are_searched_for_png_and_jpeg() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir(dir.join("sub")).unwrap();
        for name in ["b.png", "A.JPG", "notes.txt", "sub/c.jpeg"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let found = list_images(&[dir.to_path_buf()]).unwrap();
        assert_eq!(found, [dir.join("A.JPG"), dir.join("b.png"), dir.join("sub/c.jpeg")]);
        let empty = dir.join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(list_images(&[empty]).unwrap_err().to_string().contains("no PNG or JPEG"));
    }

    /// Files of each format and size reach the model as the (1, 1024, 3) raw pixels of the
    /// 32×32 image, in evaluation mode.
    #[test]
    fn image_files_reach_the_model_as_raw_pixels() {
        let tmp = tempfile::tempdir().unwrap();
        // Class k's logit is 10 where the first pixel's red value is k, so the top class reads
        // back the first pixel (the top-left corner in raster order).
        let model = tch::nn::func_t(|xs, train| {
            assert!(!train, "prediction runs in evaluation mode");
            assert_eq!((xs.size()[1..].to_vec(), xs.kind()), (vec![1024, 3], Kind::Uint8));
            let first = xs.select(1, 0).select(1, 0).to_kind(Kind::Int64); // (B)
            first.one_hot(10).to_kind(Kind::Float) * 10.0 // (B, 10)
        });
        let corner = |k: u8, w: u32, h: u32| {
            RgbImage::from_fn(w, h, move |x, y| {
                if x < w / 4 && y < h / 4 {
                    Rgb([k, 99, 99])
                } else {
                    Rgb([99, 0, 0])
                }
            })
        };
        let files = [
            ("seven.png", corner(7, 32, 32)),
            ("two.jpg", RgbImage::from_pixel(48, 48, Rgb([2, 99, 99]))),
            ("five.png", corner(5, 256, 256)),
        ];
        let mut images = Vec::new();
        for (name, img) in &files {
            let path = tmp.path().join(name);
            img.save(&path).unwrap();
            images.push(load_image(&path).unwrap());
        }
        let probs = probabilities(
            &model,
            &pixels(&images, 3, Gray::Tf),
            &task("name = \"scifar\""),
            Device::Cpu,
            Precision::Fp32,
        );
        let tops: Vec<usize> = probs.chunks(10).map(|row| top_k(row, TOP)[0].0).collect();
        assert_eq!(tops[0], 7);
        assert_eq!(tops[2], 5);
        // JPEG is lossy: the red value comes back near 2.
        assert!((1..=3).contains(&tops[1]), "{tops:?}");
        for row in probs.chunks(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
