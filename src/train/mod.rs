//! Training: the step shared with `bench`, the loop around it, AdamW with parameter groups,
//! schedules, checkpoints, run directories and records.

pub mod board;
pub mod checkpoint;
pub mod ddp;
pub mod eval;
pub mod exported;
pub mod learner;
pub mod memory;
mod multi_tensor;
pub mod open;
pub mod optim;
pub mod progress;
pub mod records;
pub mod run;
pub mod run_dir;
pub mod sampler;
pub mod schedule;
pub mod step;

pub use eval::{evaluate, EVAL_BATCH};
pub use open::open_run;
pub use run::{run, run_with, Options};
pub use run_dir::{OpenRun, RunDir, Which};
