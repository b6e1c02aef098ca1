//! Bad input gets a clear error naming the key, file or value — one `error:` line, then any
//! underlying causes under `Caused by:` as cargo prints them — and exit code 2, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use pixelseq::config::RunConfig;
use pixelseq::run::RunDir;

fn pixelseq(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelseq")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_clear_error(args: &[&str], needle: &str) {
    let (code, err) = pixelseq(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{args:?} panicked: {err}");
    let mut lines = err.trim().lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains(needle),
        "{args:?}: `{first}` lacks `{needle}`"
    );
    for line in lines {
        assert!(
            line.is_empty() || line == "Caused by:" || line.starts_with("  "),
            "{args:?}: `{line}` is neither a cause nor the `Caused by:` heading:\n{err}"
        );
    }
}

#[test]
fn config_errors_name_the_key() {
    let tiny = ["train", "--preset", "transformer-lra", "--device", "cpu"];
    fn with<'a>(tiny: &[&'a str], set: &'a str) -> Vec<&'a str> {
        [tiny, &["--set", set]].concat()
    }
    assert_clear_error(&with(&tiny, "model.d_modle=3"), "d_modle");
    assert_clear_error(&with(&tiny, "optim.lr=-1"), "optim.lr");
    assert_clear_error(&with(&tiny, "optim.lr=\"fast\""), "optim.lr");
    assert_clear_error(&with(&tiny, "train.batch_size=0"), "train.batch_size");
    assert_clear_error(&with(&tiny, "task.name=\"mnist\""), "task.name");
    assert_clear_error(&with(&tiny, "trian.epochs=3"), "trian");
    assert_clear_error(&with(&tiny, "model.name=\"s4\""), "s4");
    assert_clear_error(&["train", "--preset", "no-such-preset"], "no-such-preset");
    assert_clear_error(&["train", "--config", "/nonexistent/x.toml"], "/nonexistent/x.toml");
    assert_clear_error(&["train", "--preset", "transformer-lra", "--device", "cuda:7"], "cuda:7");
    assert_clear_error(&["train", "--preset", "transformer-lra", "--device", "tpu"], "tpu");
}

/// The settings of issue 27 refuse bad values naming the key, and `--last` needs `--init`.
#[test]
fn self_pretraining_settings_name_the_key() {
    let spt = ["pretrain", "--preset", "transformer-spt", "--device", "cpu", "--set"];
    for (set, needle) in [
        ("pretrain.mask=\"sometimes\"", "pretrain.mask"),
        ("pretrain.mask_input=\"zero\"", "pretrain.mask_input"),
        ("pretrain.head_init=\"xavier\"", "pretrain.head_init"),
        // Inside the internally tagged `[model]` the path stops at `model`: the value and the
        // choices name the field.
        ("model.pos=\"rotary\"", "`rotary`, expected `learned` or `sinusoidal`"),
        ("model.attn_init=\"shared\"", "`shared`, expected `independent` or `cloned`"),
        ("model.head_dim=0", "model.head_dim"),
        ("task.gray=\"srgb\"", "task.gray"),
        ("task.name=\"scifar\"", "task.gray"),
        ("pretrain.objective=\"causal\"", "pretrain.mask_input"),
    ] {
        assert_clear_error(&[&spt[..], &[set]].concat(), needle);
    }
    let train = ["train", "--preset", "transformer-spt", "--device", "cpu"];
    assert_clear_error(&[&train[..], &["--last"]].concat(), "--last");
    assert_clear_error(
        &[&train[..], &["--set", "train.init_checkpoint=\"last\""]].concat(),
        "train.init_checkpoint",
    );
    assert_clear_error(
        &[&train[..], &["--set", "train.init_checkpoint=\"first\""]].concat(),
        "train.init_checkpoint",
    );
    assert_clear_error(&["pretrain", "--preset", "transformer-spt", "--last"], "--last");
}

/// Values that used to hang the trainer (an infinite mixup α spun in the Beta sampler) or reach
/// libtorch are refused up front, naming the key; so are preset names that are paths.
#[test]
fn unbounded_values_and_paths_are_refused() {
    let tiny = ["train", "--preset", "transformer-small", "--device", "cpu", "--set"];
    for (set, needle) in [
        ("train.mixup=inf", "train.mixup"),
        ("train.cutmix=inf", "train.cutmix"),
        ("optim.weight_decay=inf", "optim.weight_decay"),
        ("optim.clip_norm=inf", "optim.clip_norm"),
        ("train.batch_size=99999999999999999999", "out of range for key `train.batch_size`"),
    ] {
        assert_clear_error(&[&tiny[..], &[set]].concat(), needle);
    }
    assert_clear_error(&["train", "--preset", "../Cargo"], "not a path");
}

/// A model that cannot fit (2 TiB of S4D state) ends `bench` with exit code 2 and one line,
/// refused from its config before libtorch is asked to allocate it (a failure inside libtorch is
/// its own first line: `commands::tests::libtorch_panics_become_errors`), not a panic, a
/// backtrace note or a silent exit 0.
#[test]
fn an_allocation_failure_is_a_one_line_error() {
    let huge = [
        "--preset",
        "s4d-small",
        "--seq-len",
        "16",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--set",
        "model.d_model=1048576",
        "--set",
        "model.d_state=1048576",
    ];
    assert_clear_error(&[&["bench", "--one"][..], &huge].concat(), "the model does not fit");
    let (code, err) = pixelseq(&[&["bench", "--no-reference"][..], &huge].concat());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: no configuration could be measured") && err.contains("does not fit") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
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
    assert_clear_error(&["train", "--config", f.to_str().unwrap()], "train.batch_size");
    std::fs::write(&f, "[task\nname = 1").unwrap();
    assert_clear_error(&["train", "--config", f.to_str().unwrap()], "bad.toml");
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
    let spt = text.lines().find(|l| l.starts_with("transformer-spt ")).unwrap_or_default();
    assert!(
        spt.contains("105482"),
        "transformer-spt has the SPT code's 105,482 parameters:\n{text}"
    );
    let causal = text.lines().find(|l| l.starts_with("transformer-spt-causal")).unwrap_or_default();
    assert!(
        causal.contains("105482") && causal.contains("76"),
        "transformer-spt-causal:\n{text}"
    );
}

/// `pixelseq presets | head -1`: a reader that goes away ends the command quietly, no panic.
#[test]
fn a_closed_pipe_ends_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .arg("presets")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "stderr after the reader left: {err}");
}

fn shared_data() -> PathBuf {
    match std::env::var_os("PIXELSEQ_TEST_DATA") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-batches-bin"),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A refused `train` changes nothing: neither a folder of someone else's files nor a run that
/// is already there (its `preset` file used to be rewritten).
#[test]
fn train_writes_only_into_a_folder_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), b"mine").unwrap();
    let args = ["train", "--preset", "transformer-small", "--device", "cpu", "--out"];
    assert_clear_error(&[&args[..], &[mine.to_str().unwrap()]].concat(), "not a pixelseq run");
    assert_eq!(names(&mine), ["notes.txt"]);

    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let cfg = RunConfig::load(Some("transformer-small"), None, &[]).unwrap();
    std::fs::write(run.join("config.toml"), cfg.to_toml()).unwrap();
    std::fs::write(run.join("preset"), "transformer-small").unwrap();
    let args = ["train", "--preset", "s4d-small", "--device", "cpu", "--out"];
    assert_clear_error(&[&args[..], &[run.to_str().unwrap()]].concat(), "already holds a run");
    assert_eq!(std::fs::read_to_string(run.join("preset")).unwrap(), "transformer-small");
    assert_eq!(names(&run), ["config.toml", "preset"]);
}

/// `--resume` cannot change the model (refused up front, naming the keys), and a run has one
/// writer: a second command is refused while the first holds the run's lock.
#[test]
fn a_run_has_one_writer_and_keeps_its_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let cfg = RunConfig::load(Some("transformer-small"), None, &[]).unwrap();
    std::fs::write(run.join("config.toml"), cfg.to_toml()).unwrap();
    let r = run.to_str().unwrap();
    let data = shared_data();
    let d = data.to_str().unwrap();
    assert_clear_error(
        &[
            "train",
            "--resume",
            r,
            "--device",
            "cpu",
            "--set",
            "model.d_model=32",
            "--set",
            "optim.lr=0.1",
        ],
        "model.d_model 64 → 32",
    );
    let _held = RunDir::new(&run).lock().unwrap();
    assert_clear_error(
        &["train", "--resume", r, "--device", "cpu", "--data", d],
        "in use by another pixelseq command",
    );
}

/// A setting that a command would not apply is refused before anything runs: mixup and `init`
/// under `pretrain` (also through `--set`), the `[pretrain.*]` tables under `pretrain` (its own
/// settings are the top-level keys), `[pretrain]` under `train`, a mask that covers every
/// position, and a new start (`train.init`) for a resumed run.
#[test]
fn settings_that_do_not_apply_are_refused() {
    let pre = ["pretrain", "--preset", "transformer-spt", "--device", "cpu", "--set"];
    for (set, needle) in [
        ("train.mixup=0.2", "key `train.mixup` = 0.2"),
        ("train.cutmix=1.0", "key `train.cutmix` = 1"),
        ("train.init=\"runs/x\"", "starts from scratch"),
        ("pretrain.train.batch_size=4", "pass --set train.batch_size=4"),
        ("pretrain.optim.lr=0.1", "pass --set optim.lr=0.1"),
        ("pretrain.mask_ratio=0.9999", "masks every position"),
    ] {
        assert_clear_error(&[&pre[..], &[set]].concat(), needle);
    }
    let train = ["train", "--preset", "transformer-spt", "--device", "cpu", "--set"];
    assert_clear_error(&[&train[..], &["pretrain.mask_ratio=0.3"]].concat(), "does not read [pretrain]");

    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let cfg = RunConfig::load(Some("transformer-small"), None, &[]).unwrap();
    std::fs::write(run.join("config.toml"), cfg.to_toml()).unwrap();
    let r = run.to_str().unwrap();
    assert_clear_error(
        &["train", "--resume", r, "--device", "cpu", "--set", "train.init=\"runs/x\""],
        "train.init",
    );
    assert_eq!(std::fs::read_to_string(run.join("config.toml")).unwrap(), cfg.to_toml());
}

/// What a run allocates is admitted before it is allocated: a model whose weights, gradients and
/// AdamW moments cannot fit is refused from its config (no tensor of it made, no folder
/// written), and `--nproc` beyond this machine's cores is refused before any worker starts.
#[test]
fn runs_that_cannot_fit_are_refused_before_they_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let data = shared_data();
    let (o, d) = (out.to_str().unwrap(), data.to_str().unwrap());
    for (cmd, preset, set) in [
        ("train", "transformer-small", "model.n_layers=1000000"),
        ("train", "s4d-small", "model.d_model=1048576"),
        ("pretrain", "transformer-spt", "model.n_layers=1000000"),
    ] {
        let started = std::time::Instant::now();
        let args = [cmd, "--preset", preset, "--device", "cpu", "--data", d, "--out", o, "--set", set];
        assert_clear_error(&args, "the model does not fit");
        assert!(started.elapsed().as_secs() < 60, "{args:?} took {:?}", started.elapsed());
        assert!(!out.exists(), "{args:?} left its folder");
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let many = (cores + 1).to_string();
    assert_clear_error(
        &["train", "--preset", "s4d-small", "--device", "cpu", "--nproc", &many, "--out", o],
        "CPU cores",
    );
    assert!(!out.exists());
}

/// The first line of a refusal that clap reports (exit code 2, `error:` naming the flag and the
/// value; clap adds its usage hint below), never a panic.
fn assert_clap_error(args: &[&str], needle: &str) {
    let (code, err) = pixelseq(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{args:?} panicked: {err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains(needle),
        "{args:?}: `{first}` lacks `{needle}`"
    );
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelseq"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each subcommand's `--help` offers only what the subcommand takes: `pretrain` has no `--init`
/// or `--last` (it refuses them, saying where they belong), `data export` no task but lra-image
/// and no prepared cache (it reads the official files), `bench` no fp16.
#[test]
fn help_offers_only_what_is_taken() {
    let train = help(&["train"]);
    assert!(train.contains("--init <PRETRAIN_RUN_DIR>") && train.contains("--last"), "{train}");
    let pretrain = help(&["pretrain"]);
    assert!(!pretrain.contains("--init <") && !pretrain.contains("--last"), "{pretrain}");
    for flag in ["--init=runs/pre", "--last"] {
        assert_clear_error(
            &["pretrain", "--preset", "transformer-spt", flag],
            "`pixelseq pretrain` starts from scratch",
        );
    }
    let export = help(&["data", "export"]);
    assert!(
        !export.contains("Possible values") && !export.contains("PREPARED") && !export.contains("prepared cache ["),
        "{export}"
    );
    assert_clear_error(&["data", "export", "--task", "scifar", "--out", "x.bin"], "--task lra-image");
    let bench = help(&["bench"]);
    assert!(!bench.contains("- fp16") && bench.contains("fp16 is not benchmarked"), "{bench}");
}

/// Refusals found weak in issue 26, each now one line naming the value and what to do: budgets
/// that are no number of minutes (NaN was a TOML type error, 1e300 for --fit-minutes a panic),
/// `--init` of a file, a folder that is no run (what it is and what it lacks), an exported folder
/// without its weights.
#[test]
fn refusals_name_the_value_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let tiny = ["train", "--preset", "transformer-small", "--device", "cpu", "--out", o];
    for (flag, value) in [
        ("--max-minutes", "nan"),
        ("--max-minutes", "0"),
        ("--max-minutes", "-3"),
        ("--fit-minutes", "nan"),
        ("--fit-minutes", "1e300"),
        ("--fit-minutes", "inf"),
    ] {
        assert_clap_error(
            &[&tiny[..], &[flag, value]].concat(),
            &format!("invalid value '{value}' for '{flag} <"),
        );
        assert_clap_error(&[&tiny[..], &[flag, value]].concat(), "must be a positive number of minutes");
    }
    assert!(!out.exists());

    let data = shared_data();
    let d = data.to_str().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "a file").unwrap();
    let f = file.to_str().unwrap();
    let init = [
        "train",
        "--preset",
        "transformer-spt",
        "--device",
        "cpu",
        "--data",
        d,
        "--out",
        o,
        "--init",
        f,
    ];
    assert_clear_error(&init, &format!("--init: `{f}` is a file, not a run directory"));
    assert!(!out.exists());

    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(hf.join("config.json"), "{}").unwrap();
    let h = hf.to_str().unwrap();
    for cmd in [
        &["eval", "--run", h][..],
        &["predict", "--run", h, f],
        &["export", "--format", "hf", "--out", o, "--run", h],
    ] {
        assert_clear_error(
            cmd,
            &format!("`{h}` is an exported model folder without its model.safetensors; export the run again"),
        );
    }
    std::fs::write(hf.join("model.safetensors"), "weights").unwrap();
    assert_clear_error(&["train", "--resume", h], "is an exported model folder, not a run directory");
    let init = [&init[..init.len() - 1], &[h]].concat();
    assert_clear_error(&init, &format!("--init: `{h}` is an exported model folder, not a run directory"));
    let missing = dir.path().join("missing");
    let m = missing.to_str().unwrap();
    assert_clear_error(&["eval", "--run", m], &format!("`{m}` does not exist"));
    assert_clear_error(
        &["export", "--format", "torchscript", "--out", o, "--run", f],
        &format!("`{f}` is a file, not a run directory"),
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_clear_error(
        &["train", "--resume", empty.to_str().unwrap()],
        "is not a run directory: it has no config.toml",
    );
    assert!(!out.exists());
}
