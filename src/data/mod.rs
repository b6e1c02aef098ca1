//! CIFAR-10 read pixel by pixel: files, checksums, tasks and batches.

pub mod gray;

pub use gray::gray_pixel;
// TEMP STUB
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskName {
    LraImage,
    Scifar,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub name: TaskName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permute: Option<u64>,
    #[serde(default)]
    pub crop: bool,
    #[serde(default)]
    pub flip: bool,
}
impl TaskConfig {
    pub fn input_spec(&self) -> crate::models::InputSpec {
        crate::models::InputSpec {
            channels: if self.name == TaskName::LraImage { 1 } else { 3 },
            seq_len: 1024,
        }
    }
}
pub struct Split {
    pub images: Tensor,
    pub labels: Tensor,
}
pub struct Dataset {
    pub train: Split,
    pub val: Split,
    pub test: Split,
}
impl Split {
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }
    pub fn to_device(&self, d: Device) -> Split {
        Split {
            images: self.images.to_device(d),
            labels: self.labels.to_device(d),
        }
    }
}
impl Dataset {
    pub fn to_device(&self, d: Device) -> Dataset {
        Dataset {
            train: self.train.to_device(d),
            val: self.val.to_device(d),
            test: self.test.to_device(d),
        }
    }
}
pub fn load(_data: Option<&Path>, _task: TaskName) -> anyhow::Result<Dataset> {
    todo!()
}
pub fn batch_input(images: &Tensor, _task: &TaskConfig, _train: bool) -> Tensor {
    let s = images.size();
    images.view([s[0], s[1], 1024]).transpose(1, 2).contiguous()
}
#[derive(clap::Args)]
pub struct DataArgs {
    #[arg(long)]
    pub data: Option<PathBuf>,
}
pub fn run_cli(_a: DataArgs) -> anyhow::Result<()> {
    Ok(())
}
