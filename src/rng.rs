//! A small deterministic generator for host-side choices that must be identical on every platform
//! and on resume: the fixed pixel permutation of a task, the training order of each epoch, the
//! seed of torch's generator at each step, and mixup/CutMix draws.
//!
//! splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014):
//! a 64-bit generator whose output depends only on its seed.

/// The independent streams a run draws from, one [`SplitMix64::derive`] stream id each.
pub mod stream {
    /// The order of the training images in each epoch (index: the epoch).
    pub const EPOCH_ORDER: u64 = 1;
    /// The seed of torch's generator at each optimizer step (index: the step), which drives
    /// dropout and augmentation.
    pub const STEP_SEED: u64 = 2;
    /// Mixup and CutMix draws (index: the step).
    pub const MIX: u64 = 3;
}

pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator for one (seed, stream, index) triple, independent of every other triple.
    pub fn derive(seed: u64, stream: u64, index: u64) -> Self {
        let mut g = SplitMix64(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        let _ = g.next_u64();
        SplitMix64(g.next_u64() ^ index.wrapping_mul(0xE703_7ED1_A0B4_28DB))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }

    /// Gamma(shape, 1) by Marsaglia–Tsang, boosted for shape < 1.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            return self.gamma(shape + 1.0) * self.uniform().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v > 0.0 && (1.0 - self.uniform()).ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, a).
    pub fn beta(&mut self, a: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(a);
        x / (x + y)
    }

    /// A uniformly random permutation of 0..n (Fisher–Yates): for i = n − 1 down to 1, swap
    /// entries i and `below(i + 1)`.
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut p: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i as u64 + 1) as usize);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_fixed_bijection() {
        let a = SplitMix64::derive(7, 1, 3).permutation(1000);
        let b = SplitMix64::derive(7, 1, 3).permutation(1000);
        let c = SplitMix64::derive(7, 1, 4).permutation(1000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<i64>>());
    }

    #[test]
    fn beta_has_the_right_mean() {
        let mut g = SplitMix64::new(1);
        let n = 20_000;
        let mean: f64 = (0..n).map(|_| g.beta(0.8)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let mean: f64 = (0..n).map(|_| g.gamma(2.5)).sum::<f64>() / n as f64;
        assert!((mean - 2.5).abs() < 0.05, "{mean}");
    }
}
