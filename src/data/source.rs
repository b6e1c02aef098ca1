//! Where the data lives: resolving `--data` / `$PIXELSEQ_DATA` / the default folder, extracting
//! the official archive safely, and downloading it.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use sha2::{Digest, Sha256};

use super::cifar;
use super::{prepared, TaskName};
use crate::files::hex;
use crate::files::{temp_dir_beside, write_atomic, TempGuard};

/// The official CIFAR-10 binary archive.
pub const ARCHIVE_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// sha256 of [`ARCHIVE_URL`].
pub const ARCHIVE_SHA256: &str = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd";
/// File name of the archive.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";
/// The folder the archive unpacks to.
pub const FOLDER_NAME: &str = "cifar-10-batches-bin";
/// Environment variable naming the data location when `--data` is not given.
pub const DATA_ENV: &str = "PIXELSEQ_DATA";

/// Where a data location came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    Default,
}

impl Origin {
    fn describe(self) -> &'static str {
        match self {
            Origin::Flag => "given by --data",
            Origin::Env => "given by $PIXELSEQ_DATA",
            Origin::Default => "the default data folder",
        }
    }
}

/// The data location to use: `flag`, else `$PIXELSEQ_DATA`, else [`default_dir`].
pub fn root(flag: Option<&Path>) -> Result<(PathBuf, Origin)> {
    if let Some(p) = flag {
        return Ok((p.to_path_buf(), Origin::Flag));
    }
    match std::env::var_os(DATA_ENV) {
        Some(p) if !p.is_empty() => Ok((PathBuf::from(p), Origin::Env)),
        _ => Ok((default_dir()?, Origin::Default)),
    }
}

/// `$XDG_CACHE_HOME/pixelseq/data`, or `~/.cache/pixelseq/data`.
pub fn default_dir() -> Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(p) if Path::new(&p).is_absolute() => PathBuf::from(p),
        _ => match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => Path::new(&h).join(".cache"),
            _ => bail!("no default data folder: neither $XDG_CACHE_HOME nor $HOME is set; pass --data DIR or set $PIXELSEQ_DATA"),
        },
    };
    Ok(cache.join("pixelseq").join("data"))
}

/// What a data location holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A folder with the six official `.bin` files.
    Folder(PathBuf),
    /// The official `cifar-10-binary.tar.gz` (or one with the same files).
    Archive(PathBuf),
    /// A cache written by `pixelseq data prepare`.
    Prepared(PathBuf),
}

/// Name of the prepared cache of `task` inside a data folder.
pub fn prepared_name(task: TaskName) -> String {
    format!("pixelseq-{}.zst", task.as_str())
}

/// What `path` holds. In a folder, the first of: the prepared cache of `task` (when given), the
/// `.bin` files themselves, a `cifar-10-batches-bin/` subfolder, a `cifar-10-binary.tar.gz`.
/// `None` when a folder holds none of them.
pub fn find(path: &Path, task: Option<TaskName>) -> Result<Option<Source>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("failed to read data location `{}`", path.display())),
    };
    if meta.is_file() {
        let mut head = [0u8; 8];
        let n = File::open(path)
            .and_then(|mut f| read_up_to(&mut f, &mut head))
            .with_context(|| format!("failed to read data file `{}`", path.display()))?;
        return match &head[..n] {
            h if h == prepared::MAGIC => Ok(Some(Source::Prepared(path.to_path_buf()))),
            [0x1f, 0x8b, ..] => Ok(Some(Source::Archive(path.to_path_buf()))),
            _ => bail!(
                "`{}` is neither a CIFAR-10 archive (.tar.gz) nor a cache written by `pixelseq data prepare`",
                path.display()
            ),
        };
    }
    if let Some(task) = task {
        let p = path.join(prepared_name(task));
        if p.is_file() {
            return Ok(Some(Source::Prepared(p)));
        }
    }
    if cifar::FILES.iter().any(|(name, _)| path.join(name).exists()) {
        return Ok(Some(Source::Folder(path.to_path_buf())));
    }
    if path.join(FOLDER_NAME).is_dir() {
        return Ok(Some(Source::Folder(path.join(FOLDER_NAME))));
    }
    if path.join(ARCHIVE_NAME).is_file() {
        return Ok(Some(Source::Archive(path.join(ARCHIVE_NAME))));
    }
    Ok(None)
}

/// Resolves the data location ([`root`]) and finds what it holds, or explains how to get the data.
pub fn locate(flag: Option<&Path>, task: Option<TaskName>) -> Result<Source> {
    let (root, origin) = root(flag)?;
    if let Some(src) = find(&root, task)? {
        return Ok(src);
    }
    let other = task.and_then(|t| {
        TaskName::value_variants()
            .iter()
            .find(|&&o| o != t && root.join(prepared_name(o)).is_file())
            .map(|&o| (t, o))
    });
    match other {
        Some((task, o)) => bail!(
            "no data for task `{task}` at `{}` ({}): it holds only the prepared cache of `{o}` ({}); \
             add `{}` (`pixelseq data prepare --task {task}`) or the official `{FOLDER_NAME}` files",
            root.display(),
            origin.describe(),
            prepared_name(o),
            prepared_name(task)
        ),
        None => bail!(
            "no CIFAR-10 data at `{}` ({}): expected the official `{FOLDER_NAME}` files, `{ARCHIVE_NAME}` or a prepared cache; \
             run `pixelseq data download` to fetch it there, or pass --data DIR|ARCHIVE|PREPARED_FILE",
            root.display(),
            origin.describe()
        ),
    }
}

/// The folder holding the official `.bin` files for a raw source, extracting an archive first.
pub fn raw_folder(src: &Source) -> Result<PathBuf> {
    match src {
        Source::Folder(dir) => Ok(dir.clone()),
        Source::Archive(archive) => extract(archive),
        Source::Prepared(p) => bail!(
            "`{}` is a prepared cache; this command needs the official CIFAR-10 files (pass --data with their folder or archive)",
            p.display()
        ),
    }
}

/// Reads into `buf` until it is full or the input ends; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Copies `src` to `out`, returning the sha256 of what was copied.
fn copy_hashing(src: &mut impl Read, out: &mut (impl Write + ?Sized)) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
}

/// Saves the stream `src` as `dest` only if its sha256 is `sha256` (atomic: temporary file,
/// verify, rename). `what` names the stream in errors.
pub fn save_verified(src: &mut impl Read, dest: &Path, sha256: &str, what: &str) -> Result<()> {
    write_atomic(dest, |w| {
        let got = hex(&copy_hashing(src, w).with_context(|| format!("failed to save {what} to `{}`", dest.display()))?);
        if got != sha256 {
            bail!("{what} has sha256 {got}, expected {sha256}; `{}` was not written", dest.display());
        }
        Ok(())
    })
}

/// `train --download`: fetches the official archive into the data location (`flag`, as
/// [`root`] reads it) unless CIFAR-10 for `task` is already there.
pub fn download_if_missing(flag: Option<&Path>, task: TaskName) -> Result<()> {
    let (root, _) = root(flag)?;
    if find(&root, Some(task))?.is_none() {
        download(&root)?;
    }
    Ok(())
}

/// Downloads the official archive into `dir` (unless a verified copy is there) and extracts it;
/// returns the folder of `.bin` files.
pub fn download(dir: &Path) -> Result<PathBuf> {
    let folder = dir.join(FOLDER_NAME);
    if folder.is_dir() {
        cifar::verify_dir(&folder)?;
        eprintln!("{} is already here and verified", folder.display());
        return Ok(folder);
    }
    let archive = dir.join(ARCHIVE_NAME);
    if archive.is_file() {
        let mut f = BufReader::new(File::open(&archive).with_context(|| format!("failed to read `{}`", archive.display()))?);
        let got = hex(&copy_hashing(&mut f, &mut std::io::sink()).with_context(|| format!("failed to read `{}`", archive.display()))?);
        if got != ARCHIVE_SHA256 {
            bail!(
                "`{}` has sha256 {got}, expected {ARCHIVE_SHA256}; delete it and download again",
                archive.display()
            );
        }
        eprintln!("{} is already here and verified", archive.display());
    } else {
        eprintln!("downloading {ARCHIVE_URL} to {}", archive.display());
        let resp = ureq::get(ARCHIVE_URL)
            .call()
            .with_context(|| format!("failed to download {ARCHIVE_URL}"))?;
        let bar = match resp.header("Content-Length").and_then(|s| s.parse::<u64>().ok()) {
            Some(len) => indicatif::ProgressBar::new(len),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("valid progress template"),
        );
        let mut body = bar.wrap_read(resp.into_reader());
        save_verified(&mut body, &archive, ARCHIVE_SHA256, &format!("the download of {ARCHIVE_URL}"))?;
        bar.finish();
    }
    extract(&archive)
}

/// The most entries an archive may have: the official one has 9 (a folder, 6 batches, a readme
/// and the class names).
const MAX_ENTRIES: usize = 64;

/// The `cifar-10-batches-bin` folder next to `archive`, extracted from it when absent; when the
/// archive's folder cannot be written (a read-only disk), the one in the cache folder
/// ([`default_dir`]) instead. Extraction goes to a temporary folder, the six files are verified,
/// then the folder is renamed into place. Entries with absolute paths, `..` components, links or
/// special files are refused, and so is any entry larger than a CIFAR-10 file, before it is
/// written.
pub fn extract(archive: &Path) -> Result<PathBuf> {
    extract_or_into(archive, default_dir)
}

/// [`extract`], with the folder to use when the archive's own cannot be written.
fn extract_or_into(archive: &Path, fallback: impl FnOnce() -> Result<PathBuf>) -> Result<PathBuf> {
    let parent = match archive.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let folder = parent.join(FOLDER_NAME);
    if folder.is_dir() {
        return Ok(folder);
    }
    if writable(parent) {
        return extract_into(archive, parent);
    }
    let cache = fallback()?;
    let folder = cache.join(FOLDER_NAME);
    if folder.is_dir() {
        return Ok(folder);
    }
    eprintln!(
        "`{}` cannot be written; extracting `{}` into {}",
        parent.display(),
        archive.display(),
        cache.display()
    );
    std::fs::create_dir_all(&cache).with_context(|| format!("failed to create folder `{}`", cache.display()))?;
    extract_into(archive, &cache)
}

/// Whether a folder takes new entries (tried with a temporary folder, removed at once).
fn writable(dir: &Path) -> bool {
    tempfile::Builder::new()
        .prefix(&crate::files::temp_prefix("pixelseq-check"))
        .tempdir_in(dir)
        .is_ok()
}

/// Extracts `archive` into `parent/cifar-10-batches-bin` (see [`extract`]).
fn extract_into(archive: &Path, parent: &Path) -> Result<PathBuf> {
    let folder = parent.join(FOLDER_NAME);
    let tmp = temp_dir_beside(&folder);
    let _guard = TempGuard::new(tmp.clone());
    std::fs::create_dir(&tmp).with_context(|| format!("failed to create folder `{}` to extract `{}`", tmp.display(), archive.display()))?;
    unpack(archive, &tmp)?;
    let unpacked = tmp.join(FOLDER_NAME);
    if !unpacked.is_dir() {
        bail!(
            "archive `{}` has no `{FOLDER_NAME}/` folder; it is not the CIFAR-10 binary archive",
            archive.display()
        );
    }
    cifar::verify_dir(&unpacked).with_context(|| format!("archive `{}` holds a bad file", archive.display()))?;
    std::fs::rename(&unpacked, &folder).with_context(|| format!("failed to move `{}` to `{}`", unpacked.display(), folder.display()))?;
    Ok(folder)
}

/// `path` as a plain relative path (only normal components), or `None` if it could escape.
fn contained(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Unpacks the regular files and folders of a `.tar.gz` into `into`, refusing hostile entries.
fn unpack(archive: &Path, into: &Path) -> Result<()> {
    use tar::EntryType;
    let file = File::open(archive).with_context(|| format!("failed to read archive `{}`", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    // The tar reader's messages can quote raw bytes of the damaged header: such a message is
    // replaced by what it means.
    let unreadable = |e: std::io::Error| {
        let msg = e.to_string();
        let msg = if msg.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            msg
        } else {
            "its contents are not a tar archive".to_string()
        };
        anyhow!("archive `{}` is not a readable .tar.gz: {msg}", archive.display())
    };
    for (i, entry) in tar.entries().map_err(unreadable)?.enumerate() {
        if i == MAX_ENTRIES {
            bail!(
                "archive `{}` has more than {MAX_ENTRIES} entries; it is not the CIFAR-10 binary archive",
                archive.display()
            );
        }
        let mut entry = entry.map_err(unreadable)?;
        let name = entry.path().map_err(unreadable)?.into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let rel = contained(&name).ok_or_else(|| {
            anyhow!(
                "archive `{}` has a hostile entry `{}` (absolute or `..` path); refusing to extract",
                archive.display(),
                name.display()
            )
        })?;
        let dest = into.join(&rel);
        match kind {
            EntryType::Directory => {
                std::fs::create_dir_all(&dest).with_context(|| format!("failed to create folder `{}`", dest.display()))?;
            }
            EntryType::Regular | EntryType::Continuous if !rel.as_os_str().is_empty() => {
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("failed to create folder `{}`", dir.display()))?;
                }
                let too_large = || {
                    anyhow!(
                        "archive `{}` has an entry `{}` larger than a CIFAR-10 file ({} bytes); refusing to extract",
                        archive.display(),
                        name.display(),
                        cifar::FILE_BYTES
                    )
                };
                if entry.size() > cifar::FILE_BYTES {
                    return Err(too_large());
                }
                let mut out = File::create(&dest).with_context(|| format!("failed to create `{}`", dest.display()))?;
                let copied = std::io::copy(&mut (&mut entry).take(cifar::FILE_BYTES + 1), &mut out)
                    .with_context(|| format!("failed to extract `{}` from `{}`", name.display(), archive.display()))?;
                if copied > cifar::FILE_BYTES {
                    return Err(too_large());
                }
            }
            EntryType::Symlink | EntryType::Link => bail!(
                "archive `{}` has a link entry `{}`; refusing to extract",
                archive.display(),
                name.display()
            ),
            other => bail!(
                "archive `{}` has an entry `{}` of unsupported type {other:?}; refusing to extract",
                archive.display(),
                name.display()
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::shared_cifar_dir;

    /// Writes a `.tar.gz` whose entries are (path, contents) or, for `None`, a symlink.
    fn tar_gz(path: &Path, entries: &[(&str, Option<&[u8]>)]) {
        let gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, contents) in entries {
            let mut h = tar::Header::new_gnu();
            match contents {
                Some(bytes) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(bytes.len() as u64);
                }
                None => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    h.set_link_name("/etc/passwd").unwrap();
                }
            }
            h.set_mode(0o644);
            // `set_path` refuses `..`, so write the raw name as a hostile archive would.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            tar.append(&h, contents.unwrap_or(&[])).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn hostile_tar_paths_are_refused() {
        for (name, link, what) in [
            ("../evil", false, "hostile entry `../evil`"),
            ("cifar-10-batches-bin/../../evil", false, "hostile entry"),
            ("/tmp/evil", false, "hostile entry `/tmp/evil`"),
            ("cifar-10-batches-bin/link", true, "link entry"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let sub = dir.path().join("in");
            std::fs::create_dir(&sub).unwrap();
            let archive = sub.join(ARCHIVE_NAME);
            tar_gz(
                &archive,
                &[
                    ("cifar-10-batches-bin/readme.txt", Some(b"ok")),
                    (name, if link { None } else { Some(b"evil") }),
                ],
            );
            let err = format!("{:#}", extract(&archive).unwrap_err());
            assert!(err.contains(what) && err.contains(ARCHIVE_NAME), "{name}: {err}");
            assert!(!dir.path().join("evil").exists() && !sub.join(FOLDER_NAME).exists());
            let left: Vec<_> = std::fs::read_dir(&sub).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, vec![std::ffi::OsString::from(ARCHIVE_NAME)], "temporary folder left behind");
        }
    }

    #[test]
    fn archive_round_trip_extracts_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join(ARCHIVE_NAME);
        let gz = flate2::write::GzEncoder::new(File::create(&archive).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all(FOLDER_NAME, shared_cifar_dir()).unwrap();
        tar.into_inner().unwrap().finish().unwrap();

        assert_eq!(find(dir.path(), None).unwrap(), Some(Source::Archive(archive.clone())));
        assert_eq!(find(&archive, None).unwrap(), Some(Source::Archive(archive.clone())));
        let folder = extract(&archive).unwrap();
        assert_eq!(folder, dir.path().join(FOLDER_NAME));
        cifar::verify_dir(&folder).unwrap();
        // Once extracted, the folder is found first and the archive is not read again.
        assert_eq!(find(dir.path(), None).unwrap(), Some(Source::Folder(folder.clone())));
        assert_eq!(extract(&archive).unwrap(), folder);
    }

    #[test]
    fn archive_with_a_bad_file_is_not_extracted() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join(ARCHIVE_NAME);
        tar_gz(&archive, &[("cifar-10-batches-bin/data_batch_1.bin", Some(b"short"))]);
        let err = format!("{:#}", extract(&archive).unwrap_err());
        assert!(err.contains("data_batch_1.bin") && err.contains("5 bytes"), "{err}");
        assert!(!dir.path().join(FOLDER_NAME).exists());
    }

    /// A 4 GiB entry in a tiny archive is refused from its header, before a byte is written.
    #[test]
    fn an_oversized_entry_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join(ARCHIVE_NAME);
        let gz = flate2::write::GzEncoder::new(File::create(&archive).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("cifar-10-batches-bin/data_batch_1.bin").unwrap();
        h.set_size(4 << 30);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, std::io::empty()).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let err = format!("{:#}", extract(&archive).unwrap_err());
        assert!(
            err.contains("data_batch_1.bin") && err.contains("larger than a CIFAR-10 file"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "something was extracted");
    }

    /// A gzip that holds no tar archive is named as such, without the raw bytes of its header.
    #[test]
    fn a_gzip_that_is_not_a_tar_is_named_plainly() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join(ARCHIVE_NAME);
        let mut gz = flate2::write::GzEncoder::new(File::create(&archive).unwrap(), flate2::Compression::fast());
        let noise: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        gz.write_all(&noise).unwrap();
        gz.finish().unwrap();
        let err = format!("{:#}", extract(&archive).unwrap_err());
        assert!(err.contains("is not a readable .tar.gz"), "{err}");
        assert!(
            err.chars().all(|c| c.is_ascii_graphic() || c == ' ' || c == '`' || c == '\n'),
            "raw bytes: {err:?}"
        );
    }

    /// What a process killed during extraction left (a 90–150 MB hidden folder) goes on the next one.
    #[test]
    fn an_extraction_killed_earlier_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".cifar-10-batches-bin.partial-4999999-px0");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("data_batch_1.bin"), vec![0u8; 1 << 16]).unwrap();
        let archive = dir.path().join(ARCHIVE_NAME);
        tar_gz(&archive, &[("cifar-10-batches-bin/readme.txt", Some(b"ok"))]);
        assert!(extract(&archive).is_err());
        assert!(!stale.exists());
    }

    /// An archive on a read-only disk is extracted into the cache folder instead.
    #[test]
    fn an_archive_in_a_read_only_folder_is_extracted_into_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let shelf = dir.path().join("shelf");
        std::fs::create_dir(&shelf).unwrap();
        let archive = shelf.join(ARCHIVE_NAME);
        let gz = flate2::write::GzEncoder::new(File::create(&archive).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all(FOLDER_NAME, shared_cifar_dir()).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let Some(_read_only) = ReadOnly::new(&shelf) else {
            eprintln!("skipped: cannot make a folder read-only here (root without chattr)");
            return;
        };
        let cache = dir.path().join("cache");
        let folder = extract_or_into(&archive, || Ok(cache.clone())).unwrap();
        assert_eq!(folder, cache.join(FOLDER_NAME));
        cifar::verify_dir(&folder).unwrap();
    }

    /// Makes a folder read-only while it lives: its mode, or for root (whom modes do not stop)
    /// the immutable attribute.
    struct ReadOnly(PathBuf, bool);

    impl ReadOnly {
        fn new(dir: &Path) -> Option<ReadOnly> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            if !writable(dir) {
                return Some(ReadOnly(dir.to_path_buf(), false));
            }
            let chattr = std::process::Command::new("chattr").arg("+i").arg(dir).status();
            let guard = ReadOnly(dir.to_path_buf(), true);
            (chattr.is_ok_and(|s| s.success()) && !writable(dir)).then_some(guard)
        }
    }

    impl Drop for ReadOnly {
        fn drop(&mut self) {
            use std::os::unix::fs::PermissionsExt;
            if self.1 {
                let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
            }
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        }
    }

    #[test]
    fn save_verified_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.bin");
        let good = hex(&Sha256::digest(b"hello"));
        let err = format!("{:#}", save_verified(&mut &b"hellO"[..], &dest, &good, "the download").unwrap_err());
        assert!(err.contains("the download has sha256") && err.contains("was not written"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporary file left behind");
        save_verified(&mut &b"hello"[..], &dest, &good, "the download").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn download_refuses_a_wrong_archive_already_there() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ARCHIVE_NAME), b"not the archive").unwrap();
        let err = format!("{:#}", download(dir.path()).unwrap_err());
        assert!(
            err.contains(ARCHIVE_NAME) && err.contains(ARCHIVE_SHA256) && err.contains("delete it"),
            "{err}"
        );
    }

    #[test]
    fn locations_resolve_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(find(&d.join("nothing"), None).unwrap(), None);
        assert_eq!(find(d, None).unwrap(), None);
        let err = format!("{:#}", locate(Some(d), Some(TaskName::Scifar)).unwrap_err());
        assert!(
            err.contains("pixelseq data download") && err.contains("--data") && err.contains("given by --data"),
            "{err}"
        );

        std::fs::write(d.join(prepared_name(TaskName::LraImage)), b"").unwrap();
        let err = format!("{:#}", locate(Some(d), Some(TaskName::Scifar)).unwrap_err());
        assert!(
            err.contains("task `scifar`")
                && err.contains("only the prepared cache of `lra-image`")
                && err.contains("pixelseq data prepare --task scifar"),
            "{err}"
        );
        std::fs::remove_file(d.join(prepared_name(TaskName::LraImage))).unwrap();

        std::fs::write(d.join("junk.txt"), b"hello").unwrap();
        let err = format!("{:#}", find(&d.join("junk.txt"), None).unwrap_err());
        assert!(err.contains("junk.txt") && err.contains("neither"), "{err}");

        std::fs::create_dir(d.join(FOLDER_NAME)).unwrap();
        assert_eq!(find(d, None).unwrap(), Some(Source::Folder(d.join(FOLDER_NAME))));
        std::fs::write(d.join("data_batch_1.bin"), b"").unwrap();
        assert_eq!(find(d, None).unwrap(), Some(Source::Folder(d.to_path_buf())));
        std::fs::write(d.join(prepared_name(TaskName::LraImage)), prepared::MAGIC).unwrap();
        assert_eq!(
            find(d, Some(TaskName::LraImage)).unwrap(),
            Some(Source::Prepared(d.join("pixelseq-lra-image.zst")))
        );
        assert_eq!(find(d, Some(TaskName::Scifar)).unwrap(), Some(Source::Folder(d.to_path_buf())));
        assert_eq!(
            find(&d.join("pixelseq-lra-image.zst"), None).unwrap(),
            Some(Source::Prepared(d.join("pixelseq-lra-image.zst")))
        );
    }

    #[test]
    fn default_dir_is_under_the_cache() {
        let d = default_dir().unwrap();
        assert!(d.ends_with("pixelseq/data"), "{}", d.display());
    }
}
