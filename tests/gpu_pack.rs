//! The carry-and-run path of a GPU run, exercised on CPU with a tiny budget: `scripts/gpu-pack`
//! assembles the folder, its `run` script trains from it and leaves one archive of text records.

use std::path::Path;
use std::process::Command;

#[test]
fn pack_and_run_on_cpu() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = match std::env::var_os("PIXELSEQ_TEST_DATA") {
        Some(d) => d.into(),
        None => repo.join("../shared/data/cifar-10-batches-bin"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("pack");
    let status = Command::new(repo.join("scripts/gpu-pack"))
        .arg("--out")
        .arg(&pack)
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_pixelseq"))
        .arg("--data")
        .arg(&shared)
        .status()
        .unwrap();
    assert!(status.success());
    let cache = std::fs::metadata(pack.join("lra-image.zst")).unwrap().len();
    assert!(cache <= 48_000_000, "lra-image cache is {cache} bytes");

    // The run script finds torch through `python3`, as on the GPU machine.
    let path = format!("{}:{}", repo.join(".venv/bin").display(), std::env::var("PATH").unwrap_or_default());
    let out = tmp.path().join("out");
    let tiny = "--threads 2 --set model.d_model=8 --set model.n_layers=1 --set train.batch_size=8 \
                --set train.eval_batches=1 --set train.eval_batch_size=500";
    let run = Command::new(pack.join("run"))
        .arg("s4d-small:0.05")
        .env("PATH", path)
        .env("OUT", &out)
        .env("PIXELSEQ_DEVICE", "cpu")
        .env("PROBE_STEPS", "1")
        .env("PIXELSEQ_TRAIN_ARGS", tiny)
        .env("PROBE_WARMUP", "0")
        .env(
            "PIXELSEQ_BENCH_ARGS",
            "--threads 2 --set model.d_model=8 --set model.n_layers=1 --set train.batch_size=8",
        )
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{log}");
    let archive = out.join("s4d-small.tar.gz");
    let listing = Command::new("tar").arg("tzf").arg(&archive).output().unwrap();
    let names = String::from_utf8_lossy(&listing.stdout).into_owned();
    for f in ["result.json", "metrics.jsonl", "config.toml", "train.log"] {
        assert!(names.contains(&format!("s4d-small/{f}")), "{f} missing from the archive: {names}");
    }
    assert!(!names.contains("checkpoints"), "checkpoints travel back: {names}");
}
