//! TorchScript export: the model of a run, traced in evaluation mode with its input pipeline in
//! front, so that plain PyTorch (`torch.jit.load`) classifies raw pixels without pixelseq.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use tch::{nn::ModuleT, CModule, Device, Kind, Tensor};

use crate::data::{permutation, InputSpec, TaskConfig};
use crate::files;
use crate::run::exported::input_shape;
use crate::run::{open_run, Which};

/// Images in the example batch the model is traced with.
const TRACE_BATCH: i64 = 2;

/// What the exported module computes: raw pixels in raster order ([`input_shape`]) → the model's
/// input (B, 1024, C), its steps reordered by `order` (the task's fixed permutation, made before
/// tracing: a trace records a tensor copied from a slice as an uninitialised one) → logits
/// (B, 10), in evaluation mode.
fn forward(model: &dyn ModuleT, spec: InputSpec, order: Option<&Tensor>, pixels: &Tensor) -> Tensor {
    let xs = pixels.reshape([-1, spec.seq_len, spec.channels]); // (B, L, C)
    let xs = match order {
        Some(order) => xs.index_select(1, order), // (B, L, C)
        None => xs,
    };
    model.forward_t(&xs, false) // (B, 10)
}

/// Traces `model` (whose variables must not require gradients: traced weights become constants of
/// the module) on `device` and returns the TorchScript module.
pub fn trace(model: &dyn ModuleT, task: &TaskConfig, device: Device) -> Result<CModule> {
    let example = Tensor::zeros(input_shape(task, TRACE_BATCH), (Kind::Uint8, device));
    let order = task.permute.map(|seed| Tensor::from_slice(&permutation(seed)).to_device(device)); // (L)
    let spec = task.input_spec();
    let mut closure = |inputs: &[Tensor]| vec![forward(model, spec, order.as_ref(), &inputs[0])];
    tch::no_grad(|| CModule::create_by_tracing("PixelSeq", "forward", &[example], &mut closure))
        .map_err(|e| anyhow!("failed to trace the model: {}", first_line(&e)))
}

/// Traces the best checkpoint of the run (or exported folder) in `run` on the CPU and writes the
/// module to `out`.
pub fn export(run: &Path, out: &Path) -> Result<()> {
    let mut opened = open_run(run, Which::Best, Device::Cpu)?;
    opened.vs.freeze();
    let model = opened.model.classifier().expect("open_run builds a classifier");
    let module = trace(model, &opened.config.task, Device::Cpu)?;
    save(&module, out)
}

/// Writes `module` to `out` atomically (saved into a temporary folder beside `out`, never in
/// `$TMPDIR`, under `out`'s name, which libtorch also names the archive's top folder after, then
/// copied into place; a kill leaves the folder for the next write there to remove).
pub fn save(module: &CModule, out: &Path) -> Result<()> {
    let tmp = files::temp_dir_beside(out);
    let _guard = files::TempGuard::new(tmp.clone());
    std::fs::create_dir(&tmp).with_context(|| format!("failed to create a temporary folder beside `{}`", out.display()))?;
    let saved = tmp.join(out.file_name().unwrap_or(std::ffi::OsStr::new("model.pt")));
    module
        .save(&saved)
        .map_err(|e| anyhow!("failed to save the TorchScript module to `{}`: {}", saved.display(), first_line(&e)))?;
    let mut file = std::fs::File::open(&saved).with_context(|| format!("failed to read `{}`", saved.display()))?;
    files::write_atomic(out, |w| {
        std::io::copy(&mut file, w)?;
        Ok(())
    })
}

/// The message of a libtorch error without the C++ stack trace that follows it.
fn first_line(e: &tch::TchError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{apply_override, RunConfig};
    use crate::data::batch_input;
    use crate::testing::python;
    use tch::nn;

    /// A preset with small sizes (`key=value` overrides).
    fn tiny(preset: &str, overrides: &[&str]) -> RunConfig {
        let mut table = crate::testing::preset_table(preset);
        for o in overrides {
            apply_override(&mut table, o).unwrap();
        }
        RunConfig::from_table(table, preset).unwrap()
    }

    /// Every model of the zoo, small, with the presets' variants that take other paths (CLS or
    /// mean pooling, black-pixel masks, Nyström landmarks, BatchNorm, the LRU's two scans) and a
    /// permuted task.
    fn zoo() -> Vec<(&'static str, RunConfig)> {
        let attn = [
            "model.d_model=16",
            "model.n_heads=2",
            "model.qkv_dim=16",
            "model.mlp_dim=16",
            "model.n_layers=1",
        ];
        vec![
            ("transformer-small", tiny("transformer-small", &attn)),
            ("transformer-lra", tiny("transformer-lra", &attn)),
            ("nystromformer-lra", tiny("nystromformer-lra", &attn)),
            (
                "fnet-lra",
                tiny(
                    "fnet-lra",
                    &["model.d_emb=16", "model.d_model=16", "model.d_ff=16", "model.n_layers=1"],
                ),
            ),
            (
                "pit-small",
                tiny(
                    "pit-small",
                    &["model.depth=1", "model.d_model=16", "model.d_ff=16", "model.n_heads=2"],
                ),
            ),
            (
                "trellisnet-scifar",
                tiny("trellisnet-scifar", &["model.nhid=8", "model.nout=8", "task.permute=5"]),
            ),
            ("lipschitz-scifar", tiny("lipschitz-scifar", &["model.n_units=8"])),
            (
                "s4d-gpu",
                tiny("s4d-gpu", &["model.d_model=8", "model.n_layers=1", "model.d_state=8"]),
            ),
            (
                "s4d-lra",
                tiny(
                    "s4d-lra",
                    &["model.d_model=8", "model.n_layers=1", "model.d_state=8", "task.permute=3"],
                ),
            ),
            (
                "lru-small",
                tiny("lru-small", &["model.d_model=8", "model.d_state=8", "model.n_layers=1"]),
            ),
            (
                "lru-chunked",
                tiny(
                    "lru-small",
                    &[
                        "model.d_model=8",
                        "model.d_state=8",
                        "model.n_layers=1",
                        "model.parallel=\"chunked\"",
                    ],
                ),
            ),
        ]
    }

    /// Loads each saved module in plain PyTorch and checks its logits on the saved pixels.
    const CHECK: &str = r#"
import sys, torch
for name in sys.argv[2:]:
    base = sys.argv[1] + "/" + name
    model = torch.jit.load(base + ".pt")
    shape = [int(d) for d in open(base + ".shape").read().split()]
    pixels = torch.frombuffer(bytearray(open(base + ".pixels", "rb").read()), dtype=torch.uint8).reshape(shape)
    expected = torch.frombuffer(bytearray(open(base + ".logits", "rb").read()), dtype=torch.float32).reshape(shape[0], 10)
    with torch.no_grad():
        logits = model(pixels)
    diff = (logits - expected).abs().max().item()
    assert logits.shape == (shape[0], 10) and diff <= 1e-5, (name, logits.shape, diff)
    print(name, diff)
"#;

    /// Each model, traced at batch 2, gives its eager logits at batch 2 and 5 (inputs (B, 1024)
    /// for lra-image, (B, 1024, 3) for scifar, permutation included), in pixelseq and in plain
    /// PyTorch (`torch.jit.load`). FFTs and complex tensors (FNet, S4D, LRU) trace as ATen ops.
    #[test]
    fn every_model_exports_to_plain_pytorch() {
        let dir = tempfile::tempdir().unwrap();
        let mut names = Vec::new();
        for (name, cfg) in zoo() {
            tch::manual_seed(0);
            let mut vs = nn::VarStore::new(Device::Cpu);
            let model = cfg.model.build(&vs.root(), &cfg.task.input_spec()).unwrap();
            vs.freeze();
            let module = trace(model.as_ref(), &cfg.task, Device::Cpu).unwrap();
            let mut pixels = Tensor::zeros([0], (Kind::Uint8, Device::Cpu));
            let mut eager = Tensor::zeros([0], (Kind::Float, Device::Cpu));
            for b in [2, 5] {
                // The model on images fed as `pixelseq eval` feeds them; the module on the same
                // images flattened in raster order.
                let c = cfg.task.input_spec().channels;
                let images = Tensor::randint(256, [b, c, 32, 32], (Kind::Uint8, Device::Cpu)); // (B, C, 32, 32)
                pixels = images.permute([0, 2, 3, 1]).reshape(input_shape(&cfg.task, b));
                eager = tch::no_grad(|| model.forward_t(&batch_input(&images, &cfg.task, false), false));
                let traced = module.forward_ts(&[&pixels]).unwrap();
                assert_eq!(traced.size(), [b, 10], "{name}");
                let diff = (&traced - &eager).abs().max().double_value(&[]);
                assert!(diff <= 1e-6, "{name}, batch {b}: traced logits differ by {diff}");
            }
            let base = dir.path().join(name);
            save(&module, &base.with_extension("pt")).unwrap();
            let shape: Vec<String> = pixels.size().iter().map(|d| d.to_string()).collect();
            std::fs::write(base.with_extension("shape"), shape.join(" ")).unwrap();
            std::fs::write(base.with_extension("pixels"), Vec::<u8>::try_from(pixels.flatten(0, -1)).unwrap()).unwrap();
            let logits: Vec<u8> = Vec::<f32>::try_from(eager.flatten(0, -1))
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            std::fs::write(base.with_extension("logits"), logits).unwrap();
            names.push(name);
        }
        let mut args = vec![dir.path().as_os_str()];
        args.extend(names.iter().map(std::ffi::OsStr::new));
        let out = python(CHECK, &args);
        assert_eq!(out.lines().count(), names.len(), "{out}");
    }
}
