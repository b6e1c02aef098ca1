//! Grayscale exactly as the LRA benchmark made it: `tf.image.rgb_to_grayscale` on uint8 images.
//!
//! TensorFlow converts uint8 → float32 by multiplying with the float32 value of 1/255, takes the
//! dot product with the float32 weights (0.2989, 0.5870, 0.1140), and converts back to uint8 by
//! multiplying with 255.5 and truncating toward zero (`convert_image_dtype`, no saturation
//! needed since the result stays inside 0..=255). Every step below is one float32 operation in
//! that order, so the result is bit-exact.

/// The grayscale value TensorFlow gives the pixel (r, g, b).
pub fn gray_pixel(r: u8, g: u8, b: u8) -> u8 {
    let scale = (1.0f64 / 255.0) as f32;
    let (r, g, b) = (r as f32 * scale, g as f32 * scale, b as f32 * scale);
    let y = r * 0.2989f32 + g * 0.5870f32 + b * 0.1140f32;
    (y * 255.5f32) as u8
}

#[cfg(test)]
mod tests {
    use super::gray_pixel;
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
        assert_eq!(crate::data::cifar::hex(&Sha256::digest(&table)), TF_ALL_COLOURS_SHA256);
    }
}
