//! Data-parallel training on the CPU (Gloo over loopback) with real CIFAR-10 images: the ranks'
//! shares make up one process's batch, two processes train like one, evaluation across ranks scores exactly what one process does, a killed worker
//! stops the run naming its rank and the run resumes exactly, workers started by hand with
//! torchrun's variables join, and a store nobody runs times out with a message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pixelseq::data::{Split, TaskConfig, TaskName};
use pixelseq::train::sampler::Sampler;
use tch::{Device, Kind, Tensor};

/// Two ranks' shares make up the batch a single process trains on, crops, flips and mixup
/// included; each rank's dropout generator differs from the other's and repeats on a second run.
/// (Here rather than beside the sampler: it drives torch's global generator, which the library's
/// unit tests, running in parallel threads of one process, also seed.)
#[test]
fn ranks_share_the_single_process_batch_and_draw_their_own_masks() {
    tch::manual_seed(0);
    let train = Split {
        images: Tensor::randint(256, [24, 1, 32, 32], (Kind::Uint8, Device::Cpu)),
        labels: Tensor::randint(10, [24], (Kind::Int64, Device::Cpu)),
    };
    let task = TaskConfig {
        name: TaskName::LraImage,
        permute: None,
        crop: true,
        flip: true,
        gray: Default::default(),
    };
    let sampler = || Sampler::new(5, 8, 3, 0.4, 0.0);
    let one = sampler().batch(4, &train, &task);
    let (one_partners, lam) = one.mix.as_ref().unwrap();
    let (mut xs, mut labels, mut partners, mut masks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rank in 0..2 {
        let b = sampler().shard(rank, 2).batch(4, &train, &task);
        masks.push(Tensor::rand([64], (Kind::Float, Device::Cpu)));
        let (other, their_lam) = b.mix.unwrap();
        assert_eq!(&their_lam, lam);
        xs.push(b.xs);
        labels.push(b.labels);
        partners.push(other);
    }
    assert!(Tensor::cat(&xs, 0).equal(&one.xs));
    assert!(Tensor::cat(&labels, 0).equal(&one.labels));
    assert!(Tensor::cat(&partners, 0).equal(one_partners));
    assert!(!masks[0].equal(&masks[1]), "the ranks draw the same dropout masks");
    let _ = sampler().shard(1, 2).batch(4, &train, &task);
    assert!(
        masks[1].equal(&Tensor::rand([64], (Kind::Float, Device::Cpu))),
        "rank 1's masks do not repeat"
    );
}

fn shared_data() -> PathBuf {
    match std::env::var_os("PIXELSEQ_TEST_DATA") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-batches-bin"),
    }
}

/// A tiny S4D with LayerNorm, dropout off, crops, flips and mixup on: two ranks must reproduce
/// one process's batches exactly, so only the summation order of the gradients differs.
const TINY: &str = r#"
[task]
name = "lra-image"
crop = true
flip = true

[model]
name = "s4d"
d_model = 8
n_layers = 1
dropout = 0.0

[optim]
lr = 1e-2
weight_decay = 0.05
ssm_lr = 1e-3

[schedule]
kind = "cosine"
warmup_steps = 2

[train]
batch_size = 8
max_steps = 3
eval_every = 3
eval_batches = 1
eval_batch_size = 16
mixup = 0.4
seed = 3
"#;

fn pixelseq(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixelseq"));
    c.args(args)
        .args(["--device", "cpu", "--threads", "1", "--data"])
        .arg(shared_data());
    for var in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "MASTER_ADDR",
        "MASTER_PORT",
    ] {
        c.env_remove(var);
    }
    c
}

fn train(config: &Path, out: &Path, nproc: usize) -> Command {
    let mut c = pixelseq(&["train", "--nproc", &nproc.to_string()]);
    c.arg("--config").arg(config).arg("--out").arg(out);
    c
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{:?} failed:\n{}", c, String::from_utf8_lossy(&out.stderr));
    out
}

fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn weights(run: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(run.join("checkpoints/last/model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

#[test]
fn two_processes_train_like_one_and_score_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), TINY);
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    ok(train(&cfg, &one, 1));
    ok(train(&cfg, &two, 2));

    // 1e-5 of each tensor's largest value, and 1e-6 absolute (1e-4 of the learning rate) for
    // tensors that start at zero: the LayerNorm bias ends 3e-7 apart after three AdamW steps, the
    // gradients being summed in another order.
    let (a, b) = (weights(&one), weights(&two));
    assert_eq!(a.len(), b.len());
    for ((name, ta), (_, tb)) in a.iter().zip(&b) {
        let diff = (ta - tb).abs().max().double_value(&[]);
        let scale = ta.abs().max().double_value(&[]);
        assert!(diff <= 1e-5 * scale + 1e-6, "{name}: {diff} apart (largest value {scale})");
    }
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(two.join("result.json")).unwrap()).unwrap();
    assert_eq!(record["world_size"], 2);
    let mut files: Vec<String> = std::fs::read_dir(&two)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .map(|n| {
            if n.starts_with("events.out.tfevents.") {
                "events.out.tfevents.*".into()
            } else {
                n
            }
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            ".lock",
            "checkpoints",
            "config.toml",
            "events.out.tfevents.*",
            "metrics.jsonl",
            "result.json"
        ],
        "rank 0 alone writes the run folder, once"
    );

    // Evaluation across two ranks scores each test image once: the same count as one process.
    let score = |nproc: &str| {
        let out = ok({
            let mut c = pixelseq(&["eval", "--nproc", nproc, "--split", "test"]);
            c.arg("--run").arg(&one);
            c
        });
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (alone, shared) = (score("1"), score("2"));
    assert!(alone.contains("of 10000 images"), "{alone}");
    assert_eq!(alone, shared);

    // A run of two processes resumes only with two.
    let mut resume = pixelseq(&["train"]);
    resume.arg("--resume").arg(&two).stdout(Stdio::null());
    let out = resume.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("trained by 2 processes") && err.contains("--nproc 2"),
        "{err}"
    );
}

#[test]
fn a_killed_worker_stops_the_run_which_then_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &TINY
            .replace("max_steps = 3", "max_steps = 60")
            .replace("eval_every = 3", "eval_every = 5")
            .replace("dropout = 0.0", "dropout = 0.2"),
    );
    let whole = dir.path().join("whole");
    ok(train(&cfg, &whole, 2));

    let cut = dir.path().join("cut");
    let launcher = train(&cfg, &cut, 2).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while !cut.join("checkpoints/last/state.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    let rank1 = workers(launcher.id())
        .into_iter()
        .find(|pid| std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == b"RANK=1")))
        .expect("the launcher runs a worker of rank 1");
    let killed = Instant::now();
    assert!(Command::new("kill").args(["-9", &rank1.to_string()]).status().unwrap().success());
    let out = launcher.wait_with_output().unwrap();
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "the run took {:?} to stop",
        killed.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("rank 1 of 2 was killed by signal 9 (SIGKILL)"), "{err}");
    assert!(!cut.join("result.json").exists(), "the run finished before it could be killed");

    let mut resume = pixelseq(&["train", "--nproc", "2"]);
    resume.arg("--resume").arg(&cut).stdout(Stdio::null());
    ok(resume);
    for ((name, ta), (_, tb)) in weights(&whole).iter().zip(&weights(&cut)) {
        assert!(ta.equal(tb), "{name} differs after the resume");
    }
}

/// The child processes of `pid` (the workers of a launcher).
fn workers(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let children = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default();
        out.extend(children.split_whitespace().map(|c| c.parse::<u32>().unwrap()));
    }
    out
}

#[test]
fn workers_started_with_torchrun_variables_train_as_the_launcher_does() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), TINY);
    let launched = dir.path().join("launched");
    ok(train(&cfg, &launched, 2));

    let by_hand = dir.path().join("by-hand");
    let port = free_port().to_string();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let mut c = train(&cfg, &by_hand, 1);
            c.envs([
                ("RANK", rank.to_string()),
                ("LOCAL_RANK", rank.to_string()),
                ("WORLD_SIZE", "2".into()),
                ("MASTER_ADDR", "127.0.0.1".into()),
                ("MASTER_PORT", port.clone()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for ((name, ta), (_, tb)) in weights(&launched).iter().zip(&weights(&by_hand)) {
        assert!(ta.equal(tb), "{name} differs between the launcher's run and the hand-started one");
    }
}

#[test]
fn a_store_nobody_runs_times_out_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), TINY);
    let mut c = train(&cfg, &dir.path().join("run"), 1);
    c.envs([
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("PIXELSEQ_DIST_TIMEOUT", "2"),
    ])
    .env("MASTER_PORT", free_port().to_string());
    let started = Instant::now();
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(
        err.contains("rank 1 could not reach the rendezvous store at 127.0.0.1:") && err.contains("within 2 s"),
        "{err}"
    );
}

#[test]
fn a_batch_that_does_not_divide_among_the_ranks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Two processes (no more workers than a 2-core machine has cores): a batch of 7.
    let cfg = config(dir.path(), &TINY.replace("batch_size = 8", "batch_size = 7"));
    let out = train(&cfg, &dir.path().join("run"), 2).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("train.batch_size = 7 does not divide among 2 processes"), "{err}");
    assert!(err.contains("of 2 failed with exit status"), "{err}");
}

/// Self-pretraining across two ranks, then fine-tuning from it across two ranks: rank 0 reads the
/// pretraining run and the other rank receives its weights; both runs record their world.
#[test]
fn two_ranks_pretrain_and_fine_tune_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = TINY.replace("mixup = 0.4", "mixup = 0.0") + "\n[pretrain]\nobjective = \"masked\"\nmask_ratio = 0.5\nloss = \"l1\"\n";
    let cfg = config(dir.path(), &text);
    let pre = dir.path().join("pre");
    let mut c = pixelseq(&["pretrain", "--nproc", "2"]);
    c.arg("--config").arg(&cfg).arg("--out").arg(&pre);
    ok(c);
    let record = |run: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(run.join("result.json")).unwrap()).unwrap() };
    let r = record(&pre);
    assert!(
        r["world_size"] == 2 && r["pretrain"]["objective"] == "masked" && r["test_acc"].is_null(),
        "{r}"
    );

    let tuned = dir.path().join("tuned");
    let mut c = train(&cfg, &tuned, 2);
    c.arg("--init").arg(&pre);
    let out = ok(c);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("initialised from").count(),
        1,
        "rank 0 alone reads the pretraining run:\n{log}"
    );
    let r = record(&tuned);
    assert!(r["world_size"] == 2 && r["init"] == pre.display().to_string().as_str(), "{r}");
    assert!(r["test_acc"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{r}");
}
