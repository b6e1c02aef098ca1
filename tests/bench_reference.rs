//! `pixelseq bench` compares each model with the same model written in PyTorch
//! (`bench/reference/`). These tests check that the references build the same models — for every
//! model family, in small configurations covering its options, the PyTorch parameter count equals
//! pixelseq's — and that the command writes the documented JSON. No timing is asserted.
//!
//! They need the project's `.venv/bin/python` (torch); without it they say so and pass.

use std::path::{Path, PathBuf};
use std::process::Command;

use pixelseq::data::InputSpec;
use pixelseq::models::{param_count, ModelConfig};
use tch::{nn, Device};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn python() -> Option<PathBuf> {
    let p = Path::new(ROOT).join(".venv/bin/python");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: no {} — the PyTorch reference needs the project's venv", p.display());
        None
    }
}

fn model(toml_text: &str) -> ModelConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("bad test config {toml_text}: {e}"))
}

fn pixelseq_count(cfg: &ModelConfig, input: &InputSpec) -> i64 {
    let vs = nn::VarStore::new(Device::Cpu);
    cfg.build(&vs.root(), input).unwrap();
    param_count(&vs)
}

/// Parameter counts of the PyTorch references for `configs`, all at one input shape, in one call.
fn reference_counts(python: &Path, configs: &[ModelConfig], input: &InputSpec) -> Vec<i64> {
    let out = Command::new(python)
        .arg(Path::new(ROOT).join("bench/reference/run.py"))
        .arg("--count-only")
        .args(["--model", &serde_json::to_string(configs).unwrap()])
        .args(["--channels", &input.channels.to_string(), "--seq-len", &input.seq_len.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run.py --count-only failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["params"].as_array().unwrap().iter().map(|n| n.as_i64().unwrap()).collect()
}

fn assert_counts_match(channels: i64, cases: &[&str]) {
    let Some(python) = python() else { return };
    let input = InputSpec { channels, seq_len: 64 };
    let configs: Vec<ModelConfig> = cases.iter().map(|c| model(c)).collect();
    let theirs = reference_counts(&python, &configs, &input);
    for ((case, cfg), theirs) in cases.iter().zip(&configs).zip(theirs) {
        let ours = pixelseq_count(cfg, &input);
        assert_eq!(
            ours, theirs,
            "parameter counts differ (pixelseq {ours}, PyTorch {theirs}) for {case}"
        );
    }
}

/// Every family, with its options, on grayscale input (L = 64).
#[test]
fn reference_parameter_counts_match_on_grayscale() {
    assert_counts_match(
        1,
        &[
            "name = 's4d'\nd_model = 8\nn_layers = 2\nd_state = 8",
            "name = 's4d'\nd_model = 8\nn_layers = 2\nd_state = 8\nprenorm = true\nnorm = 'batch'\nbidirectional = true\n\
             train_b = true\nc_ssm_lr = true\nconv_dropout = true\ntie_dropout = false",
            "name = 'lru'\nd_model = 8\nd_state = 6\nn_layers = 2",
            "name = 'lru'\nd_model = 8\nd_state = 6\nn_layers = 2\nnorm = 'layer'\nprenorm = false\nparallel = 'chunked'\nchunk = 8",
            "name = 'fnet'\nn_layers = 2\nd_emb = 12\nd_model = 16\nd_ff = 24",
            "name = 'pit'\ninput = 'embed'\ndepth = 2\nd_model = 16\nd_ff = 32\nn_heads = 2\npos = 'none'\npool = 'mean'\ndrop_path = 0.1",
            "name = 'lipschitz-rnn'\nn_units = 8\nsolver = 'euler'",
            "name = 'trellisnet'\nnhid = 6\nnout = 4\ndilations = [1, 2, 4, 8, 16, 32]",
            "name = 'transformer'\nd_model = 16\nn_layers = 2\nn_heads = 2\nqkv_dim = 8\nmlp_dim = 24",
            "name = 'transformer'\nd_model = 16\nn_layers = 2\nn_heads = 2\nqkv_dim = 16\nmlp_dim = 24\nvocab = 512\npool = 'mean'\n\
             attn_bias = true\ninit = 'pytorch'\ngelu = 'exact'\nmask_black_pixels = false",
            "name = 'nystromformer'\nd_model = 16\nn_layers = 2\nn_heads = 2\nqkv_dim = 16\nmlp_dim = 24\nlandmarks = 8",
            "name = 'nystromformer'\nd_model = 16\nn_layers = 1\nn_heads = 4\nqkv_dim = 16\nmlp_dim = 24\nlandmarks = 64\nconv_kernel = 0",
        ],
    );
}

/// Every family that reads RGB, on RGB input (L = 64).
#[test]
fn reference_parameter_counts_match_on_rgb() {
    assert_counts_match(
        3,
        &[
            "name = 's4d'\nd_model = 8\nn_layers = 1\nd_state = 4\nbidirectional = true",
            "name = 'lru'\nd_model = 8\nd_state = 6\nn_layers = 1",
            "name = 'fnet'\ninput = 'linear'\nd_emb = 8\nd_model = 8\nd_ff = 8",
            "name = 'pit'\ndepth = 2\nd_model = 16\nd_ff = 32\nn_heads = 4",
            "name = 'lipschitz-rnn'\nn_units = 8",
            "name = 'trellisnet'\nnhid = 6\nnout = 10\ndilations = [1, 2, 4, 8, 16, 32]\nkernel_size = 3",
            "name = 'transformer'\ninput = 'linear'\nd_model = 16\nn_layers = 1\nn_heads = 2\nqkv_dim = 8\nmlp_dim = 24",
            "name = 'nystromformer'\ninput = 'linear'\nd_model = 16\nn_layers = 1\nn_heads = 2\nqkv_dim = 16\nmlp_dim = 24\nlandmarks = 16",
        ],
    );
}

fn pixelseq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pixelseq")).args(args).output().unwrap()
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// One step of pit-small at L = 64 (with the PyTorch side when the venv exists): a table on
/// stdout and a JSON array of records with the documented fields.
#[test]
fn bench_writes_a_table_and_json_records() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let mut args = vec!["bench", "--preset", "pit-small", "--seq-len", "64", "--batch", "2"];
    args.extend(["--steps", "1", "--warmup", "0", "--device", "cpu", "--threads", "1"]);
    args.extend(["--json", json.to_str().unwrap()]);
    let with_reference = python().is_some();
    if !with_reference {
        args.push("--no-reference");
    }
    let out = pixelseq(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("pit-small") && stdout.contains("ratio"), "{stdout}");

    let recs = records(&json);
    assert_eq!(recs.len(), if with_reference { 2 } else { 1 });
    for (r, implementation) in recs.iter().zip(["pixelseq", "pytorch"]) {
        for key in [
            "model",
            "preset",
            "seq_len",
            "batch",
            "train_img_per_s",
            "infer_img_per_s",
            "peak_mem_mb",
            "device",
            "impl",
            "params",
            "note",
        ] {
            assert!(r.get(key).is_some(), "record lacks `{key}`: {r}");
        }
        assert_eq!(r["impl"], implementation);
        assert_eq!((r["model"].as_str(), r["preset"].as_str()), (Some("pit"), Some("pit-small")));
        assert_eq!((r["seq_len"].as_i64(), r["batch"].as_i64()), (Some(64), Some(2)));
        assert!(r["train_img_per_s"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        assert!(r["infer_img_per_s"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        assert!(r["peak_mem_mb"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        assert_eq!(r["note"], "", "{r}");
    }
    if with_reference {
        assert_eq!(recs[0]["params"], recs[1]["params"]);
    }
}

/// A length the model cannot take (TrellisNet's receptive field is 1,025 steps) is a cell marked
/// n/a, not a failure.
#[test]
fn bench_marks_lengths_a_model_rejects_as_not_applicable() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = pixelseq(&[
        "bench",
        "--preset",
        "trellisnet-scifar",
        "--seq-len",
        "4096",
        "--device",
        "cpu",
        "--no-reference",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = records(&json);
    assert_eq!(recs.len(), 1);
    let note = recs[0]["note"].as_str().unwrap();
    assert!(note.starts_with("n/a: ") && note.contains("model.dilations"), "{note}");
    assert!(recs[0]["train_img_per_s"].is_null());
    assert!(String::from_utf8_lossy(&out.stdout).contains("n/a"));
}
