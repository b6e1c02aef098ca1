//! pixelseq: sequence models on CIFAR-10 read pixel by pixel.
//!
//! Layers, each using only those before it: `ffi`, `files`, `rng`, `device`, `amp`, `profile`,
//! `dist` (infrastructure) → `data` → `models` → `config` → `train` → `bench`, `predict`, `report` (what
//! the commands do) → `commands` (the command line, one file per subcommand).

pub mod amp;
pub mod bench;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
mod ffi;
pub mod files;
pub mod models;
pub mod predict;
pub mod profile;
pub mod report;
pub mod rng;
#[cfg(test)]
mod testing;
pub mod train;
