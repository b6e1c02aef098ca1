//! The runs published under `results/`: each keeps what the results README promises (a finished
//! run its best weights without optimizer moments, a run in progress its `last` checkpoint with
//! them and a plan entry), and the smallest is re-scored from a clean checkout, with no training,
//! to exactly the accuracy it recorded, then used for prediction and export.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn shared_data() -> PathBuf {
    match std::env::var_os("PIXELSEQ_TEST_DATA") {
        Some(d) => d.into(),
        None => repo().join("../shared/data/cifar-10-batches-bin"),
    }
}

/// Run folders under `results/` that keep checkpoints.
fn published_runs() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries.into_iter().filter(|p| p.is_dir()) {
            if path.join("checkpoints").is_dir() {
                found.push(path);
            } else {
                walk(&path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo().join("results"), &mut found);
    found
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap().display().to_string()
}

#[test]
fn published_runs_keep_what_they_promise() {
    let runs = published_runs();
    assert!(!runs.is_empty(), "results/ publishes no run with checkpoints");
    let plan = std::fs::read_to_string(repo().join("results/PLAN.md")).unwrap();
    for run in &runs {
        let name = relative(run);
        let best = run.join("checkpoints/best");
        for file in ["model.safetensors", "state.json"] {
            assert!(best.join(file).is_file(), "{name}: no best {file}");
        }
        assert!(!best.join("optim.safetensors").exists(), "{name}: best holds optimizer moments");
        let last = run.join("checkpoints/last");
        if !last.exists() {
            assert!(
                run.join("result.json").is_file(),
                "{name} has neither a result nor a last checkpoint"
            );
            let moments: Vec<_> = files_under(&run.join("checkpoints"))
                .into_iter()
                .filter(|f| f.file_name().is_some_and(|n| n == "optim.safetensors"))
                .collect();
            assert!(moments.is_empty(), "{name} is finished but keeps optimizer moments: {moments:?}");
        } else {
            for file in ["model.safetensors", "optim.safetensors", "state.json"] {
                assert!(last.join(file).is_file(), "{name} is in progress but has no last {file}");
            }
            assert!(plan.contains(&name), "{name} is in progress but results/PLAN.md does not list it");
        }
    }
    let size: u64 = files_under(&repo().join("results"))
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    assert!(size < 40 << 20, "results/ holds {} MiB; keep it well under 100 MB", size >> 20);
}

/// "accuracy 35.32% (1766 of 5000 images)" → (1766, 5000).
fn scored(text: &str) -> (u64, u64) {
    let tail = text.split("% (").nth(1).unwrap_or_else(|| panic!("no accuracy in: {text}"));
    let mut words = tail.split_whitespace();
    let correct = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("of"));
    (correct, words.next().unwrap().parse().unwrap())
}

#[test]
fn the_smallest_published_run_rescores_to_its_record() {
    let run = published_runs()
        .into_iter()
        .min_by_key(|r| r.join("checkpoints/best/model.safetensors").metadata().unwrap().len())
        .expect("results/ publishes a run");
    // A finished run is scored on the test split against result.json; a run in progress on the
    // validation split against the best checkpoint's own record.
    let (split, recorded) = match std::fs::read_to_string(run.join("result.json")) {
        Ok(text) => (
            "test",
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["test_acc"].as_f64(),
        ),
        Err(_) => {
            let state = std::fs::read_to_string(run.join("checkpoints/best/state.json")).unwrap();
            (
                "val",
                serde_json::from_str::<serde_json::Value>(&state).unwrap()["best_val_acc"].as_f64(),
            )
        }
    };
    let recorded = recorded.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .args(["eval", "--device", "cpu", "--split", split, "--data"])
        .arg(shared_data())
        .arg("--run")
        .arg(&run)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (correct, total) = scored(&text);
    assert_eq!(total, if split == "test" { 10_000 } else { 5_000 });
    assert!(
        (correct as f64 / total as f64 - recorded).abs() < 1e-9,
        "{}: {split} re-scored to {correct} of {total}, recorded {recorded}",
        relative(&run)
    );

    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("picture.png");
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 120]))
        .save(&png)
        .unwrap();
    let predict = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .args(["predict", "--device", "cpu", "--run"])
        .arg(&run)
        .arg(&png)
        .output()
        .unwrap();
    assert!(predict.status.success(), "{}", String::from_utf8_lossy(&predict.stderr));
    assert_eq!(String::from_utf8_lossy(&predict.stdout).matches('%').count(), 3);
    let module = tmp.path().join("model.pt");
    let export = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .args(["export", "--format", "torchscript", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(&module)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert!(module.metadata().unwrap().len() > 0);
}
