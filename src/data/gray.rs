//! Grayscale exactly as the LRA benchmark made it: `tf.image.rgb_to_grayscale` on uint8 images
//! ([`gray_pixel`], the default); or as PIL makes it ([`pil_gray_pixel`], `task.gray = "pil"`), the
//! conversion torchvision's `transforms.Grayscale()` runs on PIL images, which the self-pretraining
//! code of Amos et al. uses (IdoAmos/not-from-scratch `src/dataloaders/basic.py`).
//!
//! TensorFlow converts uint8 → float32 by multiplying with the float32 value of 1/255, takes the
//! dot product with the float32 weights (0.2989, 0.5870, 0.1140), and converts back to uint8 by
//! multiplying with 255.5 and truncating toward zero (`convert_image_dtype`, no saturation
//! needed since the result stays inside 0..=255). Every step below is one float32 operation in
//! that order, so the result is bit-exact.

//!
//! PIL's `Image.convert("L")` (libImaging `Convert.c`, `rgb2l`) works in integers: ITU-R 601-2
//! weights scaled by 2^16, `(19595 r + 38470 g + 7471 b + 2^15) >> 16`, so it rounds to nearest
//! where TensorFlow truncates; the two differ by one level on 25.5% of CIFAR-10's pixels
//! (`scripts/pil_gray_reference.py`).

use serde::{Deserialize, Serialize};

/// Which RGB → grey conversion makes the grayscale task (`task.gray`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gray {
    /// `tf.image.rgb_to_grayscale`, truncated: LRA's Image task.
    #[default]
    Tf,
    /// PIL's `convert("L")`, rounded: torchvision's `Grayscale()` (S4's and SPT's code).
    Pil,
}

impl Gray {
    /// The grey value this conversion gives the pixel (r, g, b).
    pub fn pixel(self, r: u8, g: u8, b: u8) -> u8 {
        match self {
            Gray::Tf => gray_pixel(r, g, b),
            Gray::Pil => pil_gray_pixel(r, g, b),
        }
    }

    pub fn is_tf(&self) -> bool {
        *self == Gray::Tf
    }
}

/// The grayscale value TensorFlow gives the pixel (r, g, b).
pub fn gray_pixel(r: u8, g: u8, b: u8) -> u8 {
    let scale = (1.0f64 / 255.0) as f32;
    let (r, g, b) = (r as f32 * scale, g as f32 * scale, b as f32 * scale);
    let y = r * 0.2989f32 + g * 0.5870f32 + b * 0.1140f32;
    (y * 255.5f32) as u8
}

/// The grayscale value PIL's `convert("L")` gives the pixel (r, g, b).
pub fn pil_gray_pixel(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

#[cfg(test)]
mod tests {
    use super::{gray_pixel, pil_gray_pixel, Gray};
    use sha2::{Digest, Sha256};

    /// Each case gives the exact real value 255.5/255 · (0.2989 r + 0.587 g + 0.114 b) beside it.
    #[test]
    fn hand_computed_pixels() {
        assert_eq!(gray_pixel(0, 0, 0), 0); // 0
        assert_eq!(gray_pixel(255, 255, 255), 255); // 255.474 (weights sum to 0.9999)
        assert_eq!(gray_pixel(255, 0, 0), 76); // 76.369
        assert_eq!(gray_pixel(0, 255, 0), 149); // 149.979: truncated, not rounded
        assert_eq!(gray_pixel(0, 0, 255), 29); // 29.127
        assert_eq!(gray_pixel(1, 1, 1), 1); // 1.0019
        assert_eq!(gray_pixel(128, 128, 128), 128); // 128.238
        assert_eq!(gray_pixel(10, 20, 30), 18); // 18.185
    }

    /// Values within 1e-3 of an integer, where float32 rounding decides the result.
    #[test]
    fn float32_decides_near_integer_boundaries() {
        // Exactly just below an integer, and float32 stays below: truncated down.
        assert_eq!(gray_pixel(0, 2, 86), 10); // 10.99953
        assert_eq!(gray_pixel(0, 11, 206), 29); // 29.99971
                                                // Just above an integer.
        assert_eq!(gray_pixel(0, 9, 120), 19); // 19.00018
        assert_eq!(gray_pixel(0, 7, 34), 8); // 8.00066
                                             // Exactly just below an integer, but the float32 result reaches it (237 colours are like
                                             // this; TensorFlow gives the larger value, as here).
        assert_eq!(gray_pixel(0, 122, 186), 93); // 92.999996
        assert_eq!(gray_pixel(3, 254, 50), 156); // 155.999984
        assert_eq!(gray_pixel(5, 171, 227), 128); // 127.999989
        assert_eq!(gray_pixel(6, 120, 58), 79); // 78.999999
    }

    /// sha256 of the 16,777,216 grayscale values of every colour (r, g, b) in order r-major, as
    /// `tf.image.rgb_to_grayscale` (TensorFlow 2.21 CPU) computes them: `scripts/tf_gray_reference.py`.
    const TF_ALL_COLOURS_SHA256: &str = "824a76d81dad2c5a2cf1fa0b2c0a5afe7d871ec2970e4fa2809b53ddbecdca93";

    #[test]
    fn every_colour_matches_tensorflow() {
        let mut table = Vec::with_capacity(1 << 24);
        for r in 0..=255u8 {
            for g in 0..=255u8 {
                table.extend((0..=255u8).map(|b| gray_pixel(r, g, b)));
            }
        }
        assert_eq!(crate::files::hex(&Sha256::digest(&table)), TF_ALL_COLOURS_SHA256);
    }

    /// sha256 of the 16,777,216 values of every colour, r-major, as Pillow 13.0 converts them
    /// (`scripts/pil_gray_reference.py`).
    const PIL_ALL_COLOURS_SHA256: &str = "40a12c2550a7822eba958211e157974abdd4c9a442cc1047c9a48d3a968b6fcc";

    #[test]
    fn pil_rounds_where_tensorflow_truncates() {
        assert_eq!(pil_gray_pixel(0, 0, 0), 0);
        assert_eq!(pil_gray_pixel(255, 255, 255), 255); // the weights sum to 2^16: 255 exactly
        assert_eq!(pil_gray_pixel(0, 255, 0), 150); // 149.69: rounded up (TensorFlow: 149)
        assert_eq!(gray_pixel(0, 255, 0), 149);
        assert_eq!(pil_gray_pixel(255, 0, 0), 76); // 76.245
        assert_eq!(pil_gray_pixel(0, 0, 255), 29); // 29.07
        assert_eq!(pil_gray_pixel(10, 20, 30), 18); // 18.15
        assert_eq!(pil_gray_pixel(100, 150, 200), 141); // 140.75 rounded up (TensorFlow: 141.02 truncated)
        assert_eq!(Gray::Pil.pixel(0, 255, 0), 150);
        assert_eq!(Gray::Tf.pixel(0, 255, 0), 149);
        assert_eq!(Gray::default(), Gray::Tf);
    }

    #[test]
    fn every_colour_matches_pil() {
        let mut table = Vec::with_capacity(1 << 24);
        let mut differ = 0;
        for r in 0..=255u8 {
            for g in 0..=255u8 {
                for b in 0..=255u8 {
                    let y = pil_gray_pixel(r, g, b);
                    differ += usize::from(y != gray_pixel(r, g, b));
                    table.push(y);
                }
            }
        }
        assert_eq!(crate::files::hex(&Sha256::digest(&table)), PIL_ALL_COLOURS_SHA256);
        assert_eq!(differ, 4_408_543); // colours where the two conversions part (the script's count)
    }
}
