//! TorchScript export: the model of a run, traced in evaluation mode with its input pipeline in
//! front, so that plain PyTorch (`torch.jit.load`) classifies raw pixels without pixelseq. The
//! trace is the submodule `model` of a scripted module whose `forward` first checks its input
//! ([`checked_forward`]): a trace records tensor operations only, and would take floats, NaN, any
//! shape whose size divides and values outside 0..255 without a word.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use tch::{nn::ModuleT, CModule, Device, Kind, Tensor};

use crate::data::{permutation, InputSpec, TaskConfig};
use crate::ffi;
use crate::files;
use crate::run::exported::input_shape;
use crate::run::{open_run, Which};

/// Images in the example batch the model is traced with.
const TRACE_BATCH: i64 = 2;

/// What the traced module computes: raw pixels in raster order ([`input_shape`]) → the model's
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

/// libtorch's numbers (`c10::ScalarType`, stable across releases) and PyTorch's names of the dtypes
/// the module refuses: TorchScript compiled without Python cannot name `torch.float32`, and reads a
/// dtype as its number.
const DTYPES: [(i64, &str); 7] = [
    (5, "float16"),
    (6, "float32"),
    (7, "float64"),
    (9, "complex64"),
    (10, "complex128"),
    (11, "bool"),
    (15, "bfloat16"),
];
/// `torch.uint8` and `torch.bool` as TorchScript reads them.
const UINT8: i64 = 0;
const BOOL: i64 = 11;

/// The exported module's `forward` in TorchScript: the input must be an integer tensor (uint8,
/// or another integer dtype whose values lie in 0..255, converted to uint8) of the shape
/// [`input_shape`] gives, with at least one image; anything else raises a `ValueError` naming what
/// the model takes and what it got. Then the trace (`self.model`) on uint8 pixels, as it was
/// traced. Floats are refused whatever their values, so NaN never reaches the model.
fn checked_forward(spec: InputSpec) -> String {
    let (shape, what) = match spec.channels {
        1 => (format!("(batch, {})", spec.seq_len), "grayscale images".to_string()),
        3 => (format!("(batch, {}, 3)", spec.seq_len), "RGB images".to_string()),
        c => (format!("(batch, {}, {c})", spec.seq_len), format!("images of {c} channels")),
    };
    let shape_ok = match spec.channels {
        1 => format!("pixels.dim() == 2 and pixels.size(1) == {}", spec.seq_len),
        c => format!("pixels.dim() == 3 and pixels.size(1) == {} and pixels.size(2) == {c}", spec.seq_len),
    };
    let takes = format!(
        "this pixelseq model takes pixels of shape {shape}, {what} flattened in raster order, as uint8 (or another integer dtype) with values 0..255"
    );
    let names: Vec<String> = DTYPES.iter().map(|(n, name)| format!("({n}, \"{name}\")")).collect();
    let names = names.join(", ");
    format!(
        r#"
def _dtype_name(self, dtype: int) -> str:
    for pair in [{names}]:
        if pair[0] == dtype:
            return pair[1]
    return "number {{}}".format(dtype)

def forward(self, pixels: Tensor) -> Tensor:
    if pixels.is_floating_point() or pixels.is_complex() or pixels.dtype == {BOOL}:
        raise ValueError("{takes}; got dtype {{}}".format(self._dtype_name(pixels.dtype)))
    if not ({shape_ok}):
        raise ValueError("{takes}; got shape {{}}".format(pixels.shape))
    if pixels.size(0) == 0:
        raise ValueError("{takes}; got an empty batch, shape {{}}".format(pixels.shape))
    if pixels.dtype != {UINT8}:
        lo = int(pixels.min())
        hi = int(pixels.max())
        if lo < 0 or hi > 255:
            raise ValueError("{takes}; got values from {{}} to {{}}".format(lo, hi))
        pixels = pixels.to(dtype={UINT8})
    return self.model.forward(pixels)
"#
    )
}

/// Traces `model` (whose variables must not require gradients: traced weights become constants of
/// the module) on `device` and returns the TorchScript module: the trace behind the input checks
/// of [`checked_forward`].
pub fn trace(model: &dyn ModuleT, task: &TaskConfig, device: Device) -> Result<CModule> {
    let example = Tensor::zeros(input_shape(task, TRACE_BATCH), (Kind::Uint8, device));
    let order = task.permute.map(|seed| Tensor::from_slice(&permutation(seed)).to_device(device)); // (L)
    let spec = task.input_spec();
    let traced = tch::no_grad(|| {
        ffi::trace("PixelSeqModel", &[example], |inputs| {
            vec![forward(model, spec, order.as_ref(), &inputs[0])]
        })
    })?;
    let bytes = ffi::script_wrap(&traced, "PixelSeq", &checked_forward(spec))?;
    CModule::load_data_on_device(&mut bytes.as_slice(), device)
        .map_err(|e| anyhow!("failed to load the TorchScript module just made: {}", first_line(&e)))
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

    /// The attention models' sizes in these tests.
    const ATTN: [&str; 5] = [
        "model.d_model=16",
        "model.n_heads=2",
        "model.qkv_dim=16",
        "model.mlp_dim=16",
        "model.n_layers=1",
    ];

    /// Every model of the zoo, small, with the presets' variants that take other paths (CLS or
    /// mean pooling, black-pixel masks, Nyström landmarks, BatchNorm, the LRU's two scans) and a
    /// permuted task.
    fn zoo() -> Vec<(&'static str, RunConfig)> {
        vec![
            ("transformer-small", tiny("transformer-small", &ATTN)),
            ("transformer-lra", tiny("transformer-lra", &ATTN)),
            ("nystromformer-lra", tiny("nystromformer-lra", &ATTN)),
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

    /// The module checks its input before the trace sees it: a float (NaN included), bool or
    /// complex tensor, another shape (an image tensor (2, 3, 32, 32), a flat (2, 512), an RGB
    /// model given grayscale pixels and the reverse, an empty batch) and integers outside 0..255
    /// raise an error naming what the model takes and what it got, in pixelseq (tch) and in plain
    /// PyTorch; uint8 and in-range integers give the eager model's logits.
    #[test]
    fn the_module_refuses_what_it_cannot_classify() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![dir.path().as_os_str().to_owned()];
        for (preset, task, layout) in [
            (
                "transformer-small",
                &["task.name=\"scifar\"", "model.input=\"linear\""][..],
                "(batch, 1024, 3), RGB images",
            ),
            ("transformer-lra", &["task.permute=4"][..], "(batch, 1024), grayscale images"),
        ] {
            let cfg = tiny(preset, &[&ATTN[..], task].concat());
            tch::manual_seed(0);
            let mut vs = nn::VarStore::new(Device::Cpu);
            let model = cfg.model.build(&vs.root(), &cfg.task.input_spec()).unwrap();
            vs.freeze();
            let module = trace(model.as_ref(), &cfg.task, Device::Cpu).unwrap();
            let rgb = cfg.task.input_spec().channels == 3;
            let shape = input_shape(&cfg.task, 2);
            let other = if rgb { vec![2, 1024] } else { vec![2, 1024, 3] };
            let u8s = |dims: &[i64]| Tensor::randint(256, dims, (Kind::Uint8, Device::Cpu));
            let nan = Tensor::rand(&shape, (Kind::Float, Device::Cpu));
            let _ = nan.get(0).get(5).fill_(f64::NAN);
            let high = Tensor::randint(256, &shape, (Kind::Int64, Device::Cpu));
            let _ = high.get(1).get(7).fill_(300);
            let low = Tensor::randint(256, &shape, (Kind::Int, Device::Cpu));
            let _ = low.get(0).get(0).fill_(-1);
            let bad: Vec<(Tensor, String)> = [
                (Tensor::rand(&shape, (Kind::Float, Device::Cpu)) * 255, "got dtype float32"),
                (nan, "got dtype float32"),
                (Tensor::zeros(&shape, (Kind::Double, Device::Cpu)), "got dtype float64"),
                (Tensor::ones(&shape, (Kind::Bool, Device::Cpu)), "got dtype bool"),
                (u8s(&[2, 3, 32, 32]), "got shape [2, 3, 32, 32]"),
                (u8s(&[2, 512]), "got shape [2, 512]"),
                (u8s(&other), &*format!("got shape {other:?}")),
                (u8s(&[0, 1024, 3][..shape.len()]), "got an empty batch"),
                (high, "got values from 0 to 300"),
                (low, "got values from -1 to 255"),
            ]
            .into_iter()
            .map(|(t, got)| (t, got.to_string()))
            .collect();
            for (i, (input, got)) in bad.iter().enumerate() {
                let err = module.forward_ts(&[input]).expect_err(got).to_string();
                let last = err.lines().last().unwrap();
                assert!(
                    last.contains(&format!("ValueError: this pixelseq model takes pixels of shape {layout}")) && last.contains(got),
                    "{preset}, case {i}: {err}"
                );
            }
            // Correct inputs: uint8, and the same values as any integer dtype, give the eager logits;
            // each refused dtype is named.
            let images = u8s(&[2, cfg.task.input_spec().channels, 32, 32]); // (2, C, 32, 32)
            let pixels = images.permute([0, 2, 3, 1]).reshape(&shape);
            let eager = tch::no_grad(|| model.forward_t(&batch_input(&images, &cfg.task, false), false));
            let kinds = [
                Kind::Half,
                Kind::Float,
                Kind::Double,
                Kind::ComplexFloat,
                Kind::ComplexDouble,
                Kind::Bool,
                Kind::BFloat16,
            ];
            for (kind, (_, name)) in kinds.into_iter().zip(DTYPES) {
                let err = module.forward_ts(&[pixels.to_kind(kind)]).expect_err(name).to_string();
                assert!(err.trim_end().ends_with(&format!("got dtype {name}")), "{kind:?}: {err}");
            }
            let halved = images.divide_scalar_mode(2, "floor").to_kind(Kind::Uint8); // (2, C, 32, 32), values 0..127
            let eager_halved = tch::no_grad(|| model.forward_t(&batch_input(&halved, &cfg.task, false), false));
            let halved = halved.permute([0, 2, 3, 1]).reshape(&shape);
            for kind in [Kind::Int8, Kind::Int16, Kind::Int, Kind::Int64] {
                let diff = (module.forward_ts(&[halved.to_kind(kind)]).unwrap() - &eager_halved)
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(diff <= 1e-6, "{preset}, {kind:?}: logits differ by {diff}");
            }
            for input in [pixels.shallow_clone(), pixels.to_kind(Kind::Int64)] {
                let diff = (module.forward_ts(&[input]).unwrap() - &eager).abs().max().double_value(&[]);
                assert!(diff <= 1e-6, "{preset}: logits differ by {diff}");
            }
            save(&module, &dir.path().join(format!("{preset}.pt"))).unwrap();
            args.push(format!("{preset}={layout}").into());
        }
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = python(REFUSES, &args);
        assert_eq!(out.lines().count(), 20, "{out}");
    }

    /// Plain PyTorch gets the same errors from each saved module (`torch.jit.Error`, its last line
    /// the `ValueError`), and the same logits for uint8 and in-range int64 pixels.
    const REFUSES: &str = r#"
import sys, torch
for arg in sys.argv[2:]:
    name, layout = arg.split("=")
    model = torch.jit.load(sys.argv[1] + "/" + name + ".pt")
    assert not model.training
    rgb = layout.endswith("RGB images")
    shape = (2, 1024, 3) if rgb else (2, 1024)
    nan = torch.rand(shape)
    nan[0, 5] = float("nan")
    high = torch.randint(256, shape)
    high[1, 7] = 300
    low = torch.randint(256, shape, dtype=torch.int32)
    low[0, 0] = -1
    cases = [
        (torch.rand(shape) * 255, "got dtype float32"),
        (nan, "got dtype float32"),
        (torch.zeros(shape, dtype=torch.float64), "got dtype float64"),
        (torch.ones(shape, dtype=torch.bool), "got dtype bool"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "got shape [2, 3, 32, 32]"),
        (torch.zeros(2, 512, dtype=torch.uint8), "got shape [2, 512]"),
        (torch.zeros((2, 1024) if rgb else (2, 1024, 3), dtype=torch.uint8), "got shape [2, 1024" + ("]" if rgb else ", 3]")),
        (torch.zeros((0,) + shape[1:], dtype=torch.uint8), "got an empty batch"),
        (high, "got values from 0 to 300"),
        (low, "got values from -1 to 255"),
    ]
    for pixels, got in cases:
        try:
            model(pixels)
        except torch.jit.Error as e:
            last = str(e).splitlines()[-1]
            assert "ValueError: this pixelseq model takes pixels of shape " + layout in last and got in last, (name, got, str(e))
            print(name, got)
            continue
        raise AssertionError(name + ": accepted a tensor that should give " + got)
    pixels = torch.randint(256, shape, dtype=torch.uint8)
    with torch.no_grad():
        assert (model(pixels) - model(pixels.long())).abs().max().item() == 0
"#;
}
