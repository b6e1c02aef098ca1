//! End-to-end training on real CIFAR-10 images (the shared read-only copy): the trainer learns,
//! and a run killed with SIGKILL, moved and resumed ends with the same weights as one never
//! interrupted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pixelseq::config::RunConfig;
use pixelseq::data::{self, Dataset, Split, TaskName};
use pixelseq::train;
use tch::{Device, Tensor};

fn shared_data() -> PathBuf {
    match std::env::var_os("PIXELSEQ_TEST_DATA") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-batches-bin"),
    }
}

fn head(split: &Split, n: i64) -> Split {
    Split {
        images: split.images.narrow(0, 0, n),
        labels: split.labels.narrow(0, 0, n),
    }
}

const SMALL_S4D: &str = r#"
[task]
name = "lra-image"

[model]
name = "s4d"
d_model = 64
n_layers = 2
dropout = 0.0

[optim]
lr = 0.01
weight_decay = 0.01
ssm_lr = 0.001

[schedule]
kind = "cosine"
warmup_steps = 10

[train]
batch_size = 50
epochs = 8
seed = 0
"#;

/// 2,000 real training images; the score is on 1,000 held-out test images (chance: 10%).
#[test]
fn a_small_s4d_learns_real_images() {
    let full = data::load(Some(&shared_data()), TaskName::LraImage).unwrap();
    let ds = Dataset {
        train: head(&full.train, 2000),
        val: head(&full.val, 1000),
        test: head(&full.test, 1000),
    };
    let cfg = RunConfig::from_toml_str(SMALL_S4D, "test config").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = train::Options {
        pretrain: false,
        device: Device::Cpu,
        dir: dir.path().join("run"),
        resume: false,
        preset: None,
    };
    let record = train::run(&cfg, &ds, &opts).unwrap();
    assert!(
        record.test_acc > 0.25,
        "test accuracy {:.3} is not clearly above chance",
        record.test_acc
    );
    for f in [
        "config.toml",
        "metrics.jsonl",
        "result.json",
        "checkpoints/best/model.safetensors",
        "checkpoints/last/optim.safetensors",
    ] {
        assert!(dir.path().join("run").join(f).is_file(), "{f} missing");
    }
    let lines = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 8, "one metrics line per epoch");
}

const TINY: &str = r#"
[task]
name = "lra-image"
crop = true
flip = true

[model]
name = "s4d"
d_model = 8
n_layers = 1
dropout = 0.2

[optim]
lr = 1e-2
weight_decay = 0.05
ssm_lr = 1e-3

[schedule]
kind = "cosine"
warmup_steps = 5

[train]
batch_size = 16
max_steps = 40
eval_every = 5
eval_batches = 1
eval_batch_size = 16
seed = 3
"#;

fn train_cmd(config: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixelseq"));
    c.args(["train", "--device", "cpu", "--threads", "1", "--data"])
        .arg(shared_data())
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn weights(run: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(run.join("checkpoints/last/model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// A run killed with SIGKILL, moved to another folder (as a run committed under `results/` and
/// cloned elsewhere is) and resumed there ends with the weights of a run never interrupted.
#[test]
fn resume_after_kill_in_a_moved_folder_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();

    let whole = dir.path().join("whole");
    assert!(train_cmd(&config, &whole).status().unwrap().success());

    let cut = dir.path().join("cut");
    let mut child = train_cmd(&config, &cut).spawn().unwrap();
    let started = Instant::now();
    while !cut.join("checkpoints/last/state.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!cut.join("result.json").exists());
    let moved = dir.path().join("elsewhere").join("moved");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&cut, &moved).unwrap();
    let cut = moved;

    let mut resume = Command::new(env!("CARGO_BIN_EXE_pixelseq"));
    resume
        .args(["train", "--device", "cpu", "--threads", "1", "--data"])
        .arg(shared_data())
        .arg("--resume")
        .arg(&cut)
        .stdout(Stdio::null());
    assert!(resume.status().unwrap().success());

    let (a, b) = (weights(&whole), weights(&cut));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }
    let metrics = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<pixelseq::run::records::Metrics>(l).unwrap().step)
        .collect();
    assert_eq!(
        steps,
        [5, 10, 15, 20, 25, 30, 35, 40],
        "one metrics line per evaluation, none repeated"
    );

    // The finished run can be scored again and used for prediction.
    let eval = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .args(["eval", "--device", "cpu", "--split", "val", "--data"])
        .arg(shared_data())
        .arg("--run")
        .arg(&cut)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&eval.stdout);
    assert!(
        eval.status.success() && text.contains("val split: accuracy") && text.contains("5000 images"),
        "{text}"
    );
    let png = dir.path().join("cat.png");
    image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 90]))
        .save(&png)
        .unwrap();
    let predict = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .args(["predict", "--device", "cpu", "--run"])
        .arg(&cut)
        .arg(&png)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&predict.stdout);
    assert!(predict.status.success(), "{}", String::from_utf8_lossy(&predict.stderr));
    assert!(
        text.starts_with(&format!("{}: ", png.display())) && text.matches('%').count() == 3,
        "top-3 line: {text}"
    );
}
