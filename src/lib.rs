//! pixelseq: sequence models on CIFAR-10 read pixel by pixel.
//!
//! Layers, each using only those before it: `ffi`, `files`, `rng`, `tensorboard`, `device`, `amp`,
//! `profile`, `dist` (infrastructure) → `data` → `ops` (the models' C++ shims) → `models` → `objective` (what a run fits: its loss) → `config` → `run` (run folders) → `train` → `bench`,
//! `export`, `predict`, `report` (what the commands do) → `commands` (the command line, one file
//! per subcommand).

pub mod amp;
pub mod bench;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod export;
mod ffi;
pub mod files;
pub mod models;
pub mod objective;
mod ops;
pub mod predict;
pub mod profile;
pub mod report;
pub mod rng;
pub mod run;
pub mod tensorboard;
#[cfg(test)]
mod testing;
pub mod train;
