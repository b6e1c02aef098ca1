//! Runs used outside pixelseq, checked with the real consumers: TensorBoard's own event reader
//! (`EventAccumulator`, after a SIGKILL and a resume too), a TorchScript export scored in plain
//! PyTorch, and a Hugging Face-style export that `eval` and `predict` take in place of the run.
//! Python comes from the checkout's `.venv`, where `scripts/env.sh` installs torch and tensorboard.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pixelseq::data::{self, batch_input, TaskConfig, TaskName};
use pixelseq::predict::{load_image, pixels, probabilities};
use pixelseq::run::exported;
use pixelseq::run::{open_run, RunDir, Which};
use pixelseq::tensorboard::{event_files, event_step, records};
use tch::{Device, Tensor};

fn shared_data() -> PathBuf {
    match std::env::var_os("PIXELSEQ_TEST_DATA") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-batches-bin"),
    }
}

/// Runs `script` with the checkout's Python and returns its standard output; a missing
/// interpreter or package fails the test with a message saying so.
fn python(script: &str, args: &[&OsStr]) -> String {
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        exe.exists(),
        "no Python at `{}`: source scripts/env.sh (as scripts/test does) to install torch and tensorboard there",
        exe.display()
    );
    let out = Command::new(&exe).arg("-c").arg(script).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the Python check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn pixelseq(args: &[&OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelseq")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "pixelseq {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn train_cmd(config: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixelseq"));
    c.args(["train", "--device", "cpu", "--threads", "1", "--data"])
        .arg(shared_data())
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

const TINY_GRAY: &str = r#"
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
max_steps = 120
eval_every = 40
eval_batches = 1
eval_batch_size = 16
seed = 3
"#;

/// Every scalar curve of a run folder as TensorBoard's `EventAccumulator` reads it, and the text
/// of its `config` summary.
const READ_EVENTS: &str = r#"
import json, sys
try:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util
except ImportError as e:
    sys.exit(f"tensorboard is not installed in this Python ({e}); source scripts/env.sh installs it")
acc = event_accumulator.EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}
texts = {t: [e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()] for t in tags["tensors"] for e in acc.Tensors(t)}
print(json.dumps({"scalars": scalars, "texts": texts, "text_tags": list(acc.PluginTagToContent("text"))}))
"#;

type Curves = BTreeMap<String, Vec<(u64, f64)>>;

fn read_events(run: &Path) -> (Curves, serde_json::Value) {
    let out: serde_json::Value = serde_json::from_str(&python(READ_EVENTS, &[run.as_os_str()])).unwrap();
    let curves = serde_json::from_value(out["scalars"].clone()).unwrap();
    (curves, out)
}

/// The curves TensorBoard shows for a run, a run SIGKILLed after writing points past its last
/// checkpoint and resumed shows the same: every step once, the same values (training is exact on
/// resume), throughput aside.
#[test]
fn tensorboard_reads_the_curves_and_one_curve_after_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, TINY_GRAY).unwrap();

    let whole = dir.path().join("whole");
    assert!(train_cmd(&config, &whole).status().unwrap().success());
    let (curves, raw) = read_events(&whole);
    let train_steps = vec![40, 50, 80, 100, 120]; // every 50 steps and at each evaluation
    for tag in ["train/loss", "train/acc", "img_per_s", "lr/decay", "lr/no-decay", "lr/ssm"] {
        let steps: Vec<u64> = curves[tag].iter().map(|p| p.0).collect();
        assert_eq!(steps, train_steps, "{tag}");
    }
    for tag in ["val/loss", "val/acc"] {
        assert_eq!(curves[tag].iter().map(|p| p.0).collect::<Vec<_>>(), [40, 80, 120], "{tag}");
    }
    assert_eq!(curves["test/acc"].len(), 1);
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(whole.join("result.json")).unwrap()).unwrap();
    assert!((curves["test/acc"][0].1 - result["test_acc"].as_f64().unwrap()).abs() < 1e-6);
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(whole.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (m, (step, acc)) in metrics.iter().zip(&curves["val/acc"]) {
        assert_eq!(m["step"].as_u64(), Some(*step));
        assert!((m["val_acc"].as_f64().unwrap() - acc).abs() < 1e-6, "val/acc is the metrics line's");
    }
    // Cosine decay from lr 1e-2 (decay and no-decay groups) and 1e-3 (ssm) after 5 warm-up steps.
    let lr = |tag: &str| curves[tag].last().unwrap().1;
    assert!(lr("lr/decay") < 1e-4 && (lr("lr/decay") - lr("lr/no-decay")).abs() < 1e-9);
    assert!((curves["lr/ssm"][0].1 / curves["lr/decay"][0].1 - 0.1).abs() < 1e-5);
    assert!(curves["img_per_s"].iter().all(|p| p.1 > 0.0));
    let text = raw["texts"]["config"][1].as_str().unwrap();
    assert!(text.contains("d_model = 8") && text.contains("tensorboard = true"), "{text}");
    assert_eq!(raw["text_tags"], serde_json::json!(["config"]));

    // Killed right after the training point of step 50 is written; the last checkpoint is step 40's.
    let cut = dir.path().join("cut");
    let mut child = train_cmd(&config, &cut).spawn().unwrap();
    let started = Instant::now();
    let wrote_step_50 = || {
        event_files(&cut)
            .unwrap()
            .iter()
            .any(|f| records(&std::fs::read(f).unwrap()).into_iter().any(|e| event_step(e) == 50))
    };
    while !wrote_step_50() {
        assert!(started.elapsed() < Duration::from_secs(300), "no point at step 50 appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("checkpoints/last/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 40, "the run outran the kill: no point past its checkpoint to drop");

    let resume = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .args(["train", "--device", "cpu", "--threads", "1", "--data"])
        .arg(shared_data())
        .arg("--resume")
        .arg(&cut)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(resume.success());
    assert_eq!(event_files(&cut).unwrap().len(), 2, "the resumed run writes a second events file");
    let (resumed, _) = read_events(&cut);
    assert_eq!(resumed.keys().collect::<Vec<_>>(), curves.keys().collect::<Vec<_>>());
    for (tag, points) in &curves {
        let again = &resumed[tag];
        let steps = |p: &[(u64, f64)]| p.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(steps(again), steps(points), "{tag}: one point per step after the resume");
        if tag != "img_per_s" {
            for ((step, a), (_, b)) in points.iter().zip(again) {
                assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{tag} at step {step}: {a} vs {b}");
            }
        }
    }
}

/// `train.tensorboard = false` writes no events file.
#[test]
fn tensorboard_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(
        &config,
        TINY_GRAY.replace("max_steps = 120\neval_every = 40", "max_steps = 2\neval_every = 2"),
    )
    .unwrap();
    let run = dir.path().join("run");
    let status = train_cmd(&config, &run)
        .args(["--set", "train.tensorboard=false"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(run.join("result.json").is_file());
    assert!(event_files(&run).unwrap().is_empty());
}

const TINY_RGB: &str = r#"
[task]
name = "scifar"
permute = 7

[model]
name = "s4d"
d_model = 8
n_layers = 1
dropout = 0.1

[optim]
lr = 1e-2

[train]
batch_size = 16
max_steps = 10
eval_every = 5
eval_batches = 1
eval_batch_size = 64
seed = 3
"#;

/// Test images scored by both the TorchScript module (in plain PyTorch) and `pixelseq eval`.
const SCORED: i64 = 300;

/// Scores raw pixels with a TorchScript module: the logits' largest difference from the
/// expected ones, then the number of correct predictions.
const SCORE: &str = r#"
import sys, torch
model = torch.jit.load(sys.argv[1])
n = int(sys.argv[5])
pixels = torch.frombuffer(bytearray(open(sys.argv[2], "rb").read()), dtype=torch.uint8).reshape(n, 1024, 3)
expected = torch.frombuffer(bytearray(open(sys.argv[3], "rb").read()), dtype=torch.float32).reshape(n, 10)
labels = torch.frombuffer(bytearray(open(sys.argv[4], "rb").read()), dtype=torch.int64)
with torch.no_grad():
    logits = torch.cat([model(pixels[i:i + 128]) for i in range(0, n, 128)])
    for bad, got in [(pixels[:2].float(), "got dtype float32"), (pixels[:2].reshape(2, 3, 32, 32), "got shape [2, 3, 32, 32]")]:
        try:
            model(bad)
            raise SystemExit("the module took pixels it should refuse: " + got)
        except torch.jit.Error as e:
            assert "ValueError: this pixelseq model takes pixels of shape (batch, 1024, 3)" in str(e) and got in str(e), str(e)
print((logits - expected).abs().max().item(), (logits.argmax(-1) == labels).sum().item())
"#;

fn write_raw<T: tch::kind::Element + Copy>(path: &Path, t: &Tensor, to_bytes: fn(T) -> Vec<u8>) {
    let values = Vec::<T>::try_from(t.flatten(0, -1)).unwrap();
    std::fs::write(path, values.into_iter().flat_map(to_bytes).collect::<Vec<u8>>()).unwrap();
}

/// "accuracy 12.33% (37 of 300 images), loss 2.2501" of an `eval` line.
fn score(eval_line: &str) -> &str {
    &eval_line[eval_line.find("accuracy").expect(eval_line)..]
}

/// A finished sCIFAR run with a pixel permutation, exported both ways: the TorchScript module
/// in plain PyTorch scores test images as `pixelseq eval` does (logits to 1e-5, the same
/// accuracy) and refuses float pixels and an image tensor (2, 3, 32, 32) with its message; the
/// hf folder's `config.json` holds the run's config, its card the run's scores, and
/// `eval`/`predict` on the folder give what they give on the run.
#[test]
fn exports_score_as_the_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, TINY_RGB).unwrap();
    let run = dir.path().join("run");
    assert!(train_cmd(&config, &run).status().unwrap().success());
    let (ts, hf) = (dir.path().join("model.pt"), dir.path().join("hf"));
    // Nothing is written to $TMPDIR: a kill there would leave it behind.
    let tmpdir = dir.path().join("tmpdir");
    std::fs::create_dir(&tmpdir).unwrap();
    for (format, out) in [("torchscript", &ts), ("hf", &hf)] {
        let status = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
            .args([
                "export".as_ref(),
                "--run".as_ref(),
                run.as_os_str(),
                "--format".as_ref(),
                format.as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
            ])
            .env("TMPDIR", &tmpdir)
            .status()
            .unwrap();
        assert!(status.success(), "export --format {format}");
    }
    assert_eq!(std::fs::read_dir(&tmpdir).unwrap().count(), 0, "export wrote into $TMPDIR");

    // TorchScript in plain PyTorch, against pixelseq's own pipeline.
    let test = data::load(Some(&shared_data()), TaskName::Scifar).unwrap().test;
    let images = test.images.narrow(0, 0, SCORED); // (N, 3, 32, 32)
    let labels = test.labels.narrow(0, 0, SCORED);
    let opened = open_run(&run, Which::Best, Device::Cpu).unwrap();
    let task = &opened.config.task;
    let logits = tch::no_grad(|| {
        opened
            .model
            .classifier()
            .unwrap()
            .forward_t(&batch_input(&images, task, false), false)
    }); // (N, 10)
    let raster = TaskConfig {
        permute: None,
        ..task.clone()
    };
    let (px, lg, lb) = (dir.path().join("pixels"), dir.path().join("logits"), dir.path().join("labels"));
    write_raw::<u8>(&px, &batch_input(&images, &raster, false), |v| vec![v]);
    write_raw::<f32>(&lg, &logits, |v| v.to_le_bytes().to_vec());
    write_raw::<i64>(&lb, &labels, |v| v.to_le_bytes().to_vec());
    let n = SCORED.to_string();
    let out = python(SCORE, &[ts.as_os_str(), px.as_os_str(), lg.as_os_str(), lb.as_os_str(), n.as_ref()]);
    let (diff, correct) = out.trim().split_once(' ').unwrap();
    let diff: f64 = diff.parse().unwrap();
    assert!(diff <= 1e-5, "TorchScript logits differ from pixelseq's by {diff}");
    let eval = |what: &Path| {
        pixelseq(&[
            "eval".as_ref(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--split".as_ref(),
            "test".as_ref(),
            "--limit".as_ref(),
            n.as_ref(),
            "--data".as_ref(),
            shared_data().as_os_str(),
            "--run".as_ref(),
            what.as_os_str(),
        ])
    };
    let on_run = eval(&run);
    let accuracy = 100.0 * correct.parse::<f64>().unwrap() / SCORED as f64;

    // The README's Python lines, as written there, classify the first test image as pixelseq does.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme.find("## Using pixelseq models elsewhere").unwrap()..];
    let block = &section[section.find("```python\n").unwrap() + 10..];
    let lines: Vec<&str> = block[..block.find("```").unwrap()].lines().map(str::trim).collect();
    let script = lines
        .join("\n")
        .replace("\"model.pt\"", &format!("{:?}", ts.display().to_string()))
        .replace(
            "\"cifar-10-batches-bin/test_batch.bin\"",
            &format!("{:?}", shared_data().join("test_batch.bin").display().to_string()),
        );
    let top = logits.get(0).argmax(-1, false).int64_value(&[]);
    assert_eq!(python(&script, &[]).trim(), format!("tensor([{top}])"), "{script}");
    assert!(
        score(&on_run).starts_with(&format!("accuracy {accuracy:.2}% ({correct} of {SCORED} images)")),
        "{on_run} vs TorchScript {accuracy:.2}%"
    );

    // The hf folder: files, config, card, and the same scores and predictions as the run.
    let names: Vec<String> = std::fs::read_dir(&hf)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["README.md", "config.json", "model.safetensors"]);
    let (cfg, extras) = exported::read_config(&hf).unwrap();
    let run_cfg = RunDir::new(&run).load_config().unwrap();
    assert_eq!(cfg.to_toml(), run_cfg.to_toml(), "config.json holds the resolved run config");
    assert_eq!(extras.class_names[3], "cat");
    assert_eq!(extras.input.shape, [serde_json::json!("batch"), 1024.into(), 3.into()]);
    assert_eq!(extras.pixelseq_version, env!("CARGO_PKG_VERSION"));
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    let card = std::fs::read_to_string(hf.join("README.md")).unwrap();
    let test_acc = format!("{:.2}%", 100.0 * result["test_acc"].as_f64().unwrap());
    for needle in [
        "license: mit",
        test_acc.as_str(),
        "Krizhevsky",
        "torch.jit.load",
        "pixelseq predict --run",
        "(batch, 1024, 3)",
        "seed 7",
        "arXiv 2206.11893",
    ] {
        assert!(card.contains(needle), "the card lacks `{needle}`:\n{card}");
    }
    assert_eq!(score(&eval(&hf)), score(&on_run));

    let img = dir.path().join("cat.png");
    image::RgbImage::from_fn(40, 48, |x, y| image::Rgb([(x * 6) as u8, (y * 5) as u8, 140]))
        .save(&img)
        .unwrap();
    let predict = |what: &Path| {
        pixelseq(&[
            "predict".as_ref(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--run".as_ref(),
            what.as_os_str(),
            img.as_os_str(),
        ])
    };
    assert_eq!(predict(&hf), predict(&run));
    let batch = pixels(&[load_image(&img).unwrap(), load_image(&img).unwrap()], 3, data::Gray::Tf);
    let probs = |what: &Path| {
        let o = open_run(what, Which::Best, Device::Cpu).unwrap();
        Tensor::from_slice(&probabilities(
            o.model.classifier().unwrap(),
            &batch,
            &o.config.task,
            Device::Cpu,
            o.precision,
        ))
    };
    let diff = (probs(&hf) - probs(&run)).abs().max().double_value(&[]);
    assert!(diff <= 1e-6, "predictions differ by {diff}");

    // A config.json edited to other sizes is one line naming the tensor that does not fit, not
    // libtorch's stack of C++ frames.
    let resized = dir.path().join("hf-resized");
    std::fs::create_dir(&resized).unwrap();
    for f in ["README.md", "model.safetensors"] {
        std::fs::copy(hf.join(f), resized.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(hf.join("config.json")).unwrap();
    assert!(config.contains("\"d_model\": 8,"), "{config}");
    std::fs::write(resized.join("config.json"), config.replace("\"d_model\": 8,", "\"d_model\": 16,")).unwrap();
    for cmd in [
        vec![
            "eval".as_ref(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--run".as_ref(),
            resized.as_os_str(),
        ],
        vec![
            "predict".as_ref(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--run".as_ref(),
            resized.as_os_str(),
            img.as_os_str(),
        ],
    ] {
        let out: std::process::Output = Command::new(env!("CARGO_BIN_EXE_pixelseq")).args(&cmd).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(2)
                && err.lines().count() == 1
                && err.contains("has shape [8], the model's has [16]: its config.json does not match it"),
            "{cmd:?}: {err}"
        );
    }

    // What an exported folder cannot do, and what export needs.
    let err = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .args(["eval", "--last", "--run"])
        .arg(&hf)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("holds the best checkpoint only"));
    let unfinished = dir.path().join("unfinished");
    std::fs::create_dir(&unfinished).unwrap();
    for f in ["config.toml", "checkpoints"] {
        std::process::Command::new("cp")
            .arg("-r")
            .arg(run.join(f))
            .arg(&unfinished)
            .status()
            .unwrap();
    }
    let err = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .args(["export", "--format", "hf", "--run"])
        .arg(&unfinished)
        .arg("--out")
        .arg(dir.path().join("hf2"))
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success() && msg.starts_with("error: run") && msg.contains("has not finished"),
        "{msg}"
    );
    assert!(!dir.path().join("hf2").exists());
}
