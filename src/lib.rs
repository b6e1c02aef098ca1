//! pixelseq: sequence models on CIFAR-10 read pixel by pixel.
pub mod amp;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod models;
pub mod predict;
pub mod profile;
pub mod report;
pub mod train;
