//! CIFAR-10 read pixel by pixel: files, checksums, tasks and batches.

pub mod gray;

pub use gray::gray_pixel;
