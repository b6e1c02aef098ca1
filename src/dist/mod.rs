//! Data-parallel processes through c10d, PyTorch's own distributed engine as compiled into
//! libtorch (`csrc/dist.cpp`): where this process stands in a run ([`World`], from torchrun's or
//! Slurm's variables), the rendezvous [`Store`] (c10d's TCPStore), process [`Group`]s (c10d's
//! ProcessGroupNCCL on CUDA, ProcessGroupGloo on the CPU) and the bucketed, overlapped gradient
//! all-reduce of DistributedDataParallel ([`GradReducer`]). [`launch`] starts and supervises the
//! worker processes of `--nproc N`.
//!
//! Environment, as `torch.distributed`'s `env://` reads it: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` (torchrun sets them all); without `RANK`,
//! Slurm's `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE` (an `srun`
//! task; `MASTER_ADDR` is then yours to export). Rank 0 hosts the store at `MASTER_ADDR:MASTER_PORT`
//! (default port 29500), except under torchrun's agent store (`TORCHELASTIC_USE_AGENT_STORE`),
//! which every rank joins as a client with its keys under the restart's prefix, as PyTorch does.
//! `PIXELSEQ_DIST_TIMEOUT` (seconds, default 300) bounds the rendezvous; collectives time out
//! after 30 minutes, PyTorch's default.

pub mod launch;

use std::ffi::{c_char, c_int, CString};
use std::ptr::NonNull;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::ffi::{
    call, handles, pixelseq_all_reduce, pixelseq_broadcast, pixelseq_free, pixelseq_group_free, pixelseq_group_gloo, pixelseq_group_nccl,
    pixelseq_reducer_arm, pixelseq_reducer_finish, pixelseq_reducer_free, pixelseq_reducer_layout, pixelseq_reducer_new,
    pixelseq_store_free, pixelseq_store_get, pixelseq_store_set, PixelseqGroup, PixelseqReducer, PixelseqStore,
};

/// Seconds the rendezvous may take unless `$PIXELSEQ_DIST_TIMEOUT` says otherwise (TCPStore's
/// default).
const RENDEZVOUS_TIMEOUT_S: f64 = 300.0;
/// How long a collective may wait for the other ranks (PyTorch's default process-group timeout).
pub const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// DistributedDataParallel's bucket sizes: 25 MiB, the first 1 MiB so the first all-reduce
/// starts early in the backward pass.
const BUCKET_BYTES: i64 = 25 << 20;
const FIRST_BUCKET_BYTES: i64 = 1 << 20;

/// `train.backend`: which c10d backend carries the gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// NCCL on CUDA, Gloo on the CPU.
    #[default]
    Auto,
    Nccl,
    Gloo,
}

/// Where this process stands in a distributed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes of this machine (which GPU it takes).
    pub local_rank: usize,
    /// Processes on this machine (how many share its CPU cores).
    pub local_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the store: every rank is a client and keys go under this prefix.
    pub agent_store: Option<String>,
}

impl World {
    /// This process's place in a run of several processes, from the environment; `None` when it
    /// runs alone (no variables, or a world of one).
    pub fn from_env() -> Result<Option<World>> {
        World::from_vars(|k| std::env::var(k).ok())
    }

    /// [`World::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        let num = |key: &str| -> Result<Option<usize>> {
            var(key)
                .map(|v| v.trim().parse::<usize>().with_context(|| format!("${key} = `{v}` is not a number")))
                .transpose()
        };
        let (rank, size, local_rank, local_size) = if let Some(rank) = num("RANK")? {
            let size = num("WORLD_SIZE")?.ok_or_else(|| anyhow!("$RANK is set but $WORLD_SIZE is not"))?;
            (rank, size, num("LOCAL_RANK")?.unwrap_or(rank), num("LOCAL_WORLD_SIZE")?)
        } else if let Some(rank) = num("SLURM_PROCID")? {
            let size = num("SLURM_NTASKS")?.ok_or_else(|| anyhow!("$SLURM_PROCID is set but $SLURM_NTASKS is not"))?;
            (rank, size, num("SLURM_LOCALID")?.unwrap_or(rank), num("SLURM_NTASKS_PER_NODE")?)
        } else {
            return Ok(None);
        };
        // Checked as a whole before a world of one runs alone: a rank or a local rank outside its
        // world is a launch that went wrong, not a single process.
        let (rank_var, size_var) = if var("RANK").is_some() {
            ("$RANK", "$WORLD_SIZE")
        } else {
            ("$SLURM_PROCID", "$SLURM_NTASKS")
        };
        if size == 0 {
            bail!("{size_var} = 0: a world needs at least one process");
        }
        if rank >= size {
            bail!(
                "rank {rank} is outside a world of {size} processes ({rank_var} = {rank}, {size_var} = {size}); ranks run from 0 to {}",
                size - 1
            );
        }
        if let Some(local) = local_size {
            if local == 0 || local > size {
                bail!("{local} processes on this machine (LOCAL_WORLD_SIZE or SLURM_NTASKS_PER_NODE) in a world of {size}: must be from 1 to {size}");
            }
            if local_rank >= local {
                bail!("local rank {local_rank} is outside the {local} processes of this machine (LOCAL_RANK or SLURM_LOCALID)");
            }
        } else if local_rank >= size {
            bail!("local rank {local_rank} is outside a world of {size} processes (LOCAL_RANK or SLURM_LOCALID)");
        }
        if size == 1 {
            return Ok(None);
        }
        let master_addr = match var("MASTER_ADDR") {
            Some(a) => a,
            None => bail!(
                "$MASTER_ADDR is not set: the address of rank 0's machine, where the rendezvous store runs (under Slurm: export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1))"
            ),
        };
        let master_port = match var("MASTER_PORT") {
            Some(p) => p
                .trim()
                .parse()
                .with_context(|| format!("$MASTER_PORT = `{p}` is not a port number"))?,
            None => 29500,
        };
        let agent_store = (var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True")).then(|| {
            format!(
                "/worker/attempt_{}/",
                var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into())
            )
        });
        Ok(Some(World {
            rank,
            size,
            local_rank,
            local_size: local_size.unwrap_or(size).max(1),
            master_addr,
            master_port,
            agent_store,
        }))
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The device of this rank: `cuda:LOCAL_RANK` when `--device` says auto/cuda and CUDA is
    /// chosen; a CPU stays the CPU. `spec` is what `--device` said.
    pub fn device(&self, device: Device, spec: &str) -> Result<Device> {
        match device {
            Device::Cuda(_) if spec.starts_with("cuda:") && self.local_size > 1 => bail!(
                "--device {spec}: with {} processes on this machine each takes the GPU of its local rank; pass --device cuda",
                self.local_size
            ),
            Device::Cuda(_) if spec.starts_with("cuda:") => Ok(device),
            Device::Cuda(_) => crate::device::parse(&format!("cuda:{}", self.local_rank), "the local rank's GPU")
                .with_context(|| format!("rank {} (local rank {}) has no GPU of its own", self.rank, self.local_rank)),
            other => Ok(other),
        }
    }

    /// CPU threads for this process when `--threads` is not given: the physical cores shared
    /// among this machine's processes.
    pub fn cpu_threads(&self) -> i32 {
        (crate::device::physical_cores() / self.local_size).max(1) as i32
    }
}

/// The longest rendezvous timeout `$PIXELSEQ_DIST_TIMEOUT` may ask for: a year.
const MAX_TIMEOUT_S: f64 = 365.0 * 24.0 * 3600.0;

/// The rendezvous timeout: `$PIXELSEQ_DIST_TIMEOUT` seconds, else 300.
pub fn rendezvous_timeout() -> Result<Duration> {
    match std::env::var("PIXELSEQ_DIST_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs_f64(RENDEZVOUS_TIMEOUT_S)),
        Ok(v) => parse_timeout(&v),
    }
}

/// `$PIXELSEQ_DIST_TIMEOUT`'s value: a positive number of seconds, at most [`MAX_TIMEOUT_S`].
fn parse_timeout(v: &str) -> Result<Duration> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_S => Ok(Duration::from_secs_f64(s)),
        _ => bail!("$PIXELSEQ_DIST_TIMEOUT = `{v}`: expected a positive number of seconds, at most {MAX_TIMEOUT_S} (a year)"),
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{what} `{s}` contains a NUL byte"))
}

/// c10d's TCPStore at `MASTER_ADDR:MASTER_PORT`: where the processes meet and exchange small
/// values.
pub struct Store {
    raw: NonNull<PixelseqStore>,
}

impl Store {
    /// Starts the store (rank 0) or connects to it, waiting at most `timeout` for every process.
    pub fn connect(world: &World, timeout: Duration) -> Result<Store> {
        let host = cstring(&world.master_addr, "$MASTER_ADDR")?;
        let prefix = cstring(world.agent_store.as_deref().unwrap_or(""), "the store prefix")?;
        let server = world.is_main() && world.agent_store.is_none();
        let mut raw: *mut PixelseqStore = std::ptr::null_mut();
        let what = if server {
            format!(
                "rank 0 could not start the rendezvous store on port {} or not all {} processes joined it within {:.0} s",
                world.master_port,
                world.size,
                timeout.as_secs_f64()
            )
        } else {
            format!(
                "rank {} could not reach the rendezvous store at {}:{} within {:.0} s (is rank 0 running? $PIXELSEQ_DIST_TIMEOUT sets the wait)",
                world.rank,
                world.master_addr,
                world.master_port,
                timeout.as_secs_f64()
            )
        };
        // SAFETY: NUL-terminated strings and an out pointer, borrowed for the call.
        call(&what, |err, len| unsafe {
            crate::ffi::pixelseq_store_new(
                host.as_ptr(),
                world.master_port,
                server,
                world.size as c_int,
                prefix.as_ptr(),
                millis(timeout),
                &mut raw,
                err,
                len,
            )
        })?;
        Ok(Store {
            raw: NonNull::new(raw).expect("the shim returned a store"),
        })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = cstring(key, "store key")?;
        // SAFETY: a live store, a NUL-terminated key and a byte slice, borrowed for the call.
        call(&format!("failed to write `{key}` to the rendezvous store"), |err, len| unsafe {
            pixelseq_store_set(self.raw.as_ptr(), k.as_ptr(), value.as_ptr(), value.len(), err, len)
        })
    }

    /// The value of `key`, waiting up to `timeout` for some process to set it.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let k = cstring(key, "store key")?;
        let (mut data, mut n): (*mut c_char, usize) = (std::ptr::null_mut(), 0);
        // SAFETY: a live store, a NUL-terminated key and two out pointers.
        call(&format!("failed to read `{key}` from the rendezvous store"), |err, len| unsafe {
            pixelseq_store_get(self.raw.as_ptr(), k.as_ptr(), millis(timeout), &mut data, &mut n, err, len)
        })?;
        // SAFETY: the shim malloc'd `n` bytes at `data`, which are ours to copy and free.
        let value = unsafe { std::slice::from_raw_parts(data as *const u8, n) }.to_vec();
        // SAFETY: `data` came from the shim's malloc and is freed once.
        unsafe { pixelseq_free(data) };
        Ok(value)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the store was created by pixelseq_store_new and is released once.
        unsafe { pixelseq_store_free(self.raw.as_ptr()) }
    }
}

/// How an all-reduce combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum = 0,
    Min = 1,
    Max = 2,
}

/// A c10d process group over every rank of the run.
pub struct Group {
    raw: NonNull<PixelseqGroup>,
    /// "gloo" or "nccl".
    pub backend: &'static str,
}

impl Group {
    /// A Gloo group (CPU tensors; CUDA tensors through host copies) with keys under `prefix`.
    pub fn gloo(store: &Store, prefix: &str, world: &World, timeout: Duration) -> Result<Group> {
        let p = cstring(prefix, "group prefix")?;
        let mut raw: *mut PixelseqGroup = std::ptr::null_mut();
        // SAFETY: a live store, a NUL-terminated prefix and an out pointer.
        call(
            &format!(
                "rank {} could not join the Gloo process group of {} processes",
                world.rank, world.size
            ),
            |err, len| unsafe {
                pixelseq_group_gloo(
                    store.raw.as_ptr(),
                    p.as_ptr(),
                    world.rank as c_int,
                    world.size as c_int,
                    millis(timeout),
                    &mut raw,
                    err,
                    len,
                )
            },
        )?;
        Ok(Group {
            raw: NonNull::new(raw).expect("the shim returned a group"),
            backend: "gloo",
        })
    }

    /// An NCCL group on CUDA device `cuda` with keys under `prefix`.
    pub fn nccl(store: &Store, prefix: &str, world: &World, timeout: Duration, cuda: usize) -> Result<Group> {
        let p = cstring(prefix, "group prefix")?;
        let mut raw: *mut PixelseqGroup = std::ptr::null_mut();
        // SAFETY: a live store, a NUL-terminated prefix and an out pointer.
        call(
            &format!(
                "rank {} could not join the NCCL process group of {} processes on cuda:{cuda}",
                world.rank, world.size
            ),
            |err, len| unsafe {
                pixelseq_group_nccl(
                    store.raw.as_ptr(),
                    p.as_ptr(),
                    world.rank as c_int,
                    world.size as c_int,
                    millis(timeout),
                    cuda as c_int,
                    &mut raw,
                    err,
                    len,
                )
            },
        )?;
        Ok(Group {
            raw: NonNull::new(raw).expect("the shim returned a group"),
            backend: "nccl",
        })
    }

    /// Combines `t` across the ranks, in place, and waits for the result.
    pub fn all_reduce(&self, t: &Tensor, op: Reduce) -> Result<()> {
        // SAFETY: a live group and a live tensor handle, borrowed for the call.
        call(&format!("{} all-reduce failed", self.backend), |err, len| unsafe {
            pixelseq_all_reduce(self.raw.as_ptr(), t.as_ptr() as *mut _, op as c_int, err, len)
        })
    }

    /// Gives every rank `root`'s values of `ts` (in place; one broadcast per dtype).
    pub fn broadcast(&self, ts: &[Tensor], root: usize) -> Result<()> {
        let hs = handles(ts);
        // SAFETY: a live group and an array of live tensor handles, borrowed for the call.
        call(&format!("{} broadcast failed", self.backend), |err, len| unsafe {
            pixelseq_broadcast(self.raw.as_ptr(), hs.as_ptr(), hs.len(), root as c_int, err, len)
        })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the group was created by a pixelseq_group_* shim and is released once.
        unsafe { pixelseq_group_free(self.raw.as_ptr()) }
    }
}

/// DistributedDataParallel's gradient all-reduce (see `csrc/dist.cpp`): the parameters' gradients
/// packed into 25 MiB buckets (the first 1 MiB) in reverse creation order, averaged across the
/// ranks; with `overlap`, each bucket's all-reduce starts from a hook as soon as backward has
/// produced its last gradient, so communication runs under the rest of the backward pass.
pub struct GradReducer {
    raw: NonNull<PixelseqReducer>,
    overlap: bool,
}

impl GradReducer {
    /// A reducer over `params` (trainable tensors, in creation order) through `group`.
    pub fn new(group: &Group, params: &[Tensor], overlap: bool) -> Result<GradReducer> {
        let hs = handles(params);
        let mut raw: *mut PixelseqReducer = std::ptr::null_mut();
        // SAFETY: a live group, an array of live tensor handles (the reducer keeps its own
        // references) and an out pointer.
        call("failed to set up the gradient all-reduce", |err, len| unsafe {
            pixelseq_reducer_new(
                group.raw.as_ptr(),
                hs.as_ptr(),
                hs.len(),
                FIRST_BUCKET_BYTES,
                BUCKET_BYTES,
                &mut raw,
                err,
                len,
            )
        })?;
        Ok(GradReducer {
            raw: NonNull::new(raw).expect("the shim returned a reducer"),
            overlap,
        })
    }

    /// Whether the all-reduce overlaps the backward pass from now on.
    pub fn set_overlap(&mut self, overlap: bool) {
        self.overlap = overlap;
    }

    /// Buckets and their bytes together.
    pub fn layout(&self) -> (usize, i64) {
        let (mut buckets, mut bytes) = (0, 0);
        // SAFETY: a live reducer and two out pointers.
        unsafe { pixelseq_reducer_layout(self.raw.as_ptr(), &mut buckets, &mut bytes) };
        (buckets, bytes)
    }

    /// Before the backward pass whose gradients are to be reduced (the last micro-batch's): with
    /// overlap, its hooks start each bucket's all-reduce as it fills.
    pub fn arm(&mut self) -> Result<()> {
        if !self.overlap {
            return Ok(());
        }
        // SAFETY: a live reducer.
        call("gradient all-reduce", |err, len| unsafe {
            pixelseq_reducer_arm(self.raw.as_ptr(), err, len)
        })
    }

    /// After that backward pass: starts the buckets not started yet, waits for all of them and
    /// leaves every parameter with the gradient averaged over the ranks (none where no rank had
    /// one).
    pub fn finish(&mut self) -> Result<()> {
        // SAFETY: a live reducer; its parameters are alive (the caller's model owns them).
        call("gradient all-reduce", |err, len| unsafe {
            pixelseq_reducer_finish(self.raw.as_ptr(), err, len)
        })
    }

    /// A line for the run's header: buckets, megabytes, overlap.
    pub fn describe(&self) -> String {
        let (buckets, bytes) = self.layout();
        format!(
            "gradient all-reduce: {buckets} bucket{} of {:.1} MB together, {}",
            if buckets == 1 { "" } else { "s" },
            bytes as f64 / 1e6,
            if self.overlap {
                "overlapped with the backward pass"
            } else {
                "after the backward pass"
            }
        )
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        // SAFETY: the reducer was created by pixelseq_reducer_new and is released once; this
        // removes its hooks from the parameters.
        unsafe { pixelseq_reducer_free(self.raw.as_ptr()) }
    }
}

/// This process's part in a command that may run data-parallel ([`join`]).
pub enum Part {
    /// `--nproc N` started N workers on this machine, which ran the command and have finished.
    Launched,
    /// This process computes on `device`: alone (`member` `None`), or as one rank of a world.
    Worker { device: Device, member: Option<Member> },
}

/// One rank of a world, connected to its rendezvous store.
pub struct Member {
    pub world: World,
    pub store: Store,
}

impl Member {
    /// Creates the rank's process groups ([`Dist::new`]).
    pub fn group(self, backend: Backend, device: Device) -> Result<Dist> {
        Dist::new(self.world, self.store, backend, device)
    }
}

/// What every command that can run data-parallel does first (`train`, `pretrain`, `eval`,
/// `bench`): with `nproc` other than 1, start that many workers running the same command line
/// and wait for them ([`launch::launch`]); else set libtorch's CPU threads (`threads`, or this
/// machine's cores; a rank without `--threads` gets its share of them), parse `device` (the
/// `--device` flag; a rank takes its local rank's GPU) and, under a launcher's environment
/// ([`World::from_env`]), connect to the world's store.
pub fn join(nproc: Option<usize>, device: &str, threads: Option<i32>) -> Result<Part> {
    if let Some(n) = nproc.filter(|&n| n != 1) {
        launch::launch(n, device)?;
        return Ok(Part::Launched);
    }
    tch::set_num_threads(crate::device::cpu_threads(threads)?);
    let parsed = crate::device::parse(device, "--device")?;
    let Some(world) = World::from_env()? else {
        return Ok(Part::Worker {
            device: parsed,
            member: None,
        });
    };
    if threads.is_none() {
        tch::set_num_threads(world.cpu_threads());
    }
    let device = world.device(parsed, device)?;
    let store = Store::connect(&world, rendezvous_timeout()?)?;
    Ok(Part::Worker {
        device,
        member: Some(Member { world, store }),
    })
}

/// A connected distributed run: the store, the group that carries device tensors (NCCL on CUDA,
/// Gloo on the CPU) and a Gloo group for host scalars (tallies, scores, decisions) when the first
/// is NCCL.
pub struct Dist {
    pub world: World,
    pub store: Store,
    pub group: Group,
    host: Option<Group>,
}

impl Dist {
    /// Creates the process groups for `backend` on `device` over a connected store.
    pub fn new(world: World, store: Store, backend: Backend, device: Device) -> Result<Dist> {
        let nccl = match (backend, device) {
            (Backend::Auto, Device::Cuda(_)) | (Backend::Nccl, Device::Cuda(_)) => true,
            (Backend::Nccl, d) => bail!("train.backend = \"nccl\" needs CUDA; this run is on {d:?} (use \"gloo\" or \"auto\")"),
            _ => false,
        };
        let group = match device {
            Device::Cuda(i) if nccl => Group::nccl(&store, "pixelseq/nccl/", &world, COLLECTIVE_TIMEOUT, i)?,
            _ => Group::gloo(&store, "pixelseq/gloo/", &world, COLLECTIVE_TIMEOUT)?,
        };
        let host = if nccl {
            Some(Group::gloo(&store, "pixelseq/gloo-host/", &world, COLLECTIVE_TIMEOUT)?)
        } else {
            None
        };
        Ok(Dist { world, store, group, host })
    }

    pub fn is_main(&self) -> bool {
        self.world.is_main()
    }

    /// `values` combined across the ranks (float64 on the host, exact for counts below 2^53).
    pub fn reduce(&self, values: &[f64], op: Reduce) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values);
        self.host.as_ref().unwrap_or(&self.group).all_reduce(&t, op)?;
        Ok(Vec::<f64>::try_from(&t.to_kind(Kind::Double))?)
    }

    /// Whether `flag` holds on any rank.
    pub fn any(&self, flag: bool) -> Result<bool> {
        Ok(self.reduce(&[f64::from(u8::from(flag))], Reduce::Max)?[0] > 0.0)
    }

    /// Rank 0's `value` on every rank: rank 0 passes `Some` and publishes it under `key`, the
    /// others pass `None` and wait for it (at most the collective timeout; they fail at once if
    /// rank 0, which hosts the store, exits).
    pub fn share(&self, key: &str, value: Option<&[u8]>) -> Result<Vec<u8>> {
        let key = format!("pixelseq/share/{key}");
        match value {
            Some(v) => {
                self.store.set(&key, v)?;
                Ok(v.to_vec())
            }
            None => self.store.get(&key, COLLECTIVE_TIMEOUT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn the_world_comes_from_torchrun_then_slurm() {
        assert_eq!(world(&[]).unwrap(), None);
        assert_eq!(
            world(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(),
            None,
            "a world of one runs alone"
        );
        let w = world(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "3"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29400"),
            ("SLURM_PROCID", "9"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((w.rank, w.size, w.local_rank, w.local_size), (3, 16, 3, 8));
        assert_eq!((w.master_addr.as_str(), w.master_port, w.agent_store), ("node1", 29400, None));
        let w = world(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "4"),
            ("MASTER_ADDR", "n0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((w.rank, w.size, w.local_rank, w.local_size, w.master_port), (5, 8, 1, 4, 29500));
        let w = world(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "a"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(w.agent_store.as_deref(), Some("/worker/attempt_2/"));
        let e = world(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2")]).unwrap_err().to_string();
        assert!(e.contains("$MASTER_ADDR is not set") && e.contains("scontrol"), "{e}");
        let e = world(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert_eq!(e, "$RANK = `x` is not a number");
        let e = world(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("rank 2 is outside a world of 2 processes"), "{e}");
    }

    /// The environment is checked as a whole before a world of one runs alone: a rank outside its
    /// world, a world of no process or a local rank outside its machine is an error naming the
    /// variables, never a single process writing the run folder.
    #[test]
    fn a_world_that_cannot_be_is_refused() {
        for (vars, needle) in [
            (&[("RANK", "1"), ("WORLD_SIZE", "1")][..], "rank 1 is outside a world of 1"),
            (&[("RANK", "0"), ("WORLD_SIZE", "0")][..], "$WORLD_SIZE = 0"),
            (&[("RANK", "1"), ("WORLD_SIZE", "0")][..], "$WORLD_SIZE = 0"),
            (&[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "1")][..], "$SLURM_PROCID = 3"),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "2"), ("LOCAL_WORLD_SIZE", "2")][..],
                "local rank 2",
            ),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "0")][..],
                "0 processes on this machine",
            ),
            (&[("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "1")][..], "local rank 1"),
        ] {
            let e = world(&vars.iter().copied().chain([("MASTER_ADDR", "a")]).collect::<Vec<_>>())
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
        assert_eq!(world(&[("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")]).unwrap(), None);
        for v in ["1e20", "inf", "0", "-3", "soon"] {
            let e = parse_timeout(v).unwrap_err().to_string();
            assert!(e.contains(&format!("`{v}`")) && e.contains("at most"), "{e}");
        }
        assert_eq!(parse_timeout(" 2.5 ").unwrap(), Duration::from_millis(2500));
    }

    /// A world of one process (its own store, Gloo over loopback): the reducer leaves the gradients
    /// of used parameters as they were, in any bucket, with or without overlap, and none on a
    /// parameter the backward pass did not reach.
    #[test]
    fn the_reducer_keeps_gradients_and_their_absence() {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
        let w = World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            agent_store: None,
        };
        let store = Store::connect(&w, Duration::from_secs(30)).unwrap();
        let group = Group::gloo(&store, "test/", &w, Duration::from_secs(30)).unwrap();
        let opts = (Kind::Float, Device::Cpu);
        for overlap in [true, false] {
            let a = Tensor::ones([3, 4], opts).set_requires_grad(true);
            let unused = Tensor::ones([5], opts).set_requires_grad(true);
            let big = Tensor::ones([400_000], opts).set_requires_grad(true); // 1.6 MB: a bucket of its own
            let params = [a.shallow_clone(), unused.shallow_clone(), big.shallow_clone()];
            let mut r = GradReducer::new(&group, &params, overlap).unwrap();
            assert_eq!(r.layout().0, 2);
            r.arm().unwrap();
            ((&a * 2.0).sum(Kind::Float) + (&big * &big).sum(Kind::Float)).backward();
            r.finish().unwrap();
            assert!(a.grad().equal(&Tensor::full([3, 4], 2.0, opts)));
            assert!(big.grad().equal(&Tensor::full([400_000], 2.0, opts)));
            assert!(!unused.grad().defined(), "a parameter without a gradient got one");
            assert!(r.describe().contains("2 buckets of 1.6 MB"), "{}", r.describe());
        }
    }
}
