//! Run folders: what `train` and `pretrain` write and what `eval`, `predict`, `export` and
//! `report` read back. A run directory's layout and lock ([`dir`]), its checkpoints
//! ([`checkpoint`]), its records ([`records`]), exported model folders ([`exported`]) and opening
//! a trained model to score it ([`open`]). Below `train`: nothing here trains.

pub mod checkpoint;
pub mod dir;
pub mod exported;
pub mod open;
pub mod records;

pub use dir::{OpenRun, RunDir, Which};
pub use open::open_run;
