//! The child processes of a bench run: this executable's `bench --one` for pixelseq, and
//! `bench/reference/run.py` for the PyTorch reference. Each measures one (preset, L) and prints
//! one JSON [`Measurement`] line as its last line of stdout; a failure is its exit status and the
//! last line of its stderr.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Result};

use super::{measure, resolve_precision, Cell, Measurement, Options, Source, Timing};
use crate::data::InputSpec;
use crate::device;

/// The arguments that name a source for a child.
fn source_args(source: &Source) -> [String; 2] {
    match source {
        Source::Preset(name) => ["--preset".into(), name.clone()],
        Source::File(path) => ["--config".into(), path.display().to_string()],
    }
}

/// Measures one (preset, L) in a child process of this executable (`pixelseq bench --one`).
pub(super) fn pixelseq(cell: &Cell, o: &Options) -> Result<Measurement, String> {
    let exe = std::env::current_exe().map_err(|e| format!("error: cannot find the pixelseq executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--one"]).args(source_args(cell.source));
    for set in &o.overrides {
        cmd.args(["--set", set]);
    }
    cmd.args(["--seq-len", &cell.input.seq_len.to_string(), "--batch", &cell.batch.to_string()])
        .args(["--steps", &o.steps.to_string(), "--warmup", &o.warmup.to_string()])
        .args(["--device", &device::arg(o.device), "--precision", &cell.precision.to_string()]);
    if let Some(t) = o.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    if let Some(dir) = &o.profile {
        cmd.arg("--profile").arg(dir);
    }
    json_line_of(cmd)
}

/// Where `--profile DIR` puts the files of one configuration and implementation, without extension.
fn profile_prefix(dir: &Path, label: &str, seq_len: i64, implementation: &str) -> PathBuf {
    dir.join(format!("{label}-L{seq_len}-{implementation}"))
}

/// Runs a child and parses the last line of its stdout as a [`Measurement`]; a failure becomes a
/// one-line note from its stderr.
fn json_line_of(mut cmd: Command) -> Result<Measurement, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("error: cannot start {:?}: {e}", cmd.get_program()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(match out.status.code() {
            Some(c) => format!("error (exit code {c}): {}", failure(&stderr)),
            None => "error: killed by a signal (out of memory?)".into(),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(line).map_err(|e| format!("error: unreadable result `{line}`: {e}"))
}

/// Why a child failed, on one line: pixelseq's `error: …` line with its `Caused by:` causes
/// joined by ": ", else the last line that is not a note (Python's exception line).
fn failure(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(i) = lines.iter().position(|l| l.starts_with("error: ")) {
        let causes = lines[i + 1..].iter().filter(|l| **l != "Caused by:");
        return std::iter::once(&lines[i]["error: ".len()..])
            .chain(causes.copied())
            .collect::<Vec<_>>()
            .join(": ");
    }
    lines
        .iter()
        .rev()
        .find(|l| !l.starts_with("note: "))
        .copied()
        .unwrap_or("no message")
        .to_string()
}

/// The PyTorch reference: a python with torch and `bench/reference/run.py`.
pub(super) struct Reference {
    python: PathBuf,
    script: PathBuf,
}

impl Reference {
    /// `--python`, else the checkout's `.venv/bin/python`; the script beside the checkout's sources.
    pub(super) fn find(python: Option<&Path>) -> Result<Reference> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = match python {
            Some(p) => p.to_path_buf(),
            None => [root.join(".venv/bin/python"), PathBuf::from(".venv/bin/python")]
                .into_iter()
                .find(|p| p.exists())
                .ok_or_else(|| anyhow!("no .venv/bin/python for the PyTorch reference; pass --python PATH or --no-reference"))?,
        };
        let script = [root.join("bench/reference/run.py"), PathBuf::from("bench/reference/run.py")]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("bench/reference/run.py not found; run from the pixelseq checkout or pass --no-reference"))?;
        Ok(Reference { python, script })
    }

    pub(super) fn measure(&self, cell: &Cell, o: &Options) -> Result<Measurement, String> {
        let model = serde_json::to_string(&cell.cfg.model).map_err(|e| e.to_string())?;
        let optim = serde_json::to_string(&cell.cfg.optim).map_err(|e| e.to_string())?;
        let (input, batch) = (cell.input, cell.batch);
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .args(["--model", &model, "--optim", &optim])
            .args(["--channels", &input.channels.to_string(), "--seq-len", &input.seq_len.to_string()])
            .args([
                "--batch",
                &batch.to_string(),
                "--steps",
                &o.steps.to_string(),
                "--warmup",
                &o.warmup.to_string(),
            ])
            .args(["--device", &device::arg(o.device), "--precision", &cell.precision.to_string()]);
        if let Some(t) = o.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        if let Some(dir) = &o.profile {
            cmd.arg("--profile")
                .arg(profile_prefix(dir, &cell.source.label(), input.seq_len, "pytorch"));
        }
        json_line_of(cmd)
    }
}

/// The child's side (`pixelseq bench --one`): build, time and print one JSON [`Measurement`] line.
pub fn run_one(o: &Options) -> Result<()> {
    let [source] = o.sources.as_slice() else {
        bail!("--one takes exactly one --preset or --config")
    };
    let &[l] = o.seq_lens.as_slice() else {
        bail!("--one takes exactly one --seq-len")
    };
    let cfg = source.load(&o.overrides)?;
    let precision = resolve_precision(o.precision.unwrap_or(cfg.train.precision), o.device)?;
    let input = InputSpec {
        channels: cfg.task.name.channels(),
        seq_len: l,
    };
    let batch = o.batch.unwrap_or(cfg.train.batch_size);
    let timing = Timing {
        steps: o.steps,
        warmup: o.warmup,
        profile: o.profile.as_ref().map(|dir| profile_prefix(dir, &source.label(), l, "pixelseq")),
    };
    let m = measure(&cfg, input, (batch, batch), &timing, o.device, precision)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failure_is_its_error_and_causes_not_the_backtrace_note() {
        let stderr = "thread 'main' panicked at src/x.rs:1:2:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(super::failure(stderr), "boom");
        let stderr = "step 1\nerror: failed to build\n\nCaused by:\n  out of memory: DefaultCPUAllocator\n";
        assert_eq!(super::failure(stderr), "failed to build: out of memory: DefaultCPUAllocator");
        let stderr = "Traceback (most recent call last):\n  File \"run.py\"\nRuntimeError: CUDA out of memory\n";
        assert_eq!(super::failure(stderr), "RuntimeError: CUDA out of memory");
    }
}
