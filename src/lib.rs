//! pixelseq: sequence models on CIFAR-10 read pixel by pixel.
pub mod amp;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
mod ffi;
pub mod models;
pub mod predict;
pub mod profile;
pub mod report;
pub mod train;
