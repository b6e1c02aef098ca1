//! Training: AdamW with parameter groups, schedules, mixed precision, checkpoints and the loop.

pub mod checkpoint;
mod multi_tensor;
pub mod optim;
pub mod rng;
pub mod run;
pub mod schedule;

pub use run::{evaluate, run, Options, RunRecord};
