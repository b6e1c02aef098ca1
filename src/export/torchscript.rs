//! TorchScript export: the model of a run, traced in evaluation mode with its input pipeline in
//! front, so that plain PyTorch (`torch.jit.load`) classifies raw pixels without pixelseq.

use std::path::Path;

use anyhow::{Context, Result};
use tch::{nn::ModuleT, CModule, Device, Kind, Tensor};

use crate::data::{permutation, TaskConfig};
use crate::files;
use crate::train::exported::input_shape;
use crate::train::{open_run, Which};

/// Images in the example batch the model is traced with.
const TRACE_BATCH: i64 = 2;

/// What the exported module computes: raw pixels in raster order ([`input_shape`]) → the model's
/// input (B, 1024, C) with the task's fixed permutation → logits (B, 10), in evaluation mode.
pub fn forward(model: &dyn ModuleT, task: &TaskConfig, pixels: &Tensor) -> Tensor {
    let spec = task.input_spec();
    let xs = pixels.reshape([-1, spec.seq_len, spec.channels]); // (B, L, C)
    let xs = match task.permute {
        Some(seed) => xs.index_select(1, &Tensor::from_slice(&permutation(seed)).to_device(xs.device())), // (B, L, C)
        None => xs,
    };
    model.forward_t(&xs, false) // (B, 10)
}

/// Traces `model` (whose variables must not require gradients: traced weights become constants of
/// the module) on `device` and returns the TorchScript module.
pub fn trace(model: &dyn ModuleT, task: &TaskConfig, device: Device) -> Result<CModule> {
    let example = Tensor::zeros(input_shape(task, TRACE_BATCH), (Kind::Uint8, device));
    let mut closure = |inputs: &[Tensor]| vec![forward(model, task, &inputs[0])];
    tch::no_grad(|| CModule::create_by_tracing("PixelSeq", "forward", &[example], &mut closure)).context("failed to trace the model")
}

/// Traces the best checkpoint of the run (or exported folder) in `run` on the CPU and writes the
/// module to `out`.
pub fn export(run: &Path, out: &Path) -> Result<()> {
    let mut opened = open_run(run, Which::Best, Device::Cpu)?;
    opened.vs.freeze();
    let module = trace(opened.model.as_ref(), &opened.config.task, Device::Cpu)?;
    save(&module, out)
}

/// Writes `module` to `out` atomically.
pub fn save(module: &CModule, out: &Path) -> Result<()> {
    let tmp = tempfile::NamedTempFile::new().context("failed to create a temporary file")?;
    module
        .save(tmp.path())
        .with_context(|| format!("failed to save the TorchScript module to `{}`", tmp.path().display()))?;
    let mut file = tmp.reopen().context("failed to reopen the saved module")?;
    files::write_atomic(out, |w| {
        std::io::copy(&mut file, w)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;
    use tch::nn;

    /// One tiny model of each kind: a preset's `[model]` table with small sizes.
    fn tiny(preset: &str, sizes: &[(&str, i64)]) -> RunConfig {
        let mut table = crate::testing::preset_table(preset);
        let model = table["model"].as_table_mut().unwrap();
        for (k, v) in sizes {
            model.insert(k.to_string(), toml::Value::Integer(*v));
        }
        RunConfig::from_table(table, preset).unwrap()
    }

    pub fn zoo() -> Vec<(&'static str, RunConfig)> {
        let attn = [("d_model", 16), ("n_heads", 2), ("qkv_dim", 16), ("mlp_dim", 16), ("n_layers", 1)];
        vec![
            ("transformer", tiny("transformer-small", &attn)),
            ("nystromformer", tiny("nystromformer-lra", &attn)),
            ("fnet", tiny("fnet-lra", &[("d_emb", 16), ("d_model", 16), ("d_ff", 16), ("n_layers", 1)])),
            ("pit", tiny("pit-small", &[("depth", 1), ("d_model", 16), ("d_ff", 16), ("n_heads", 2)])),
            ("trellisnet", tiny("trellisnet-scifar", &[("nhid", 8), ("nout", 8)])),
            ("lipschitz-rnn", tiny("lipschitz-scifar", &[("n_units", 8)])),
            ("s4d", tiny("s4d-gpu", &[("d_model", 8), ("n_layers", 1), ("d_state", 8)])),
            ("lru", tiny("lru-small", &[("d_model", 8), ("d_state", 8), ("n_layers", 1)])),
        ]
    }

    #[test]
    fn every_model_traces_and_takes_any_batch() {
        for (name, cfg) in zoo() {
            tch::manual_seed(0);
            let mut vs = nn::VarStore::new(Device::Cpu);
            let model = cfg.model.build(&vs.root(), &cfg.task.input_spec()).unwrap();
            vs.freeze();
            let module = trace(model.as_ref(), &cfg.task, Device::Cpu).unwrap();
            for b in [2, 5] {
                let x = Tensor::randint(256, input_shape(&cfg.task, b), (Kind::Uint8, Device::Cpu));
                let eager = tch::no_grad(|| forward(model.as_ref(), &cfg.task, &x));
                match module.forward_ts(&[&x]) {
                    Ok(traced) => {
                        let diff = (&traced - &eager).abs().max().double_value(&[]);
                        eprintln!("{name} B={b}: max diff {diff:e} eager nan {} traced nan {}", eager.isnan().any().int64_value(&[]), traced.isnan().any().int64_value(&[]));
                    }
                    Err(e) => eprintln!("{name} B={b}: {e}"),
                }
            }
        }
    }
}
