//! The prepared cache: one task's 60,000 images and labels in one compact file (see the module
//! docs of [`crate::data`] for the format).

use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::cifar::{Images, PIXELS, TEST_IMAGES, TRAIN_IMAGES};
use super::TaskName;
use crate::files::hex;
use crate::files::write_atomic;

/// First eight bytes of a prepared cache.
pub const MAGIC: &[u8; 8] = b"PXSQDATA";
/// Format version written and read.
pub const VERSION: u32 = 1;
/// Bytes before the zstd frame.
const HEADER_BYTES: usize = 56;
/// zstd level: the default level; higher levels make the filtered pixels no smaller.
const LEVEL: i32 = 3;
/// Side of the square images.
const SIDE: usize = 32;

fn task_byte(task: TaskName) -> u8 {
    match task {
        TaskName::LraImage => 0,
        TaskName::Scifar => 1,
    }
}

/// The LOCO-I median edge detector: the prediction of a pixel from its left (a), upper (b) and
/// upper-left (c) neighbours, `min(a, b)` if `c ≥ max(a, b)`, `max(a, b)` if `c ≤ min(a, b)`,
/// else `a + b − c`; that is, `a + b − c` clamped to `[min(a, b), max(a, b)]`.
#[inline(always)]
fn med(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    p.clamp(i16::from(a.min(b)), i16::from(a.max(b))) as u8
}

/// One 32×32 plane.
type Plane = [u8; PIXELS];

/// A row of a plane.
fn row(plane: &Plane, y: usize) -> &[u8; SIDE] {
    plane[y * SIDE..(y + 1) * SIDE].try_into().expect("32 bytes")
}

/// Residuals of a plane: each pixel minus its prediction (mod 256), the prediction being [`med`]
/// of its left, upper and upper-left neighbours with 0 outside the plane (so on the first row
/// the left neighbour, in the first column the upper one).
fn filter_plane(src: &Plane, dst: &mut Plane) {
    let mut left = 0u8;
    for x in 0..SIDE {
        dst[x] = src[x].wrapping_sub(left);
        left = src[x];
    }
    for y in 1..SIDE {
        let (up, cur) = (row(src, y - 1), row(src, y));
        let out = &mut dst[y * SIDE..(y + 1) * SIDE];
        out[0] = cur[0].wrapping_sub(up[0]);
        for x in 1..SIDE {
            out[x] = cur[x].wrapping_sub(med(cur[x - 1], up[x], up[x - 1]));
        }
    }
}

/// The inverse of [`filter_plane`], in place: in raster order each prediction reads neighbours
/// that are already restored.
fn unfilter_plane(plane: &mut Plane) {
    for x in 1..SIDE {
        plane[x] = plane[x].wrapping_add(plane[x - 1]);
    }
    for y in 1..SIDE {
        let (above, rest) = plane.split_at_mut(y * SIDE);
        let up: &[u8; SIDE] = above[(y - 1) * SIDE..].try_into().expect("32 bytes");
        let cur: &mut [u8; SIDE] = (&mut rest[..SIDE]).try_into().expect("32 bytes");
        cur[0] = cur[0].wrapping_add(up[0]);
        for x in 1..SIDE {
            cur[x] = cur[x].wrapping_add(med(cur[x - 1], up[x], up[x - 1]));
        }
    }
}

/// Pixel planes → residuals, plane by plane.
fn filter(pixels: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; pixels.len()];
    for (src, dst) in pixels.chunks_exact(PIXELS).zip(out.chunks_exact_mut(PIXELS)) {
        filter_plane(src.try_into().expect("one plane"), dst.try_into().expect("one plane"));
    }
    out
}

/// Residuals → pixel planes, in place, planes spread over threads.
fn unfilter(data: &mut [u8]) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = data.len().div_ceil(PIXELS).div_ceil(threads).max(1) * PIXELS;
    std::thread::scope(|s| {
        for chunk in data.chunks_mut(per_thread) {
            s.spawn(|| {
                for plane in chunk.chunks_exact_mut(PIXELS) {
                    unfilter_plane(plane.try_into().expect("one plane"));
                }
            });
        }
    });
}

/// Writes the cache of `task` (atomically) from its images: grayscale for lra-image, RGB for scifar.
pub fn write(path: &Path, task: TaskName, images: &Images) -> Result<()> {
    assert_eq!(images.channels as i64, task.channels(), "images do not match the task");
    assert_eq!(images.labels.len(), TRAIN_IMAGES + TEST_IMAGES, "a cache holds all 60,000 images");
    let mut hasher = Sha256::new();
    hasher.update(&images.labels);
    hasher.update(&images.pixels);
    let mut payload = images.labels.clone();
    payload.extend(filter(&images.pixels));
    let frame = zstd::bulk::compress(&payload, LEVEL).context("zstd compression failed")?;

    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&[task_byte(task), 0, 0, 0]);
    header.extend_from_slice(&(TRAIN_IMAGES as u32).to_le_bytes());
    header.extend_from_slice(&(TEST_IMAGES as u32).to_le_bytes());
    header.extend_from_slice(&hasher.finalize());
    debug_assert_eq!(header.len(), HEADER_BYTES);
    write_atomic(path, |w| {
        w.write_all(&header)?;
        w.write_all(&frame)?;
        Ok(())
    })
    .with_context(|| format!("failed to write prepared cache `{}`", path.display()))
}

/// Reads the cache at `path`, checking that it holds `task` and that its contents are intact.
pub fn read(path: &Path, task: TaskName) -> Result<Images> {
    let bytes = std::fs::read(path).with_context(|| format!("failed to read prepared cache `{}`", path.display()))?;
    let p = path.display();
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        bail!("`{p}` is not a pixelseq prepared cache (bad header)");
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != VERSION {
        bail!("`{p}` is a prepared cache of format version {version}; this pixelseq reads version {VERSION}: run `pixelseq data prepare` again");
    }
    let stored = match bytes[12] {
        0 => TaskName::LraImage,
        1 => TaskName::Scifar,
        t => bail!("`{p}` is corrupt: unknown task byte {t}"),
    };
    if stored != task {
        bail!("`{p}` is the prepared cache of task {}, not {}", stored.as_str(), task.as_str());
    }
    let (n_train, n_test) = (u32_at(16) as usize, u32_at(20) as usize);
    if (n_train, n_test) != (TRAIN_IMAGES, TEST_IMAGES) {
        bail!("`{p}` is corrupt: it claims {n_train} training and {n_test} test images, not {TRAIN_IMAGES} and {TEST_IMAGES}");
    }
    let channels = task.channels() as usize;
    let n = n_train + n_test;
    let expected = n + n * channels * PIXELS;
    let mut payload = zstd::bulk::decompress(&bytes[HEADER_BYTES..], expected).with_context(|| format!("`{p}` is corrupt (zstd)"))?;
    if payload.len() != expected {
        bail!("`{p}` is corrupt: it holds {} bytes of images, expected {expected}", payload.len());
    }
    let labels = payload[..n].to_vec();
    payload.drain(..n);
    let mut images = Images {
        channels,
        labels,
        pixels: payload,
    };
    unfilter(&mut images.pixels);
    let mut hasher = Sha256::new();
    hasher.update(&images.labels);
    hasher.update(&images.pixels);
    let got = hasher.finalize();
    if got[..] != bytes[24..56] {
        bail!(
            "`{p}` is corrupt: contents have sha256 {}, the header says {}; run `pixelseq data prepare` again",
            hex(&got),
            hex(&bytes[24..56])
        );
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::cifar::tests::shared_rgb;

    #[test]
    fn med_predicts_like_loco_i() {
        for (a, b, c) in [
            (10u8, 20u8, 25u8),
            (10, 20, 5),
            (10, 20, 12),
            (255, 250, 251),
            (0, 0, 0),
            (200, 3, 100),
            (3, 200, 255),
        ] {
            let (lo, hi) = (a.min(b), a.max(b));
            let expected = if c >= hi {
                lo
            } else if c <= lo {
                hi
            } else {
                (i16::from(a) + i16::from(b) - i16::from(c)) as u8
            };
            assert_eq!(med(a, b, c), expected, "{a} {b} {c}");
        }
        assert_eq!(med(10, 20, 25), 10); // c above both: the smaller
        assert_eq!(med(10, 20, 5), 20); // c below both: the larger
        assert_eq!(med(10, 20, 12), 18); // in between: a + b - c
        assert_eq!(med(255, 250, 251), 254);
        assert_eq!(med(0, 0, 0), 0);
    }

    #[test]
    fn filter_is_invertible() {
        let pixels: Vec<u8> = (0..3 * PIXELS).map(|i| ((i * 37) ^ (i >> 3)) as u8).collect();
        let mut data = filter(&pixels);
        assert_ne!(data, pixels);
        unfilter(&mut data);
        assert_eq!(data, pixels);
    }

    #[test]
    fn gray_cache_round_trip_and_corruption() {
        let gray = shared_rgb().to_gray();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pixelseq-lra-image.zst");
        write(&path, TaskName::LraImage, &gray).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 48_000_000, "grayscale cache has {size} bytes");
        assert!(read(&path, TaskName::LraImage).unwrap() == gray);

        let err = format!("{:#}", read(&path, TaskName::Scifar).unwrap_err());
        assert!(err.contains("cache of task lra-image, not scifar"), "{err}");

        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", read(&path, TaskName::LraImage).unwrap_err());
        assert!(err.contains("pixelseq-lra-image.zst") && err.contains("is corrupt"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        std::fs::write(&path, &bytes[..1000]).unwrap();
        let err = format!("{:#}", read(&path, TaskName::LraImage).unwrap_err());
        assert!(err.contains("is corrupt"), "{err}");

        std::fs::write(&path, b"PXSQDATA").unwrap();
        let err = format!("{:#}", read(&path, TaskName::LraImage).unwrap_err());
        assert!(err.contains("not a pixelseq prepared cache"), "{err}");
    }
}
