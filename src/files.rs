//! Writing files so that nothing is half-written or lost: every file that matters (configs,
//! records, prepared data, downloads, reports, predictions) is written into a uniquely named
//! temporary file beside its destination, synced, and renamed over it, so a crash leaves either
//! the old file or the new one. Special targets (a FIFO, a device, `/dev/stdout`) are written
//! directly instead, and a symbolic link is followed: its target is replaced, the link stays.
//!
//! Temporary names are `.<name>.partial-<pid>-px<suffix>` (the suffix letters and digits): a
//! process killed while writing leaves one behind, which [`remove_stale_temps`] removes once that
//! process is gone; every write and every temporary folder ([`temp_dir_beside`]) first clears its
//! folder of such leftovers. Only that exact pattern is pixelseq's: a user's
//! `.thesis.partial-99999-v2` or `.photos.partial-4000000-2024/` is never touched.

use std::io::{BufWriter, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The marker between a temporary file's destination name and its owner's process id.
pub const PARTIAL: &str = ".partial-";
/// What follows the owner's process id and a dash in every temporary name pixelseq writes.
const TAG: &str = "px";

/// The prefix of a temporary name for `name` owned by this process; a suffix of letters and
/// digits completes it.
pub fn temp_prefix(name: &str) -> String {
    format!(".{name}{PARTIAL}{}-{TAG}", std::process::id())
}

/// Lower-case hex of a digest (a sha256, say).
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where writing `dest` really goes: the end of its chain of symbolic links (relative targets are
/// resolved against the link's folder), else `dest` itself.
fn resolve_links(dest: &Path) -> PathBuf {
    let mut path = dest.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                }
            }
            Err(_) => break,
        }
    }
    path
}

/// Writes `dest` atomically: `fill` writes a temporary file beside it, which is synced and renamed
/// over `dest` only if `fill` succeeds. An error leaves `dest` untouched and no temporary behind.
/// The parent folder is created if needed. A special file (FIFO, device) is written in place.
pub fn write_atomic(dest: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let target = resolve_links(dest);
    if is_special(&target) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .with_context(|| format!("failed to open `{}` for writing", dest.display()))?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        return w.flush().with_context(|| format!("failed to write `{}`", dest.display()));
    }
    let tmp = temp_file_beside(dest, &target)?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp);
    fill(&mut w)?;
    let tmp = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("failed to write `{}`", dest.display()))?;
    persist(tmp, dest, &target)
}

/// [`write_atomic`] for a writer that only takes a path (a C++ library, say): `fill` writes the
/// file at the path it is given, a temporary beside `dest` that is then synced and renamed over
/// it (for a special file, `dest` itself).
pub fn write_through(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let target = resolve_links(dest);
    if is_special(&target) {
        return fill(&target);
    }
    let tmp = temp_file_beside(dest, &target)?;
    fill(tmp.path())?;
    persist(tmp, dest, &target)
}

/// Whether `path` exists as something other than a regular file or a folder (FIFO, device).
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// A new uniquely named temporary file beside `target` (the resolved `dest`), its folder created
/// if needed and cleared of temporaries that dead processes left.
fn temp_file_beside(dest: &Path, target: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match target.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create folder `{}`", dir.display()))?;
            dir.to_path_buf()
        }
        None => PathBuf::from("."),
    };
    remove_stale_temps(&dir);
    let name = target.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = temp_prefix(&name);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // What `File::create` would give a new file (the umask applies); an existing file keeps its mode.
        let mode = std::fs::metadata(target).map_or(0o666, |m| m.permissions().mode());
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    builder
        .tempfile_in(&dir)
        .with_context(|| format!("failed to create a temporary file beside `{}`", dest.display()))
}

/// Syncs a finished temporary file and renames it over `target`.
fn persist(tmp: tempfile::NamedTempFile, dest: &Path, target: &Path) -> Result<()> {
    // Reopened: a writer that took the path wrote through its own handle.
    std::fs::File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("failed to write `{}`", dest.display()))?;
    tmp.persist(target)
        .map_err(|e| e.error)
        .with_context(|| format!("failed to move the new `{}` into place", dest.display()))?;
    Ok(())
}

/// The names a run folder (one holding `config.toml` and its lock, checkpoints or metrics) keeps its own files under, and those of an
/// exported model folder (`config.json` beside `model.safetensors`); TensorBoard's events files
/// (`events.out.tfevents.*`) are a run's too.
const RUN_FILES: [&str; 6] = ["config.toml", "preset", "metrics.jsonl", "result.json", ".lock", "checkpoints"];
const EXPORTED_FILES: [&str; 3] = ["model.safetensors", "config.json", "README.md"];

/// Refuses an output path that is (or lies under) one of a run's or an exported folder's own
/// files, links followed: `predict --csv RUN/config.toml` or `export --out
/// RUN/checkpoints/best/model.safetensors` would replace what the run needs. A new file in a run
/// folder (`RUN/predictions.csv`) is fine.
pub fn check_not_a_run_file(dest: &Path, what: &str) -> Result<()> {
    let absolute = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
    let target = match std::fs::canonicalize(&absolute) {
        Ok(t) => t,
        Err(_) => match (absolute.parent().and_then(|p| std::fs::canonicalize(p).ok()), absolute.file_name()) {
            (Some(parent), Some(name)) => parent.join(name),
            _ => absolute,
        },
    };
    for folder in target.ancestors().skip(1) {
        let Some(first) = target.strip_prefix(folder).ok().and_then(|rel| rel.components().next()) else {
            continue;
        };
        let first = first.as_os_str().to_string_lossy();
        let is_run =
            folder.join("config.toml").is_file() && [".lock", "checkpoints", "metrics.jsonl"].iter().any(|f| folder.join(f).exists());
        let run = is_run && (RUN_FILES.contains(&first.as_ref()) || first.starts_with("events.out.tfevents."));
        let exported =
            folder.join("config.json").is_file() && folder.join("model.safetensors").is_file() && EXPORTED_FILES.contains(&first.as_ref());
        if run || exported {
            bail!(
                "{what} `{}` would overwrite `{first}` of the {} `{}`; write it outside that folder's own files",
                dest.display(),
                if run { "run" } else { "exported model folder" },
                folder.display()
            );
        }
    }
    Ok(())
}

/// Checks, before any work, that `dest` can be written: not a folder, not one of a run's own
/// files ([`check_not_a_run_file`]), its folder exists and takes new files. Commands that write
/// one output at the end call this first.
pub fn check_writable(dest: &Path, what: &str) -> Result<()> {
    check_not_a_run_file(dest, what)?;
    let target = resolve_links(dest);
    if target.is_dir() {
        bail!("{what} `{}` is a folder; name a file", dest.display());
    }
    if is_special(&target) {
        return Ok(());
    }
    let dir = match target.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("{what} `{}`: folder `{}` does not exist", dest.display(), dir.display());
    }
    tempfile::Builder::new()
        .prefix(&format!(".pixelseq-check{PARTIAL}{}-", std::process::id()))
        .tempfile_in(dir)
        .map(drop)
        .with_context(|| format!("{what} `{}`: cannot create files in folder `{}`", dest.display(), dir.display()))
}

/// Refuses a path that is not a regular file (a FIFO, a device, a folder) before it is opened:
/// opening a FIFO to read waits for a writer forever. Symbolic links are followed.
pub fn check_regular(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a folder"
        } else if meta.file_type().is_fifo() {
            "a FIFO"
        } else {
            "a device or socket"
        };
        bail!(
            "`{}` is {kind}, not a regular file; pixelseq reads only regular files there",
            path.display()
        );
    }
    Ok(())
}

/// The bytes of the regular file `path` ([`check_regular`] first).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path).with_context(|| format!("failed to read `{}`", path.display()))
}

/// The text of the regular file `path` ([`check_regular`] first).
pub fn read_regular_to_string(path: &Path) -> Result<String> {
    check_regular(path)?;
    std::fs::read_to_string(path).with_context(|| format!("failed to read `{}`", path.display()))
}

/// [`write_atomic`] of a byte string.
pub fn write_bytes(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(dest, |w| {
        w.write_all(bytes).with_context(|| format!("failed to write `{}`", dest.display()))
    })
}

/// Appends one line to a file (created if missing) and syncs it.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("failed to open `{}`", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("failed to write `{}`", path.display()))?;
    f.sync_data().with_context(|| format!("failed to write `{}`", path.display()))
}

/// The entries of folder `dir`, sorted by name.
pub fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let mut entries = std::fs::read_dir(dir)
        .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("failed to read folder `{}`", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Whether process `pid` still runs (Linux: `/proc/<pid>` exists).
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The process id in a temporary name written by this module (`.<name>.partial-<pid>-px<suffix>`,
/// exactly: a dot, a non-empty name, the marker, digits, `-px`, then 1 to 20 letters and digits).
fn owner(name: &str) -> Option<u32> {
    let stem = name.strip_prefix('.')?;
    let at = stem.rfind(PARTIAL).filter(|&at| at > 0)?;
    let (pid, suffix) = stem[at + PARTIAL.len()..].split_once('-')?;
    let suffix = suffix.strip_prefix(TAG)?;
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    let tail = (1..=20).contains(&suffix.len()) && suffix.bytes().all(|b| b.is_ascii_alphanumeric());
    if digits && tail {
        pid.parse().ok()
    } else {
        None
    }
}

/// Whether `name` is a temporary name that pixelseq writes ([`temp_prefix`]).
pub fn is_temp_name(name: &str) -> bool {
    owner(name).is_some()
}

/// Removes the temporary files and folders in `dir` left by pixelseq processes that are gone
/// (killed while writing); returns how many were removed. Names without a dead owner are left.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner(&name) else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let path = entry.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if gone.is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A unique name beside `dest` for a folder being built by this process; the temporaries that
/// dead processes left beside `dest` are removed first (see [`remove_stale_temps`]).
pub fn temp_dir_beside(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        remove_stale_temps(dir);
    }
    let name = dest.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!("{}{n}", temp_prefix(&name)))
}

/// Removes a temporary file or folder when dropped, unless [`TempGuard::keep`] was called.
pub struct TempGuard(Option<PathBuf>);

impl TempGuard {
    pub fn new(path: PathBuf) -> TempGuard {
        TempGuard(Some(path))
    }

    /// The path was renamed into place: leave it.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Best effort: the path may not exist if creating it failed.
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        write_bytes(&path, b"one").unwrap();
        write_bytes(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        write_bytes(&path, b"old").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            anyhow::bail!("interrupted")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A user's `X.tmp` beside `X` is never touched (the temporary name is unique).
    #[test]
    fn neighbours_are_not_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("X.tmp");
        std::fs::write(&tmp, b"mine").unwrap();
        write_bytes(&dir.path().join("X.csv"), b"data").unwrap();
        assert_eq!(std::fs::read(&tmp).unwrap(), b"mine");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_followed_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.txt");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink("real.txt", &link).unwrap();
        write_bytes(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_bytes(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(!std::fs::metadata(&fifo).unwrap().is_file(), "the FIFO was replaced by a file");
    }

    #[test]
    fn a_path_writer_goes_through_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("trace.json");
        write_through(&dest, |p| {
            assert_ne!(p, dest.as_path(), "the writer got the destination itself");
            Ok(std::fs::write(p, b"{}")?)
        })
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"{}");
        assert!(write_through(&dest, |_| anyhow::bail!("failed")).is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn outputs_are_checked_before_the_work() {
        let dir = tempfile::tempdir().unwrap();
        check_writable(&dir.path().join("out.csv"), "--csv").unwrap();
        let err = check_writable(&dir.path().join("missing/dir/out.csv"), "--csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing/dir") && err.contains("does not exist"), "{err}");
        let err = check_writable(dir.path(), "--csv").unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the check left a file");
    }

    /// A write clears its folder of what a killed pixelseq left there.
    #[test]
    fn writing_removes_stale_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".gray.bin.partial-4999999-pxabc");
        std::fs::write(&stale, vec![0u8; 4096]).unwrap();
        write_bytes(&dir.path().join("gray.bin"), b"new").unwrap();
        assert!(!stale.exists());
        let folder = dir.path().join(".cifar-10-batches-bin.partial-4999999-px0");
        std::fs::create_dir(&folder).unwrap();
        temp_dir_beside(&dir.path().join("cifar-10-batches-bin"));
        assert!(!folder.exists());
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum (4,194,304) never runs.
        let dead = dir.path().join(".cifar.tar.gz.partial-4999999-pxabc");
        let folder = dir.path().join(".cifar-10-batches-bin.partial-4999999-px0");
        let live = dir.path().join(format!(".x.partial-{}-px1", std::process::id()));
        let other = dir.path().join("notes.partial-4999999-1");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"").unwrap();
        }
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("data_batch_1.bin"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()), 2);
        assert!(!dead.exists() && !folder.exists());
        assert!(live.exists() && other.exists());
    }

    /// An output never replaces a run's or an exported folder's own files, also through a link;
    /// a new file beside them is fine.
    #[test]
    fn outputs_never_overwrite_a_runs_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("checkpoints/best")).unwrap();
        for f in ["config.toml", "checkpoints/best/model.safetensors", "events.out.tfevents.1.host"] {
            std::fs::write(run.join(f), b"x").unwrap();
        }
        let hf = dir.path().join("hf");
        std::fs::create_dir(&hf).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::write(hf.join(f), b"x").unwrap();
        }
        let link = dir.path().join("out.csv");
        std::os::unix::fs::symlink(run.join("config.toml"), &link).unwrap();
        for dest in [
            run.join("config.toml"),
            run.join("result.json"),
            run.join("checkpoints/best/model.safetensors"),
            run.join("checkpoints/new.pt"),
            run.join("events.out.tfevents.1.host"),
            hf.join("model.safetensors"),
            link,
        ] {
            let err = check_writable(&dest, "--csv").unwrap_err().to_string();
            assert!(err.contains("would overwrite"), "{}: {err}", dest.display());
        }
        check_writable(&run.join("predictions.csv"), "--csv").unwrap();
        check_writable(&hf.join("notes.txt"), "--csv").unwrap();
    }

    /// Only the exact names pixelseq writes are its leftovers: a user's dot-names that merely
    /// contain `.partial-<dead pid>-`, files or folders, are never removed or entered.
    #[test]
    fn a_users_partial_names_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let thesis = dir.path().join(".thesis.partial-99999-v2");
        std::fs::write(&thesis, b"chapter 1").unwrap();
        let photos = dir.path().join(".photos.partial-4000000-2024");
        std::fs::create_dir(&photos).unwrap();
        std::fs::write(photos.join("a.jpg"), b"x").unwrap();
        let mut others = vec![thesis.clone(), photos.clone()];
        for name in [
            ".partial-4999999-px1",
            ".x.partial-4999999-px",
            ".x.partial-49x-px1",
            ".x.partial-4999999-px1.bak",
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, b"mine").unwrap();
            others.push(path);
        }
        write_bytes(&dir.path().join("x.csv"), b"new").unwrap();
        assert_eq!(remove_stale_temps(dir.path()), 0);
        for path in &others {
            assert!(path.exists(), "{} was removed", path.display());
        }
        assert_eq!(std::fs::read(photos.join("a.jpg")).unwrap(), b"x");
        assert!(is_temp_name(&format!("{}abc123", temp_prefix("x.csv"))));
    }
}
