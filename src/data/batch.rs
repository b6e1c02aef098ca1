//! From image batches to model input: augmentation, raster flattening and the fixed permutation.

use tch::{Device, Kind, Tensor};

use super::TaskConfig;
use crate::rng::SplitMix64;

/// Steps of a flattened 32×32 image.
const STEPS: usize = 1024;
/// Zero padding on each side before a random 32×32 crop.
const CROP_PAD: i64 = 4;

/// The fixed pixel permutation of a seed: step k of the permuted sequence is pixel `p[k]` of the
/// raster order. Fisher–Yates driven by splitmix64 started at `seed`: for i = 1023 down to 1,
/// swap entries i and j = below(i + 1), where below(n) = (next() × n) >> 64.
pub fn permutation(seed: u64) -> Vec<i64> {
    SplitMix64::new(seed).permutation(STEPS)
}

/// Crops (B, C, H, W) images after zero padding by `pad` on each side; image i's window starts at
/// row `oy[i]` and column `ox[i]` of the padded image (0..=2·pad). Output (B, C, H, W).
fn crop_at(images: &Tensor, pad: i64, oy: &Tensor, ox: &Tensor) -> Tensor {
    let (b, c, h, w) = images.size4().expect("images are (B, C, H, W)");
    let padded = images.constant_pad_nd([pad, pad, pad, pad]); // (B, C, H+2p, W+2p)
    let dev = images.device();
    let rows = oy.view([b, 1]) + Tensor::arange(h, (Kind::Int64, dev)).view([1, h]); // (B, H)
    let cols = ox.view([b, 1]) + Tensor::arange(w, (Kind::Int64, dev)).view([1, w]); // (B, W)
    let rows = rows.view([b, 1, h, 1]).expand([b, c, h, w + 2 * pad], false); // (B, C, H, W+2p)
    let cols = cols.view([b, 1, 1, w]).expand([b, c, h, w], false); // (B, C, H, W)
    padded.gather(2, &rows, false).gather(3, &cols, false) // (B, C, H, W)
}

/// Random crop after 4-pixel zero padding, the window uniform per image (torch RNG on the device).
fn random_crop(images: &Tensor) -> Tensor {
    let b = images.size()[0];
    let opts = (Kind::Int64, images.device());
    let oy = Tensor::randint(2 * CROP_PAD + 1, [b], opts); // (B)
    let ox = Tensor::randint(2 * CROP_PAD + 1, [b], opts); // (B)
    crop_at(images, CROP_PAD, &oy, &ox)
}

/// Mirrors each image left–right with probability 1/2 (torch RNG on the device).
fn random_flip(images: &Tensor) -> Tensor {
    let b = images.size()[0];
    let flip = Tensor::rand([b, 1, 1, 1], (Kind::Float, images.device())).lt(0.5); // (B, 1, 1, 1)
    images.flip([3]).where_self(&flip, images) // (B, C, H, W)
}

/// Uint8 images (B, C, 32, 32) on any device → model input Uint8 (B, 1024, C): random crop and
/// flip when `train` and the task asks for them, raster flattening (step = row·32 + column, each
/// step the C values of one pixel), then the task's permutation of the 1,024 steps.
pub fn batch_input(images: &Tensor, task: &TaskConfig, train: bool) -> Tensor {
    let (b, c, h, w) = images.size4().expect("images are (B, C, 32, 32)");
    assert_eq!(h * w, STEPS as i64, "images must be 32×32");
    let mut xs = images.shallow_clone(); // (B, C, 32, 32)
    if train && task.crop {
        xs = random_crop(&xs);
    }
    if train && task.flip {
        xs = random_flip(&xs);
    }
    let xs = xs.permute([0, 2, 3, 1]).reshape([b, h * w, c]); // (B, 1024, C)
    match task.permute {
        Some(seed) => xs.index_select(1, &permutation_tensor(seed, images.device())), // (B, 1024, C)
        None => xs.contiguous(),
    }
}

/// [`permutation`] as an Int64 tensor (1024) on `device`.
fn permutation_tensor(seed: u64, device: Device) -> Tensor {
    Tensor::from_slice(&permutation(seed)).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::super::TaskName;
    use super::*;

    fn task(name: TaskName, permute: Option<u64>, crop: bool, flip: bool) -> TaskConfig {
        TaskConfig {
            name,
            permute,
            crop,
            flip,
            gray: Default::default(),
        }
    }

    fn random_images(b: i64, c: i64) -> Tensor {
        Tensor::randint(256, [b, c, 32, 32], (Kind::Uint8, Device::Cpu))
    }

    #[test]
    fn permutation_is_a_fixed_bijection_that_depends_on_the_seed() {
        let p = permutation(1234);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1024).collect::<Vec<i64>>());
        assert_eq!(p, permutation(1234));
        assert_ne!(p, permutation(1235));
        assert_ne!(permutation(0), (0..1024).collect::<Vec<i64>>());
        // Pinned values: any change to the generator changes every permuted task.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(&p[..4], &PINNED_1234);
    }

    /// `permutation(1234)[..4]`, computed independently with a Python transcription of the generator.
    const PINNED_1234: [i64; 4] = [403, 566, 929, 175];

    /// Guards against the LipschitzRNN `view(-1, 1024, 3)` bug, which reads the planar (C, H, W)
    /// bytes as if interleaved: step 1 must hold red, green and blue of pixel (0, 1).
    #[test]
    fn scifar_steps_are_rgb_of_one_pixel_in_raster_order() {
        let images = random_images(2, 3);
        let xs = batch_input(&images, &task(TaskName::Scifar, None, false, false), false);
        assert_eq!(xs.size(), [2, 1024, 3]);
        assert_eq!(xs.kind(), Kind::Uint8);
        let px = |b: i64, c: i64, y: i64, x: i64| images.int64_value(&[b, c, y, x]);
        for (k, y, x) in [(0, 0, 0), (1, 0, 1), (31, 0, 31), (32, 1, 0), (1023, 31, 31)] {
            for c in 0..3 {
                assert_eq!(xs.int64_value(&[1, k, c]), px(1, c, y, x), "step {k} channel {c}");
            }
        }
    }

    #[test]
    fn gray_steps_follow_raster_order() {
        let images = random_images(3, 1);
        let xs = batch_input(&images, &task(TaskName::LraImage, None, true, true), false);
        assert_eq!(xs.size(), [3, 1024, 1]);
        assert!(xs.equal(&images.view([3, 1024, 1])));
    }

    #[test]
    fn permuted_input_is_the_raster_input_reordered() {
        let images = random_images(2, 3);
        let plain = batch_input(&images, &task(TaskName::Scifar, None, false, false), false);
        let permuted = batch_input(&images, &task(TaskName::Scifar, Some(7), false, false), false);
        let p = permutation(7);
        for k in [0usize, 1, 500, 1023] {
            for c in 0..3 {
                assert_eq!(permuted.int64_value(&[0, k as i64, c]), plain.int64_value(&[0, p[k], c]));
            }
        }
    }

    #[test]
    fn eval_leaves_images_untouched() {
        tch::manual_seed(0);
        let images = random_images(8, 3);
        let t = task(TaskName::Scifar, None, true, true);
        let eval = batch_input(&images, &t, false);
        assert!(eval.equal(&images.permute([0, 2, 3, 1]).reshape([8, 1024, 3])));
        let train = batch_input(&images, &t, true);
        assert_eq!(train.size(), [8, 1024, 3]);
        assert_eq!(train.kind(), Kind::Uint8);
        assert!(!train.equal(&eval), "augmentation did nothing to 8 images");
    }

    #[test]
    fn crop_windows_are_shifts_with_zero_fill() {
        let images = random_images(2, 3).clamp_min(1); // no zero pixels, so padding shows

        let at = |oy: i64, ox: i64| crop_at(&images, 4, &Tensor::from_slice(&[oy, oy]), &Tensor::from_slice(&[ox, ox]));
        assert!(at(4, 4).equal(&images), "centre window is the image");
        assert!(crop_at(&images, 0, &Tensor::from_slice(&[0i64, 0]), &Tensor::from_slice(&[0i64, 0])).equal(&images));
        // Window (0, 0): the image moves 4 down and 4 right, zeros fill the top and left.
        let shifted = at(0, 0);
        assert!(shifted
            .narrow(2, 4, 28)
            .narrow(3, 4, 28)
            .equal(&images.narrow(2, 0, 28).narrow(3, 0, 28)));
        assert_eq!(shifted.narrow(2, 0, 4).count_nonzero(None).int64_value(&[]), 0);
        assert_eq!(shifted.narrow(3, 0, 4).count_nonzero(None).int64_value(&[]), 0);
        // Window (8, 2): up by 4 and right by 2.
        let shifted = at(8, 2);
        assert!(shifted
            .narrow(2, 0, 28)
            .narrow(3, 2, 30)
            .equal(&images.narrow(2, 4, 28).narrow(3, 0, 30)));
    }

    #[test]
    fn random_crop_and_flip_give_a_shifted_or_mirrored_window() {
        tch::manual_seed(1);
        let images = random_images(16, 3).clamp_min(1);
        let out = random_flip(&random_crop(&images));
        assert_eq!(out.size(), [16, 3, 32, 32]);
        let mut flipped = 0;
        for i in 0..16 {
            let img = images.get(i).unsqueeze(0);
            let got = out.get(i).unsqueeze(0);
            let found = (0..9).flat_map(|oy| (0..9).map(move |ox| (oy, ox))).find(|&(oy, ox)| {
                let o = crop_at(&img, 4, &Tensor::from_slice(&[oy]), &Tensor::from_slice(&[ox]));
                if o.equal(&got) {
                    true
                } else if o.flip([3]).equal(&got) {
                    flipped += 1;
                    true
                } else {
                    false
                }
            });
            assert!(found.is_some(), "image {i} is not a crop window");
        }
        assert!((1..16).contains(&flipped), "{flipped} of 16 flipped");
    }
}
