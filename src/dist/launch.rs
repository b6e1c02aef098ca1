//! `--nproc N`: this executable started N times on this machine, one worker per rank (one per GPU,
//! or N CPU workers), with the variables torchrun would set, and supervised: when one worker fails
//! or dies, the others are stopped at once and the launcher fails naming that rank.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How often the launcher looks at its workers.
const POLL: Duration = Duration::from_millis(50);

/// Runs this command line (less `--nproc`) as `n` workers on `device` (what `--device` said) and
/// waits for all of them. Refused before any worker starts: more workers than GPUs, or on a CPU
/// more than its cores (each worker computes on at least one, and each holds its own data and
/// model; their memory plans share the machine's memory, see `train::memory`).
pub fn launch(n: usize, device: &str) -> Result<()> {
    if n == 0 {
        bail!("--nproc 0: need at least one process");
    }
    match crate::device::parse(device, "--device")? {
        tch::Device::Cuda(_) => {
            let gpus = tch::Cuda::device_count().max(0) as usize;
            if n > gpus {
                bail!("--nproc {n}: this machine has {gpus} GPUs and each worker takes one; pass --nproc {gpus} or fewer");
            }
        }
        _ => {
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            if n > cores {
                bail!("--nproc {n}: this machine has {cores} CPU cores and each CPU worker needs one; pass --nproc {cores} or fewer");
            }
        }
    }
    if std::env::var_os("RANK").is_some() {
        bail!("--nproc inside a distributed launch ($RANK is set): torchrun or srun already started the workers; drop --nproc");
    }
    let exe = std::env::current_exe().context("cannot find this executable to start its workers")?;
    let args = without_nproc(std::env::args_os().skip(1));
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p,
        Err(_) => free_port()?.to_string(),
    };
    let mut workers = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .env_remove("TORCHELASTIC_USE_AGENT_STORE");
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(crate::ffi::die_with_parent);
        }
        match cmd.spawn() {
            Ok(child) => workers.push(Some(child)),
            Err(e) => {
                stop(&mut workers);
                return Err(e).with_context(|| format!("failed to start worker {rank} (`{}`)", exe.display()));
            }
        }
    }
    supervise(&mut workers)
}

/// The arguments without `--nproc N` / `--nproc=N`.
fn without_nproc(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if a == "--nproc" {
            skip = true;
        } else if !a.to_string_lossy().starts_with("--nproc=") {
            out.push(a);
        }
    }
    out
}

/// A TCP port free on this machine now, for the store of rank 0.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("cannot find a free port for the rendezvous store")?;
    Ok(listener.local_addr()?.port())
}

/// Waits for every worker; at the first failure stops the rest and reports which rank failed.
fn supervise(workers: &mut [Option<Child>]) -> Result<()> {
    let n = workers.len();
    loop {
        let mut failed: Vec<(usize, ExitStatus)> = Vec::new();
        let mut running = 0;
        for (rank, slot) in workers.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait().with_context(|| format!("cannot wait for worker {rank}"))? {
                Some(status) if status.success() => *slot = None,
                Some(status) => {
                    failed.push((rank, status));
                    *slot = None;
                }
                None => running += 1,
            }
        }
        if !failed.is_empty() {
            stop(workers);
            // A rank killed by a signal is the cause; the others' errors (a closed connection)
            // follow from it.
            failed.sort_by_key(|(rank, status)| (status.signal().is_none(), *rank));
            let (rank, status) = failed[0];
            bail!(
                "rank {rank} of {n} {}; stopped the other workers",
                match status.signal() {
                    Some(sig) => format!("was killed by signal {sig} ({})", signal_name(sig)),
                    None => format!("failed with exit status {} (its error is above)", status.code().unwrap_or(-1)),
                }
            );
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// Kills the workers still running and reaps them.
fn stop(workers: &mut [Option<Child>]) {
    for child in workers.iter_mut().flatten() {
        // A worker that has just exited by itself cannot be killed; either way it ends.
        let _ = child.kill();
    }
    for slot in workers.iter_mut() {
        if let Some(mut child) = slot.take() {
            let _ = child.wait();
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_is_taken_out_of_the_worker_command_line() {
        let args = ["train", "--nproc", "2", "--preset", "x", "--nproc=4", "--out", "r"].map(OsString::from);
        assert_eq!(
            without_nproc(args.into_iter()),
            ["train", "--preset", "x", "--out", "r"].map(OsString::from)
        );
    }
}
