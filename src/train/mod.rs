//! Training: the step shared with `bench` (eager, or captured as a CUDA graph), the loop around it, AdamW with parameter groups,
//! schedules, the memory plan and the data-parallel ranks. What a run writes is [`crate::run`]'s.

pub mod board;
pub mod ddp;
pub mod eval;
pub mod graph;
pub mod memory;
mod multi_tensor;
pub mod optim;
pub mod plan;
pub mod progress;
pub mod sampler;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use eval::{evaluate, EVAL_BATCH};
pub use trainer::{follow, lead, run, run_with, Options};
