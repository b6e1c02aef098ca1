//! Bad input gets one clear line naming the key, file or value, and exit code 2 — never a panic.

use std::process::Command;

fn pixelseq(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelseq")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, err) = pixelseq(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let err = err.trim();
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{args:?}: `{err}` lacks `{needle}`"
    );
}

#[test]
fn config_errors_name_the_key() {
    let tiny = ["train", "--preset", "transformer-lra", "--device", "cpu"];
    fn with<'a>(tiny: &[&'a str], set: &'a str) -> Vec<&'a str> {
        [tiny, &["--set", set]].concat()
    }
    assert_one_line_error(&with(&tiny, "model.d_modle=3"), "d_modle");
    assert_one_line_error(&with(&tiny, "optim.lr=-1"), "optim.lr");
    assert_one_line_error(&with(&tiny, "optim.lr=\"fast\""), "optim.lr");
    assert_one_line_error(&with(&tiny, "train.batch_size=0"), "train.batch_size");
    assert_one_line_error(&with(&tiny, "task.name=\"mnist\""), "task.name");
    assert_one_line_error(&with(&tiny, "trian.epochs=3"), "trian");
    assert_one_line_error(&with(&tiny, "model.name=\"s4\""), "s4");
    assert_one_line_error(&["train", "--preset", "no-such-preset"], "no-such-preset");
    assert_one_line_error(&["train", "--config", "/nonexistent/x.toml"], "/nonexistent/x.toml");
    assert_one_line_error(&["train", "--preset", "transformer-lra", "--device", "cuda:7"], "cuda:7");
    assert_one_line_error(&["train", "--preset", "transformer-lra", "--device", "tpu"], "tpu");
}

#[test]
fn config_file_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[task]\nname = \"lra-image\"\n[model]\nname = \"transformer\"\n[train]\nbatch_size = \"big\"\n",
    )
    .unwrap();
    assert_one_line_error(&["train", "--config", f.to_str().unwrap()], "train.batch_size");
    std::fs::write(&f, "[task\nname = 1").unwrap();
    assert_one_line_error(&["train", "--config", f.to_str().unwrap()], "bad.toml");
}

#[test]
fn missing_data_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = pixelseq(&[
        "train",
        "--preset",
        "transformer-lra",
        "--device",
        "cpu",
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(!err.contains("panicked") && err.contains("error: "), "{err}");
    assert!(err.contains(dir.path().to_str().unwrap()), "{err}");
}

#[test]
fn every_preset_loads_and_builds() {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelseq")).arg("presets").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in [
        "transformer-lra",
        "transformer-small",
        "nystromformer-lra",
        "fnet-lra",
        "pit-small",
        "s4d-small",
        "lru-small",
        "trellisnet-scifar",
        "lipschitz-scifar",
    ] {
        assert!(text.contains(name), "`pixelseq presets` lacks {name}:\n{text}");
    }
    assert!(
        text.contains("174986"),
        "transformer-small has the reference's 174,986 parameters:\n{text}"
    );
}
