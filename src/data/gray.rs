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
