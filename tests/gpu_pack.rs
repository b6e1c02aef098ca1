//! The carry-and-run path of a GPU run, exercised on CPU with a tiny budget: `scripts/gpu-pack`
//! assembles the folder (and the sCIFAR cache in parts beside it), its `run` script joins the
//! parts, trains from the folder and leaves one archive of text records per preset; `run plan`
//! starts, resumes and skips the plan's run folders and brings each back whole.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `pack/run SPEC` (its words as arguments) on CPU with tiny `--set` overrides for both the
/// probe and the run.
fn run(repo: &Path, pack: &Path, out: &Path, spec: &str, sets: &str) -> Output {
    // The run script finds torch through `python3`, as on the GPU machine.
    let path = format!("{}:{}", repo.join(".venv/bin").display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new(pack.join("run"))
        .args(spec.split_whitespace())
        .env("PATH", path)
        .env("OUT", out)
        .env("PIXELSEQ_DEVICE", "cpu")
        .env("PROBE_STEPS", "1")
        .env("PROBE_WARMUP", "0")
        .env(
            "PIXELSEQ_TRAIN_ARGS",
            format!("--threads 2 {sets} --set train.eval_batches=1 --set train.eval_batch_size=500"),
        )
        .env("PIXELSEQ_BENCH_ARGS", format!("--threads 2 {sets}"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    output
}

/// The names in the archive `path`, one a line.
fn listing(path: &Path) -> String {
    let out = Command::new("tar").arg("tzf").arg(path).output().unwrap();
    assert!(out.status.success(), "tar tzf {}", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An archive listing without checkpoints or the run lock.
fn assert_only_records(names: &str) {
    assert!(!names.contains("checkpoints"), "checkpoints travel back: {names}");
    assert!(!names.contains(".lock"), "the run lock travels back: {names}");
}

/// The archive of `preset` holds the run's text records, no checkpoints and no run lock.
fn check_archive(out: &Path, preset: &str) {
    let names = listing(&out.join(format!("{preset}.tar.gz")));
    for f in ["result.json", "metrics.jsonl", "config.toml", "train.log"] {
        assert!(names.contains(&format!("{preset}/{f}")), "{f} missing from the archive: {names}");
    }
    assert_only_records(&names);
}

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
        .arg("--scifar")
        .status()
        .unwrap();
    assert!(status.success());
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let cache = size(&pack.join("data/pixelseq-lra-image.zst"));
    assert!(cache <= 48_000_000, "lra-image cache is {cache} bytes");
    for i in 1..=3 {
        let part = tmp.path().join(format!("pack-scifar-{i}/pixelseq-scifar.zst.part-{i}"));
        assert!(size(&part) <= 60 << 20, "{} is {} bytes", part.display(), size(&part));
    }
    assert!(
        !pack.join("data/pixelseq-scifar.zst").exists(),
        "the whole sCIFAR cache is in the carried folder"
    );

    let out = tmp.path().join("out");
    let path = format!("{}:{}", repo.join(".venv/bin").display(), std::env::var("PATH").unwrap_or_default());
    let rgb = run(
        repo,
        &pack,
        &out,
        "lipschitz-scifar:0.05",
        "--set model.n_units=8 --set train.batch_size=8",
    );
    assert!(String::from_utf8_lossy(&rgb.stdout).contains("joined the sCIFAR cache from 3 parts"));
    check_archive(&out, "lipschitz-scifar");
    run(
        repo,
        &pack,
        &out,
        "s4d-small:0.05",
        "--set model.d_model=8 --set model.n_layers=1 --set train.batch_size=8",
    );
    check_archive(&out, "s4d-small");
    // `run --nproc 2`: the probe measures two ranks, the run trains in two processes.
    run(
        repo,
        &pack,
        &out,
        "--nproc 2 s4d-small:0.05",
        "--set model.d_model=8 --set model.n_layers=1 --set train.batch_size=8",
    );
    let result = Command::new("tar")
        .arg("xzOf")
        .arg(out.join("s4d-small.tar.gz"))
        .arg("s4d-small/result.json")
        .output()
        .unwrap();
    let result = String::from_utf8_lossy(&result.stdout);
    assert!(result.contains("\"world_size\": 2"), "{result}");

    // `PRESET:A+B`: pretraining, from scratch, and fine-tuning with the from-scratch run's steps
    // and warm-up, in one archive.
    run(
        repo,
        &pack,
        &out,
        "transformer-spt:0.05+0.05",
        "--set model.d_model=8 --set model.n_layers=1 --set model.qkv_dim=8 --set model.mlp_dim=8 \
         --set model.n_heads=2 --set train.batch_size=8",
    );
    let names = listing(&out.join("transformer-spt.tar.gz"));
    for stage in ["pretrain", "scratch", "finetune"] {
        for f in ["result.json", "config.toml", "train.log"] {
            assert!(
                names.contains(&format!("transformer-spt/{stage}/{f}")),
                "{stage}/{f} missing: {names}"
            );
        }
    }
    assert_only_records(&names);
    let record = |stage: &str| -> serde_json::Value {
        let out = Command::new("tar")
            .arg("xzOf")
            .arg(out.join("transformer-spt.tar.gz"))
            .arg(format!("transformer-spt/{stage}/result.json"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (pre, scratch, tuned) = (record("pretrain"), record("scratch"), record("finetune"));
    assert!(pre["pretrain"]["objective"] == "masked" && scratch["init"].is_null());
    assert!(tuned["init"].as_str().unwrap().ends_with("transformer-spt/pretrain"), "{tuned}");
    assert_eq!(tuned["steps"], scratch["steps"]);

    // `run plan MINUTES`: the GPU items of results/PLAN.md, read from the working directory.
    let checkout = tmp.path().join("checkout");
    std::fs::create_dir_all(checkout.join("results")).unwrap();
    let tiny = "--set model.d_model=8 --set model.n_layers=1 --set train.batch_size=8 --set train.max_steps=4 \
                --set train.eval_every=2 --set train.eval_batches=1 --set train.eval_batch_size=500";
    std::fs::write(
        checkout.join("results/PLAN.md"),
        format!(
            "# Plan\n\n```gpu-plan\n# COMMAND PRESET FOLDER FLAGS\ntrain s4d-small results/gpu/first {tiny}\n\n\
             train s4d-small results/gpu/second {tiny}  # the second item\n```\n"
        ),
    )
    .unwrap();
    let plan_out = tmp.path().join("plan-out");
    let window = || {
        let output = Command::new(pack.join("run"))
            .args(["plan", "30"])
            .current_dir(&checkout)
            .env("PATH", &path)
            .env("OUT", &plan_out)
            .env("PIXELSEQ_DEVICE", "cpu")
            .env("PIXELSEQ_TRAIN_ARGS", "--threads 2")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{log}");
        log
    };
    let result = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(checkout.join("results/gpu").join(name).join("result.json")).unwrap()).unwrap()
    };
    window();
    for name in ["first", "second"] {
        let r = result(name);
        assert!(r["steps"] == 4 && r["planned_steps"] == 4, "{r}");
        let names = listing(&plan_out.join(format!("{name}.tar.gz")));
        for f in [
            "checkpoints/best/model.safetensors",
            "checkpoints/last/optim.safetensors",
            "result.json",
            "train.log",
        ] {
            assert!(names.contains(&format!("{name}/{f}")), "{f} missing: {names}");
        }
        assert!(!names.contains(".lock"), "{names}");
    }
    // The second item's recipe outgrows the first window: the next window skips the finished
    // first item and resumes the second from its last checkpoint.
    let second = checkout.join("results/gpu/second");
    let config = std::fs::read_to_string(second.join("config.toml")).unwrap();
    std::fs::write(second.join("config.toml"), config.replace("max_steps = 4", "max_steps = 8")).unwrap();
    std::fs::remove_file(second.join("result.json")).unwrap();
    let log = window();
    assert!(log.contains("results/gpu/first: finished; skipped"), "{log}");
    assert!(log.contains("results/gpu/second: resuming"), "{log}");
    assert_eq!(result("second")["steps"], 8);
    let steps: Vec<u64> = std::fs::read_to_string(second.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [2, 4, 6, 8]);

    // `run bench`: both implementations from the carried references, JSON and profiles back.
    let args = "bench --preset fnet-lra --seq-len 64 --batch 2 --steps 1 --warmup 0 --threads 2 \
                --set model.d_emb=16 --set model.d_model=16 --set model.d_ff=16";
    let bench = Command::new(pack.join("run"))
        .args(args.split_whitespace())
        .env("PATH", path)
        .env("OUT", &out)
        .env("PIXELSEQ_DEVICE", "cpu")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&bench.stdout).into_owned() + &String::from_utf8_lossy(&bench.stderr);
    assert!(bench.status.success(), "{log}");
    let json = std::fs::read_to_string(out.join("bench.json")).unwrap();
    assert!(json.contains("\"pytorch\"") && json.contains("\"pixelseq\""), "{json}");
    let names = listing(&out.join("profiles.tar.gz"));
    for side in ["pixelseq", "pytorch"] {
        assert!(names.contains(&format!("profiles/fnet-lra-L64-{side}.txt")), "{names}");
    }
}
