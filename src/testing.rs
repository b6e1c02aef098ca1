//! Test support shared by the whole crate: input shapes, presets, real CIFAR-10 images from the
//! shared folder, and the checks every model's tests run.

use serde::de::DeserializeOwned;
use tch::{nn, Device, Kind, Tensor};

use crate::data::InputSpec;
use crate::models::{param_count, ModelConfig};

/// A grayscale image read pixel by pixel (LRA Image): 1,024 steps of 1 value.
pub const GRAY: InputSpec = InputSpec {
    channels: 1,
    seq_len: 1024,
};

/// An RGB image read pixel by pixel (sCIFAR): 1,024 steps of 3 values.
pub const RGB: InputSpec = InputSpec {
    channels: 3,
    seq_len: 1024,
};

/// The whole TOML of `presets/<name>.toml`.
pub fn preset_table(name: &str) -> toml::Table {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("presets/{name}.toml"));
    std::fs::read_to_string(&path).unwrap().parse().unwrap()
}

/// The `[model]` table of `presets/<name>.toml`.
pub fn preset_model(name: &str) -> ModelConfig {
    preset_table(name)["model"].clone().try_into().unwrap()
}

/// The `[model]` table of `presets/<name>.toml` as one model's `Config` (its `name` key dropped).
pub fn preset_config<T: DeserializeOwned>(name: &str) -> T {
    let mut model = preset_table(name)["model"].as_table().unwrap().clone();
    model.remove("name");
    model.try_into().unwrap()
}

/// Trainable scalars of the model `cfg` builds for `input`.
pub fn count(cfg: &ModelConfig, input: &InputSpec) -> i64 {
    let vs = nn::VarStore::new(Device::Cpu);
    cfg.build(&vs.root(), input).unwrap();
    param_count(&vs)
}

/// A random batch of raw pixels (B, L, C), uint8.
pub fn random_pixels(b: i64, input: &InputSpec) -> Tensor {
    Tensor::randint(256, [b, input.seq_len, input.channels], (Kind::Uint8, Device::Cpu))
}

/// The shared read-only CIFAR-10 folder (`../shared/data/cifar-10-batches-bin` beside the
/// checkout, or `$PIXELSEQ_TEST_DATA`).
pub fn shared_cifar_dir() -> std::path::PathBuf {
    match std::env::var_os("PIXELSEQ_TEST_DATA") {
        Some(d) => d.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-batches-bin"),
    }
}

/// The first `n` real training images of `data_batch_1.bin` as raw pixels (n, 1024, C) uint8
/// and labels (n) int64; grayscale when `input.channels == 1`.
pub fn real_pixels(n: i64, input: &InputSpec) -> (Tensor, Tensor) {
    let bytes = std::fs::read(shared_cifar_dir().join("data_batch_1.bin")).expect("shared CIFAR-10 data_batch_1.bin");
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for rec in bytes.chunks(3073).take(n as usize) {
        labels.push(rec[0] as i64);
        let (r, g, b) = (&rec[1..1025], &rec[1025..2049], &rec[2049..3073]);
        for i in 0..1024 {
            if input.channels == 1 {
                pixels.push(crate::data::gray_pixel(r[i], g[i], b[i]));
            } else {
                pixels.extend([r[i], g[i], b[i]]);
            }
        }
    }
    let pixels = Tensor::from_slice(&pixels).view([n, 1024, input.channels]); // (n, L, C)
    (pixels, Tensor::from_slice(&labels))
}

/// Every trainable tensor receives a non-zero gradient from one backward pass.
pub fn assert_gradients_reach_every_parameter(cfg: &ModelConfig, input: &InputSpec) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = cfg.build(&vs.root(), input).unwrap();
    let xs = random_pixels(4, input);
    let ys = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let loss = model.forward_t(&xs, true).cross_entropy_for_logits(&ys);
    loss.backward();
    for (name, t) in vs.variables().into_iter().filter(|(_, t)| t.requires_grad()) {
        let g = t.grad();
        assert!(g.defined(), "{name}: no gradient");
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}: zero gradient");
    }
}

/// Fitting one small batch of real images: after `steps` Adam steps at `lr` the training loss
/// is below `ratio` × its first value. Returns (first, last) loss.
pub fn assert_loss_falls(cfg: &ModelConfig, input: &InputSpec, n: i64, steps: usize, lr: f64, ratio: f64) -> (f64, f64) {
    use tch::nn::OptimizerConfig;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = cfg.build(&vs.root(), input).unwrap();
    let mut opt = nn::Adam::default().build(&vs, lr).unwrap();
    let (xs, ys) = real_pixels(n, input);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = model.forward_t(&xs, true).cross_entropy_for_logits(&ys);
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last.is_finite() && last < ratio * first, "loss did not fall: {losses:?}");
    (first, last)
}

/// In eval mode (dropout off) two forward passes give identical logits.
pub fn assert_eval_is_deterministic(cfg: &ModelConfig, input: &InputSpec) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = cfg.build(&vs.root(), input).unwrap();
    let xs = random_pixels(2, input);
    let a = tch::no_grad(|| model.forward_t(&xs, false));
    let b = tch::no_grad(|| model.forward_t(&xs, false));
    assert_eq!(a.size(), vec![2, 10]);
    assert!(a.equal(&b), "eval mode is not deterministic");
}

/// Whether this process should run the body of test `name`: `true` in a process of its own;
/// otherwise the test binary is run again for that test alone (its result asserted here) and
/// `false` is returned. For tests that depend on what torch's global generator draws, which
/// tests running beside them would also draw from.
pub fn alone_in_a_process(name: &str) -> bool {
    const ALONE: &str = "PIXELSEQ_TEST_ALONE";
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .output()
        .expect("the test binary runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} failed in its own process:\n{text}"
    );
    false
}

/// A finished run in `dir`: a tiny Transformer trained 4 steps on 8 random LRA images, with
/// `best` and `last` checkpoints. Returns `dir`.
pub fn tiny_run(dir: &std::path::Path) -> std::path::PathBuf {
    tiny_run_of(dir, "name = \"transformer\"\nd_model = 8\nn_heads = 2\nqkv_dim = 8\nmlp_dim = 8")
}

/// [`tiny_run`] of the model whose `[model]` table is `model`.
pub fn tiny_run_of(dir: &std::path::Path, model: &str) -> std::path::PathBuf {
    let config = format!("[task]\nname = \"lra-image\"\n\n[model]\n{model}\n\n[train]\nbatch_size = 4\nmax_steps = 4\neval_every = 2\n");
    let split = |n: i64| crate::data::Split {
        images: Tensor::randint(256, [n, 1, 32, 32], (Kind::Uint8, Device::Cpu)),
        labels: Tensor::randint(10, [n], (Kind::Int64, Device::Cpu)),
    };
    let data = crate::data::Dataset {
        train: split(8),
        val: split(4),
        test: split(4),
    };
    let cfg = crate::config::RunConfig::from_toml_str(&config, "tiny run").unwrap();
    let opts = crate::train::Options {
        pretrain: false,
        device: Device::Cpu,
        dir: dir.to_path_buf(),
        resume: false,
        preset: None,
    };
    crate::train::run(&cfg, &data, &opts).unwrap();
    dir.to_path_buf()
}

/// Runs `script` with the Python of the checkout's `.venv` (torch 2.11.0 and tensorboard, which
/// `scripts/env.sh` installs) and returns its standard output; a missing interpreter or a failing
/// script fails the test with its message.
pub fn python(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let exe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        exe.exists(),
        "no Python at `{}`: source scripts/env.sh (as scripts/test does) to install torch and tensorboard there",
        exe.display()
    );
    let out = std::process::Command::new(&exe).arg("-c").arg(script).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the Python check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
